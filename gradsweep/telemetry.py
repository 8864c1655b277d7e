"""Per-layer gradient norms and gradient clipping, fused into one pass per step.

After `backward()`, every gradient's L2 norm comes from a single fused kernel
(`torch._foreach_norm`), and the global norm and the clipping coefficient are derived
from those norms on the device. gradsweep.monitor stacks them with the step's other
scalars (loss, accuracy, the clip flag) into one vector that crosses to the host once.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

CLIPPINGS = ("none", "norm", "value")


@dataclass(frozen=True)
class Clipping:
    """`none`, `norm` (global norm at most max_norm) or `value` (|g| <= clip_value)."""

    name: str = "none"
    max_norm: float = 1.0
    norm_type: float = 2.0
    clip_value: float = 0.5

    @classmethod
    def from_config(cls, cfg) -> Clipping:
        return cls(**{k: v for k, v in dict(cfg).items() if k in cls.__dataclass_fields__})


def select_params(model: nn.Module, spec: str, weight_layer_names: list[str]) -> list[str]:
    """Names of the parameters whose gradient norms are logged.

    `spec` is `all`, `weights` (the .weight of each weight layer, in forward order) or
    a regular expression matched against `named_parameters()` names.
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if spec == "all":
        return names
    if spec == "weights":
        return [f"{layer}.weight" for layer in weight_layer_names]
    pattern = re.compile(spec)
    chosen = [name for name in names if pattern.search(name)]
    if not chosen:
        raise ValueError(f"telemetry.params={spec!r} matches no parameter; e.g. {names[:3]}")
    return chosen


class Measurement(NamedTuple):
    """One step's gradient measurement, as device tensors (no host sync made)."""

    norms: torch.Tensor  # every trainable parameter's gradient L2 norm; NaN: no gradient
    total: torch.Tensor  # the global L2 norm, over the parameters that have a gradient
    hit: torch.Tensor | None  # 1.0 if clipping changed the gradients, else 0.0; None: no clipping


class GradientTelemetry:
    """Gradient norms of every trainable parameter, and clipping, on the device.

    `measure()` is called between `backward()` and `optimizer.step()`. The norms are in
    `named_parameters()` order; `logged_index` and `layer_index` say where the logged
    parameters and the weight layers' weights sit among them, so that the host picks them
    out of the transferred values rather than the device spending ops on it. Parameters
    without a gradient this step read as NaN, take no part in the global norm, and are
    listed in `missing` (positions in `logged`).
    """

    def __init__(
        self,
        model: nn.Module,
        logged: list[str],
        weight_layers: list[str],
        clipping: Clipping,
    ) -> None:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        index = {name: i for i, (name, _) in enumerate(trainable)}
        self.params = [p for _, p in trainable]
        self.logged = logged
        self.clipping = clipping
        self.logged_index = [index[name] for name in logged]
        self.layer_index = [index[f"{n}.weight"] for n in weight_layers]
        self.missing: tuple[int, ...] = ()

    def measure(self) -> Measurement:
        """Norms (and clipping) for the gradients now in `.grad`."""
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            raise RuntimeError("no parameter has a gradient: call backward() before measure()")

        # The one fused pass: every gradient's L2 norm at once.
        norms = torch.stack(torch._foreach_norm(grads, 2.0))
        total = torch.linalg.vector_norm(norms, 2.0)
        self.missing = ()
        if len(grads) < len(self.params):  # rare: unused parameters read as NaN
            present = [i for i, p in enumerate(self.params) if p.grad is not None]
            full = norms.new_full((len(self.params),), float("nan"))
            full[torch.tensor(present, device=norms.device)] = norms
            norms = full
            have = set(present)
            self.missing = tuple(k for k, i in enumerate(self.logged_index) if i not in have)

        hit = None
        if self.clipping.name == "norm":
            hit = self._clip_norm(grads, total)
        elif self.clipping.name == "value":
            hit = self._clip_value(grads)
        return Measurement(norms, total, hit)

    def _clip_norm(self, grads: list[torch.Tensor], total: torch.Tensor) -> torch.Tensor:
        clip = self.clipping
        if clip.norm_type == 2.0:
            clip_total = total  # reuse the norms: no second pass over the gradients
        elif clip.norm_type == float("inf"):
            clip_total = torch.stack(torch._foreach_norm(grads, float("inf"))).max()
        else:
            clip_total = torch.linalg.vector_norm(
                torch.stack(torch._foreach_norm(grads, clip.norm_type)), clip.norm_type
            )
        hit = clip_total > clip.max_norm
        # On an accelerator the coefficient is computed and applied on the device: scaling
        # by 1.0 when under the limit costs one fused multiply and saves a host branch,
        # which would be a sync. On the CPU reading the flag costs nothing, and skipping
        # the multiply saves a pass over every gradient.
        if clip_total.device.type != "cpu" or hit:
            coef = (clip.max_norm / (clip_total + 1e-6)).clamp(max=1.0)
            torch._foreach_mul_(grads, coef)
        return hit.to(total.dtype)

    def _clip_value(self, grads: list[torch.Tensor]) -> torch.Tensor:
        limit = self.clipping.clip_value
        largest = torch.stack(torch._foreach_norm(grads, float("inf"))).max()
        torch._foreach_clamp_min_(grads, -limit)
        torch._foreach_clamp_max_(grads, limit)
        return (largest > limit).float()
