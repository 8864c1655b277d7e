"""Normalization layers by name, and the transform that inserts them into a model.

A norm goes after each Linear/conv that feeds an activation and before that
activation: Linear -> Norm -> activation. What each name means:

- batch: BatchNorm1d after Linear, BatchNorm2d after conv.
- layer: LayerNorm over the features after Linear. After conv, GroupNorm with one
  group: each sample is normalized over all its channels and positions, with a
  per-channel scale and shift. It is LayerNorm over (C, H, W) without tying the
  layer to one image size.
- group: GroupNorm(num_groups, channels); num_groups must divide every width.
"""

from __future__ import annotations

from torch import nn

from gradsweep.activations import is_activation
from gradsweep.layers import is_weight_layer, out_features, set_children

NORMS = ("batch", "layer", "group")


def create_norm(name: str, num_features: int, spatial: bool, num_groups: int = 8) -> nn.Module:
    """The norm `name` for a layer producing `num_features` (channels if `spatial`)."""
    if name == "batch":
        return nn.BatchNorm2d(num_features) if spatial else nn.BatchNorm1d(num_features)
    if name == "layer":
        return nn.GroupNorm(1, num_features) if spatial else nn.LayerNorm(num_features)
    if name == "group":
        if num_features % num_groups:
            raise ValueError(
                f"norm.num_groups={num_groups} does not divide a layer of width "
                f"{num_features}; pick a divisor of {num_features}"
            )
        return nn.GroupNorm(num_groups, num_features)
    raise ValueError(f"unknown norm {name!r}; choose one of {list(NORMS)}")


def insert_norms(model: nn.Module, name: str, num_groups: int = 8) -> str:
    """Insert a `name` norm between each weight layer and the activation it feeds.

    Looks inside every nn.Sequential of the model, nested or not, for a weight layer
    directly followed by an activation. Returns an account of the change.
    """
    inserted: dict[str, int] = {}
    for container in list(model.modules()):
        if not isinstance(container, nn.Sequential):
            continue
        children = list(container)
        rebuilt: list[nn.Module] = []
        for index, child in enumerate(children):
            rebuilt.append(child)
            feeds_activation = index + 1 < len(children) and is_activation(children[index + 1])
            if is_weight_layer(child) and feeds_activation:
                spatial = not isinstance(child, nn.Linear)
                norm = create_norm(name, out_features(child), spatial, num_groups)
                inserted[type(norm).__name__] = inserted.get(type(norm).__name__, 0) + 1
                rebuilt.append(norm)
        if len(rebuilt) != len(children):
            set_children(container, rebuilt)
    if not inserted:
        return "norm: found no weight layer directly followed by an activation; nothing inserted"
    counts = ", ".join(f"{n} {kind}" for kind, n in inserted.items())
    return f"norm: inserted {counts} between weight layers and their activations"
