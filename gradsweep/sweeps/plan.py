"""Planning an invocation of a sweep: W&B's engine proposes each run's parameters, and wandb's
own argument builder makes the command the agent would run, plus the run's folder."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from gradsweep.config import hydra_value
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


def default_sweep_dir(definition: SweepDefinition) -> Path:
    return Path("multirun") / definition.name


class SweepPlan:
    """Which runs one invocation of a sweep starts, in which folders, with which commands.

    The sweep's folder says what is done: a finished run is never proposed again, and an
    interrupted or failed one is given its old folder, where it resumes from its checkpoint.
    """

    def __init__(
        self,
        definition: SweepDefinition,
        sweep_dir: Path,
        *,
        count: int | None = None,
        overrides: Sequence[str] = (),
        interpreter: str = sys.executable,
    ) -> None:
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
        self.count = count
        self.overrides = list(overrides)
        self.interpreter = interpreter
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

    def expected_total(self) -> int | None:
        """How many runs this invocation will start, where that is known in advance."""
        if self.definition.method == "grid":
            size = grid_size(self.definition) or 0
            remaining = size - len(self.finished_records)
            return min(remaining, self.count) if self.count is not None else remaining
        return self.count
