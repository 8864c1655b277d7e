"""A run's record in one flat schema: fix choices by group name, metrics by key.

W&B's config, `summary.json`, sweeps and reports all read the same names: each
group's choice under the group's name (`activation: relu`) and every other setting
as a dotted key (`optimizer.lr: 0.01`), which is exactly how sweep parameters and
Hydra overrides spell them.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from gradsweep.config import is_custom

# The groups whose choice each run records under the group's own name.
CHOICE_GROUPS = ("data", "model", "activation", "init", "norm", "skip", "clipping", "optimizer")
GROUPS = (*CHOICE_GROUPS, "logger")


def group_choice(cfg: DictConfig, group: str) -> str:
    """The option chosen for `group` (a custom model reads as `custom`)."""
    node = cfg[group]
    if group == "model" and is_custom(node):
        return "custom"
    return str(node.name)


def flat_config(cfg: DictConfig) -> dict[str, object]:
    """The resolved config as flat keys: group choices plus dotted settings."""
    container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    flat: dict[str, object] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                walk(f"{prefix}.{key}" if prefix else str(key), value)
        else:
            flat[prefix] = node

    for key, value in container.items():
        if key in GROUPS and isinstance(value, dict):
            flat[key] = group_choice(cfg, key)
            walk(key, {k: v for k, v in value.items() if k != "name"})
        else:
            walk(str(key), value)
    return flat


def write_json_atomic(path: Path, values: dict[str, object]) -> None:
    """Write `values` as JSON via a temp file and a rename: readers never see half a file.

    Non-finite floats are written as null so any JSON reader can parse the file.
    """
    clean = {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in values.items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(clean, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
