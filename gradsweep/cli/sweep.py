"""`gradsweep sweep FILE`: a W&B sweep definition run with no W&B server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradsweep.sweeps.warm import GROWTH_MB, RUNS_PER_WORKER


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sweep",
        help="run a W&B sweep definition offline (grid, random, bayes), N jobs at a time",
        description="Run the runs of a W&B sweep definition with no W&B server: W&B's engine "
        "proposes them, wandb's agent code builds each command, each run logs to W&B "
        "offline grouped by the sweep's name. Each worker is a warm process that runs "
        "configuration after configuration (torch, the data and W&B's service started once). "
        "Re-running skips finished runs.",
    )
    parser.add_argument("file", help="the sweep definition, e.g. conf/sweep.yaml")
    add_override_option(parser)
    parser.add_argument(
        "--workers",
        type=workers_arg,
        default=None,
        metavar="N|auto",
        help="jobs at once (default auto: one per GPU, else one per CPU core, at most 8)",
    )
    add_worker_options(parser)
    parser.add_argument("--count", type=int, help="start at most this many runs")
    parser.add_argument("--dir", type=Path, help="the sweep's folder (default multirun/NAME)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands, one a line; run nothing"
    )
    parser.set_defaults(run=run)


def add_override_option(parser: argparse.ArgumentParser) -> None:
    """`-o KEY=VALUE`, shared with `gradsweep agent`: overrides added to every run."""
    parser.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="a Hydra override added to every run's command, e.g. -o data.root=/data "
        "(repeatable; not a sweep parameter)",
    )


def add_worker_options(parser: argparse.ArgumentParser, process_per_run: bool = True) -> None:
    """The options of warm workers, shared with `gradsweep agent`."""
    parser.add_argument(
        "--workers-per-gpu",
        type=int,
        default=1,
        metavar="K",
        help="with GPUs, K workers on each (a small model leaves a GPU mostly idle); with "
        "several GPUs each worker is pinned to one with CUDA_VISIBLE_DEVICES (default 1)",
    )
    parser.add_argument(
        "--runs-per-worker",
        type=int,
        default=RUNS_PER_WORKER,
        metavar="N",
        help=f"a warm worker is replaced by a fresh process after N runs (default "
        f"{RUNS_PER_WORKER}), or sooner when its memory grows (--max-growth-mb)",
    )
    parser.add_argument(
        "--max-growth-mb",
        type=float,
        default=GROWTH_MB,
        metavar="MB",
        help="a warm worker is replaced by a fresh process once its resident memory has grown "
        f"by MB MiB since the end of its first run (default {GROWTH_MB:.0f})",
    )
    if not process_per_run:
        return
    parser.add_argument(
        "--process-per-run",
        action="store_true",
        help="start each run as its own `python train.py` process, as `wandb agent` does, "
        "instead of on a warm worker (slower: every run pays its start-up)",
    )


def workers_arg(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of jobs, or auto") from None


def run(args: argparse.Namespace) -> int:
    from gradsweep.sweeps.definition import grid_size, load_definition
    from gradsweep.sweeps.runner import run_sweep

    definition = load_definition(args.file)
    size = grid_size(definition)
    if args.dry_run and size is not None:
        print(f"{definition.path}: a grid of {size} runs", file=sys.stderr)
    try:
        outcome = run_sweep(
            definition,
            args.dir,
            workers=args.workers,
            count=args.count,
            overrides=args.overrides,
            dry_run=args.dry_run,
            warm=not args.process_per_run,
            runs_per_worker=args.runs_per_worker,
            growth_mb=args.max_growth_mb,
            workers_per_gpu=args.workers_per_gpu,
        )
    except KeyboardInterrupt:
        print("sweep interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if outcome.failed else 0
