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

import argparse
import copy
import itertools
import logging
import math
import re
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from gradsweep.config import compose as hydra_compose
from gradsweep.config import find_conf_dir
from gradsweep.errors import ConfigError

log = logging.getLogger(__name__)

FIX_GROUPS = ("activation", "init", "norm", "skip", "clipping")
# Config keys (and everything under them) that nothing of step 0 reads: the model, its
# initialization, the first batches and the gradient norms are the same whatever they hold.
# Clipping rescales the gradients only after their norms were taken.
INERT_AT_INIT = (
    "clipping",
    "optimizer",
    "logger",
    "trainer.max_epochs",
    "trainer.max_steps",
    "trainer.eval_every",
    "trainer.checkpoint_every",
    "hydra",
)
# Sweep-definition values Hydra reads as they are; anything else is quoted.
_PLAIN = re.compile(r"[A-Za-z0-9_./:+-]+")


# ---------------------------------------------------------------------------------------------
# The grid


@dataclass(frozen=True)
class Grid:
    """Fixed overrides and swept axes (`key -> ["key=a", "key=b"]`), in Hydra's own syntax."""

    fixed: tuple[str, ...]
    axes: dict[str, tuple[str, ...]]
    source: str = "command line"

    @property
    def size(self) -> int:
        return math.prod(len(values) for values in self.axes.values())

    def jobs(self, axes: Sequence[str] | None = None) -> list[tuple[str, ...]]:
        """One override per axis for every point of the grid (or of the named axes)."""
        names = list(self.axes) if axes is None else list(axes)
        return list(itertools.product(*(self.axes[name] for name in names)))


def compose(overrides: Sequence[str], conf_dir: str | None = None) -> DictConfig:
    """gradsweep.config.compose, with Hydra's errors (an unknown option, a bad key) shown as
    a message rather than a traceback."""
    from hydra.errors import HydraException

    try:
        return hydra_compose(overrides, conf_dir)
    except HydraException as error:
        raise ConfigError(f"scan: {' '.join(overrides)}: {error}") from None


def is_inert(key: str) -> bool:
    """Whether an override of `key` leaves step 0's gradients as they are."""
    key = key.lstrip("+~")
    return any(key == inert or key.startswith(f"{inert}.") for inert in INERT_AT_INIT)


def override_key(override: str) -> str:
    """`activation` for "activation=relu", `foo.bar` for "+foo.bar=1"."""
    return override.split("=", 1)[0].lstrip("+~")


def override_value(override: str) -> str:
    return override.split("=", 1)[1] if "=" in override else ""


def parse_grid(overrides: Sequence[str], source: str = "command line") -> Grid:
    """Hydra's grid over `overrides`: a swept override (`a=x,y`, `range()`, `choice()`,
    `glob()`) is an axis; the others are fixed. A later override of a key replaces an
    earlier one."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as error:
        raise ConfigError(f"scan: {error}") from None
    entries: dict[str, tuple[str, ...]] = {}
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            if not override.is_discrete_sweep():
                raise ConfigError(
                    f"scan: {key} is an interval; the scan needs a list of values (a=x,y, range())"
                )
            values = tuple(f"{key}={value}" for value in override.sweep_string_iterator())
        else:
            values = (f"{key}={override.get_value_element_as_str()}",)
        entries.pop(override.key_or_group, None)  # the later one wins, in the later position
        entries[override.key_or_group] = values
    fixed = tuple(values[0] for values in entries.values() if len(values) == 1)
    axes = {key: values for key, values in entries.items() if len(values) > 1}
    return Grid(fixed=fixed, axes=axes, source=source)


def sweep_overrides(sweep: Mapping[str, Any], source: str = "sweep") -> list[str]:
    """A W&B sweep definition's parameters as Hydra overrides: `values` lists become swept
    overrides, `value` a fixed one. Every method's values are enumerated: for random and bayes
    searches that is the space they draw from."""
    method = sweep.get("method", "grid")
    if method != "grid":
        log.info(
            "scan: %s: method %s samples its values; the scan covers all of them", source, method
        )
    overrides = []
    for key, spec in (sweep.get("parameters") or {}).items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"scan: {source}: parameter {key} must be a mapping (values: [...])")
        if "parameters" in spec:
            raise ConfigError(
                f"scan: {source}: parameter {key} nests `parameters`; Hydra takes only flat "
                f"key=value overrides (write {key}.<name> instead)"
            )
        if "values" in spec:
            overrides.append(f"{key}=" + ",".join(_hydra_value(v) for v in spec["values"]))
        elif "value" in spec:
            overrides.append(f"{key}={_hydra_value(spec['value'])}")
        else:
            raise ConfigError(
                f"scan: {source}: parameter {key} is a distribution ({', '.join(spec)}); "
                "the scan enumerates configurations: give it `values`"
            )
    return overrides


def load_grid(inputs: Sequence[str], conf_dir: str | None = None) -> Grid:
    """The grid of `[SWEEP_FILE] [OVERRIDES...]`: the sweep's parameters, then the overrides
    (which replace a parameter of the same key). Nothing given: the checkout's sweep.yaml."""
    inputs = list(inputs)
    sweep_file = None
    if inputs and "=" not in inputs[0] and inputs[0].endswith((".yaml", ".yml")):
        sweep_file = Path(inputs.pop(0))
    elif not inputs:
        sweep_file = find_conf_dir(conf_dir) / "sweep.yaml"
    if sweep_file is None:
        return parse_grid(inputs)
    import yaml

    if not sweep_file.is_file():
        raise ConfigError(f"scan: no sweep definition at {sweep_file}")
    sweep = yaml.safe_load(sweep_file.read_text()) or {}
    if not isinstance(sweep, Mapping):
        raise ConfigError(f"scan: {sweep_file} is not a sweep definition (a YAML mapping)")
    return parse_grid(sweep_overrides(sweep, str(sweep_file)) + inputs, source=str(sweep_file))


