"""``dode-run``: configs → points → fit → generate → metric → runs.csv, on one or many processes."""
