"""CPU time W&B spends on a logged row: gradsweep's writer process against wandb in-process,
for the default row and for the row `telemetry.params=all` makes (the default before the
per-layer series were named by depth).

    python bench/writer_cpu.py [--rows 800] [--interval 0.025]

A training run logs a row every step, each a few tens of milliseconds apart; on a small
machine every millisecond wandb spends on a row is taken from the training threads, at
whatever niceness. The rows are the ones GradientMonitor makes for the default 20-layer MLP
(784-256x20-10) with clipping=norm, their values moved a little each step. Both ways log the
same rows at the same pace, in an offline run, and report CPU seconds (user + system) a row:

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

CONF = Path(__file__).resolve().parents[1] / "conf"
LOGGER_CONFIG = CONF / "logger" / "wandb.yaml"
TELEMETRY_CONFIG = CONF / "telemetry" / "default.yaml"


def monitor_row(params: str) -> dict[str, float]:
    """The row GradientMonitor logs for one step of the default MLP, clipping=norm."""
    import torch
    import torch.nn.functional as F

    from gradsweep.run.models import mlp
    from gradsweep.telemetry.gradients import Clipping
    from gradsweep.telemetry.monitor import GradientMonitor

    torch.manual_seed(0)
    model = mlp((1, 28, 28), 10, depth=20, width=256)
    x, y = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
    monitor = GradientMonitor(model, x[:2], clipping=Clipping("norm"), params=params)
    F.cross_entropy(model(x), y).backward()
    return monitor.step(F.cross_entropy(model(x), y).detach(), step=0)


def rows_like(template: dict[str, float]) -> Callable[[int], dict[str, float]]:
    def row(step: int) -> dict[str, float]:
        return {key: value * (1 + 1e-4 * step) for key, value in template.items()}

    return row


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
    row: Callable[[int], dict[str, float]],
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


def writer(
    run_dir: Path, row: Callable[[int], dict[str, float]], rows: int, interval: float
) -> float:
    cfg = OmegaConf.load(LOGGER_CONFIG)
    cfg.mode, cfg.project = "offline", "gradsweep-bench"
    tracker = start_tracking(cfg, {"bench": "writer_cpu"}, run_dir)
    assert tracker.mode == "offline"
    pid = tracker._writer.process.pid
    spent = cpu_per_row(row, tracker.log, tracker.flush, pid, rows, interval, settle=2 * BATCH_S)
    tracker.finish()
    return spent


def in_process(
    run_dir: Path, row: Callable[[int], dict[str, float]], rows: int, interval: float
) -> float:
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
    spent = cpu_per_row(row, log, lambda: None, os.getpid(), rows, interval, settle=1.0)
    run.finish()
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=800)
    parser.add_argument("--interval", type=float, default=0.025, help="seconds between rows")
    args = parser.parse_args()
    os.environ.setdefault("WANDB_SILENT", "true")
    params = OmegaConf.load(TELEMETRY_CONFIG).params
    shapes = {f"default (telemetry.params={params})": params, "telemetry.params=all": "all"}
    ways = {"writer": writer, "in-process": in_process}
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape, spec in shapes.items():
            template = monitor_row(spec)
            for way, measure in ways.items():
                folder = Path(tmp) / f"{way}-{spec}"
                spent = measure(folder, rows_like(template), args.rows, args.interval)
                results.append((shape, len(template), way, spent))
    print(f"{args.rows} rows, one every {args.interval * 1e3:.0f} ms; BATCH_S {BATCH_S:g}")
    print("| row | keys | way | CPU a row (ms) |")
    print("| --- | ---: | --- | ---: |")
    for shape, keys, way, seconds in results:
        print(f"| {shape} | {keys} | {way} | {seconds * 1e3:.2f} |")


if __name__ == "__main__":
    main()
