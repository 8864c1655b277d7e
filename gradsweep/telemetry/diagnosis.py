"""The verdict on a run's gradient flow, and the next fix to try.

Judged over a window of recent steps from the weight layers' gradient norms (forward
order) and the global norm. The advice follows the standard order of fixes:
activation, then init, then norm, then skip, with clipping as the guard rail.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

from gradsweep.fixes.activations import RELU_FAMILY, SATURATING

VERDICTS = ("vanishing", "exploding", "uniformly_small", "healthy", "non_finite")


@dataclass(frozen=True)
class Thresholds:
    vanishing_orders: float = 3.0  # first layer this many orders below the last
    exploding_orders: float = 3.0  # first layer this many orders above the last
    exploding_norm: float = 1e3  # or the global norm above this
    small_norm: float = 1e-4  # every layer below this: uniformly small
    weak_orders: float = 1.0  # healthy, but still this many orders down: try the next fix


def thresholds_from_config(cfg_telemetry: DictConfig) -> Thresholds:
    return Thresholds(
        vanishing_orders=cfg_telemetry.vanishing_orders,
        exploding_orders=cfg_telemetry.exploding_orders,
        small_norm=cfg_telemetry.small_norm,
    )


@dataclass(frozen=True)
class Verdict:
    label: str
    log10_ratio: float  # median over the window of log10(first / last)
    layer_medians: tuple[float, ...]  # each weight layer's median gradient norm
    total_median: float
    reason: str


def log10_ratio(first: float, last: float) -> float:
    """log10(first / last); a zero norm is floored at float32's smallest normal."""
    tiny = 1.1754943508222875e-38
    if math.isnan(first) or math.isnan(last):
        return math.nan
    return math.log10(max(first, tiny)) - math.log10(max(last, tiny))


def nanmedian(values: Sequence[float]) -> float:
    """The median of the values that are not NaN; NaN when none is."""
    kept = [v for v in values if not math.isnan(v)]
    return statistics.median(kept) if kept else math.nan


def columns_median(rows) -> list[float]:
    """Median of each column over rows of equal length, NaN ignored."""
    rows = [list(row) for row in rows]
    if not rows:
        return []
    return [nanmedian(column) for column in zip(*rows, strict=True)]


def diagnose(
    layer_norms: Sequence[Sequence[float]],
    totals: Sequence[float],
    thresholds: Thresholds = Thresholds(),
) -> Verdict:
    """The verdict over a window: `layer_norms[step][layer]` and `totals[step]`."""
    if not layer_norms:
        return Verdict("healthy", 0.0, (), 0.0, "no steps measured")
    # A layer without a gradient at a step reads NaN there and is left out of its
    # median; a NaN or inf gradient anywhere makes the global norm non-finite.
    medians = tuple(columns_median(layer_norms))
    ratios = [log10_ratio(row[0], row[-1]) for row in layer_norms]
    ratios = [r for r in ratios if not math.isnan(r)]
    if not all(math.isfinite(v) for v in totals):
        finite = [r for r in ratios if math.isfinite(r)]
        ratio = statistics.median(finite) if finite else math.nan
        return Verdict("non_finite", ratio, medians, math.nan, "NaN or inf in the gradients")
    if not ratios:
        return Verdict(
            "healthy", math.nan, medians, statistics.median(totals), "no first/last pair"
        )
    ratio = statistics.median(ratios)
    total = statistics.median(totals)
    t = thresholds
    if ratio <= -t.vanishing_orders:
        reason = f"first layer's gradient is 10^{ratio:.1f} of the last layer's"
        return Verdict("vanishing", ratio, medians, total, reason)
    if ratio >= t.exploding_orders or total >= t.exploding_norm:
        reason = f"log10(first/last) = {ratio:+.1f}, global norm {total:.3g}"
        return Verdict("exploding", ratio, medians, total, reason)
    if max(m for m in medians if not math.isnan(m)) < t.small_norm:
        reason = f"every layer's gradient is below {t.small_norm:g} (largest {max(medians):.2g})"
        return Verdict("uniformly_small", ratio, medians, total, reason)
    reason = f"first/last within 10^{abs(ratio):.1f}, global norm {total:.3g}"
    return Verdict("healthy", ratio, medians, total, reason)


def advise(
    verdict: Verdict,
    activation: str,
    init: str,
    norm: str,
    skip: str,
    batch_size: int,
    clip_hit_rate: float | None = None,
    thresholds: Thresholds = Thresholds(),
) -> str:
    """The next fix to try given the verdict and the fixes already in place."""
    if verdict.label == "non_finite":
        return "lower optimizer.lr, or add clipping=norm"
    if verdict.label == "exploding":
        return (
            "add clipping=norm and lower optimizer.lr; then revisit init (init=kaiming or xavier)"
        )
    if verdict.label == "uniformly_small":
        return (
            "every layer is alike but tiny: a learning-rate issue, not vanishing; "
            "raise optimizer.lr"
        )
    if clip_hit_rate is not None and clip_hit_rate > 0.9:
        return (
            f"clipping hit {clip_hit_rate:.0%} of steps: initialization or architecture "
            "still needs attention (init=kaiming, norm=batch, skip=residual)"
        )
    weak = verdict.label == "vanishing" or verdict.log10_ratio < -thresholds.weak_orders
    if not weak:
        return "gradients flow to the first layer; no fix needed"
    if activation in SATURATING:
        return "activation=gelu (or activation=relu): a non-saturating activation"
    if activation in RELU_FAMILY and init in {"default", "keep"}:
        return "init=kaiming: match the weight scale to the activation"
    if norm in {"none", "keep"}:
        return "norm=batch" if batch_size >= 8 else "norm=layer or norm=group (batch under 8)"
    if skip in {"none", "keep"}:
        return "skip=residual: shortcuts give the gradient a path around each block"
    return "all standard fixes are on: try a shallower model (model.depth) or a lower optimizer.lr"
