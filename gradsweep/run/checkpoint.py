"""checkpoints/last.pt: everything a run needs to continue exactly where it stopped.

Written atomically (a temp file, then a rename), so a kill mid-write leaves the previous
checkpoint intact; read with `torch.load(weights_only=True)`, which unpickles tensors and
plain containers only, never arbitrary code.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from gradsweep.config import flat_config
from gradsweep.errors import CheckpointError, first_line
from gradsweep.files import atomic_write

FORMAT = "gradsweep-checkpoint"
VERSION = 1


def checkpoint_path(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints" / "last.pt"


def config_hash(cfg: DictConfig) -> str:
    """A hash of everything that shapes training: where it is logged (logger.*) and how
    often it is checkpointed do not count, so a resumed run may log elsewhere."""
    relevant = {
        key: value
        for key, value in flat_config(cfg).items()
        if not key.startswith("logger") and key != "trainer.checkpoint_every"
    }
    blob = json.dumps(relevant, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write `state` to `path` atomically and durably, with the format marker."""
    with atomic_write(path, "wb", fsync=True) as handle:
        torch.save({"format": FORMAT, "version": VERSION, **state}, handle)


def load_checkpoint(path: Path, expected_hash: str) -> dict[str, Any]:
    """The state saved at `path`, checked to be ours and to match this run's config."""
    fix = f"delete {path.parent} to start over, or pick a new hydra.run.dir"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as error:
        raise CheckpointError(
            f"cannot read checkpoint {path} ({first_line(error)}): it is corrupt or not a "
            f"gradsweep checkpoint; {fix}"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gradsweep checkpoint; {fix}")
    if state.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has checkpoint version {state.get('version')}, this gradsweep reads "
            f"{VERSION}; {fix}"
        )
    if state.get("config_hash") != expected_hash:
        raise CheckpointError(
            f"{path} was written by a different config (hash {state.get('config_hash')}, "
            f"this run {expected_hash}): resuming would mix two experiments; {fix}, "
            "or re-run with the overrides it was started with"
        )
    return state


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
