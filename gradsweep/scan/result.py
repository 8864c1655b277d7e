"""What a scan found: one row per configuration of the grid, and the whole result."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from omegaconf import DictConfig

from gradsweep.scan.grid import Grid


@dataclass
class ScanRow:
    """One configuration of the grid and what the scan measured for it."""

    choices: dict[str, str]  # each fix group's choice, then the other swept keys
    overrides: tuple[str, ...]  # what `python train.py` takes to run this configuration
    measurement: Any = None  # gradsweep.scan.measure.Measurement; None when it failed
    error: str | None = None
    key: tuple[str, ...] = field(default=(), repr=False)  # the measured configuration

    @property
    def verdict(self) -> str:
        return "error" if self.measurement is None else self.measurement.verdict

    @property
    def log10_ratio(self) -> float:
        return math.nan if self.measurement is None else self.measurement.log10_ratio


@dataclass
class ScanResult:
    grid: Grid
    rows: list[ScanRow]
    seeds: int  # per configuration: its seed= and the ones after it
    steps: int
    measured: int  # configurations measured (the rest share a measurement)
    seconds: dict[str, float]
    base: DictConfig  # the grid's fixed part, composed: its logger config, its data
