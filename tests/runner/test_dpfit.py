"""Data-parallel learned fits (S4S, S4S-Alt, LD3): the fit noises split over gloo processes, losses and
gradients all-reduced, give every process the one-process fit's θ and grid (to float summation order)."""
from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from dode.learn import fit_ld3, fit_s4s, fit_s4s_alt
from dode.learn.s4s import alone
from dode.runner.distributed import launch
from dode.runner.striping import even_bounds
from runner_helpers import dode_run, oracle

B = 9  # odd: the two shares differ (4 and 5)


def fit_noise() -> torch.Tensor:
    """float64: the fits agree to the float64 sums' order (float32 would leave ~1e-7 of each θ)."""
    return torch.randn(B, 1, 4, 4, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


def fit_all(noise: torch.Tensor, reduce) -> dict:
    """θ and grids of tiny S4S (plain objective), LD3 (relaxed, LD3's radius) and S4S-Alt (joint grid)
    fits of the test model on ``noise`` (this process's share)."""
    den, common = oracle(), dict(teacher_nfe=19, reduce=reduce)
    s4s = fit_s4s(den, noise, "ddim", 4, iters=12, **common)
    ld3 = fit_ld3(den, noise, "ddim", 4, iters=12, **common)
    alt = fit_s4s_alt(den, noise, "ddim", 4, rounds=1, iters=6, grid_iters=6, radius=0.05, **common)
    return {"s4s": s4s.theta, "s4s_loss": s4s.provenance["loss_best"], "ld3": ld3.provenance["grid"],
            "ld3_moves": ld3.provenance["relax_moves"], "ld3_offset": ld3.provenance["relax_max_offset"],
            "alt": alt.theta, "alt_grid": alt.provenance["grid"], "alt_loss": alt.provenance["loss_best"],
            "batch": [s4s.provenance["batch"], ld3.provenance["batch"], alt.provenance["batch"]]}


def fit_worker(ctx, out: str) -> None:
    bounds = even_bounds(B, ctx.world)
    got = fit_all(fit_noise()[bounds[ctx.rank]:bounds[ctx.rank + 1]], ctx.all_reduce)
    Path(out, f"rank{ctx.rank}.json").write_text(json.dumps(got))


def close(a, b) -> None:
    np.testing.assert_allclose(np.asarray(a, dtype=float), np.asarray(b, dtype=float), rtol=1e-6, atol=1e-9)


def check_as_one(r0: dict, r1: dict) -> None:
    """Both ranks' fits are the same (bit for bit) and equal the one-process fit's."""
    assert r0 == r1
    one = fit_all(fit_noise(), alone)
    assert r0["batch"] == one["batch"] == [B] * 3
    assert np.abs(np.asarray(one["s4s"])).max() > 1e-3 and one["ld3"] != one["alt_grid"]  # the fits moved
    for key in ("s4s", "s4s_loss", "ld3", "ld3_offset", "alt", "alt_grid", "alt_loss"):
        close(r0[key], one[key])
    assert r0["ld3_moves"] == one["ld3_moves"] > 0


class ThreadGroup:
    """A reduce over ``n`` threads (a stand-in for a process group): each thread's tensor, summed or
    maximised in thread order, returned to every thread."""

    def __init__(self, n: int):
        self.barrier, self.slots = threading.Barrier(n, timeout=120), [None] * n

    def reduce_of(self, rank: int):
        def reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
            self.slots[rank] = t.detach().clone()
            self.barrier.wait()
            out = self.slots[0]
            for u in self.slots[1:]:
                out = out + u if op == "sum" else torch.maximum(out, u)
            self.barrier.wait()  # every thread has read the slots
            return out
        return reduce


def test_fits_on_two_shares_with_a_reduce_equal_the_whole_batch_fit():
    """The learn layer alone: two threads, each with its share of the noise and a summing reduce."""
    group, got = ThreadGroup(2), [None, None]
    bounds = even_bounds(B, 2)

    def rank(r: int) -> None:
        got[r] = json.loads(json.dumps(fit_all(fit_noise()[bounds[r]:bounds[r + 1]], group.reduce_of(r))))

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    check_as_one(*got)


@pytest.mark.slow  # two spawned workers: 27 s on the shared 2-core machine
def test_two_gloo_processes_fit_as_one(tmp_path):
    """The same through the runner's gloo group (``Context.all_reduce``)."""
    launch(fit_worker, str(tmp_path), world_size=2, device="cpu")
    check_as_one(*(json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)))


@pytest.mark.slow  # two dode-run jobs, one of them on two spawned workers
def test_dode_run_fits_s4s_on_two_processes(tiny_conf, tmp_path):
    """``dode-run distill=s4s world_size=2`` end to end: the fit on both ranks gives the one-process θ."""
    args = ("distill=s4s", "distill.iters=10", "distill.teacher_nfe=19", "compare_base=false", "seeds=[0]",
            "batch=7")
    assert dode_run(tiny_conf, tmp_path / "w1", *args) == 0
    assert dode_run(tiny_conf, tmp_path / "w2", *args, "world_size=2") == 0
    (l1,), (l2,) = (list((tmp_path / w).rglob("lambdas.json")) for w in ("w1", "w2"))
    p1, p2 = (json.loads(p.read_text()) for p in (l1, l2))
    assert l1.relative_to(tmp_path / "w1") == l2.relative_to(tmp_path / "w2")  # the same run folder
    assert p2["provenance"]["fit_processes"] == 2 and "fit_processes" not in p1["provenance"]
    assert p1["provenance"]["batch"] == p2["provenance"]["batch"] == 7
    t1, t2 = np.asarray(p1["theta"]), np.asarray(p2["theta"])  # float32 runs: float32 summation order
    np.testing.assert_allclose(t2, t1, rtol=0, atol=2e-6 * np.abs(t1).max())
    assert np.abs(t1).max() > 1e-3
    assert len(list((tmp_path / "w2").rglob("metrics/*.json"))) == 1
