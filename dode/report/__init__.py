"""``dode-report``: the papers' tables and figures from ``results/runs.csv`` and the run folders."""
