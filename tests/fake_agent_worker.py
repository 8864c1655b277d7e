"""A stand-in for `python -m gradsweep.sweeps.agent` (one agent worker), for testing how
`gradsweep agent` shares --count among its workers and replaces those that retire: it
"runs" min(--count, --runs-per-worker) runs, says so in --report, logs its --count to
$GRADSWEEP_TEST_AGENT_LOG, and exits as a worker does (75: retired with runs left to do)."""

from __future__ import annotations

import argparse
import os
import sys

from gradsweep.sweeps.agent import EXIT_RETIRED


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("sweep_id")
    parser.add_argument("--program")
    parser.add_argument("--count", type=int)
    parser.add_argument("--runs-per-worker", type=int)
    parser.add_argument("--report")
    args, _ = parser.parse_known_args()
    runs = min(args.count or args.runs_per_worker, args.runs_per_worker)
    with open(os.environ["GRADSWEEP_TEST_AGENT_LOG"], "a") as log:
        log.write(f"{args.count} {os.environ['OMP_NUM_THREADS']}\n")
    with open(args.report, "w") as report:
        report.write(f"{runs}\n")
    retired = runs == args.runs_per_worker and (args.count is None or args.count > runs)
    return EXIT_RETIRED if retired else 0


if __name__ == "__main__":
    sys.exit(main())
