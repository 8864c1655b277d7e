"""The `gradsweep` command: tools around training runs (`python train.py` trains).

    gradsweep show activation=gelu norm=batch     # the fixed model, before any training
    gradsweep scan conf/sweep.yaml                # every configuration's gradient flow at init
    gradsweep sweep conf/sweep_ladder.yaml        # a sweep definition, no W&B server needed
    gradsweep agent ENTITY/PROJECT/SWEEP_ID       # a W&B server's sweep, on warm workers
    gradsweep summarize multirun/fix_ladder       # which change cured the vanishing
    gradsweep report --entity E --project P --group fix_ladder --dry-run

Each subcommand is a module of this package with `register(commands)`, which adds its parser
and sets `run`, and `run(args) -> exit code`. Modules import what their `run` needs when it
runs, so `gradsweep --help` stays fast. A new subcommand is a module listed in COMMANDS.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gradsweep.cli import agent, report, scan, show, summarize, sweep
from gradsweep.errors import EXIT_USER_ERROR, USER_ERRORS, hydra_user_errors

COMMANDS = (show, scan, sweep, agent, summarize, report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gradsweep",
        description="Diagnose vanishing gradients and sweep the fixes "
        "(train with `python train.py`).",
    )
    parser.add_argument("--config-dir", help="the conf/ folder (default: the checkout's)")
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    # A clear message, not a traceback, for expected failures: ours, and the overrides Hydra
    # cannot compose (its message lists the options).
    except (*USER_ERRORS, *hydra_user_errors()) as error:
        print(f"gradsweep: {error}", file=sys.stderr)
        return EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
