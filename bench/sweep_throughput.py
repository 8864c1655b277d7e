"""Runs per hour for the first runs of conf/sweep.yaml, three ways, against the floor.

    python bench/sweep_throughput.py --root /path/with/MNIST [--count 24] [--workers 2]
        [--ways floor,runner,process,multirun] [--tree PATH] [--rounds 1]

The same runs (the first `--count` of the grid, 300 steps each on real MNIST, W&B offline):

  floor      the same configurations' 300 training steps alone (forward, backward, SGD step: no
             telemetry, evaluation, W&B, pictures or files), `--workers` processes at once, each
             at the thread count the runner gives its jobs. Model, optimizer and batches are
             built as a run builds them, outside the timing. The least these runs can take here.
  runner     `gradsweep sweep conf/sweep.yaml --workers W`, the runner's default: warm workers
             (before them, in an older `--tree`: a `python train.py` process per run)
  process    the same with `--process-per-run`: a `python train.py` process per run, as
             `wandb agent` starts them
  multirun   `python train.py -m ...`: Hydra's basic launcher, every job in one process, one
             after another

Then each run's fixed cost, from the timestamps its folder holds (its sweep_run.json's mtime
is when the runner saw it end, `seconds` before that it started; train.log's lines; the
summary.json's mtime), median over the runs: start (interpreter, imports, Hydra, data) to the
data being loaded, then to the first step (model, fixes, W&B run), the training (the steps
and their evaluations), the end (test, verdict, pictures, summary.json), and W&B's finish and
the process's exit.

`--rounds N` runs every way N times, round after round, and reports each way's median, and its
ratio to the floor as the median (and range) of the per-round ratios: a VM's speed drifts by
10-20% over the minutes a round takes, and a ratio to the floor of the same round moves less.

`--tree PATH` runs the commands of another checkout (a `git worktree` of an older commit, for
before/after figures): its train.py, its gradsweep, its runner (one from before warm workers
knows no `process`: its `runner` is a process per run). The load average is printed before
and after each way. CPU seconds a run: of every process a way started (the runner, its
workers or train.py processes, their W&B writers and wandb services), user and system, which
a busy machine changes less than the wall time; the floor's, of its timed steps.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ways", default="floor,runner,process,multirun")
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout to measure")
    parser.add_argument("--rounds", type=int, default=1, help="every way this many times")
    parser.add_argument("--floor-worker", help=argparse.SUPPRESS)  # i/n: one floor process
    args = parser.parse_args()
    tree = args.tree.resolve()
    if args.floor_worker:
        return floor_worker(tree, args.floor_worker)
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONPATH": str(tree)}
    threads = max(1, (os.cpu_count() or 1) // args.workers)
    print(f"tree {tree}; {args.count} runs of conf/sweep.yaml, {STEPS} steps, W&B offline")
    with tempfile.TemporaryDirectory() as tmp:
        commands = planned_commands(tree, env, args.root, args.count, tmp)
        warm_up(tree, env, commands[0])
        seconds: dict[str, list[float]] = collections.defaultdict(list)
        cpu: dict[str, list[float]] = collections.defaultdict(list)
        breakdowns: dict[str, dict[str, float]] = {}
        for round_ in range(args.rounds):
            for way in args.ways.split(","):
                load = os.getloadavg()[0]
                used = _children_cpu()
                here = f"{tmp}/{round_}"
                if way == "floor":
                    wall, steps_cpu = floor(tree, env, commands, args.workers, threads, tmp)
                    cpu[way].append(steps_cpu)
                elif way in ("runner", "process"):
                    folder = Path(here) / way
                    extra = ["--process-per-run"] if way == "process" else []
                    wall = timed(
                        [*runner(args, folder), *extra, "-o", f"data.root={args.root}"], tree, env
                    )
                    breakdowns[way] = breakdown(folder)  # the last round's
                elif way == "multirun":
                    grid = [*multirun_args(commands), f"hydra.sweep.dir={here}/m"]
                    wall = timed([sys.executable, "train.py", "-m", *grid], tree, env)
                else:
                    raise SystemExit(f"unknown way {way!r}")
                seconds[way].append(wall)
                if way != "floor":
                    cpu[way].append(_children_cpu() - used)
                print(
                    f"  round {round_ + 1}, {way}: {wall:.1f} s (load average {load:.2f} before, "
                    f"{os.getloadavg()[0]:.2f} after)",
                    flush=True,
                )
    report(seconds, cpu, breakdowns, len(commands), args.workers, threads)


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished descendants so far."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def runner(args: argparse.Namespace, folder: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gradsweep.cli.main",
        "sweep",
        "conf/sweep.yaml",
        "--count",
        str(args.count),
        "--workers",
        str(args.workers),
        "--dir",
        str(folder),
    ]


def planned_commands(tree: Path, env: dict, root: str, count: int, tmp: str) -> list[list[str]]:
    dry = subprocess.run(
        [
            *(sys.executable, "-m", "gradsweep.cli.main", "sweep", "conf/sweep.yaml"),
            *("--dry-run", "--count", str(count), "--dir", f"{tmp}/plan"),
            *("-o", f"data.root={root}"),
        ],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.splitlines()
    return [shlex.split(line) for line in dry]


def overrides(command: list[str]) -> list[str]:
    """A planned command's Hydra overrides, less its run folder."""
    return [a for a in command[3:] if not a.startswith("hydra.run.dir=")]


