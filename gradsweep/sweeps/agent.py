"""`gradsweep agent SWEEP_ID`: W&B's sweep agent on warm workers, for sweeps on a W&B server.

`wandb agent` starts a `python train.py` process per run, which pays its start-up every time.
Here each worker is a warm worker (`sweeps.warm.JobHost`) that runs wandb's own in-process
agent, `wandb.agent(sweep_id, function=...)` (wandb/agents/pyagent.py): the agent asks the
server for runs, and for each sets the run's ids in the environment (WANDB_SWEEP_ID,
WANDB_RUN_ID, WANDB_SWEEP_PARAM_PATH) and calls the function, in a thread of its own.

The function does not train in that thread: stop signals reach only the main thread, where a
run's checkpoint-on-SIGTERM handler must sit. It hands the run to the main thread (the ids,
and the sweep's parameters as Hydra overrides, `key=value` rendered as `wandb agent` renders
`${args_no_hyphens}`) and waits for its exit status; a non-zero one is an error to the agent,
which marks the run failed. The run is `train.py`'s own, as for `wandb agent`: the folder
`outputs/sweep-<sweep>/<run>`, the W&B run the server made (its id, its sweep; its config
holds the same parameters as summary.json), a checkpoint a requeued run resumes from.

    gradsweep agent ENTITY/PROJECT/SWEEP_ID [--count N] [--workers N] [-o KEY=VALUE ...]

`--workers N` runs N agents at once on this machine (each a worker with its share of the cores,
or of the GPUs); agents on other machines join the same sweep, as W&B intends. `--count N`
runs at most N runs in all, shared among the workers. A worker retires after
`--runs-per-worker` runs (its agent then ends) and a fresh one takes its place.
"""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradsweep.errors import SweepError
from gradsweep.sweeps.definition import agent_args
from gradsweep.sweeps.warm import GROWTH_MB, RUNS_PER_WORKER, JobHost

# What the agent sets for each run, passed on to the run's main thread.
RUN_ENV = ("WANDB_SWEEP_ID", "WANDB_RUN_ID", "WANDB_SWEEP_PARAM_PATH", "WANDB_DIR")
RUN_ENV_TOO = ("WANDB_PROJECT", "WANDB_ENTITY")
# A worker's exit status when it retires with runs left to do: the parent starts another.
EXIT_RETIRED = 75


class RunFailed(Exception):
    """A run ended with a non-zero exit status: the agent marks it failed."""


def serve_agent(
    sweep_id: str,
    program: str,
    *,
    count: int | None = None,
    overrides: Sequence[str] = (),
    project: str | None = None,
    entity: str | None = None,
    runs_per_worker: int = RUNS_PER_WORKER,
    growth_mb: float = GROWTH_MB,
) -> tuple[int, int]:
    """Run wandb's agent here until the sweep, `count` or this worker is done: (exit status,
    runs run). The status is EXIT_RETIRED when the worker retired early."""
    import wandb
    from wandb.agents import pyagent
    from wandb.sdk.launch.sweeps.utils import parse_sweep_id

    # What the agent would set once in this process's environment (the sweep's entity and
    # project, its folder), set before the worker takes its state, which each run returns to.
    environ = dict(os.environ)  # put back at the end
    parts: dict[str, Any] = {"entity": entity, "project": project, "name": sweep_id}
    error = parse_sweep_id(parts)
    if error:
        raise SweepError(f"gradsweep agent {sweep_id}: {error}")
    for name, value in (("WANDB_ENTITY", parts["entity"]), ("WANDB_PROJECT", parts["project"])):
        if value:
            os.environ[name] = value
    os.environ.setdefault("WANDB_DIR", os.getcwd())
    host = JobHost(program, runs_per_worker, growth_mb)
    jobs: queue.Queue = queue.Queue()
    limit = min(count, runs_per_worker) if count is not None else runs_per_worker

    def run_one() -> None:  # in the agent's thread
        env = {name: os.environ[name] for name in (*RUN_ENV, *RUN_ENV_TOO) if name in os.environ}
        params = _sweep_params(env["WANDB_SWEEP_PARAM_PATH"])
        done: queue.Queue = queue.Queue()
        jobs.put(([*agent_args(params), *overrides], env, done))
        result = done.get()
        if result["retire"] and not result["last"]:
            agent._exit_flag = True  # no next run for this worker (pyagent reads it)
        if result["exit_code"] != 0:
            raise RunFailed(f"train.py exited with status {result['exit_code']}")

    agent = pyagent.Agent(sweep_id, function=run_one, project=project, entity=entity, count=limit)
    failures: list[BaseException] = []
    thread = threading.Thread(target=_run_agent, args=(agent, jobs, failures), daemon=True)
    retire = False
    try:
        thread.start()
        while True:
            try:
                job = jobs.get(timeout=0.5)
            except queue.Empty:
                if host.stopping:
                    break
                continue
            if job is None:  # the agent is done
                break
            args, env, done = job
            result = host.run(args, env, console=None)
            retire = result["retire"]
            result["last"] = host.jobs >= limit
            done.put(result)
            if host.stopping:
                break
    finally:
        host.close()
        wandb.teardown()
        os.environ.clear()
        os.environ.update(environ)
    if host.stopping:
        return 128 + (host.stop.signum or 0), host.jobs
    if failures:  # the agent itself failed (no API key, no server, no such sweep)
        print(f"gradsweep agent: {failures[0]}", file=sys.stderr)
        return 1, host.jobs
    # Retired (its runs or its memory) with runs left to do: the parent starts another.
    more = count is None or host.jobs < count
    return (EXIT_RETIRED if retire and more else 0), host.jobs


