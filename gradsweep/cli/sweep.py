"""`gradsweep sweep FILE`: a W&B sweep definition run with no W&B server."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "sweep",
        help="run a W&B sweep definition offline (grid, random, bayes), N jobs at a time",
        description="Run the runs of a W&B sweep definition with no W&B server: W&B's engine "
        "proposes them, wandb's agent code builds each command, each run logs to W&B "
        "offline grouped by the sweep's name. Re-running skips finished runs.",
    )
    parser.add_argument("file", help="the sweep definition, e.g. conf/sweep.yaml")
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
    parser.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N|auto",
        help="jobs at once (default auto: one per GPU, else one per CPU core, at most 8)",
    )
    parser.add_argument("--count", type=int, help="start at most this many runs")
    parser.add_argument("--dir", type=Path, help="the sweep's folder (default multirun/NAME)")
    parser.add_argument(
        "--dry-run", action="store_true", help="print the commands, one a line; run nothing"
    )
    parser.set_defaults(run=run)


def _workers(text: str) -> int | None:
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
        )
    except KeyboardInterrupt:
        print("sweep interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 1 if outcome.failed else 0
