"""`gradsweep summarize PATH`: compare a sweep's runs and name the change that cured them."""

from __future__ import annotations

import argparse
import sys


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "summarize",
        help="compare the runs of a sweep and name the change that cured the vanishing",
        description="One row per configuration (mean and spread over seeds), sorted by "
        "val/acc, then the single change that first turns a vanishing verdict healthy.",
    )
    parser.add_argument(
        "path", help="a multirun folder, an offline sweep's folder, or a folder of W&B runs"
    )
    parser.add_argument(
        "--format", default="table", choices=("table", "csv", "json", "md"), help="output"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradsweep.sweeps.summarize import summarize

    text, comparison = summarize(args.path, args.format)
    sys.stdout.write(text)
    if args.format == "csv":  # the rows alone on stdout; the conclusion for people
        from gradsweep.sweeps.summarize import conclusions

        for line in conclusions(comparison):
            print(line, file=sys.stderr)
    return 0
