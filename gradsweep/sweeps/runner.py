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
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from gradsweep.errors import SweepError
from gradsweep.sweeps.definition import SweepDefinition, grid_size
from gradsweep.sweeps.plan import SweepPlan, default_sweep_dir
from gradsweep.sweeps.records import FAILED, FINISHED, INTERRUPTED, RUNNING, RunRecord
from gradsweep.sweeps.workers import auto_workers, worker_env

log = logging.getLogger(__name__)

CONSOLE = "console.log"

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
    """Runs the runs of a plan, `workers` at a time, each a `python train.py` process."""

    def __init__(self, plan: SweepPlan, workers: int = 1, stderr: TextIO | None = None) -> None:
        if workers < 1:
            raise SweepError(f"--workers {workers}: give at least 1")
        self.plan = plan
        self.workers = workers
        self.stderr = stderr or sys.stderr

    def run(self) -> SweepOutcome:
        """Run the planned jobs, `workers` at a time; Ctrl-C stops them and records that."""
        self.plan.sweep_dir.mkdir(parents=True, exist_ok=True)
        with _lock(self.plan.sweep_dir), _sigterm_as_interrupt():
            self._save_definition()
            outcome = SweepOutcome(planned=[], already_finished=len(self.plan.finished_records))
            start = time.perf_counter()
            total = self.plan.expected_total()
            proposals = self.plan.proposals()
            running: dict[int, tuple[subprocess.Popen, RunRecord, float, TextIO]] = {}
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
                    if not running:
                        break
                    time.sleep(POLL_S)
                    for slot, (proc, record, started, console) in list(running.items()):
                        if proc.poll() is None:
                            continue
                        del running[slot]
                        console.close()
                        self._finish(record, proc.returncode, time.perf_counter() - started)
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
                outcome.seconds = time.perf_counter() - start
            return outcome

    def _start(
        self, record: RunRecord, slot: int
    ) -> tuple[subprocess.Popen, RunRecord, float, TextIO]:
        record.folder.mkdir(parents=True, exist_ok=True)
        record.state, record.exit_code, record.seconds = RUNNING, None, None
        record.save()
        env = worker_env(os.environ, slot, self.workers, self.plan.definition.name)
        console = (record.folder / CONSOLE).open("a")
        console.write(f"$ {shlex.join(record.command)}\n")
        console.flush()
        proc = subprocess.Popen(
            record.command,
            env=env,
            stdout=console,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        gpu = f", GPU {env['CUDA_VISIBLE_DEVICES']}" if "CUDA_VISIBLE_DEVICES" in env else ""
        self._say(
            f"start {record.folder.name}: {self._describe(record.params)} (worker {slot}{gpu})"
        )
        return proc, record, time.perf_counter(), console

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

    def _stop(self, running: dict[int, tuple[subprocess.Popen, RunRecord, float, TextIO]]) -> None:
        """Stop the running jobs and record them as interrupted (the next invocation reruns
        them in their folders, resuming from their checkpoints).

        A Ctrl-C in the terminal reached the jobs too; any still running get SIGTERM, on which
        training saves a checkpoint at the next step boundary and exits; SIGKILL at last.
        """
        procs = [proc for proc, *_ in running.values()]
        _wait_all(procs, 2.0)
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        _wait_all(procs, STOP_GRACE_S)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for proc, record, started, console in running.values():
            console.close()
            record.state, record.exit_code = INTERRUPTED, proc.returncode
            record.seconds = round(time.perf_counter() - started, 2)
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
) -> SweepOutcome:
    """Run (or with dry_run, print) the sweep's remaining runs in sweep_dir, `workers` at a
    time (None: `auto_workers`)."""
    sweep_dir = Path(sweep_dir) if sweep_dir is not None else default_sweep_dir(definition)
    workers = workers if workers is not None else auto_workers(os.environ)
    plan = SweepPlan(definition, sweep_dir, count=count, overrides=overrides)
    runner = SweepRunner(plan, workers=workers, stderr=stderr)
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
        + f") in {sweep_dir}: {already} already finished; {workers} worker(s); "
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


def _wait_all(procs: Sequence[subprocess.Popen], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)


def _tail(path: Path, lines: int) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return []
