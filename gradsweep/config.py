"""Composing the project's Hydra config outside `train.py` (CLI commands, tests)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig

# The checkout's conf/ (the package is installed editable, beside it).
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


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
