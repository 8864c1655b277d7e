"""The health of a model's activations: each activation layer's output spread and its share
of saturated units (sigmoid, tanh) or dead units (the ReLU family), from forward hooks."""

from __future__ import annotations

import math

import torch
from torch import nn

from gradsweep.fixes.activations import FLAT_BELOW_ZERO, is_activation, kind_of
from gradsweep.telemetry.diagnosis import columns_median

# A saturating unit counts as saturated where its local derivative is below this share of the
# derivative's peak (sigmoid: y(1 - y) < 0.025, |x| > 3.6; tanh: 1 - y^2 < 0.1, |x| > 1.8).
SATURATED_BELOW = 0.1


class ActivationProbe:
    """Forward hooks on every activation module; statistics per call, in forward order.

    Keyed by call order rather than by module, so a model that reuses one activation module
    for every layer still gets one entry per layer. The statistics stay on the device until
    `end_pass`, which brings a pass's values to the host in one transfer.
    """

    def __init__(self, model: nn.Module) -> None:
        self._pending: list[torch.Tensor] = []
        self.passes: list[list[tuple[float, float, float]]] = []
        self._handles = [
            module.register_forward_hook(self._record)
            for module in model.modules()
            if is_activation(module)
        ]

    def _record(self, module: nn.Module, inputs: tuple[torch.Tensor, ...], output: object) -> None:
        if not isinstance(output, torch.Tensor) or output.ndim < 2:
            return
        with torch.no_grad():
            y = output.detach().float()
            nan = y.new_full((), math.nan)
            saturated = dead = nan
            if isinstance(module, nn.Sigmoid):
                saturated = (y * (1 - y) < SATURATED_BELOW * 0.25).float().mean()
            elif isinstance(module, nn.Tanh):
                saturated = (1 - y * y < SATURATED_BELOW).float().mean()
            elif (
                kind_of(module) in FLAT_BELOW_ZERO
                and inputs
                and isinstance(inputs[0], torch.Tensor)
            ):
                # A unit (feature, or channel at a position) no sample of the batch activates.
                dead = (inputs[0].detach() <= 0).all(dim=0).float().mean()
            self._pending.append(torch.stack([y.std(), saturated, dead]))

    def end_pass(self) -> None:
        if self._pending:
            values = torch.stack(self._pending).tolist()  # host sync: once per pass
            self.passes.append([tuple(v) for v in values])
        self._pending = []

    def medians(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
        """(std, saturated, dead) per activation call, each the median over the passes."""
        std, saturated, dead = (
            tuple(columns_median([[layer[k] for layer in p] for p in self.passes]))
            for k in range(3)
        )
        return std, saturated, dead

    def close(self) -> None:
        for handle in self._handles:
            handle.remove()
