"""Where a warm run's CPU goes: one configuration run again and again in-process, as a warm
sweep worker runs it, with the CPU seconds of its phases.

    python bench/warm_run_cpu.py --root /path/with/MNIST [--runs 3] [--warm-up 2]
        [--extra OVERRIDE ...]

The process takes a warm worker's state (`sweeps.warm.start_up`: torch imported, the data
kept, the W&B writer started), runs `train.py` `--warm-up` times, then `--runs` times more,
measured, each in a fresh run folder and put back after it (`ProcessState.restore`). A
run's phases are timed with `time.process_time` (this process's CPU, every thread) by
wrapping the functions that do them; the W&B writer and its wandb service are other
processes, whose CPU comes from /proc. One thread (OMP_NUM_THREADS=1, as a sweep worker on a
2-core machine), 300 steps, W&B offline. Compare with `bench/telemetry_overhead.py`'s bare
step (the training steps alone), and run it on a quiet machine: a second busy core slows
this one's arithmetic.
"""

from __future__ import annotations

import argparse
import collections
import functools
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["WANDB_MODE"] = "offline"
sys.path.insert(0, str(ROOT))

PHASES = {
    # label: (module, function); nested phases are counted in their callers too
    "training loop (300 steps, telemetry, W&B rows, 3 validations)": (
        "gradsweep.run.training",
        "_loop",
    ),
    "  of it and the end: evaluations (validation, test)": ("gradsweep.run.training", "evaluate"),
    "end (test, verdict, pictures, summary.json)": ("gradsweep.run.training", "_conclude"),
    "  of it: the heatmap": ("gradsweep.run.pictures", "gradient_heatmap"),
    "  of it: the per-layer bars": ("gradsweep.run.pictures", "layer_bars"),
    "Hydra's compositions (two a run)": ("hydra._internal.hydra", "Hydra.compose_config"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warm-up", type=int, default=2)
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    args = parser.parse_args()

    from gradsweep.run.inprocess import run_program
    from gradsweep.sweeps.warm import start_up

    program = ROOT / "train.py"
    spent = collections.Counter()
    for label, (module, name) in PHASES.items():
        _time_calls(spent, label, module, name)
    state = start_up(str(program))
    folders = tempfile.mkdtemp(prefix="warm-run-cpu-")
    overrides = [f"data.root={args.root}", "data.source=full", "trainer.max_steps=300"]
    for run in range(args.warm_up + args.runs):
        if run == args.warm_up:
            spent.clear()
            cpu, others, wall = time.process_time(), _descendants_cpu(), time.perf_counter()
        run_program(program, [*overrides, *args.extra, f"hydra.run.dir={folders}/{run}"])
        state.restore()
    n = args.runs
    total, seconds = time.process_time() - cpu, time.perf_counter() - wall
    print(f"\nCPU seconds a warm run, mean of {n} after {args.warm_up} warm-up runs:\n")
    print("| | CPU s |\n| --- | ---: |")
    print(f"| the run, in the worker (wall {seconds / n:.2f} s) | {total / n:.2f} |")
    for label in PHASES:
        print(f"| {label} | {spent[label] / n:.3f} |")
    print(f"| the W&B writer and its wandb service | {(_descendants_cpu() - others) / n:.2f} |")


def _time_calls(spent: collections.Counter, label: str, module: str, name: str) -> None:
    """Wrap module.name (or module.Class.method) to add its CPU seconds to spent[label]."""
    import importlib

    owner = importlib.import_module(module)
    *path, attribute = name.split(".")
    for part in path:
        owner = getattr(owner, part)
    original = getattr(owner, attribute)

    @functools.wraps(original)
    def timed(*args, **kwargs):
        start = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[label] += time.process_time() - start

    setattr(owner, attribute, timed)


def _descendants_cpu() -> float:
    """User + system CPU seconds of this process's living descendants (from /proc)."""
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parents[int(entry)] = int(fields[1])
        cpu[int(entry)] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    mine, total, grew = {os.getpid()}, 0.0, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in mine and pid not in mine:
                mine.add(pid)
                total += cpu[pid]
                grew = True
    return total


if __name__ == "__main__":
    main()
