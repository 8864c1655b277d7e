"""The project's config: composing it outside `train.py` (CLI commands, tests), and the run
record's vocabulary.

W&B's config, `summary.json`, sweeps and reports all read the same flat names: each group's
choice under the group's name (`activation: relu`) and every other setting as a dotted key
(`optimizer.lr: 0.01`), which is exactly how sweep parameters and Hydra overrides spell them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

# The checkout's conf/ (the package is installed editable, beside it).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# The fixes, in the order the diagnosis advises them.
FIX_GROUPS = ("activation", "init", "norm", "skip", "clipping")
# The groups whose choice each run records under the group's own name.
CHOICE_GROUPS = ("data", "model", "activation", "init", "norm", "skip", "clipping", "optimizer")
GROUPS = (*CHOICE_GROUPS, "logger")
# `data.source`: where the images come from (gradsweep.data.sources says what each means).
DATA_SOURCES = ("auto", "full", "bundled")
# `logger.mode`: where a run logs (gradsweep.tracking.tracker says what each means).
LOGGER_MODES = ("auto", "online", "offline", "disabled")
# Characters a Hydra override value may hold unquoted; anything else is quoted.
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_./:+-]+")


def run_folder(by_time: str) -> str:
    """The run's folder under outputs/ (`hydra.run.dir` in conf/train.yaml): under `wandb agent`,
    `sweep-<sweep id>/<W&B run id>`, so that a requeued run, which keeps its W&B id, finds its
    checkpoint, and two agents never share a folder; else `by_time`, the start time."""
    sweep_id, run_id = os.environ.get("WANDB_SWEEP_ID"), os.environ.get("WANDB_RUN_ID")
    return f"sweep-{sweep_id}/{run_id}" if sweep_id and run_id else by_time


# Registered on import: Hydra resolves hydra.run.dir before train.py's task runs.
OmegaConf.register_new_resolver("gradsweep.run_folder", run_folder, replace=True)


def find_conf_dir(explicit: str | Path | None = None) -> Path:
    """conf/ given explicitly, else the checkout's, else ./conf."""
    for candidate in (explicit, CONF_DIR, Path.cwd() / "conf"):
        if candidate is not None and (Path(candidate) / "train.yaml").is_file():
            return Path(candidate).resolve()
    raise FileNotFoundError(
        "found no conf/train.yaml: run from a gradsweep checkout (pip install -e .) "
        "or pass --config-dir PATH"
    )


def compose(overrides: Sequence[str] = (), conf_dir: str | Path | None = None) -> DictConfig:
    """The config `python train.py OVERRIDES...` would run, composed by Hydra itself."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(find_conf_dir(conf_dir)), version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides))


def is_custom(cfg_model) -> bool:
    """Whether a model config names the user's own class (`model=custom`).

    `keys()`, not `in`: omegaconf's `in` is False for a `???` value not yet given.
    """
    return "_target_" in cfg_model.keys()  # noqa: SIM118


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


def hydra_value(text: str) -> str:
    """`text` as a Hydra override value, quoted where Hydra would read syntax in it."""
    if _PLAIN_VALUE.fullmatch(text):
        return text
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
