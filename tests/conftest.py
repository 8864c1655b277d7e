"""Fixtures that compose configs the way users do, through Hydra, then shrink the run."""

from __future__ import annotations

import os

# One torch thread per test process and per subprocess it starts: the tests measure no
# speed, and on a busy 2-core machine two OpenMP threads per process oversubscribe the
# cores and run some steps tens of times slower.
os.environ.setdefault("OMP_NUM_THREADS", "1")

from collections.abc import Callable

import pytest
from omegaconf import DictConfig, open_dict

from gradsweep.config import compose

ComposeFn = Callable[..., DictConfig]


@pytest.fixture(autouse=True, scope="session")
def _session_data_cache(tmp_path_factory: pytest.TempPathFactory):
    """Processed-data caches (gradsweep/data/cache.py) go to a folder of this session, for this
    process and the ones it starts: no test reads or writes the user's ~/.cache/gradsweep/."""
    previous = os.environ.get("GRADSWEEP_CACHE_DIR")
    os.environ["GRADSWEEP_CACHE_DIR"] = str(tmp_path_factory.mktemp("data-cache"))
    yield
    if previous is None:
        os.environ.pop("GRADSWEEP_CACHE_DIR", None)
    else:
        os.environ["GRADSWEEP_CACHE_DIR"] = previous


@pytest.fixture
def make_cfg() -> ComposeFn:
    """`make_cfg("activation=relu", max_steps=20)`: the config `python train.py` would run
    with those overrides, shrunk to a short offline run on the bundled real digits."""

    def make(*overrides: str, max_steps: int = 20, **trainer: object) -> DictConfig:
        cfg = compose(["logger=none", "data.source=bundled", *overrides])
        with open_dict(cfg):
            cfg.trainer.max_steps = max_steps
            cfg.trainer.eval_every = max_steps
            cfg.trainer.update(trainer)
        return cfg

    return make


@pytest.fixture
def no_wandb_credentials(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A user's first run: no API key anywhere wandb looks (its own HOME, config folder and
    netrc) and none of the WANDB_* variables that carry a key, a mode or a run. The W&B
    writer process inherits this environment."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(home / ".config" / "wandb"))
    monkeypatch.setenv("NETRC", str(home / ".netrc"))
    for name in (
        "WANDB_API_KEY",
        "WANDB_IDENTITY_TOKEN_FILE",
        "WANDB_MODE",
        "WANDB_BASE_URL",
        "WANDB_DIR",
        "WANDB_RUN_ID",
        "WANDB_RESUME",
        "WANDB_PROJECT",
        "WANDB_ENTITY",
        "WANDB_RUN_GROUP",
        "WANDB_SWEEP_ID",
        "WANDB_SWEEP_PARAM_PATH",
        "WANDB_PROGRAM",
    ):
        # Set first, so that the end of the test unsets it even where the code under test
        # (wandb's agent) set it in this process's environment meanwhile.
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
