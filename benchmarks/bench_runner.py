"""Benchmarks of ``dode-run`` (ratios measured in one run; no timed assertions).

1. Generation and metric throughput with 1 and 2 processes on CPU, one thread each: images/s from
   the shard timings of the manifests (generation only), from the metric's own time (``metric_seconds``
   of its JSON: reading and checking the shards, features on every rank, the all-reduce, the Fréchet
   distance) and from the wall clock of the whole job (spawn included); efficiency = (images/s with
   2) / (2 × images/s with 1); the metric's share = metric time / (generation + metric time).
2. Wall time of the default run (``dode-run`` with no arguments: DDIM vs D-DDIM at NFE 5 and 10 on
   digits, 3 seeds), end to end in a fresh process, and the metric's share of its generation + metric
   time (and of its wall time).
3. Peak resident memory of a 50,000-sample digits run (D-DDIM, NFE 10, one seed), from
   ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` of a wrapper process. Target: ≤ 2 GiB.

    python benchmarks/bench_runner.py            # everything (a few minutes on 2 CPU cores)
    python benchmarks/bench_runner.py --quick    # smaller sizes

When the embedded digits checkpoint is not built yet, an untrained network of the same shape stands
in (the same compute per image); the report says so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNTRAINED = """_target_: dode.models.digits.wrap
_args_:
  - digits-ddpm
  - {_target_: dode.models.digits.build, name: digits-ddpm}
channels: 1
resolution: 8
"""


def _env(threads: int | None = None) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    if threads:
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    return env


def _stand_in(tmp: Path) -> list[str]:
    """Overrides that replace the digits checkpoint by an untrained twin when the asset is missing."""
    from dode.models.digits import asset_path

    if asset_path("digits-ddpm").is_file():
        return []
    conf = tmp / "conf" / "checkpoint"
    conf.mkdir(parents=True, exist_ok=True)
    (conf / "bench-digits-untrained.yaml").write_text(UNTRAINED)
    return [f"hydra.searchpath=[file://{tmp / 'conf'}]", "checkpoint=bench-digits-untrained"]


def dode_run(args: list[str], threads: int | None = None, timeout: float = 1800) -> float:
    start = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dode.runner.cli", *args], env=_env(threads), cwd=ROOT, capture_output=True,
                       text=True, timeout=timeout)
    if r.returncode:
        raise SystemExit(f"dode-run {' '.join(args)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - start


def shard_seconds(results: Path) -> dict[int, float]:
    """Generation seconds per rank, summed over the shards of every manifest."""
    per_rank: dict[int, float] = {}
    for m in results.rglob("manifest.json"):
        for e in json.loads(m.read_text())["shards"].values():
            for part in e.get("pieces") or [e]:  # a shard cut between ranks records each rank's piece
                per_rank[part["rank"]] = per_rank.get(part["rank"], 0.0) + float(part["seconds"] or 0.0)
    return per_rank


def metric_seconds(results: Path) -> float:
    """The metric stage's seconds, summed over the metric files of a results folder."""
    return sum(float(json.loads(m.read_text())["metric_seconds"]) for m in results.rglob("metrics/*.json"))


def throughput(tmp: Path, n: int, stand_in: list[str]) -> None:
    common = [*stand_in, "progress=false", "distill=none", "compare_base=false", "nfe=10", "seeds=[0]",
              f"num_samples={n}", "shard_size=1000", "batch_size=500", "eval=fd_digits",
              "launcher.threads_per_worker=1"]
    rows = {}
    for world in (1, 2):
        results = tmp / f"tp{world}"
        wall = dode_run([*common, f"results_dir={results}", f"world_size={world}"], threads=1)
        gen, met = max(shard_seconds(results).values()), metric_seconds(results)
        rows[world] = (n / gen, n / met, n / wall, wall, met / (gen + met))
    (g1, m1, w1), (g2, m2, w2) = rows[1][:3], rows[2][:3]
    print(f"[throughput] digits-ddpm, DDIM NFE 10, FD-digits, {n} images, CPU, 1 thread per process")
    for world, (g, m, w, t, share) in rows.items():
        print(f"  {world} process{'es' if world > 1 else '  '}: {g:8.0f} images/s generating, {m:8.0f} images/s "
              f"metric ({m / g:.2f}× generation; metric share {share:.0%}), {w:8.0f} images/s end to end ({t:.1f} s)")
    print(f"  speed-up 2 vs 1: {g2 / g1:.2f}× generating (efficiency {g2 / (2 * g1):.0%}), {m2 / m1:.2f}× metric "
          f"(efficiency {m2 / (2 * m1):.0%}), {w2 / w1:.2f}× end to end (efficiency {w2 / (2 * w1):.0%}; "
          "includes spawning the workers)")


def default_run(tmp: Path, stand_in: list[str]) -> None:
    results = tmp / "default"
    wall = dode_run([*stand_in, f"results_dir={results}", "progress=false"])
    gen, met = sum(shard_seconds(results).values()), metric_seconds(results)
    print(f"[default run] `dode-run` (DDIM vs D-DDIM, NFE 5 and 10, 3 seeds{', untrained stand-in' if stand_in else ''}): "
          f"{wall:.1f} s end to end (target ≤ 180 s on 2 CPU cores); metric share {met / (gen + met):.0%} of "
          f"generation + metric time (metric {met:.1f} s, generation {gen:.1f} s; {met / wall:.0%} of the wall time)")


def peak_memory(tmp: Path, n: int, stand_in: list[str]) -> None:
    args = [*stand_in, f"results_dir={tmp / 'mem'}", "progress=false", "nfe=10", "compare_base=false",
            "seeds=[0]", f"num_samples={n}"]
    wrapper = ("import resource, subprocess, sys, json; "
               "r = subprocess.run([sys.executable, '-m', 'dode.runner.cli', *json.loads(sys.argv[1])], capture_output=True); "
               "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", wrapper, json.dumps(args)], env=_env(), cwd=ROOT,
                         capture_output=True, text=True, timeout=3600).stdout.split()
    wall = time.perf_counter() - start
    rc, kib = int(out[0]), int(out[1])
    if rc:
        raise SystemExit(f"the {n}-sample run failed (exit {rc})")
    print(f"[peak memory] {n}-sample digits run (D-DDIM NFE 10, one seed, metric included): "
          f"{kib / 2**20:.2f} GiB peak RSS ({kib / 1024:.0f} MiB; target ≤ 2 GiB), {wall:.1f} s")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes (a rough check)")
    p.add_argument("--only", choices=["throughput", "default", "memory"], default=None)
    a = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-runner-") as d:
        tmp = Path(d)
        stand_in = _stand_in(tmp)
        if stand_in:
            print("(digits-ddpm asset missing: an untrained network of the same shape stands in)")
        if a.only in (None, "throughput"):
            throughput(tmp, 4000 if a.quick else 20000, stand_in)
        if a.only in (None, "default"):
            default_run(tmp, stand_in)
        if a.only in (None, "memory"):
            peak_memory(tmp, 5000 if a.quick else 50000, stand_in)


if __name__ == "__main__":
    main()
