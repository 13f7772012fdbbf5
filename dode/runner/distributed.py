"""Many processes for ``dode-run``: one machine (spawned workers) or a cluster (torchrun, SLURM).

Every process runs the same stage driver with its own :class:`Context` (rank, world size, device);
generation, feature extraction and the gradient fits (S4S, S4S-Alt, LD3) are split evenly over the
ranks; rank 0 fits the other corrections, merges and scores.
Images go through the run folders (λ JSON, shards, manifests); the processes exchange only small
things directly: rank 0's list of shards to make (:meth:`Context.broadcast`), the feature
moments of the metric (:meth:`Context.all_reduce_sum`) and the losses and gradients of a
data-parallel fit (:meth:`Context.all_reduce`).

* ``launcher=local`` (default): ``world_size`` workers are spawned on this machine with
  :mod:`torch.multiprocessing` and rendezvous on ``127.0.0.1`` (NCCL when there is a GPU per worker,
  gloo on CPU, one CPU thread each unless ``launcher.threads_per_worker`` says otherwise). When the process was itself
  started by ``torchrun`` (``RANK``/``WORLD_SIZE`` in the environment) it joins that group instead.
* ``launcher=slurm``: the processes are SLURM tasks (``srun`` or ``hydra/launcher=submitit_slurm``
  with ``tasks_per_node``); rank and world size come from ``SLURM_PROCID``/``SLURM_NTASKS`` and the
  rendezvous is the first node of the allocation.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.distributed as dist

from dode.errors import UserError
from dode.runner.store import disk_error


class WorkerDied(UserError):
    """A worker process was killed (or exited) mid-run; everything finished is kept, a rerun resumes."""


@dataclass
class Context:
    """Where this process stands: its rank among ``world`` processes and its torch device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    distributed: bool = False  # a torch.distributed process group is initialised

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if not self.distributed:
            return
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.device(self.device).index or 0])
        else:
            dist.barrier()

    def _comm_device(self) -> torch.device:
        """Where collective tensors live: this process's GPU under NCCL, else the CPU."""
        return torch.device(self.device) if dist.get_backend() == "nccl" else torch.device("cpu")

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` (a small picklable value) on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src, device=self._comm_device())
        return box[0]

    def all_reduce_sum(self, values: np.ndarray) -> np.ndarray:
        """The element-wise sum over the ranks of a float64 array (a copy; this array when alone)."""
        values = np.ascontiguousarray(values, dtype=np.float64)
        if not self.distributed:
            return values
        t = torch.from_numpy(values.copy()).to(self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu().numpy()

    def all_reduce(self, t: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``t`` summed (``op="sum"``) or maximised (``"max"``) element-wise over the ranks, as a new
        tensor of its dtype and device (``t`` itself when alone): the ``reduce`` of a data-parallel fit."""
        if not self.distributed:
            return t
        u = t.detach().to(self._comm_device(), copy=True)
        dist.all_reduce(u, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return u.to(t.device)

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()
            self.distributed = False


def pick_device(requested: str, local_rank: int) -> str:
    """``auto``: this worker's GPU (``cuda:<local_rank mod #GPUs>``) when there is one, else CPU."""
    if requested in (None, "", "auto"):
        if torch.cuda.is_available():
            return f"cuda:{local_rank % torch.cuda.device_count()}"
        return "cpu"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={requested} was requested but torch sees no CUDA device; use device=cpu or auto")
    return requested


def _backend(device: str, requested: str | None, world: int, local_world: int) -> str:
    """NCCL when every process of a machine has a GPU of its own, else gloo (the processes only
    meet at barriers, so gloo also serves GPU processes sharing one device)."""
    if requested and requested != "auto":
        return requested
    if device.startswith("cuda") and local_world <= torch.cuda.device_count():
        return "nccl"
    return "gloo"


def _init(rank: int, world: int, local_rank: int, device: str, backend: str | None, init_method: str,
          timeout_min: float, local_world: int | None = None) -> Context:
    dev = pick_device(device, local_rank)
    if dev.startswith("cuda"):
        torch.cuda.set_device(torch.device(dev))
    ctx = Context(rank, world, local_rank, dev)
    if world > 1:
        dist.init_process_group(_backend(dev, backend, world, local_world or _local_world()), init_method=init_method,
                                rank=rank, world_size=world, timeout=datetime.timedelta(minutes=timeout_min))
        ctx.distributed = True
    return ctx


def _local_world() -> int:
    """Processes on this machine when torchrun or SLURM started them (``4`` or SLURM's ``4(x2)``)."""
    for key in ("LOCAL_WORLD_SIZE", "SLURM_NTASKS_PER_NODE"):
        try:
            return int(os.environ[key].split("(")[0].split(",")[0])
        except (KeyError, ValueError):
            continue
    return 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def under_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def _slurm_env() -> tuple[int, int, int, str, int]:
    """(rank, world, local rank, master address, master port) of this SLURM task."""
    try:
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
    except KeyError:
        raise UserError("launcher=slurm needs SLURM_PROCID and SLURM_NTASKS: run under srun or "
                        "hydra/launcher=submitit_slurm (or use launcher=local)") from None
    local = int(os.environ.get("SLURM_LOCALID", 0))
    nodes = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST") or "127.0.0.1"
    try:
        host = subprocess.run(["scontrol", "show", "hostnames", nodes], capture_output=True, text=True,
                              check=True).stdout.split()[0]
    except (OSError, subprocess.CalledProcessError, IndexError):
        host = nodes.split(",")[0].split("[")[0]
    port = int(os.environ.get("MASTER_PORT", 20000 + int(os.environ.get("SLURM_JOB_ID", 0)) % 20000))
    return rank, world, local, os.environ.get("MASTER_ADDR", host), port


def _worker(index: int, fn: Callable, payload: Any, world: int, port: int, device: str, backend: str | None,
            threads: int, timeout_min: float, errors) -> None:
    try:
        ctx = _init(index, world, index, device, backend, f"tcp://127.0.0.1:{port}", timeout_min, local_world=world)
        n = _threads(threads, ctx.device, world)
        if n:
            torch.set_num_threads(n)
        try:
            fn(ctx, payload)
        finally:
            ctx.close()
    except UserError as e:  # reported by the parent, without a traceback
        errors.put(f"{type(e).__name__}: {e}" if type(e).__name__ != "UserError" else str(e))
        sys.exit(2)
    except OSError as e:  # a full or read-only disk: reported by the parent in one line
        err = disk_error(e)
        if err is None:
            raise
        errors.put(str(err))
        sys.exit(2)


def launch(fn: Callable[[Context, Any], Any], payload: Any, world_size: int = 1, launcher: str = "local",
           device: str = "auto", backend: str | None = "auto", threads_per_worker: int | None = None,
           timeout_min: float = 600.0) -> Any:
    """Run ``fn(ctx, payload)`` in every process of the group; returns rank 0's result where rank 0
    is this process (one process, torchrun, SLURM), otherwise None (spawned workers)."""
    if launcher == "slurm":
        rank, world, local, host, port = _slurm_env()
        ctx = _init(rank, world, local, device, backend, f"tcp://{host}:{port}", timeout_min)
    elif under_torchrun():
        ctx = _init(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0)),
                    device, backend, "env://", timeout_min)
    elif launcher != "local":
        raise UserError(f"unknown launcher {launcher!r}; valid: local, slurm")
    elif world_size > 1:
        return _spawn(fn, payload, world_size, device, backend, threads_per_worker, timeout_min)
    else:
        ctx = Context(device=pick_device(device, 0))
    threads = _threads(threads_per_worker, ctx.device, 1)
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return fn(ctx, payload)
    finally:
        ctx.close()
        torch.set_num_threads(before)


def _threads(requested: int | None, device: str, world: int) -> int | None:
    """CPU threads of one process: as requested, else one per process on CPU (small networks run
    fastest single-threaded, and threads of several processes would fight over the cores; use
    ``world_size`` to use more cores), else torch's default (GPU)."""
    if requested:
        return int(requested)
    return 1 if device == "cpu" else None


def _spawn(fn, payload, world: int, device: str, backend, threads: int | None, timeout_min: float) -> None:
    import torch.multiprocessing as mp

    errors = mp.get_context("spawn").SimpleQueue()
    with omp_threads(_threads(threads, pick_device(device, 0), world)):
        procs = mp.start_processes(_worker, args=(fn, payload, world, free_port(), device, backend, threads,
                                                  timeout_min, errors), nprocs=world, join=False,
                                   start_method="spawn")
    try:
        while not procs.join():
            pass
    except mp.ProcessExitedException as e:
        if not errors.empty():
            raise UserError(errors.get()) from None
        raise WorkerDied(f"worker {e.error_index} of {world} died ({_exit_reason(e)}); the other workers were "
                         "stopped. Everything finished so far is kept: rerun the same command to resume.") from None
    except mp.ProcessRaisedException as e:
        raise RuntimeError(f"worker {e.error_index} of {world} failed:\n{e.msg}") from None
    except KeyboardInterrupt:
        stop_workers(procs.processes)
        raise


@contextlib.contextmanager
def omp_threads(n: int | None) -> Iterator[None]:
    """``OMP_NUM_THREADS=n`` in the environment the workers are spawned with, unless it is set (each
    worker's OpenMP pool then starts at its share of the cores instead of all of them)."""
    if n is None or "OMP_NUM_THREADS" in os.environ:
        yield
        return
    os.environ["OMP_NUM_THREADS"] = str(n)
    try:
        yield
    finally:
        del os.environ["OMP_NUM_THREADS"]


def stop_workers(processes: list, grace_s: float = 5.0) -> None:
    """Stop spawned workers after Ctrl-C. The terminal sends SIGINT to every process of its group, so
    the workers end on their own first (their KeyboardInterrupt), releasing what they hold; killing
    them at once would leave their semaphores (tqdm's lock) to the resource tracker, which warns about
    "leaked semaphore objects". A worker still alive after ``grace_s`` (the SIGINT reached this process
    alone) gets SIGINT, and after as long again SIGTERM."""
    for sig in (None, signal.SIGINT, signal.SIGTERM):
        alive = [p for p in processes if p.is_alive()]
        if not alive:
            return
        if sig is not None:
            for p in alive:
                os.kill(p.pid, sig)
        deadline = time.monotonic() + grace_s
        for p in alive:
            p.join(max(0.0, deadline - time.monotonic()))
    for p in processes:
        p.join()


def _exit_reason(e) -> str:
    if getattr(e, "signal_name", None):
        return f"killed by {e.signal_name}"
    return f"exit code {e.exit_code}"
