"""`gradsweep summarize PATH`: compare the runs of a sweep, and name the change that cured it.

PATH is a Hydra multirun folder, an offline sweep's folder (`gradsweep sweep`), a folder of
offline W&B runs, or one run. Each run's record is its `summary.json` (with the overrides it
ran with, from `.hydra/overrides.yaml` or the sweep's `sweep_run.json`); a run known only by
its `.wandb` file is read from that file. Runs that repeat a configuration with other seeds
fold into one row: the mean and the spread (sample standard deviation) of each metric.

The cure: among pairs of configurations that differ in exactly one choice, where the first is
`vanishing` and the second `healthy`, the pair whose first configuration is nearest the
project's defaults (the problem as it comes), then the earliest fix in the order the
diagnosis advises (activation, init, norm, skip, clipping).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from gradsweep.config import FIX_GROUPS, compose
from gradsweep.errors import SweepError

VERDICT = "diagnosis/verdict"
# The two findings the verdict is made of (runs from before they existed hold neither).
FINDINGS = ("diagnosis/gradient_flow", "diagnosis/learning")
# Choices that may vary across a sweep besides the fixes; a column only where they vary.
SETUP_KEYS = ("experiment", "model", "data", "optimizer", "data.source")

# Overrides that say where or how a run ran, not what it tried.
_NOT_A_CHOICE = ("hydra.", "logger.", "seed", "data.root", "trainer.device", "data.download")

# An experiment names a bundle of choices; its fix choices are compared instead.
_LABELS = ("experiment",)

# The project's defaults, when conf/ cannot be read.
_FALLBACK_DEFAULTS = {
    "activation": "sigmoid",
    "init": "default",
    "norm": "none",
    "skip": "none",
    "clipping": "none",
}


@dataclass
class FinishedRun:
    """One finished run: its flat record and the overrides it ran with."""

    source: Path
    values: dict[str, Any]
    overrides: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str) -> Any:
        value = self.values.get(key)
        return self.overrides.get(key) if value is None else value


@dataclass
class Row:
    """One configuration: its choices and its runs' metrics (mean and spread)."""

    choices: dict[str, Any]
    runs: list[FinishedRun]

    @property
    def n(self) -> int:
        return len(self.runs)

    def metric(self, key: str) -> float:
        values = [number(run.values.get(key)) for run in self.runs]
        values = [v for v in values if not math.isnan(v)]
        return statistics.fmean(values) if values else math.nan

    def spread(self, key: str) -> float:
        values = [number(run.values.get(key)) for run in self.runs]
        values = [v for v in values if not math.isnan(v)]
        return statistics.stdev(values) if len(values) > 1 else math.nan

    @property
    def verdicts(self) -> Counter:
        return self.counts(VERDICT)

    @property
    def verdict(self) -> str:
        """The most common verdict among the configuration's runs."""
        return self.verdicts.most_common(1)[0][0]

    def counts(self, key: str) -> Counter:
        """How many of the configuration's runs hold each value of `key` ("?": none)."""
        return Counter(str(run.values.get(key, "?")) for run in self.runs)


@dataclass
class Cure:
    """The single change that turned a vanishing configuration into a healthy one."""

    key: str
    before: Row
    after: Row
    also: list[tuple[str, Row]]  # other single changes that cured the same configuration

    def change(self) -> str:
        return f"{self.key}={self.after.choices[self.key]}"


@dataclass
class Comparison:
    rows: list[Row]  # sorted by val/acc, best first
    columns: list[str]  # the choice columns
    cure: Cure | None
    vanishing: int  # configurations whose verdict is vanishing
    incomplete: list[str]  # runs with no result (failed, interrupted, still running)


def collect(path: str | Path) -> tuple[list[FinishedRun], list[str]]:
    """Every finished run under path, and a note for each run that has no result."""
    path = Path(path)
    if not path.exists():
        raise SweepError(f"{path}: no such file or folder")
    if path.is_file():
        folders = [path.parent] if path.name == "summary.json" else []
        wandb_files = [path] if path.suffix == ".wandb" else []
    else:
        folders = sorted({p.parent for p in path.rglob("summary.json")})
        wandb_files = sorted(path.rglob("*.wandb"))
    results = [_from_folder(folder) for folder in folders]
    incomplete = []
    for file in wandb_files:
        if any(folder in file.parents for folder in folders):
            continue  # the run's summary.json already holds it
        result = _from_wandb(file)
        if result is None:
            incomplete.append(f"{file}: no verdict (the run did not finish)")
        else:
            results.append(result)
    if path.is_dir():
        for record in sorted(path.rglob("sweep_run.json")):
            if not (record.parent / "summary.json").is_file():
                state = json.loads(record.read_text()).get("state", "unknown")
                incomplete.append(f"{record.parent}: {state}")
    return results, incomplete


