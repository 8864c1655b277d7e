"""`gradsweep report`: a W&B report of a sweep's gradient flow and fixes."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "report",
        help="build a W&B report of a sweep's gradient flow and fixes",
        description="A W&B report (wandb-workspaces) over a sweep's or a group's runs.",
    )
    parser.add_argument("--entity", required=True, help="the W&B entity (user or team)")
    parser.add_argument("--project", required=True, help="the W&B project")
    runs = parser.add_mutually_exclusive_group(required=True)
    runs.add_argument("--sweep", help="a W&B sweep id")
    runs.add_argument("--group", help="a W&B group (an offline sweep's name, once synced)")
    parser.add_argument("--title", help="the report's title")
    parser.add_argument(
        "--dry-run", action="store_true", help="build it with no server and print its structure"
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradsweep.sweeps.report import TITLE, Selection, build_report, describe, save_report

    selection = Selection(args.entity, args.project, sweep=args.sweep, group=args.group)
    report = build_report(selection, title=args.title or TITLE)
    if args.dry_run:
        print("\n".join(describe(report)))
        return 0
    print(save_report(report))
    return 0
