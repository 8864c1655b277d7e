"""Building a run's parts the way training builds them, so that the scan, `gradsweep show`
and a user's own loop get the same model, on the same device, from the same random streams."""

from __future__ import annotations

import hashlib
import logging

import torch
from omegaconf import DictConfig
from torch import nn

from gradsweep.data.tensors import Data
from gradsweep.fixes.pipeline import apply_fixes
from gradsweep.run.models import create_model

log = logging.getLogger(__name__)


def stream_seed(seed: int, stream: str) -> int:
    """An independent seed per random stream ("init", "data"), derived from `seed`.

    Changing a fix changes how many numbers initialization draws; separate streams
    keep the batch order identical across runs that share a seed.
    """
    digest = hashlib.sha256(f"{seed}/{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"trainer.device={name} but CUDA is not available; use trainer.device=cpu"
        )
    return device


def build_model(cfg: DictConfig, data: Data, device: torch.device) -> nn.Module:
    """The configured model with its fixes applied, on `device`, seeded by the init stream."""
    torch.manual_seed(stream_seed(cfg.seed, "init"))
    model = create_model(cfg.model, data.input_shape, data.num_classes)
    for line in apply_fixes(model, cfg, data.train_x[:8].cpu()):
        log.info(line)
    return model.to(device)
