"""Activation functions by name, and the transform that swaps them in a model."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

# Name -> constructor. A new activation goes here (and in conf/activation/<name>.yaml).
ACTIVATIONS: dict[str, Callable[..., nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "leaky_relu": nn.LeakyReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}

# Every module class that counts as an activation when swapping or when finding
# where a norm goes: the registry's own plus the common ones users write.
ACTIVATION_TYPES: tuple[type[nn.Module], ...] = (
    nn.Sigmoid,
    nn.Tanh,
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardsigmoid,
    nn.Hardswish,
    nn.LogSigmoid,
    nn.Tanhshrink,
)

# Saturating activations: their derivative is at most 1/4 (sigmoid) or 1 (tanh)
# and near zero away from the origin, which is what starves early layers.
SATURATING = frozenset({"sigmoid", "tanh"})
RELU_FAMILY = frozenset({"relu", "leaky_relu", "gelu", "silu"})


def create_activation(name: str, **kwargs: object) -> nn.Module:
    """Build the activation module `name` with its options (e.g. negative_slope)."""
    try:
        factory = ACTIVATIONS[name]
    except KeyError:
        raise ValueError(
            f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}"
        ) from None
    return factory(**kwargs)


def activation_name(module: nn.Module) -> str | None:
    """The registry name of an activation module, or None if it is not one of ours."""
    for name, factory in ACTIVATIONS.items():
        if type(module) is factory:
            return name
    return None


def is_activation(module: nn.Module) -> bool:
    return isinstance(module, ACTIVATION_TYPES)


def dominant_activation(model: nn.Module) -> str | None:
    """The registry name of the activation the model uses most, if any.

    Initialization schemes match their gain to it when the user keeps the model's
    own activations.
    """
    counts: dict[str, int] = {}
    for module in model.modules():
        name = activation_name(module)
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def swap_activations(model: nn.Module, name: str, **kwargs: object) -> str:
    """Replace every activation module in `model` with a fresh `name` activation.

    Works on any module tree (not only Sequential): each child that is an
    activation is replaced where it is registered; one that already is the chosen
    activation stays. Returns an account of the change.
    """
    target = create_activation(name, **kwargs)
    replaced: dict[str, int] = {}
    kept = 0
    for parent in model.modules():
        for child_name, child in parent.named_children():
            if not is_activation(child):
                continue
            if type(child) is type(target) and repr(child) == repr(target):
                kept += 1
                continue
            kind = type(child).__name__
            replaced[kind] = replaced.get(kind, 0) + 1
            setattr(parent, child_name, create_activation(name, **kwargs))
    if not replaced:
        found = f"all {kept} activations already are" if kept else "no activation module is"
        return f"activation: {found} {target!r}; nothing swapped"
    swaps = ", ".join(f"{n} {kind}" for kind, n in replaced.items())
    return f"activation: swapped {swaps} -> {target!r}"