def multirun_args(commands: list[list[str]]) -> list[str]:
    """The same configurations as one multirun: each parameter's values, comma-joined."""
    runs = [dict(a.split("=", 1) for a in overrides(c)) for c in commands]
    return [f"{k}={','.join(dict.fromkeys(r[k] for r in runs))}" for k in runs[0]]


def warm_up(tree: Path, env: dict, command: list[str]) -> None:
    """One short run first, so that no way pays for decoding the data into its cache."""
    subprocess.run(
        [
            *(sys.executable, "train.py", *overrides(command), "trainer.max_steps=1"),
            *("logger=none", "hydra.run.dir=" + tempfile.mkdtemp()),
        ],
        cwd=tree,
        env=env,
        check=True,
        capture_output=True,
    )


def timed(command: list[str], tree: Path, env: dict) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def floor(
    tree: Path, env: dict, commands: list, workers: int, threads: int, tmp: str
) -> tuple[float, float]:
    """The slowest floor process's total of timed training steps, and the CPU seconds of all
    the timed steps."""
    plan = Path(tmp) / "floor.json"
    plan.write_text(json.dumps([overrides(c) for c in commands]))
    procs = [
        subprocess.Popen(
            [
                *(sys.executable, __file__, "--root", "-", "--tree", str(tree)),
                *("--floor-worker", f"{i}/{workers}/{plan}"),
            ],
            cwd=tree,
            env={**env, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)},
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(workers)
    ]
    results = [proc.communicate()[0].split()[-2:] for proc in procs]
    return max(float(wall) for wall, _ in results), sum(float(cpu) for _, cpu in results)


def floor_worker(tree: Path, spec: str) -> None:
    """Train this worker's share of the configurations, timing only the steps."""
    index, workers, plan = spec.split("/", 2)
    sys.path.insert(0, str(tree))
    import torch
    import torch.nn.functional as F

    from gradsweep.config import compose
    from gradsweep.data.batches import Batches
    from gradsweep.data.load import load_data
    from gradsweep.run.build import build_model, pick_device, stream_seed
    from gradsweep.run.optimizers import create_optimizer

    configs = json.loads(Path(plan).read_text())[int(index) :: int(workers)]
    total = cpu = 0.0
    data = None
    for run_overrides in configs:
        cfg = compose([*run_overrides, "logger=none"])
        device = pick_device(cfg.trainer.device)
        data = data or load_data(cfg.data, device)
        model = build_model(cfg, data, device)
        optimizer = create_optimizer(cfg.optimizer, model.parameters())
        generator = torch.Generator(device=device).manual_seed(stream_seed(cfg.seed, "data"))
        stream = iter(Batches(data, cfg.data.batch_size, generator))
        model.train()
        start, start_cpu = time.perf_counter(), time.process_time()
        for _ in range(STEPS):
            x, y = next(stream)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        total += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    print(total, cpu)


