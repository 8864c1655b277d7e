"""Composing every configuration of a grid as `python train.py` would, at one Hydra composition
per axis value where the axes do not interact, and telling which axes step 0 cannot see."""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from gradsweep.config import compose as hydra_compose
from gradsweep.errors import ConfigError
from gradsweep.scan.grid import Grid

log = logging.getLogger(__name__)

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


def inert_axis(grid: Grid, axis: str, base: DictConfig, conf_dir: str | None) -> bool:
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