def _hydra_value(value: object) -> str:
    """A sweep value as a Hydra override value (None is Hydra's null, not the string)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_hydra_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        raise ConfigError(f"scan: a sweep value must be flat, not {value!r}")
    text = str(value)
    if _PLAIN.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


# ---------------------------------------------------------------------------------------------
# Composing many configurations


class GridComposer:
    """Every configuration of a grid as `compose()` gives it, for one composition per value.

    Hydra composes a config in ~0.1-0.2 s, as long as measuring it. When each axis changes its
    own top-level nodes only (checked: every axis value is composed once and compared with the
    base), a configuration is the base with each axis's nodes taken from that axis's own
    composition; two configurations are then checked against a full composition. Anything
    else (a value that changes another group, as `model=custom` does) composes every
    configuration in full.
    """

    def __init__(
        self,
        grid: Grid,
        axes: Sequence[str],
        conf_dir: str | None = None,
        base: DictConfig | None = None,
    ) -> None:
        self.grid = grid
        self.axes = list(axes)
        self.conf_dir = conf_dir
        self.base = base if base is not None else compose(grid.fixed, conf_dir)
        base_tree = _tree(self.base)
        self.single: dict[str, DictConfig] = {}
        touched: dict[str, set[str]] = {}
        for axis in self.axes:
            touched[axis] = set()
            for override in grid.axes[axis]:
                self.single[override] = compose([*grid.fixed, override], conf_dir)
                touched[axis] |= _changed(base_tree, _tree(self.single[override]))
        self.touched = touched
        pairs = itertools.combinations(self.axes, 2)
        self.factorized = all(not touched[a] & touched[b] for a, b in pairs)
        if self.factorized and self.axes:
            jobs = grid.jobs(self.axes)
            for job in {jobs[0], jobs[-1]}:
                if _tree(self._assemble(job)) != _tree(compose([*grid.fixed, *job], conf_dir)):
                    self.factorized = False
                    break
        if not self.factorized:
            log.info("scan: the axes interact; composing every configuration in full")

    def __call__(self, job: Sequence[str]) -> DictConfig:
        """The config of `job` (one override per axis, in `axes` order)."""
        if self.factorized:
            return self._assemble(job)
        return compose([*self.grid.fixed, *job], self.conf_dir)

    def _assemble(self, job: Sequence[str]) -> DictConfig:
        cfg = copy.deepcopy(self.base)
        with open_dict(cfg):
            for axis, override in zip(self.axes, job, strict=True):
                source = self.single[override]
                for key in self.touched[axis]:
                    if key in source:
                        cfg[key] = copy.deepcopy(source[key])
                    elif key in cfg:
                        del cfg[key]
        return cfg


def _inert_axis(grid: Grid, axis: str, base: DictConfig, conf_dir: str | None) -> bool:
    """Whether every value of `axis` changes only keys that step 0 does not read (checked on
    its compositions, since a group option could reach beyond its own node)."""
    if not is_inert(axis):
        return False
    base_leaves = _leaf_paths(_tree(base))
    for override in grid.axes[axis]:
        leaves = _leaf_paths(_tree(compose([*grid.fixed, override], conf_dir)))
        changed = _changed(base_leaves, leaves)
        if not all(is_inert(path) for path in changed):
            log.info("scan: %s changes %s: measured like any other axis", override, sorted(changed))
            return False
    return True


def _tree(cfg: DictConfig) -> dict[str, Any]:
    return OmegaConf.to_container(cfg, resolve=False)  # type: ignore[return-value]


def _changed(a: Mapping[str, Any], b: Mapping[str, Any]) -> set[str]:
    """Keys whose values differ, or that only one side has."""
    return {key for key in a.keys() | b.keys() if a.get(key, _MISSING) != b.get(key, _MISSING)}


def _leaf_paths(tree: object, prefix: str = "") -> dict[str, object]:
    if isinstance(tree, Mapping):
        out: dict[str, object] = {}
        for key, value in tree.items():
            out.update(_leaf_paths(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: tree}


_MISSING = object()


# ---------------------------------------------------------------------------------------------
# Scanning


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


def scan(grid: Grid, seeds: int = 3, steps: int = 1, conf_dir: str | None = None) -> ScanResult:
    """Measure every configuration of `grid` at initialization over `seeds` seeds.

    The seeds are the grid's own `seed` and the ones after it: each is an init seed and a data
    seed, as `seed=` is for a training run.
    """
    if seeds < 1 or steps < 1:
        raise ConfigError(f"scan: --seeds {seeds} --steps {steps}: each must be at least 1")
    start = time.perf_counter()
    base = compose(grid.fixed, conf_dir)
    inert = [axis for axis in grid.axes if _inert_axis(grid, axis, base, conf_dir)]
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
    from gradsweep.errors import ShapeMismatchError
    from gradsweep.run.build import pick_device
    from gradsweep.run.validate import check_config
    from gradsweep.scan.measure import measure, quiet

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
    from gradsweep.config import group_choice

    return group_choice(cfg, group)


def _train_overrides(grid: Grid, chosen: Mapping[str, str]) -> tuple[str, ...]:
    """The configuration as `python train.py` overrides: the fixed ones, then each axis's."""
    return (*grid.fixed, *chosen.values())


