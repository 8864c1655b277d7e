"""`gradsweep agent SWEEP_ID`: W&B's sweep agent on warm workers (a W&B server's sweep)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from gradsweep.cli.sweep import add_override_option, add_worker_options, workers_arg


def register(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "agent",
        help="run a W&B server's sweep (`wandb sweep FILE` made it) as `wandb agent` does, "
        "on warm workers",
        description="W&B's own agent protocol (wandb.agent), each worker a warm process that "
        "runs configuration after configuration (torch, the data and W&B's service started "
        "once) instead of a `python train.py` process a run. Each run is the agent's W&B run, "
        "in outputs/sweep-<sweep id>/<run id>/. Needs a W&B server and API key; with none, "
        "`gradsweep sweep FILE` runs the same definition offline.",
    )
    parser.add_argument("sweep_id", help="ENTITY/PROJECT/SWEEP_ID, or SWEEP_ID")
    parser.add_argument("--count", type=int, help="at most this many runs, all workers together")
    parser.add_argument(
        "--workers",
        type=workers_arg,
        default=None,
        metavar="N|auto",
        help="agents at once on this machine (default auto: one per GPU, else one per CPU "
        "core, at most 8)",
    )
    parser.add_argument("--project", help="the sweep's W&B project, if not in SWEEP_ID")
    parser.add_argument("--entity", help="the sweep's W&B entity, if not in SWEEP_ID")
    parser.add_argument(
        "--program",
        type=Path,
        default=None,
        help="the training script (default ./train.py, else the checkout's)",
    )
    add_override_option(parser)
    add_worker_options(parser, process_per_run=False)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import os
    import tempfile

    from gradsweep.config import find_conf_dir
    from gradsweep.errors import SweepError
    from gradsweep.sweeps.agent import run_agents
    from gradsweep.sweeps.workers import auto_workers

    program = args.program or Path("train.py")
    if not program.is_file():
        program = find_conf_dir().parent / "train.py"
    if args.count is not None and args.count < 1:
        raise SweepError(f"--count {args.count}: give at least 1")
    workers = args.workers or auto_workers(os.environ, workers_per_gpu=args.workers_per_gpu)
    if args.count is not None:
        workers = min(workers, args.count)
    print(f"gradsweep agent {args.sweep_id}: {workers} warm worker(s)", file=sys.stderr)
    try:
        with tempfile.TemporaryDirectory(prefix="gradsweep-agent-") as reports:
            return run_agents(
                args.sweep_id,
                os.path.abspath(program),
                workers,
                count=args.count,
                overrides=args.overrides,
                project=args.project,
                entity=args.entity,
                runs_per_worker=args.runs_per_worker,
                growth_mb=args.max_growth_mb,
                workers_per_gpu=args.workers_per_gpu,
                report_dir=Path(reports),
            )
    except KeyboardInterrupt:
        print("agent interrupted", file=sys.stderr)
        return 130
