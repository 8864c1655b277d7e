"""`gradsweep scan`: the gradient flow of every configuration of a grid, at initialization."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "scan",
        help="gradient flow of every configuration of a grid at initialization, in seconds",
        description="Build each configuration of a sweep definition (default: conf/sweep.yaml) "
        "or of a Hydra-style grid (activation=sigmoid,relu init=default,kaiming), run a few "
        "forward/backward passes at initialization and predict its verdict.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="SWEEP_FILE | OVERRIDE",
        help="a sweep definition (.yaml) and/or Hydra overrides; a=x,y sweeps a key",
    )
    parser.add_argument(
        "--format", choices=("table", "csv", "json", "md"), default="table", help="stdout format"
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds per configuration, from its seed= (3)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=1,
        help="forward/backward passes per seed; the first is training's step 0 (1)",
    )
    parser.add_argument(
        "--prune",
        metavar="OUT",
        help="write the configurations not predicted `vanishing` to OUT, one line of "
        "train.py overrides each (`xargs -L1 python train.py < OUT`)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the heatmap, scan.json and the W&B run "
        "(default outputs/scan/<date>/<time>)",
    )
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from gradsweep.scan import report as scan_report
    from gradsweep.scan.grid import load_grid
    from gradsweep.scan.scanner import scan

    grid = load_grid(args.inputs, args.config_dir)
    result = scan(grid, seeds=args.seeds, steps=args.steps, conf_dir=args.config_dir)
    out = Path(args.out) if args.out else Path("outputs/scan") / time.strftime("%Y-%m-%d/%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    records = scan_report.records(result)
    scan_report.write_json(out / "scan.json", records)
    picture = scan_report.heatmap(result, out / "scan_heatmap.png")
    if args.prune:
        kept = scan_report.write_prune(result, Path(args.prune))
        log.info(
            "scan: kept %d of %d configurations in %s: `xargs -L1 python train.py < %s`",
            kept,
            len(result.rows),
            args.prune,
            args.prune,
        )
    scan_report.log_to_wandb(result, records, picture, out)
    counts = ", ".join(f"{n} {v}" for v, n in scan_report.verdict_counts(result).items())
    log.info(
        "scan: %d configurations in %.1f s (%d measured: %.1f s); %s; heatmap %s",
        len(result.rows),
        result.seconds["total"],
        result.measured,
        result.seconds["measure"],
        counts,
        picture,
    )
    sys.stdout.write(scan_report.render(records, args.format))
    sys.stdout.flush()
    return 0
