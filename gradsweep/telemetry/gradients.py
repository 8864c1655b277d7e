"""Per-layer gradient norms and gradient clipping, fused into one pass per step.

After `backward()`, every gradient's L2 norm comes from a single fused kernel
(`torch._foreach_norm`). gradsweep.telemetry.monitor stacks them with the step's other scalars
(loss, accuracy, the clipping statistic) into one vector that crosses to the host once; the
host derives the global norm, the clip flag and the counts from it. Clipping with the
2-norm reuses the norms: no second pass over the gradients, as clip_grad_norm_ makes.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

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

    `spec` is `none` (the per-layer series `grad_flow/layer_NNN` only), `all`, `weights` (the
    .weight of each weight layer, in forward order) or a regular expression matched against
    `named_parameters()` names.
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if spec == "none":
        return []
    if spec == "all":
        return names
    if spec == "weights":
        return [f"{layer}.weight" for layer in weight_layer_names]
    pattern = re.compile(spec)
    chosen = [name for name in names if pattern.search(name)]
    if not chosen:
        raise ValueError(f"telemetry.params={spec!r} matches no parameter; e.g. {names[:3]}")
    return chosen


class GradientTelemetry:
    """Gradient norms of every trainable parameter, and clipping, on the device.

    Called between `backward()` and `optimizer.step()`: `norms()` gives every gradient's
    L2 norm as device scalars, in `named_parameters()` order, from one fused kernel; then
    `clip` clips the gradients and lets go of them (call it on every step, clipping or not).
    `logged_index` and `layer_index` say where the logged parameters and the weight layers'
    weights sit among the norms, so that the host picks them out of the transferred values
    rather than the device spending ops on it. Parameters without a gradient this step read
    as NaN and take no part in the global norm; `missing` lists their positions.

    Clipping is decided on a statistic, and clips when it exceeds its limit: the global
    norm (`clipping=norm`; with `norm_type` 2 it comes from the norms) or the largest |g|
    (`clipping=value`). Where the host may wait for the device (the CPU, whose values are
    already there), the host decides, and the device works only on a step that clips. Where
    it must not (CUDA: `sync_free`), the device clips on every step, with a coefficient of
    at most 1, and the statistic travels to the host with the norms.
    """

    def __init__(
        self,
        model: nn.Module,
        logged: list[str],
        weight_layers: list[str],
        clipping: Clipping,
        sync_free: bool = False,
    ) -> None:
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        index = {name: i for i, (name, _) in enumerate(trainable)}
        self.params = [p for _, p in trainable]
        self.logged = logged
        self.clipping = clipping
        self.sync_free = sync_free
        self.logged_index = [index[name] for name in logged]
        self.layer_index = [index[f"{n}.weight"] for n in weight_layers]
        self.missing: tuple[int, ...] = ()
        self._grads: list[torch.Tensor] = []
        self._no_gradient: torch.Tensor | None = None

    @property
    def limit(self) -> float:
        """The clipping statistic's limit: clipping.max_norm, or clipping.clip_value."""
        clip = self.clipping
        return clip.clip_value if clip.name == "value" else clip.max_norm

    def norms(self) -> list[torch.Tensor]:
        """Every trainable parameter's gradient norm, as 0-d device tensors (no host sync).

        The gradients are kept for `clip`, which lets go of them: kept past the step, they
        would live through the next backward, so that `zero_grad(set_to_none=True)` freed
        nothing and backward allocated a fresh set (0.3-0.4 ms a step on the default MLP,
        and a second set of gradients in device memory).
        """
        self._grads = [g for p in self.params if (g := p.grad) is not None]
        if not self._grads:
            raise RuntimeError("no parameter has a gradient: call backward() before norms()")
        # The one fused pass: every gradient's L2 norm at once.
        norms = list(torch._foreach_norm(self._grads, 2.0))
        self.missing = ()
        if len(self._grads) < len(self.params):  # rare: unused parameters read as NaN
            if self._no_gradient is None:
                self._no_gradient = torch.tensor(math.nan, device=norms[0].device)
            self.missing = tuple(i for i, p in enumerate(self.params) if p.grad is None)
            for i in self.missing:
                norms.insert(i, self._no_gradient)
        return norms

    def clip(
        self, norms: list[torch.Tensor], total: float | None = None
    ) -> float | torch.Tensor | None:
        """Clip the gradients whose `norms` were just taken; returns the clipping statistic
        (None without clipping), which exceeds `limit` on a step that clips.

        Host decides (`sync_free` False): the statistic is a float, and `total`, the global
        norm the host computed from the norms, is used for it where it fits. Device decides:
        the statistic is a 0-d device tensor, to travel with the norms to the host.
        """
        grads, self._grads = self._grads, []  # not kept past the step: see norms()
        clip = self.clipping
        if clip.name == "none":
            return None
        if total is not None and clip.name == "norm" and clip.norm_type == 2.0:
            statistic: float | torch.Tensor = total
        else:
            statistic = self._statistic(grads, norms)
        if self.sync_free:
            self._apply(grads, statistic)  # on every step: a host branch would be a sync
            return statistic
        if isinstance(statistic, torch.Tensor):
            statistic = statistic.item()  # host sync: free on the CPU, where it is made
        if statistic > self.limit:
            self._apply(grads, statistic)
        return statistic

    def _statistic(self, grads: list[torch.Tensor], norms: list[torch.Tensor]) -> torch.Tensor:
        """The clipping statistic, on the device."""
        clip = self.clipping
        if clip.name == "value" or clip.norm_type == math.inf:
            return torch.stack(torch._foreach_norm(grads, math.inf)).max()
        if clip.norm_type == 2.0:  # reuses the norms: no second pass over the gradients
            missing = set(self.missing)
            present = [n for i, n in enumerate(norms) if i not in missing]
            return torch.linalg.vector_norm(torch.stack(present), 2.0)
        return torch.linalg.vector_norm(
            torch.stack(torch._foreach_norm(grads, clip.norm_type)), clip.norm_type
        )

    def _apply(self, grads: list[torch.Tensor], statistic: float | torch.Tensor) -> None:
        """Clip. On the device's branchless path this runs on steps under the limit too,
        where clamping to the limit, or a coefficient clamped to 1, changes nothing."""
        if self.clipping.name == "value":
            torch._foreach_clamp_min_(grads, -self.limit)
            torch._foreach_clamp_max_(grads, self.limit)
            return
        coefficient = self.limit / (statistic + 1e-6)  # as clip_grad_norm_ computes it
        if isinstance(coefficient, torch.Tensor):
            coefficient = coefficient.clamp(max=1.0)
        torch._foreach_mul_(grads, coefficient)