def _run_agent(agent: Any, jobs: queue.Queue, failures: list[BaseException]) -> None:
    try:
        agent.run()
    except BaseException as error:
        failures.append(error)
    finally:
        jobs.put(None)


def _sweep_params(path: str) -> dict[str, Any]:
    """The run's parameters from the file the agent wrote ({name: {"value": v}}, beside
    wandb's own `wandb_version: 1`)."""
    import yaml

    spec = yaml.safe_load(Path(path).read_text()) or {}
    return {
        name: item["value"]
        for name, item in spec.items()
        if isinstance(item, dict) and "value" in item
    }


def run_agents(
    sweep_id: str,
    program: str,
    workers: int,
    *,
    count: int | None = None,
    overrides: Sequence[str] = (),
    project: str | None = None,
    entity: str | None = None,
    runs_per_worker: int = RUNS_PER_WORKER,
    growth_mb: float = GROWTH_MB,
    workers_per_gpu: int = 1,
    report_dir: Path,
) -> int:
    """`workers` agent workers at once, each replaced when it retires, until the sweep or
    `count` is done; the worst exit status (0 when every worker ended well)."""
    from gradsweep.sweeps.workers import worker_env

    shares = _shares(count, workers)
    common = [sweep_id, "--program", program, "--runs-per-worker", str(runs_per_worker)]
    common += ["--max-growth-mb", str(growth_mb)]
    common += [f"--override={o}" for o in overrides]
    common += _optional("--project", project) + _optional("--entity", entity)
    report_dir.mkdir(parents=True, exist_ok=True)
    started = 0

    def start(slot: int) -> tuple[subprocess.Popen, Path]:
        nonlocal started
        started += 1
        report = report_dir / f"agent-{slot}-{started}.runs"
        share = [] if shares[slot] is None else ["--count", str(shares[slot])]
        env = worker_env(os.environ, slot, workers, None, workers_per_gpu=workers_per_gpu)
        command = [sys.executable, "-m", WORKER_MODULE, *common, *share, "--report", str(report)]
        return subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL), report

    running = {slot: start(slot) for slot in range(workers) if shares[slot] != 0}
    status = 0
    try:
        while running:
            time.sleep(0.2)
            for slot, (proc, report) in list(running.items()):
                code = proc.poll()
                if code is None:
                    continue
                del running[slot]
                ran = int(report.read_text()) if report.is_file() else 0
                if shares[slot] is not None:
                    shares[slot] = max(0, shares[slot] - ran)
                if code == EXIT_RETIRED and shares[slot] != 0:
                    running[slot] = start(slot)
                elif code not in (0, EXIT_RETIRED):
                    status = max(status, code)
    except KeyboardInterrupt:  # reached the workers too: each stops its run and its agent
        for proc, _ in running.values():
            proc.wait()
        raise
    return status


WORKER_MODULE = "gradsweep.sweeps.agent"


def _optional(flag: str, value: str | None) -> list[str]:
    return [flag, value] if value else []


def _shares(count: int | None, workers: int) -> list[int | None]:
    """`count` runs shared among the workers (None: each runs until the sweep is done)."""
    if count is None:
        return [None] * workers
    return [count // workers + (slot < count % workers) for slot in range(workers)]


def main(argv: list[str]) -> int:
    """One agent worker: `python -m gradsweep.sweeps.agent SWEEP_ID --program P ...`."""
    import argparse

    parser = argparse.ArgumentParser(prog=WORKER_MODULE)
    parser.add_argument("sweep_id")
    parser.add_argument("--program", required=True)
    parser.add_argument("--count", type=int)
    parser.add_argument("--override", action="append", default=[])
    parser.add_argument("--project")
    parser.add_argument("--entity")
    parser.add_argument("--runs-per-worker", type=int, default=RUNS_PER_WORKER)
    parser.add_argument("--max-growth-mb", type=float, default=GROWTH_MB)
    parser.add_argument("--report", type=Path, required=True)
    args = parser.parse_args(argv[1:])
    code, ran = serve_agent(
        args.sweep_id,
        args.program,
        count=args.count,
        overrides=args.override,
        project=args.project,
        entity=args.entity,
        runs_per_worker=args.runs_per_worker,
        growth_mb=args.max_growth_mb,
    )
    args.report.write_text(f"{ran}\n")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv))
