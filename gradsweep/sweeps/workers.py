"""How many jobs a sweep runs at once, and each job's environment: its share of the cores, its
GPU, and W&B offline in the sweep's group."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence

# The most jobs `--workers auto` runs at once on a machine without GPUs.
MAX_AUTO_WORKERS = 8


def worker_env(
    base: Mapping[str, str],
    slot: int,
    workers: int,
    group: str | None,
    cpus: int | None = None,
    gpus: Sequence[str] | None = None,
    workers_per_gpu: int = 1,
) -> dict[str, str]:
    """The environment of the job in worker slot `slot` of `workers`.

    Each job gets its share of the cores as its thread count (torch reads OMP_NUM_THREADS at
    start-up): two jobs each spreading over all cores make every step many times slower. A
    smaller OMP_NUM_THREADS already set is kept. Where several GPUs are visible each slot is
    pinned to one (CUDA_VISIBLE_DEVICES), `workers_per_gpu` slots to a GPU (slots 0..k-1 on
    the first, ...); with one GPU the jobs share it.
    """
    env = dict(base)
    cpus = cpus if cpus is not None else available_cpus()
    threads = max(1, cpus // max(1, workers))
    given = base.get("OMP_NUM_THREADS", "")
    if given.isdigit() and int(given) > 0:
        threads = min(threads, int(given))
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
    gpus = list(gpus) if gpus is not None else visible_gpus(base)
    if len(gpus) > 1:
        env["CUDA_VISIBLE_DEVICES"] = gpus[(slot // max(1, workers_per_gpu)) % len(gpus)]
    if group is not None:  # the offline runner; `gradsweep agent` (None) has a server
        # No server: offline, unless the user chose another mode (disabled) themselves.
        env.setdefault("WANDB_MODE", "offline")
        env["WANDB_RUN_GROUP"] = group
    return env


def auto_workers(
    env: Mapping[str, str],
    cpus: int | None = None,
    gpus: Sequence[str] | None = None,
    workers_per_gpu: int = 1,
) -> int:
    """`--workers auto`, the default: `workers_per_gpu` jobs per visible GPU; with none, one
    per CPU core (each with one torch thread), at most MAX_AUTO_WORKERS, since each job holds
    its own copy of the data. Sweep runs are small: several single-threaded jobs finish a grid
    sooner than one job spread over every core (bench/sweep_throughput.py), and a small
    model leaves a GPU mostly idle, which several workers on it fill."""
    gpus = list(gpus) if gpus is not None else visible_gpus(env)
    if gpus:
        return len(gpus) * max(1, workers_per_gpu)
    return max(1, min(cpus if cpus is not None else available_cpus(), MAX_AUTO_WORKERS))


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def visible_gpus(env: Mapping[str, str]) -> list[str]:
    """The GPUs jobs may use: CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists.

    Asked without importing torch, which would cost the runner seconds.
    """
    if "CUDA_VISIBLE_DEVICES" in env:
        return [
            g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() not in ("", "-1")
        ]
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return []
    try:
        listing = subprocess.run(
            [smi, "-L"], capture_output=True, text=True, timeout=20, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    count = sum(1 for line in listing.splitlines() if line.startswith("GPU "))
    return [str(index) for index in range(count)]
