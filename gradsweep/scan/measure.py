"""Gradient flow at initialization: what the first training step of a configuration would see.

For each seed, the model is built exactly as `train()` builds it (`build_model`, init stream
of that seed), the batches come from the same data stream (`Batches` on the data stream's
generator), and the gradients are measured by the same `GradientMonitor`, so the first pass
reproduces training's step 0 to the bit. Further passes take the stream's next batches at the
same initial weights (no optimizer step). Forward hooks on the activation modules record what
explains the verdict: each activation layer's output std and its share of saturated units
(sigmoid, tanh) or dead units (the ReLU family).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from gradsweep.data.batches import Batches
from gradsweep.data.tensors import Data
from gradsweep.run.build import build_model, stream_seed
from gradsweep.telemetry.activation_probe import ActivationProbe
from gradsweep.telemetry.diagnosis import columns_median, nanmedian, thresholds_from_config
from gradsweep.telemetry.monitor import GradientMonitor


@dataclass(frozen=True)
class SeedResult:
    """One seed's passes: the training verdict over them and the activation statistics."""

    seed: int
    layers: tuple[str, ...]  # weight layers, forward order
    verdict: str
    log10_ratio: float  # median over the passes, as the verdict computes it
    layer_norms: tuple[float, ...]  # each weight layer's median gradient norm over the passes
    total: float  # median global gradient norm
    activation_std: tuple[float, ...]  # per activation call, forward order; medians over passes
    saturated: tuple[float, ...]  # share of saturated units; NaN for non-saturating layers
    dead: tuple[float, ...]  # share of dead units; NaN outside the ReLU family


@dataclass(frozen=True)
class Measurement:
    """A configuration's gradient flow at initialization over several seeds."""

    seeds: tuple[SeedResult, ...]

    @property
    def layers(self) -> tuple[str, ...]:
        return self.seeds[0].layers

    @property
    def ratios(self) -> list[float]:
        return [s.log10_ratio for s in self.seeds]

    @property
    def log10_ratio(self) -> float:
        return nanmedian(self.ratios)

    @property
    def spread(self) -> float:
        """max - min of the seeds' ratios: how much the verdict depends on the draw."""
        finite = [r for r in self.ratios if math.isfinite(r)]
        return max(finite) - min(finite) if finite else math.nan

    @property
    def verdict(self) -> str:
        """The seeds' most common verdict; a tie goes to the seed nearest the median ratio."""
        counts = Counter(s.verdict for s in self.seeds).most_common()
        tied = {label for label, n in counts if n == counts[0][1]}
        if len(tied) == 1:
            return counts[0][0]
        middle = self.log10_ratio
        near = sorted(
            (s for s in self.seeds if s.verdict in tied),
            key=lambda s: abs(s.log10_ratio - middle) if math.isfinite(s.log10_ratio) else math.inf,
        )
        return near[0].verdict

    @property
    def verdict_share(self) -> float:
        """Share of the seeds whose own verdict is the configuration's."""
        return sum(s.verdict == self.verdict for s in self.seeds) / len(self.seeds)

    def layer_norms(self) -> list[float]:
        return columns_median([s.layer_norms for s in self.seeds])

    def activation_std(self) -> list[float]:
        return columns_median([s.activation_std for s in self.seeds])

    def saturated(self) -> list[float]:
        return columns_median([s.saturated for s in self.seeds])

    def dead(self) -> list[float]:
        return columns_median([s.dead for s in self.seeds])


def measure_seed(cfg: DictConfig, data: Data, seed: int, steps: int) -> SeedResult:
    """`steps` forward/backward passes of the configuration at its initialization for `seed`.

    The model, the batches and the gradient telemetry are training's own, so the first pass's
    gradients are those of training's step 0 with `seed=<seed>`.
    """
    if steps < 1:
        raise ValueError(f"steps={steps}: at least one forward/backward pass")
    device = data.train_x.device
    cfg.seed = seed  # build_model reads the init stream's seed from the config
    model = build_model(cfg, data, device)
    monitor = GradientMonitor(
        model,
        data.train_x[:2],
        params=cfg.telemetry.params,
        window=steps,
        thresholds=thresholds_from_config(cfg.telemetry),
        activations_every=0,  # the scan's own probe measures every pass
    )
    generator = torch.Generator(device=device).manual_seed(stream_seed(seed, "data"))
    stream = iter(Batches(data, cfg.data.batch_size, generator, augment=cfg.data.augment))
    probe = ActivationProbe(model)  # after the monitor: its layer probe must not count
    model.train()
    try:
        for step in range(steps):
            x, y = next(stream)
            loss = F.cross_entropy(model(x), y)
            model.zero_grad(set_to_none=True)
            loss.backward()
            monitor.step(loss, step=step)
            probe.end_pass()
        monitor.flush()
    finally:
        probe.close()
    verdict = monitor.gradient_flow()  # the scan sees no learning: it predicts the flow
    std, saturated, dead = probe.medians()
    return SeedResult(
        seed=seed,
        layers=tuple(monitor.layers),
        verdict=verdict.label,
        log10_ratio=verdict.log10_ratio,
        layer_norms=verdict.layer_medians,
        total=verdict.total_median,
        activation_std=std,
        saturated=saturated,
        dead=dead,
    )


def measure(cfg: DictConfig, data: Data, seeds: Sequence[int], steps: int) -> Measurement:
    """The configuration at initialization for each seed (its init and data streams)."""
    if not seeds:
        raise ValueError("no seed to measure")
    original = cfg.seed
    try:
        return Measurement(tuple(measure_seed(cfg, data, seed, steps) for seed in seeds))
    finally:
        cfg.seed = original