def _from_folder(folder: Path) -> FinishedRun:
    values = json.loads((folder / "summary.json").read_text())
    overrides: dict[str, Any] = {}
    hydra_overrides = folder / ".hydra" / "overrides.yaml"
    if hydra_overrides.is_file():
        for item in yaml.safe_load(hydra_overrides.read_text()) or []:
            key, _, value = str(item).lstrip("+~").partition("=")
            overrides[key] = _parse_value(value)
    record = folder / "sweep_run.json"
    if record.is_file():
        overrides.update(json.loads(record.read_text()).get("params", {}))
    return FinishedRun(source=folder, values=values, overrides=overrides)


def _from_wandb(file: Path) -> FinishedRun | None:
    from gradsweep.tracking.wandb_records import last_values, read_run

    run = read_run(file)
    if VERDICT not in run.summary:
        return None
    values = {**run.config, **last_values(run.summary)}
    return FinishedRun(source=file, values={k: v for k, v in values.items() if _scalar(v)})


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def number(value: Any) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan


def compare(
    results: Sequence[FinishedRun],
    incomplete: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Comparison:
    """Fold the runs into configurations, sort them, and find the first cure."""
    columns = choice_columns(results)
    groups: dict[tuple, Row] = {}
    for result in results:
        choices = {column: result.get(column) for column in columns}
        key = tuple(json.dumps(choices[c], default=str) for c in columns)
        groups.setdefault(key, Row(choices=choices, runs=[])).runs.append(result)
    rows = sorted(groups.values(), key=_sort_key)
    defaults = dict(defaults) if defaults is not None else project_defaults()
    return Comparison(
        rows=rows,
        columns=columns,
        cure=find_cure(rows, columns, defaults),
        vanishing=sum(row.verdict == "vanishing" for row in rows),
        incomplete=list(incomplete),
    )


def choice_columns(results: Sequence[FinishedRun]) -> list[str]:
    """The fix groups, then every other choice that differs between the runs."""
    extra_keys = list(SETUP_KEYS)
    for result in results:
        for key in result.overrides:
            if (
                key not in extra_keys
                and key not in FIX_GROUPS
                and not key.startswith(_NOT_A_CHOICE)
            ):
                extra_keys.append(key)
    varying = [
        key for key in extra_keys if len({json.dumps(r.get(key), default=str) for r in results}) > 1
    ]
    return [*FIX_GROUPS, *varying]


def _sort_key(row: Row) -> tuple:
    accuracy = row.metric("val/acc")
    return (math.isnan(accuracy), -accuracy if not math.isnan(accuracy) else 0.0)


def project_defaults() -> dict[str, Any]:
    """Each fix group's default choice, as conf/train.yaml composes it."""
    try:
        cfg = compose(["logger=none"])
        return {group: str(cfg[group].name) for group in FIX_GROUPS}
    except Exception:  # no checkout's conf/ here: the defaults the project ships
        return dict(_FALLBACK_DEFAULTS)


def find_cure(
    rows: Sequence[Row], columns: Sequence[str], defaults: Mapping[str, Any]
) -> Cure | None:
    """The first single change from a vanishing configuration to a healthy one (see above)."""
    changeable = [c for c in columns if c not in _LABELS]
    order = {column: rank for rank, column in enumerate(changeable)}
    candidates = []
    for before in rows:
        if before.verdict != "vanishing":
            continue
        distance = sum(
            before.choices.get(g) != defaults.get(g) for g in FIX_GROUPS if g in defaults
        )
        for after in rows:
            if after.verdict != "healthy":
                continue
            changed = [c for c in changeable if before.choices[c] != after.choices[c]]
            if len(changed) == 1:
                accuracy = after.metric("val/acc")
                rank = (distance, order[changed[0]], -accuracy if not math.isnan(accuracy) else 0)
                candidates.append((rank, changed[0], before, after))
    if not candidates:
        return None
    candidates.sort(key=lambda item: item[0])
    _, key, before, after = candidates[0]
    also = [(k, a) for _, k, b, a in candidates[1:] if b is before]
    return Cure(key=key, before=before, after=after, also=also)
