"""CPU time W&B spends on a logged row: gradsweep's writer process against wandb in-process.

    python bench/writer_cpu.py [--rows 800] [--interval 0.025]

A training run logs a row every step, each a few tens of milliseconds apart; on a small
machine every millisecond wandb spends on a row is taken from the training threads, at
whatever niceness. Both ways log the same rows (the 50 keys of the default 20-layer MLP's
row) at the same pace, in an offline run, and report CPU seconds (user + system) a row:

  writer     gradsweep's tracker: the rows go to the W&B writer process, which takes them in
             bursts (wandb_writer.BATCH_S); counted: the writer and its wandb-core
  in-process wandb.init + run.log in this process, as a training script would call it;
             counted: this process (its asyncio thread included) and its wandb-core
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from omegaconf import OmegaConf

from gradsweep.tracking.tracker import start_tracking
from gradsweep.tracking.wandb_writer import BATCH_S

LOGGER_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "logger" / "wandb.yaml"


def row(step: int) -> dict[str, float]:
    """A row shaped like the default MLP's: 42 parameter norms and 8 other metrics."""
    values = {
        f"grad_norm/{2 * i + 1}.{kind}": 1e-3 * (i + step)
        for i in range(21)
        for kind in ("weight", "bias")
    }
    keys = ("train/loss", "train/acc", "grad_norm/total", "grad_flow/first", "grad_flow/last")
    values |= {key: 0.5 + 1e-4 * step for key in keys}
    values |= {"grad_flow/log10_ratio": -5.0, "clip/hit": 0.0, "clip/hit_rate": 0.0}
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and its children (wandb-core), in seconds."""
    tick = os.sysconf("SC_CLK_TCK")
    pids = [pid]
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as children:
            pids += [int(child) for child in children.read().split()]
    total = 0
    for each in pids:
        with open(f"/proc/{each}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def cpu_per_row(
    log: Callable[[dict[str, float], int], None],
    drain: Callable[[], None],
    pid: int,
    rows: int,
    interval: float,
    settle: float,
) -> float:
    """CPU seconds `pid` (and its children) spend a row while `log(row, step)` is called every
    `interval` s: after 20 untimed rows and `settle` s, until `drain()` has had wandb write
    the last of them and wandb-core has had a second for its share."""
    for step in range(20):  # warm-up
        log(row(step), step)
    time.sleep(settle)
    before = cpu_seconds(pid)
    for step in range(20, 20 + rows):
        log(row(step), step)
        time.sleep(interval)
    drain()
    time.sleep(1.0)  # wandb-core's share of the last rows
    return (cpu_seconds(pid) - before) / rows


def writer(run_dir: Path, rows: int, interval: float) -> float:
    cfg = OmegaConf.load(LOGGER_CONFIG)
    cfg.mode, cfg.project = "offline", "gradsweep-bench"
    tracker = start_tracking(cfg, {"bench": "writer_cpu"}, run_dir)
    assert tracker.mode == "offline"
    pid = tracker._writer.process.pid
    spent = cpu_per_row(tracker.log, tracker.flush, pid, rows, interval, settle=2 * BATCH_S)
    tracker.finish()
    return spent


def in_process(run_dir: Path, rows: int, interval: float) -> float:
    import wandb

    run = wandb.init(
        mode="offline",
        dir=run_dir,
        project="gradsweep-bench",
        settings=wandb.Settings(silent=True, console="off"),
    )

    def log(values: dict[str, float], step: int) -> None:
        run.log(values, step=step)

    # run.log has done its Python part when it returns; nothing more to drain.
    spent = cpu_per_row(log, lambda: None, os.getpid(), rows, interval, settle=1.0)
    run.finish()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--interval", type=float, default=0.025, help="seconds between rows")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    with tempfile.TemporaryDirectory() as tmp:
        results = {
            "writer": writer(Path(tmp) / "writer", args.rows, args.interval),
            "in-process": in_process(Path(tmp) / "in-process", args.rows, args.interval),
        }
    print(
        f"{args.rows} rows of 50 keys, one every {args.interval * 1e3:.0f} ms; BATCH_S {BATCH_S:g}"
    )
    print("| way | CPU a row (ms) |")
    print("| --- | ---: |")
    for way, seconds in results.items():
        print(f"| {way} | {seconds * 1e3:.2f} |")


if __name__ == "__main__":
    main()
