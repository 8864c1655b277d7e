"""`gradsweep scan`: the gradient flow of every configuration of a fix grid, at initialization.

    gradsweep scan conf/sweep.yaml data.root=/tmp/gsdata      # a W&B sweep definition's grid
    gradsweep scan activation=sigmoid,relu init=default,kaiming  # a Hydra-style grid

Each configuration is composed by Hydra as `python train.py OVERRIDES` would compose it, built
with its fixes and measured over a few forward/backward passes without an optimizer step
(gradsweep.scan.measure); the report (gradsweep.scan.report) sorts them by the first/last gradient
ratio and predicts each one's verdict, so the configurations that are dead on arrival never
reach a GPU. Axes that cannot change the gradients at step 0 (clipping acts after the norms are
measured; the optimizer, the logger, the run length) are measured once and reported for each
of their choices.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from gradsweep.config import FIX_GROUPS, group_choice
from gradsweep.errors import ConfigError, ShapeMismatchError
from gradsweep.scan.composer import GridComposer, compose, inert_axis
from gradsweep.scan.grid import Grid, override_value
from gradsweep.scan.result import ScanResult, ScanRow

log = logging.getLogger(__name__)


def scan(grid: Grid, seeds: int = 3, steps: int = 1, conf_dir: str | None = None) -> ScanResult:
    """Measure every configuration of `grid` at initialization over `seeds` seeds.

    The seeds are the grid's own `seed` and the ones after it: each is an init seed and a data
    seed, as `seed=` is for a training run.
    """
    if seeds < 1 or steps < 1:
        raise ConfigError(f"scan: --seeds {seeds} --steps {steps}: each must be at least 1")
    start = time.perf_counter()
    base = compose(grid.fixed, conf_dir)
    inert = [axis for axis in grid.axes if inert_axis(grid, axis, base, conf_dir)]
    measured_axes = [axis for axis in grid.axes if axis not in inert]
    composer = GridComposer(grid, measured_axes, conf_dir, base=base)
    jobs = grid.jobs(measured_axes)
    log.info(
        "scan: %s: %d configurations (%s); measuring %d%s, %d seed%s x %d pass%s each",
        grid.source,
        grid.size,
        " x ".join(f"{len(v)} {k}" for k, v in grid.axes.items()) or "no axis",
        len(jobs),
        f" ({', '.join(inert)}: no effect at initialization)" if inert else "",
        seeds,
        "s" if seeds > 1 else "",
        steps,
        "es" if steps > 1 else "",
    )
    composed = time.perf_counter()

    measurements, configs = _measure_all(composer, jobs, seeds, steps)
    measured = time.perf_counter()

    rows = []
    varying_other = [axis for axis in grid.axes if axis not in FIX_GROUPS]
    for job in grid.jobs():
        chosen = dict(zip(grid.axes, job, strict=True))
        key = tuple(chosen[axis] for axis in measured_axes)
        cfg, (measurement, error) = configs[key], measurements[key]
        choices = {group: _choice(cfg, group, chosen) for group in FIX_GROUPS}
        choices.update({axis: override_value(chosen[axis]) for axis in varying_other})
        overrides = _train_overrides(grid, chosen)
        rows.append(ScanRow(choices, overrides, measurement, error, key))
    rows.sort(key=_sort_key)
    seconds = {
        "compose": composed - start,
        "measure": measured - composed,
        "total": time.perf_counter() - start,
    }
    return ScanResult(
        grid=grid,
        rows=rows,
        seeds=seeds,
        steps=steps,
        measured=len(jobs),
        seconds=seconds,
        base=composer.base,
    )


def _measure_all(
    composer: GridComposer, jobs: list[tuple[str, ...]], seeds: int, steps: int
) -> tuple[dict, dict]:
    """Each measured configuration over the seeds; data loaded once per data config."""
    import torch

    from gradsweep.data.load import load_data
    from gradsweep.run.build import pick_device
    from gradsweep.run.validate import check_config
    from gradsweep.scan.measure import measure

    datasets: dict[str, Any] = {}
    measurements: dict[tuple[str, ...], tuple[Any, str | None]] = {}
    configs: dict[tuple[str, ...], DictConfig] = {}
    last_report = time.perf_counter()
    for index, job in enumerate(jobs):
        cfg = composer(job)
        configs[job] = cfg
        try:
            check_config(cfg)
            device = pick_device(cfg.trainer.device)
            data_key = f"{device}\n" + OmegaConf.to_yaml(
                {k: v for k, v in cfg.data.items() if k not in ("batch_size", "augment")}
            )
            if data_key not in datasets:
                datasets[data_key] = load_data(cfg.data, device)
            with (
                quiet("gradsweep.run.build", "gradsweep.fixes"),
                torch.random.fork_rng(devices=[device] if device.type == "cuda" else []),
            ):
                seed_list = list(range(int(cfg.seed), int(cfg.seed) + seeds))
                measurements[job] = (measure(cfg, datasets[data_key], seed_list, steps), None)
        # What one configuration gets wrong is its row's error; missing data stops the scan.
        except (ConfigError, ShapeMismatchError) as error:
            log.warning("scan: %s: %s", " ".join(job) or "the configuration", error)
            measurements[job] = (None, str(error))
        now = time.perf_counter()
        if now - last_report > 5 and index + 1 < len(jobs):
            log.info("scan: %d/%d configurations measured", index + 1, len(jobs))
            last_report = now
    return measurements, configs


def _choice(cfg: DictConfig, group: str, chosen: Mapping[str, str]) -> str:
    """A fix group's choice: from the config that was measured, or, for a group not measured
    (clipping), from the grid's override of it, else the composed default."""
    if group in chosen:
        return override_value(chosen[group])
    if group not in cfg:
        return ""
    return group_choice(cfg, group)


def _train_overrides(grid: Grid, chosen: Mapping[str, str]) -> tuple[str, ...]:
    """The configuration as `python train.py` overrides: the fixed ones, then each axis's."""
    return (*grid.fixed, *chosen.values())


def _sort_key(row: ScanRow) -> tuple:
    ratio = row.log10_ratio
    return (math.isnan(ratio), ratio if not math.isnan(ratio) else 0.0, tuple(row.choices.values()))


@contextlib.contextmanager
def quiet(*names: str, level: int = logging.WARNING) -> Iterator[None]:
    """Raise these loggers' level for a while: a scan builds hundreds of models, and each
    build's account of its fixes ("activation: swapped ...") would bury the report."""
    loggers = [logging.getLogger(name) for name in names]
    before = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(level)
    try:
        yield
    finally:
        for logger, old in zip(loggers, before, strict=True):
            logger.setLevel(old)