def _stamp(line: str) -> float | None:
    """The time of a Hydra log line ("[2026-12-02 10:18:06,756][...")."""
    if not line.startswith("[20"):
        return None
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


PHASES = (
    "start to data loaded (interpreter, imports, Hydra, data)",
    "to the first step (model, fixes, W&B run ready)",
    "training (300 steps, 3 evaluations)",
    "end (test, verdict, pictures, summary.json)",
    "W&B finish, exit, the runner's notice",
)


def breakdown(sweep_dir: Path) -> dict[str, float]:
    """Median seconds of each phase over the runs in sweep_dir (see the module's doc)."""
    phases: list[list[float]] = [[] for _ in PHASES]
    for record_path in sorted(sweep_dir.glob("*/sweep_run.json")):
        folder = record_path.parent
        record = json.loads(record_path.read_text())
        end = record_path.stat().st_mtime
        start = end - record["seconds"]
        lines = (folder / "train.log").read_text().splitlines()
        stamped = [(s, line) for line in lines if (s := _stamp(line)) is not None]
        data = stamped[0][0]
        first_step = next(s for s, line in stamped if "training steps" in line)
        trained = next(s for s, line in stamped if "] - trained in" in line)
        summary = (folder / "summary.json").stat().st_mtime
        marks = [start, data, first_step, trained, summary, end]
        for phase, (a, b) in enumerate(itertools.pairwise(marks)):
            phases[phase].append(b - a)
    return {name: statistics.median(values) for name, values in zip(PHASES, phases, strict=True)}


def report(
    seconds: dict[str, list[float]],
    cpu: dict[str, list[float]],
    breakdowns: dict[str, dict[str, float]],
    runs: int,
    workers: int,
    threads: int,
) -> None:
    names = {
        "floor": f"floor: the training steps alone, {workers} processes x {threads} thread(s)",
        "runner": f"`gradsweep sweep` ({workers} workers x {threads} thread(s))",
        "process": f"`gradsweep sweep --process-per-run` ({workers} x {threads} thread(s))",
        "multirun": "`python train.py -m` (Hydra's basic launcher, one process)",
    }
    base = seconds.get("floor")
    rounds = len(next(iter(seconds.values())))
    median = statistics.median
    print(f"\n{runs} runs of conf/sweep.yaml, {STEPS} steps each, W&B offline; ", end="")
    print(f"{rounds} round(s): medians, and the range of the per-round ratios\n")
    print("| way | wall (s) | s a run | runs/hour | x floor | CPU s a run |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for way, walls in seconds.items():
        s = median(walls)
        ratio = ""
        if base:
            ratios = [w / b for w, b in zip(walls, base, strict=True)]
            ratio = f"{median(ratios):.2f}x"
            if rounds > 1:
                ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
        print(
            f"| {names[way]} | {s:.1f} | {s / runs:.2f} | {runs * 3600 / s:.0f} | {ratio} | "
            f"{median(cpu[way]) / runs:.2f} |"
        )
    if breakdowns:
        ways = list(breakdowns)
        print("\nMedian seconds of a run's phases, in its worker's slot:\n")
        print("| phase | " + " | ".join(ways) + " |")
        print("| --- |" + " ---: |" * len(ways))
        for name in PHASES:
            print(f"| {name} | " + " | ".join(f"{breakdowns[w][name]:.2f}" for w in ways) + " |")
        totals = " | ".join(f"**{sum(breakdowns[w].values()):.2f}**" for w in ways)
        print(f"| a run, start to end | {totals} |")


if __name__ == "__main__":
    main()
