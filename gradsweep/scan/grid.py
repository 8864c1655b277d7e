"""The grid a scan covers: from a W&B sweep definition's parameters or from Hydra-style
overrides (`activation=sigmoid,relu`), as fixed overrides and swept axes in Hydra's own syntax."""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradsweep.config import find_conf_dir, hydra_value
from gradsweep.errors import ConfigError

log = logging.getLogger(__name__)


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
    return hydra_value(str(value))
