"""What counts as a weight layer, and the order in which a forward pass meets them.

The weight layers are the Linear and conv layers in forward order, not norms and not
residual projections. Telemetry, pictures and comparisons across runs index layers
this way, so runs whose parameter names differ (a norm inserted shifts Sequential
indices) still line up layer by layer.
"""

from __future__ import annotations

import torch
from torch import nn

WEIGHT_LAYER_TYPES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
)


def is_weight_layer(module: nn.Module) -> bool:
    return isinstance(module, WEIGHT_LAYER_TYPES) and not getattr(
        module, "is_shortcut_projection", False
    )


def out_features(module: nn.Module) -> int:
    """Features (Linear) or channels (conv) a weight layer produces."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels  # type: ignore[return-value]


def weight_layers(model: nn.Module, sample: torch.Tensor) -> list[str]:
    """Qualified names of the weight layers, in the order a forward pass calls them.

    Registration order is not forward order in a model whose layers are attributes,
    so one forward pass of `sample` under hooks records the true order. A layer
    called twice (weight sharing) counts once, at its first call.
    """
    names = {module: name for name, module in model.named_modules() if is_weight_layer(module)}
    order: list[str] = []

    def record(module: nn.Module, _inputs: object, _output: object) -> None:
        name = names[module]
        if name not in order:
            order.append(name)

    probe_forward(model, sample, [module.register_forward_hook(record) for module in names])
    return order


def probe_forward(model: nn.Module, sample: torch.Tensor, handles: list) -> None:
    """One forward of `sample` for the given hooks to watch, then the hooks removed.

    In eval mode and without grad, so the probe moves no BatchNorm running statistics;
    the model's training mode is restored after.
    """
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(sample)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()


def set_children(stack: nn.Sequential, children: list[nn.Module]) -> None:
    """Replace a Sequential's children in place, so its parent keeps the same object."""
    for key in list(stack._modules):
        del stack._modules[key]
    for index, child in enumerate(children):
        stack.add_module(str(index), child)
