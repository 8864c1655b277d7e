"""Per-layer gradient norms and gradient clipping, fused into one pass per step.

After `backward()`, every gradient's L2 norm comes from a single fused kernel
(`torch._foreach_norm`), the global norm and the clipping coefficient are derived
from those norms on the device, and everything the step reports (loss, accuracy,
the norms, the clip flag) is stacked into one vector that crosses to the host once.
"""

from __future__ import annotations

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


class GradientTelemetry:
    """Gradient norms of every parameter, clipping, and the clip flag, on the device.

    `measure()` is called between `backward()` and `optimizer.step()`. It returns one
    device vector laid out as `layout` says, ready to join the step's other scalars
    for a single host transfer:

        [logged parameter norms..., global norm, weight-layer norms..., clip flag?]

    The weight-layer norms (forward order) feed the verdict and the pictures whatever
    `logged` holds. Parameters without a gradient this step read as NaN and take no
    part in the global norm.
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
        self.weight_layers = weight_layers
        self.clipping = clipping
        self._logged_index = [index[name] for name in logged]
        self._pick = torch.tensor(
            self._logged_index + [index[f"{n}.weight"] for n in weight_layers]
        )
        self._device: torch.device | None = None
        # Positions in `logged` of parameters that had no gradient at the last measure().
        self.missing: tuple[int, ...] = ()

    @property
    def size(self) -> int:
        """Length of the vector `measure()` returns."""
        return len(self.logged) + 1 + len(self.weight_layers) + (self.clipping.name != "none")

    def measure(self) -> torch.Tensor:
        """Norms (and clipping) for the gradients now in `.grad`, as one device vector."""
        present = [i for i, p in enumerate(self.params) if p.grad is not None]
        if not present:
            raise RuntimeError("no parameter has a gradient: call backward() before measure()")
        grads = [self.params[i].grad for i in present]
        device = grads[0].device
        if self._device != device:
            self._pick = self._pick.to(device)
            self._device = device

        # The one fused pass: every gradient's L2 norm at once.
        norms = torch.stack(torch._foreach_norm(grads, 2.0))
        total = torch.linalg.vector_norm(norms, 2.0)
        self.missing = ()
        if len(present) < len(self.params):  # rare: unused parameters read as NaN
            full = norms.new_full((len(self.params),), float("nan"))
            full[torch.tensor(present, device=device)] = norms
            norms = full
            have = set(present)
            self.missing = tuple(k for k, i in enumerate(self._logged_index) if i not in have)

        picked = norms.index_select(0, self._pick)
        n_logged = len(self.logged)
        parts = [picked[:n_logged], total.view(1), picked[n_logged:]]
        if self.clipping.name == "norm":
            parts.append(self._clip_norm(grads, total).view(1))
        elif self.clipping.name == "value":
            parts.append(self._clip_value(grads).view(1))
        return torch.cat(parts)

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
