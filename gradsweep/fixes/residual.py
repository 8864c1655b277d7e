"""Residual connections as modules: `Residual` around a block, `Shortcut` placed in a traced
forward, and the learned `projection` where a block changes its input's shape."""

from __future__ import annotations

import torch
from torch import nn

from gradsweep.errors import ShapeMismatchError

PLACEMENTS = ("all", "nearest_input", "nearest_output")


class Residual(nn.Module):
    """out = body(x) + shortcut(x); the shortcut is the identity or a learned projection."""

    def __init__(self, body: nn.Module, shortcut: nn.Module | None = None) -> None:
        super().__init__()
        self.body = body
        self.shortcut = shortcut if shortcut is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _add(self.body(x), self.shortcut(x))


class Shortcut(nn.Module):
    """out + projection(x): the residual connection placed in a traced forward.

    Called with the block's output and its input; the projection is the identity or
    a learned map (see `projection`).
    """

    def __init__(self, projection: nn.Module | None = None) -> None:
        super().__init__()
        self.projection = projection if projection is not None else nn.Identity()

    def forward(self, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return _add(out, self.projection(x))


def _add(out: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
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


def place_blocks(blocks: list, placement: str, count: int) -> list:
    if placement == "nearest_input":
        return blocks[:count]
    if placement == "nearest_output":
        return blocks[-count:]
    return blocks


def projections_note(described: list[str]) -> str:
    """ " (3 with projections: (784,)->(256,), (16, 7, 7)->(64, 7, 7) x2)"; repeats counted."""
    if not described:
        return ""
    counts: dict[str, int] = {}
    for shapes in described:
        counts[shapes] = counts.get(shapes, 0) + 1
    listed = ", ".join(f"{shapes} x{n}" if n > 1 else shapes for shapes, n in counts.items())
    return f" ({len(described)} with projections: {listed})"


def shapes_note(x: torch.Tensor, y: torch.Tensor) -> str:
    return f"{tuple(x.shape[1:])}->{tuple(y.shape[1:])}"
