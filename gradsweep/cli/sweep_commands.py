"""The `gradsweep sweep`, `summarize` and `report` subcommands (registered by cli.py).

gradsweep sweep conf/sweep_ladder.yaml                  # the sweep, no W&B server needed
gradsweep summarize multirun/fix_ladder --format md     # which change cured the vanishing
gradsweep report --entity E --project P --group fix_ladder --dry-run

Each handler imports its module when it runs, so `gradsweep --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(commands: argparse._SubParsersAction) -> None:
    """Register the three subcommands on cli.py's subparsers."""
    sweep = commands.add_parser(
        "sweep",
        help="run a W&B sweep definition offline (grid, random, bayes), N jobs at a time",
        description="Run the runs of a W&B sweep definition with no W&B server: W&B's engine "
        "proposes them, wandb's agent code builds each command, each run logs to W&B "
        "offline grouped by the sweep's name. Re-running skips finished runs.",
    )
    sweep.add_argument("file", help="the sweep definition, e.g. conf/sweep.yaml")
    sweep.add_argument(
        "-o",
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="overrides",
        help="a Hydra override added to every run's command, e.g. -o data.root=/data "
        "(repeatable; not a sweep parameter)",
    )
    sweep.add_argument(
        "--workers",
        type=_workers,
        default=None,
        metavar="N|auto",
        help="jobs at once (default auto: one per GPU, else one per CPU core, at most 8)",
    )
    sweep.add_argument("--count", type=int, help="start at most this many runs")
    sweep.add_argument("--dir", type=Path, help="the sweep's folder (default multirun/NAME)")
    sweep.add_argument(
        "--dry-run", action="store_true", help="print the commands, one a line; run nothing"
    )
    sweep.set_defaults(run=_sweep)

    summarize = commands.add_parser(
        "summarize",
        help="compare the runs of a sweep and name the change that cured the vanishing",
        description="One row per configuration (mean and spread over seeds), sorted by "
        "val/acc, then the single change that first turns a vanishing verdict healthy.",
    )
    summarize.add_argument(
        "path", help="a multirun folder, an offline sweep's folder, or a folder of W&B runs"
    )
    summarize.add_argument(
        "--format", default="table", choices=("table", "csv", "json", "md"), help="output"
    )
    summarize.set_defaults(run=_summarize)

    report = commands.add_parser(
        "report",
        help="build a W&B report of a sweep's gradient flow and fixes",
        description="A W&B report (wandb-workspaces) over a sweep's or a group's runs.",
    )
    report.add_argument("--entity", required=True, help="the W&B entity (user or team)")
    report.add_argument("--project", required=True, help="the W&B project")
    runs = report.add_mutually_exclusive_group(required=True)
    runs.add_argument("--sweep", help="a W&B sweep id")
    runs.add_argument("--group", help="a W&B group (an offline sweep's name, once synced)")
    report.add_argument("--title", help="the report's title")
    report.add_argument(
        "--dry-run", action="store_true", help="build it with no server and print its structure"
    )
    report.set_defaults(run=_report)


def _workers(text: str) -> int | None:
    if text == "auto":
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of jobs, or auto") from None


def _sweep(args: argparse.Namespace) -> int:
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


def _summarize(args: argparse.Namespace) -> int:
    from gradsweep.sweeps.summarize import summarize

    text, comparison = summarize(args.path, args.format)
    sys.stdout.write(text)
    if args.format == "csv":  # the rows alone on stdout; the conclusion for people
        from gradsweep.sweeps.summarize import conclusions

        for line in conclusions(comparison):
            print(line, file=sys.stderr)
    return 0


def _report(args: argparse.Namespace) -> int:
    from gradsweep.sweeps.report import TITLE, Selection, build_report, describe, save_report

    selection = Selection(args.entity, args.project, sweep=args.sweep, group=args.group)
    report = build_report(selection, title=args.title or TITLE)
    if args.dry_run:
        print("\n".join(describe(report)))
        return 0
    print(save_report(report))
    return 0
