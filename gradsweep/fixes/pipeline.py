"""The five fixes as one pipeline over any nn.Module: activation -> norm -> skip -> init.

Order matters: norms go between a layer and its activation, so activations come
first; residual blocks span layer + norm + activation; initialization comes last so
that it also covers the shortcut projections. Clipping acts on gradients, not on the
model: see gradsweep.telemetry.gradients.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from gradsweep.errors import ConfigError, ShapeMismatchError
from gradsweep.fixes.activations import dominant_activation, swap_activations
from gradsweep.fixes.initialization import initialize
from gradsweep.fixes.norms import insert_norms
from gradsweep.fixes.skips import add_residual

# Options meaning "leave the model as it is" for each fix group.
UNCHANGED = {"keep", "none", "default"}


def fix(
    model: nn.Module,
    sample: torch.Tensor,
    *,
    activation: str | None = None,
    norm: str | None = None,
    skip: str | None = None,
    init: str | None = None,
    negative_slope: float = 0.01,
    num_groups: int = 8,
    block_size: int = 2,
    placement: str = "all",
    count: int = 3,
    modules: Sequence[str] | None = None,
    activation_options: Mapping[str, object] | None = None,
) -> list[str]:
    """Apply the chosen fixes to `model` in place; return one account line per fix.

        fix(model, x[:8], activation="gelu", init="kaiming")

    `activation`: a registry name (gelu, relu, ...); `norm`: batch, layer or group;
    `skip`: residual (blocks of `block_size`, or the submodules named in `modules`);
    `init`: kaiming, xavier or auto. None (or keep/none/default) leaves that part as
    it is. `sample` is a batch the model accepts, used to infer shortcut shapes.
    `activation_options` go to the activation's constructor (default: the slope, for
    leaky_relu).
    """
    account: list[str] = []
    if activation not in (None, *UNCHANGED):
        options = dict(activation_options or {})
        if activation == "leaky_relu":
            options.setdefault("negative_slope", negative_slope)
        account.append(swap_activations(model, activation, **options))
    if norm not in (None, *UNCHANGED):
        account.append(insert_norms(model, norm, num_groups))
    if skip not in (None, *UNCHANGED):
        if skip != "residual":
            raise ValueError(f"unknown skip {skip!r}; choose residual or none")
        account.append(add_residual(model, sample, block_size, placement, count, modules))
    if init not in (None, *UNCHANGED):
        # Match the gain to the activation the model now has (its own, when kept).
        matched = activation if activation not in (None, *UNCHANGED) else dominant_activation(model)
        account.append(initialize(model, init, matched, negative_slope))
    return account


def apply_fixes(model: nn.Module, cfg, sample: torch.Tensor) -> list[str]:
    """Apply the config's activation, norm, skip and init choices to `model` in place.

    `cfg` holds the groups `activation`, `norm`, `skip`, `init`; `sample` is a batch
    the model accepts, used to infer shortcut shapes. Returns one account line per
    fix that changed something.
    """
    skip = cfg.skip
    modules = skip.get("modules")
    try:
        return fix(
            model,
            sample,
            activation=cfg.activation.name,
            norm=cfg.norm.name,
            skip=skip.name,
            init=cfg.init.name,
            negative_slope=cfg.activation.get("negative_slope", 0.01),
            num_groups=cfg.norm.get("num_groups", 8),
            block_size=skip.get("block_size", 2),
            placement=skip.get("placement", "all"),
            count=skip.get("count", 3),
            modules=list(modules) if modules is not None else None,
            activation_options={k: v for k, v in cfg.activation.items() if k != "name"},
        )
    except ShapeMismatchError:
        raise
    except ValueError as error:  # e.g. skip.modules naming no module: the user's to fix
        raise ConfigError(str(error)) from error
