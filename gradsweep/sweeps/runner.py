"""`gradsweep sweep FILE`: run a W&B sweep definition on a machine with no W&B server.

`wandb agent` asks the server for every run it starts, so it cannot run air-gapped. This
runner does what the agent and W&B's controller do between them, locally:

    propose : W&B's own engine (`sweeps`: grid, random, bayes) picks each run's parameters
    command : wandb's own argument builder makes the command the agent would run, plus
              `hydra.run.dir=` naming the run's folder (and any extra overrides given)
    run     : N workers at once; torch threads split among them, one GPU each where
              several are visible (CUDA_VISIBLE_DEVICES)
    record  : each run logs to W&B offline with the sweep's name as its group
              (WANDB_RUN_GROUP), so `wandb sync` uploads the sweep later as one group
    resume  : each run's folder holds sweep_run.json; a finished run is never repeated,
              an interrupted or failed one runs again in the same folder

    <dir>/sweep.yaml              the definition last run here
    <dir>/0000/                   one run: Hydra's run folder (summary.json, wandb/, .hydra/)
    <dir>/0000/sweep_run.json     its parameters, command, state, exit code and seconds
    <dir>/0000/console.log        its stdout and stderr
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gradsweep.errors import SweepError
from gradsweep.sweeps.definition import SweepDefinition, grid_size
from gradsweep.sweeps.jobs import Job, ProcessJob, WarmPool, wait_for_any
from gradsweep.sweeps.plan import SweepPlan, default_sweep_dir
from gradsweep.sweeps.records import FAILED, FINISHED, INTERRUPTED, RUNNING, RunRecord
from gradsweep.sweeps.warm import GROWTH_MB, RUNS_PER_WORKER, split_command
from gradsweep.sweeps.workers import auto_workers, worker_env

log = logging.getLogger(__name__)

CONSOLE = "console.log"
# The warm workers' own logs (what they print between jobs, their W&B writers' warnings).
WORKER_LOGS = ".workers"

POLL_S = 0.2

# After an interrupt: how long running jobs get to checkpoint and exit after SIGTERM.
STOP_GRACE_S = 30.0


@dataclass
class SweepOutcome:
    """What one invocation did."""

    planned: list[RunRecord]
    already_finished: int
    finished: int = 0
    failed: int = 0
    seconds: float = 0.0


class SweepRunner:
    """Runs the runs of a plan, `workers` at a time: each on a warm worker (the default) or as
    its own `python train.py` process (`warm=False`, as `wandb agent` starts them)."""

    def __init__(
        self,
        plan: SweepPlan,
        workers: int = 1,
        stderr: TextIO | None = None,
        *,
        warm: bool = True,
        runs_per_worker: int = RUNS_PER_WORKER,
        growth_mb: float = GROWTH_MB,
        workers_per_gpu: int = 1,
    ) -> None:
        if workers < 1:
            raise SweepError(f"--workers {workers}: give at least 1")
        if runs_per_worker < 1:
            raise SweepError(f"--runs-per-worker {runs_per_worker}: give at least 1")
        self.plan = plan
        self.workers = workers
        self.stderr = stderr or sys.stderr
        self.warm = warm
        self.runs_per_worker, self.growth_mb = runs_per_worker, growth_mb
        self.workers_per_gpu = workers_per_gpu
        self.pool: WarmPool | None = None

    def run(self) -> SweepOutcome:
        """Run the planned jobs, `workers` at a time; Ctrl-C stops them and records that."""
        self.plan.sweep_dir.mkdir(parents=True, exist_ok=True)
        with _lock(self.plan.sweep_dir), _sigterm_as_interrupt():
            self._save_definition()
            outcome = SweepOutcome(planned=[], already_finished=len(self.plan.finished_records))
            start = time.perf_counter()
            total = self.plan.expected_total()
            proposals = self.plan.proposals()
            running: dict[int, tuple[Job, RunRecord, float]] = {}
            if self.warm:
                program = os.path.join(os.getcwd(), self.plan.program)
                self.pool = WarmPool(
                    self.plan.sweep_dir / WORKER_LOGS, program, self.runs_per_worker, self.growth_mb
                )
                ahead = self.workers if total is None else min(self.workers, total)
                for slot in range(ahead):
                    self.pool.start(slot, self._env(slot))  # importing while runs are planned
            try:
                exhausted = False
                while True:
                    free = [slot for slot in range(self.workers) if slot not in running]
                    while free and not exhausted:
                        params = next(proposals, None)
                        if params is None:
                            exhausted = True
                            break
                        slot = free.pop(0)
                        record = self.plan.prepare(params)
                        outcome.planned.append(record)
                        running[slot] = self._start(record, slot)
                    if exhausted and self.pool is not None:
                        for slot in free:  # no run left for it: it ends while others run
                            self.pool.release(slot)
                    if not running:
                        break
                    wait_for_any([job for job, *_ in running.values()], POLL_S)
                    for slot, (job, record, started) in list(running.items()):
                        exit_code = job.poll()
                        if exit_code is None:
                            continue
                        del running[slot]
                        self._finish(record, exit_code, time.perf_counter() - started)
                        if record.state == FINISHED:
                            outcome.finished += 1
                        else:
                            outcome.failed += 1
                        done = outcome.finished + outcome.failed
                        self._report(record, done, total)
            except KeyboardInterrupt:
                self._stop(running)
                raise
            finally:
                if self.pool is not None:
                    self.pool.close()
                outcome.seconds = time.perf_counter() - start
            return outcome

    def _env(self, slot: int) -> dict[str, str]:
        return worker_env(
            os.environ,
            slot,
            self.workers,
            self.plan.definition.name,
            workers_per_gpu=self.workers_per_gpu,
        )

    def _start(self, record: RunRecord, slot: int) -> tuple[Job, RunRecord, float]:
        record.folder.mkdir(parents=True, exist_ok=True)
        record.state, record.exit_code, record.seconds = RUNNING, None, None
        record.save()
        env = self._env(slot)
        console = record.folder / CONSOLE
        with console.open("a") as out:
            out.write(f"$ {shlex.join(record.command)}\n")
        # In-process when the command is `python PROGRAM ARGS` with the workers' program.
        command = split_command(record.command, self.plan.interpreter)
        job: Job
        if self.pool is not None and command is not None and command[0] == self.pool.program:
            job = self.pool.submit(slot, env, command[1], console)
        else:
            job = ProcessJob(record.command, env, console)
        gpu = f", GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
        self._say(
            f"start {record.folder.name}: {self._describe(record.params)} "
            f"(worker {slot}{gpu}, {job.description})"
        )
        return job, record, time.perf_counter()

    def _finish(self, record: RunRecord, exit_code: int, seconds: float) -> None:
        ok = exit_code == 0 and (record.folder / "summary.json").is_file()
        record.state = FINISHED if ok else FAILED
        record.exit_code, record.seconds = exit_code, round(seconds, 2)
        record.save()

    def _report(self, record: RunRecord, done: int, total: int | None) -> None:
        where = f"[{done}/{total}]" if total else f"[{done}]"
        if record.state == FINISHED:
            summary = record.summary()
            result = f"{summary.get('diagnosis/verdict', '?')}"
            if self.plan.metric and isinstance(summary.get(self.plan.metric), int | float):
                result += f", {self.plan.metric} {summary[self.plan.metric]:.4f}"
            self._say(f"{where} {record.folder.name} finished in {record.seconds:.1f} s: {result}")
            return
        self._say(
            f"{where} {record.folder.name} FAILED (exit {record.exit_code}) after "
            f"{record.seconds:.1f} s: {self._describe(record.params)}; last lines of "
            f"{record.folder / CONSOLE}:"
        )
        for line in _tail(record.folder / CONSOLE, 5):
            self._say(f"    {line}")

    def _stop(self, running: dict[int, tuple[Job, RunRecord, float]]) -> None:
        """Stop the running jobs and record them as interrupted (the next invocation reruns
        them in their folders, resuming from their checkpoints); one that ended well in the
        meantime is recorded finished.

        A Ctrl-C in the terminal reached the jobs too; any still running get SIGTERM, on which
        training saves a checkpoint at the next step boundary and exits; SIGKILL at last.
        """
        jobs = [job for job, *_ in running.values()]
        _wait_all(jobs, 2.0)
        for job in jobs:
            if job.poll() is None:
                job.signal(signal.SIGTERM)
        _wait_all(jobs, STOP_GRACE_S)
        for job in jobs:
            if job.poll() is None:
                job.kill()
        for job, record, started in running.values():
            self._finish(record, job.poll(), time.perf_counter() - started)
            if record.state != FINISHED:
                record.state = INTERRUPTED
                record.save()
        if running:
            self._say(f"interrupted: {len(running)} running job(s) stopped; rerun to resume them")

    def _save_definition(self) -> None:
        path = self.plan.sweep_dir / "sweep.yaml"
        text = self.plan.definition.path.read_text()
        if path.is_file() and path.read_text() != text:
            log.warning(
                "%s differs from the definition last run in %s; finished runs whose "
                "parameters it still holds are kept",
                self.plan.definition.path,
                self.plan.sweep_dir,
            )
        path.write_text(text)

    def _describe(self, params: Mapping[str, Any]) -> str:
        shown = self.plan.definition.varying or sorted(params)
        return " ".join(f"{name}={params[name]}" for name in shown if name in params)

    def _say(self, line: str) -> None:
        print(line, file=self.stderr, flush=True)


def run_sweep(
    definition: SweepDefinition,
    sweep_dir: Path | None = None,
    *,
    workers: int | None = None,
    count: int | None = None,
    overrides: Sequence[str] = (),
    dry_run: bool = False,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    warm: bool = True,
    runs_per_worker: int = RUNS_PER_WORKER,
    growth_mb: float = GROWTH_MB,
    workers_per_gpu: int = 1,
) -> SweepOutcome:
    """Run (or with dry_run, print) the sweep's remaining runs in sweep_dir, `workers` at a
    time (None: `auto_workers`), on warm workers or (warm=False) a process per run."""
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else default_sweep_dir(definition)
    if workers is None:
        workers = auto_workers(os.environ, workers_per_gpu=workers_per_gpu)
    plan = SweepPlan(definition, sweep_dir, count=count, overrides=overrides)
    runner = SweepRunner(
        plan,
        workers=workers,
        stderr=stderr,
        warm=warm,
        runs_per_worker=runs_per_worker,
        growth_mb=growth_mb,
        workers_per_gpu=workers_per_gpu,
    )
    err = stderr or sys.stderr
    already = len(plan.finished_records)
    if dry_run:
        planned = plan.plan()
        out = stdout or sys.stdout
        for record in planned:
            print(shlex.join(record.command), file=out)
        print(
            f"{len(planned)} run(s) to start in {sweep_dir}; {already} already finished",
            file=err,
        )
        return SweepOutcome(planned=planned, already_finished=already)
    size = grid_size(definition)
    print(
        f"sweep {definition.name} ({definition.method}"
        + (f", {size} runs" if size is not None else "")
        + f") in {sweep_dir}: {already} already finished; {workers} "
        + ("warm worker(s)" if warm else "worker(s), a process per run")
        + "; "
        f"W&B group {definition.name!r}, offline",
        file=err,
    )
    outcome = runner.run()
    print(
        f"ran {outcome.finished + outcome.failed} run(s) in {outcome.seconds:.1f} s: "
        f"{outcome.finished} finished, {outcome.failed} failed; compare them with "
        f"`gradsweep summarize {sweep_dir}`",
        file=err,
    )
    return outcome


@contextmanager
def _lock(sweep_dir: Path) -> Iterator[None]:
    """One runner per sweep folder: a second would start the same runs."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock
        yield
        return
    with (sweep_dir / ".lock").open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another `gradsweep sweep` is running in {sweep_dir}") from None
        yield


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's preemption, `kill`) stops the sweep as Ctrl-C does."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous: Callable | int | None = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wait_all(jobs: Sequence[Job], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(job.poll() is None for job in jobs) and time.monotonic() < deadline:
        time.sleep(0.05)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []
