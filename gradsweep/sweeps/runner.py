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
import math
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
from gradsweep.sweeps.definition import (
    SweepDefinition,
    agent_command,
    find_program,
    grid_params,
    grid_size,
    import_sweeps,
)
from gradsweep.sweeps.records import (
    FAILED,
    FINISHED,
    INTERRUPTED,
    RUNNING,
    RunRecord,
    load_records,
    params_key,
)
from gradsweep.sweeps.workers import auto_workers, worker_env

log = logging.getLogger(__name__)


CONSOLE = "console.log"


POLL_S = 0.2


# After an interrupt: how long running jobs get to checkpoint and exit after SIGTERM.
STOP_GRACE_S = 30.0


# Characters that Hydra's override grammar would read as syntax in an unquoted value.
_HYDRA_SPECIAL = set(" \t,()[]{}:=\\'\"")


@dataclass
class SweepOutcome:
    """What one invocation did."""

    planned: list[RunRecord]
    already_finished: int
    finished: int = 0
    failed: int = 0
    seconds: float = 0.0


def default_sweep_dir(definition: SweepDefinition) -> Path:
    return Path("multirun") / definition.name


def hydra_value(text: str) -> str:
    """text as a Hydra override value: quoted where Hydra would read syntax in it."""
    if not _HYDRA_SPECIAL & set(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


class SweepRunner:
    """Plans and runs one invocation of a sweep in `sweep_dir`."""

    def __init__(
        self,
        definition: SweepDefinition,
        sweep_dir: Path,
        *,
        workers: int = 1,
        count: int | None = None,
        overrides: Sequence[str] = (),
        interpreter: str = sys.executable,
        stderr: TextIO | None = None,
    ) -> None:
        if workers < 1:
            raise SweepError(f"--workers {workers}: give at least 1")
        if count is not None and count < 1:
            raise SweepError(f"--count {count}: give at least 1")
        clash = sorted(
            {o.split("=", 1)[0].lstrip("+~") for o in overrides} & set(definition.parameters)
        )
        if clash:
            raise SweepError(
                f"override of sweep parameter(s) {', '.join(clash)}: change them in "
                f"{definition.path} instead"
            )
        unbounded = definition.config.get("run_cap") is None and count is None
        if definition.method != "grid" and unbounded:
            raise SweepError(
                f"a {definition.method} search never runs out of proposals: "
                "give --count N (or run_cap: N in the definition)"
            )
        self.definition = definition
        self.sweep_dir = Path(sweep_dir)
        self.workers = workers
        self.count = count
        self.overrides = list(overrides)
        self.interpreter = interpreter
        self.stderr = stderr or sys.stderr
        self.config = definition.engine_config
        self.metric = (definition.config.get("metric") or {}).get("name")
        program = find_program(definition)
        try:
            self.program = str(program.relative_to(Path.cwd()))
        except ValueError:
            self.program = str(program)
        self.records = load_records(self.sweep_dir)
        self._prepared: set[int] = set()  # records this invocation already started or planned
        self._next_index = 1 + max(
            (int(r.folder.name) for r in self.records if r.folder.name.isdigit()), default=-1
        )

    # -- planning ---------------------------------------------------------------------------

    @property
    def finished_records(self) -> list[RunRecord]:
        return [r for r in self.records if r.state == FINISHED]

    def proposals(self) -> Iterator[dict[str, Any]]:
        """The parameters of each run this invocation should start, in order."""
        done = self.finished_records
        if self.definition.method == "grid":
            queue = grid_params(self.definition, [r.params for r in done])
            yield from queue[: self.count] if self.count is not None else queue
            return
        cap = self.definition.config.get("run_cap")
        limit = self.count if self.count is not None else math.inf
        if cap is not None:
            limit = min(limit, max(0, int(cap) - len(done)))
        sweeps = import_sweeps()
        for _ in range(int(limit)):
            run = sweeps.next_run(self.config, self._engine_runs(sweeps))
            if run is None:
                return
            yield {k: v["value"] for k, v in run.config.items()}

    def _engine_runs(self, sweeps: Any) -> list[Any]:
        """This sweep's runs as the engine sees them (bayes reads their metric)."""
        if self.definition.method != "bayes":
            return []  # random search ignores past runs
        runs = []
        for record in self.records:
            metrics = {}
            value = record.summary().get(self.metric) if self.metric else None
            if isinstance(value, int | float) and math.isfinite(value):
                metrics[self.metric] = value
            state = record.state if record.state in (FINISHED, FAILED, RUNNING) else FAILED
            runs.append(
                sweeps.SweepRun(
                    config={k: {"value": v} for k, v in record.params.items()},
                    state=state,
                    summaryMetrics=metrics,
                )
            )
        return runs

    def prepare(self, params: dict[str, Any]) -> RunRecord:
        """The record of the run for params: the folder of an unfinished run with the same
        parameters (so it resumes there), else a new numbered folder."""
        key = params_key(params)
        for record in self.records:
            reusable = record.state in (FAILED, INTERRUPTED, RUNNING)
            if reusable and record.key == key and id(record) not in self._prepared:
                record.command = self.command(params, record.folder)
                self._prepared.add(id(record))
                return record
        folder = self.sweep_dir / f"{self._next_index:04d}"
        self._next_index += 1
        record = RunRecord(folder=folder, params=params, command=self.command(params, folder))
        self.records.append(record)
        self._prepared.add(id(record))
        return record

    def command(self, params: Mapping[str, Any], folder: Path) -> list[str]:
        command = agent_command(self.definition, params, self.program, self.interpreter)
        run_dir = hydra_value(str(folder.resolve()))
        return [*command, *self.overrides, f"hydra.run.dir={run_dir}"]

    def plan(self) -> list[RunRecord]:
        """What a run would start, without starting anything (for --dry-run)."""
        planned = []
        seen = {r.key for r in self.records}
        for params in self.proposals():
            record = self.prepare(params)
            planned.append(record)
            if record.key not in seen and self.definition.method == "bayes":
                record.state = RUNNING  # so the next proposal counts it as pending
        return planned

    # -- running ----------------------------------------------------------------------------

    def run(self) -> SweepOutcome:
        """Run the planned jobs, `workers` at a time; Ctrl-C stops them and records that."""
        self.sweep_dir.mkdir(parents=True, exist_ok=True)
        with _lock(self.sweep_dir), _sigterm_as_interrupt():
            self._save_definition()
            outcome = SweepOutcome(planned=[], already_finished=len(self.finished_records))
            start = time.perf_counter()
            total = self._expected_total()
            proposals = self.proposals()
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
                        record = self.prepare(params)
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

    def _expected_total(self) -> int | None:
        if self.definition.method == "grid":
            size = grid_size(self.definition) or 0
            remaining = size - len(self.finished_records)
            return min(remaining, self.count) if self.count is not None else remaining
        return self.count

    def _start(
        self, record: RunRecord, slot: int
    ) -> tuple[subprocess.Popen, RunRecord, float, TextIO]:
        record.folder.mkdir(parents=True, exist_ok=True)
        record.state, record.exit_code, record.seconds = RUNNING, None, None
        record.save()
        env = worker_env(os.environ, slot, self.workers, self.definition.name)
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
            if self.metric and isinstance(summary.get(self.metric), int | float):
                result += f", {self.metric} {summary[self.metric]:.4f}"
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
        path = self.sweep_dir / "sweep.yaml"
        text = self.definition.path.read_text()
        if path.is_file() and path.read_text() != text:
            log.warning(
                "%s differs from the definition last run in %s; finished runs whose "
                "parameters it still holds are kept",
                self.definition.path,
                self.sweep_dir,
            )
        path.write_text(text)

    def _describe(self, params: Mapping[str, Any]) -> str:
        shown = self.definition.varying or sorted(params)
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
    runner = SweepRunner(
        definition, sweep_dir, workers=workers, count=count, overrides=overrides, stderr=stderr
    )
    err = stderr or sys.stderr
    already = len(runner.finished_records)
    if dry_run:
        planned = runner.plan()
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
