"""Layer health during training, measured every `every` steps and only then.

    act/std/layer_NNN        the output spread of hidden layer NNN's activation
    act/saturated/layer_NNN  its share of saturated units (sigmoid, tanh: local derivative
                             under a tenth of its peak)
    act/dead/layer_NNN       its share of dead units (the ReLU family: no sample of the batch
                             gives a positive input)
    update_ratio/layer_NNN   ||W_after - W_before|| / ||W_before|| of weight layer NNN for one
                             optimizer step: about 1e-3 in a healthy run

The activation statistics are the scan's (gradsweep.telemetry.activation_probe), from forward
hooks on the activation modules that exist only for the measured step's forward pass and are
removed in a `finally`. They are numbered by the activation's place in forward order, which in
the built-in models is the number of the weight layer it follows. An activation called inside
`forward` (`F.relu(x)`) has no module to hook and is not measured; `measured_activations`
says how many were found. The update ratio compares the weights kept at a measured step with
the same weights one step later, after the optimizer's update.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from gradsweep.fixes.activations import is_activation
from gradsweep.telemetry.activation_probe import ActivationProbe

STATISTICS = ("std", "saturated", "dead")


def health_key(kind: str, index: int) -> str:
    """`act/std/layer_003`, `update_ratio/layer_012`: numbered as grad_flow/layer_NNN."""
    prefix = "update_ratio" if kind == "update_ratio" else f"act/{kind}"
    return f"{prefix}/layer_{index:03d}"


class LayerHealth:
    """Activation statistics and update ratios every `every` steps (0: never)."""

    def __init__(self, model: nn.Module, weight_layers: list[str], every: int) -> None:
        self.model = model
        self.every = every
        self.measured_activations = sum(1 for m in model.modules() if is_activation(m))
        self._weights = [model.get_submodule(name).weight for name in weight_layers]
        self._kept: list[torch.Tensor] | None = None  # the weights of the last measured step
        self._ready: dict[int, dict[str, float]] = {}  # step -> its activation statistics
        # The last measurement of each, for the reason and the end-of-run table.
        self.activations: dict[str, list[float]] = {}
        self.measured_at: int | None = None  # the step of `activations`
        self.update_ratios: list[float] = []

    def measures(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    @contextmanager
    def watch(self, step: int) -> Iterator[None]:
        """Wrap `step`'s forward pass: on a measured step, hooks record the activations."""
        if not self.measures(step) or not self.measured_activations:
            yield
            return
        probe = ActivationProbe(self.model)
        try:
            yield
        finally:
            probe.close()
        probe.end_pass()  # host sync: measured steps only
        if probe.passes:
            columns = zip(*probe.passes[-1], strict=True)
            self.activations = dict(zip(STATISTICS, map(list, columns), strict=True))
            self.measured_at = step
            self._ready[step] = {
                health_key(kind, index): value
                for kind, column in self.activations.items()
                for index, value in enumerate(column)
                if not math.isnan(value)  # saturation of a ReLU, death of a sigmoid: no such
            }

    def at_step(self, step: int) -> dict[str, float]:
        """Call after `backward()`, before `optimizer.step()`: the metrics this step's row
        gets (its activations; the update ratios of the measured step before it, whose
        update is done by now), keeping the weights if this step is measured."""
        metrics = self._ready.pop(step, {})
        if self._kept is not None:
            metrics |= self._update_ratios()
        if self.measures(step):
            self._kept = [w.detach().clone() for w in self._weights]
        return metrics

    def _update_ratios(self) -> dict[str, float]:
        kept, self._kept = self._kept, None
        with torch.no_grad():
            now = [w.detach() for w in self._weights]
            change = torch._foreach_norm(torch._foreach_sub(now, kept))
            size = torch._foreach_norm(kept)
            values = torch.stack([*change, *size]).tolist()  # host sync: measured steps only
        n = len(kept)
        pairs = zip(values[:n], values[n:], strict=True)
        self.update_ratios = [d / w if w > 0 else math.nan for d, w in pairs]
        return {health_key("update_ratio", i): r for i, r in enumerate(self.update_ratios)}

    def evidence(self, flagged_share: float) -> str:
        """The activations' part of the reason: layers with `flagged_share` or more of their
        units saturated or dead, at the last measurement."""
        parts = []
        for kind in ("saturated", "dead"):
            shares = self.activations.get(kind, [])
            hit = [i for i, s in enumerate(shares) if not math.isnan(s) and s >= flagged_share]
            if hit:
                mean = sum(shares[i] for i in hit) / len(hit)
                parts.append(f"{mean:.0%} of units {kind} in layers {_ranges(hit)}")
        return ", ".join(parts)

    def state_dict(self) -> dict:
        return {
            "activations": self.activations,
            "measured_at": self.measured_at,
            "update_ratios": self.update_ratios,
        }

    def load_state_dict(self, state: dict) -> None:
        self.activations = dict(state.get("activations", {}))
        self.measured_at = state.get("measured_at")
        self.update_ratios = list(state.get("update_ratios", []))


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> "0-2, 5, 7-8"."""
    spans: list[list[int]] = []
    for index in indices:
        if spans and index == spans[-1][1] + 1:
            spans[-1][1] = index
        else:
            spans.append([index, index])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in spans)
