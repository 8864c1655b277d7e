"""Residual shortcuts, and the transform that wraps blocks of a model with them."""

from __future__ import annotations

import torch
from torch import nn

from gradsweep.activations import is_activation
from gradsweep.layers import is_weight_layer, set_children

PLACEMENTS = ("all", "nearest_input", "nearest_output")


class ShapeMismatchError(ValueError):
    """A shortcut whose output shape differs from its block's: never broadcast silently."""


class Residual(nn.Module):
    """out = body(x) + shortcut(x); the shortcut is the identity or a learned projection."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        skip = self.shortcut(x)
        # A shape comparison costs a microsecond; a silent broadcast of (B, 256) with
        # (B, 1) would cost the user a day.
        if out.shape != skip.shape:
            raise ShapeMismatchError(
                f"residual block output {tuple(out.shape)} does not match its shortcut "
                f"{tuple(skip.shape)}"
            )
        return out + skip


def projection(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """A learned map from x's shape to y's: Identity, Linear without bias, or 1x1 conv.

    Raises ShapeMismatchError, naming both shapes, when no such map exists.
    """
    if x.shape == y.shape:
        return nn.Identity()
    mismatch = ShapeMismatchError(
        f"no projection maps a block input of shape {tuple(x.shape)} to its output "
        f"{tuple(y.shape)}: a shortcut needs the same rank and, for images, a size "
        "that an integer stride reaches"
    )
    if x.dim() == 2 and y.dim() == 2:
        proj: nn.Module = nn.Linear(x.shape[1], y.shape[1], bias=False)
    elif x.dim() == 4 and y.dim() == 4:
        stride = x.shape[-1] // y.shape[-1] if y.shape[-1] else 0
        if stride < 1:
            raise mismatch
        proj = nn.Conv2d(x.shape[1], y.shape[1], kernel_size=1, stride=stride, bias=False)
    else:
        raise mismatch
    # Shortcut projections are not counted among the weight layers telemetry indexes.
    proj.is_shortcut_projection = True  # type: ignore[assignment]
    proj = proj.to(device=x.device, dtype=x.dtype)
    with torch.no_grad():
        if proj(x).shape != y.shape:
            raise mismatch
    return proj


def _units(children: list[nn.Module]) -> list[tuple[int, int]]:
    """[start, end) spans of hidden units: a weight layer, its norms, its activation.

    Units that follow one another directly form a chain a block may span; anything
    else between them (pooling, flatten, the classifier) is left outside the blocks.
    """
    spans: list[tuple[int, int]] = []
    for start, child in enumerate(children):
        if not is_weight_layer(child):
            continue
        for end in range(start + 1, len(children)):
            if is_weight_layer(children[end]):
                break
            if is_activation(children[end]):
                spans.append((start, end + 1))
                break
    return spans


def _blocks(spans: list[tuple[int, int]], block_size: int) -> list[tuple[int, int]]:
    """Group runs of adjacent unit spans into blocks of `block_size` units."""
    blocks: list[tuple[int, int]] = []
    run: list[tuple[int, int]] = []
    for span in [*spans, None]:
        if span is not None and (not run or run[-1][1] == span[0]):
            run.append(span)
            continue
        for start in range(0, len(run), block_size):
            chunk = run[start : start + block_size]
            blocks.append((chunk[0][0], chunk[-1][1]))
        run = [span] if span is not None else []
    return blocks


def add_residual(
    model: nn.Module,
    sample: torch.Tensor,
    block_size: int = 2,
    placement: str = "all",
    count: int = 3,
) -> str:
    """Wrap blocks of `block_size` hidden units of the model's main nn.Sequential.

    `sample` is a batch the model accepts: one forward pass through the stack gives
    each block's input and output shapes, hence identity or projection shortcuts.
    `placement` picks all blocks, or the `count` nearest the input or the output.
    """
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown skip.placement {placement!r}; choose one of {list(PLACEMENTS)}")
    stack = _main_sequential(model)
    children = list(stack)
    blocks = _blocks(_units(children), block_size)
    if not blocks:
        return "skip: found no chain of weight layer + activation to wrap; nothing changed"
    if placement == "nearest_input":
        chosen = blocks[:count]
    elif placement == "nearest_output":
        chosen = blocks[-count:]
    else:
        chosen = blocks

    # What enters each child (and the stack's output), from one no-grad pass.
    inputs = _child_inputs(model, stack, sample)
    rebuilt: list[nn.Module] = []
    described: list[str] = []
    index = 0
    for start, end in chosen:
        rebuilt.extend(children[index:start])
        body = nn.Sequential(*children[start:end])
        x = inputs[start]
        y = inputs[end]
        shortcut = projection(x, y)
        rebuilt.append(Residual(body, shortcut))
        if not isinstance(shortcut, nn.Identity):
            described.append(f"{tuple(x.shape[1:])}->{tuple(y.shape[1:])}")
        index = end
    rebuilt.extend(children[index:])
    set_children(stack, rebuilt)

    account = f"skip: wrapped {len(chosen)} of {len(blocks)} blocks of {block_size} with shortcuts"
    if described:
        account += f" ({len(described)} with projections: {', '.join(described)})"
    return account


def _main_sequential(model: nn.Module) -> nn.Sequential:
    """The model's longest nn.Sequential: the stack that holds the hidden layers."""
    stacks = [m for m in model.modules() if isinstance(m, nn.Sequential)]
    if not stacks:
        raise ValueError(
            "skip=residual needs the hidden layers in an nn.Sequential; "
            f"{type(model).__name__} has none"
        )
    return max(stacks, key=len)


def _child_inputs(model: nn.Module, stack: nn.Sequential, sample: torch.Tensor) -> list:
    """The tensor entering each child of `stack` when `model` runs on `sample`, then its output."""
    captured: list[torch.Tensor] = []
    handle = stack.register_forward_pre_hook(lambda _m, args: captured.append(args[0]))
    was_training = model.training
    try:
        model.eval()  # the probe must not move BatchNorm's running statistics
        with torch.no_grad():
            model(sample)
            x = captured[0]
            inputs = []
            for child in stack:
                inputs.append(x)
                x = child(x)
            inputs.append(x)
    finally:
        model.train(was_training)
        handle.remove()
    return inputs