def _sort_key(row: ScanRow) -> tuple:
    ratio = row.log10_ratio
    return (math.isnan(ratio), ratio if not math.isnan(ratio) else 0.0, tuple(row.choices.values()))


# ---------------------------------------------------------------------------------------------
# The command


def add_scan_command(commands: argparse._SubParsersAction) -> None:
    """Register `gradsweep scan` (called from gradsweep.cli.main.build_parser)."""
    parser = commands.add_parser(
        "scan",
        help="gradient flow of every configuration of a grid at initialization, in seconds",
        description="Build each configuration of a sweep definition (default: conf/sweep.yaml) "
        "or of a Hydra-style grid (activation=sigmoid,relu init=default,kaiming), run a few "
        "forward/backward passes at initialization and predict its verdict.",
    )
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="SWEEP_FILE | OVERRIDE",
        help="a sweep definition (.yaml) and/or Hydra overrides; a=x,y sweeps a key",
    )
    parser.add_argument(
        "--format", choices=("table", "csv", "json", "md"), default="table", help="stdout format"
    )
    parser.add_argument(
        "--seeds", type=int, default=3, help="seeds per configuration, from its seed= (3)"
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=1,
        help="forward/backward passes per seed; the first is training's step 0 (1)",
    )
    parser.add_argument(
        "--prune",
        metavar="OUT",
        help="write the configurations not predicted `vanishing` to OUT, one line of "
        "train.py overrides each (`xargs -L1 python train.py < OUT`)",
    )
    parser.add_argument(
        "--out",
        metavar="DIR",
        help="folder for the heatmap, scan.json and the W&B run "
        "(default outputs/scan/<date>/<time>)",
    )
    parser.set_defaults(run=run_scan)


def run_scan(args: argparse.Namespace) -> int:
    from gradsweep.scan import report as scan_report

    grid = load_grid(args.inputs, args.config_dir)
    result = scan(grid, seeds=args.seeds, steps=args.steps, conf_dir=args.config_dir)
    out = Path(args.out) if args.out else Path("outputs/scan") / time.strftime("%Y-%m-%d/%H-%M-%S")
    out.mkdir(parents=True, exist_ok=True)
    records = scan_report.records(result)
    scan_report.write_json(out / "scan.json", records)
    picture = scan_report.heatmap(result, out / "scan_heatmap.png")
    if args.prune:
        kept = scan_report.write_prune(result, Path(args.prune))
        log.info(
            "scan: kept %d of %d configurations in %s: `xargs -L1 python train.py < %s`",
            kept,
            len(result.rows),
            args.prune,
            args.prune,
        )
    scan_report.log_to_wandb(result, records, picture, out)
    counts = ", ".join(f"{n} {v}" for v, n in scan_report.verdict_counts(result).items())
    log.info(
        "scan: %d configurations in %.1f s (%d measured: %.1f s); %s; heatmap %s",
        len(result.rows),
        result.seconds["total"],
        result.measured,
        result.seconds["measure"],
        counts,
        picture,
    )
    sys.stdout.write(scan_report.render(records, args.format))
    sys.stdout.flush()
    return 0
