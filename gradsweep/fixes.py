"""The five fixes as one pipeline over any nn.Module: activation -> norm -> skip -> init.

Order matters: norms go between a layer and its activation, so activations come
first; residual blocks span layer + norm + activation; initialization comes last so
that it also covers the shortcut projections. Clipping acts on gradients, not on the
model: see gradsweep.telemetry.
"""

from __future__ import annotations

import torch
from torch import nn

from gradsweep.activations import dominant_activation, swap_activations
from gradsweep.initialization import initialize
from gradsweep.norms import insert_norms
from gradsweep.skips import add_residual

# Options meaning "leave the model as it is" for each fix group.
UNCHANGED = {"keep", "none", "default"}


def apply_fixes(model: nn.Module, cfg, sample: torch.Tensor) -> list[str]:
    """Apply the config's activation, norm, skip and init choices to `model` in place.

    `cfg` holds the groups `activation`, `norm`, `skip`, `init`; `sample` is a batch
    the model accepts, used to infer shortcut shapes. Returns one account line per
    fix that changed something.
    """
    account: list[str] = []
    activation = cfg.activation.name
    if activation not in UNCHANGED:
        options = {k: v for k, v in cfg.activation.items() if k != "name"}
        account.append(swap_activations(model, activation, **options))
    if cfg.norm.name not in UNCHANGED:
        account.append(insert_norms(model, cfg.norm.name, cfg.norm.get("num_groups", 8)))
    if cfg.skip.name not in UNCHANGED:
        skip = cfg.skip
        account.append(add_residual(model, sample, skip.block_size, skip.placement, skip.count))
    if cfg.init.name not in UNCHANGED:
        # Match the gain to the activation the model now has (its own, with `keep`).
        matched = activation if activation not in UNCHANGED else dominant_activation(model)
        slope = cfg.activation.get("negative_slope", 0.01)
        account.append(initialize(model, cfg.init.name, matched, slope))
    return account
