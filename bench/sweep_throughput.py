"""Runs per hour for a slice of conf/sweep.yaml, three ways, on this machine.

    python bench/sweep_throughput.py --root /path/with/MNIST [--count 24]

The same runs (the first `--count` of the grid, 300 steps each, W&B offline) go:
  multirun      `python train.py -m ...`: Hydra's basic launcher, every job in one process
  runner        `gradsweep sweep conf/sweep.yaml`: its default, --workers auto (one job per
                CPU core here), worker processes at once
  agent-style   one `python train.py ...` process per run, one after another, as
                `wandb agent` starts them (commands from `gradsweep sweep --dry-run`)
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradsweep.sweeps.workers import auto_workers  # noqa: E402


def timed(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="folder holding MNIST/raw/")
    parser.add_argument("--count", type=int, default=24)
    args = parser.parse_args()
    env = {**os.environ, "WANDB_MODE": "offline"}
    data = [f"data.root={args.root}"]
    with tempfile.TemporaryDirectory() as tmp:
        dry = subprocess.run(
            [
                sys.executable,
                "-m",
                "gradsweep.cli.main",
                "sweep",
                "conf/sweep.yaml",
                "--dry-run",
                "--count",
                str(args.count),
                "--dir",
                f"{tmp}/plan",
                *(f"-o={o}" for o in data),
            ],
            cwd=ROOT,
            env=env,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.splitlines()
        commands = [shlex.split(line) for line in dry]
        # The same configurations as one multirun: each parameter's values, comma-joined.
        overrides = [
            dict(a.split("=", 1) for a in c[3:] if not a.startswith("hydra.")) for c in commands
        ]
        keys = list(overrides[0])
        sweep_args = [f"{k}={','.join(dict.fromkeys(o[k] for o in overrides))}" for k in keys]

        seconds = {
            "multirun (one process)": timed(
                [sys.executable, "train.py", "-m", *sweep_args, f"hydra.sweep.dir={tmp}/m"], env
            ),
            f"runner, --workers auto ({auto_workers(env)} here)": timed(
                [
                    sys.executable,
                    "-m",
                    "gradsweep.cli.main",
                    "sweep",
                    "conf/sweep.yaml",
                    "--count",
                    str(args.count),
                    "--dir",
                    f"{tmp}/r",
                    *(f"-o={o}" for o in data),
                ],
                env,
            ),
            "one process per run (agent-style)": sum(
                timed([*c[1:-1], f"hydra.run.dir={tmp}/a/{i}"], env) for i, c in enumerate(commands)
            ),
        }
        runs = len(commands)
    base = seconds["one process per run (agent-style)"]
    print(f"{runs} runs of conf/sweep.yaml, 300 steps each, W&B offline")
    print("| way | wall (s) | runs/hour | vs agent-style |")
    print("| --- | ---: | ---: | ---: |")
    for way, s in seconds.items():
        print(f"| {way} | {s:.0f} | {runs * 3600 / s:.0f} | {base / s:.2f}x |")


if __name__ == "__main__":
    main()
