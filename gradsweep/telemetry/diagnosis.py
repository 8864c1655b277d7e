"""The diagnosis of a run: two findings and the one word a user reads.

    gradient flow : from the weight layers' gradient norms (forward order) and the global norm
                    over a window of recent steps: vanishing, weak, healthy, exploding,
                    uniformly_small or non_finite
    learning      : from the loss and the validation accuracy over the whole run
                    (gradsweep.telemetry.learning): learning, stalled, unstable or diverged
    verdict       : by precedence, non_finite, exploding, vanishing, uniformly_small; then the
                    learning finding if it is not `learning`; else healthy. `weak` (the first
                    layers learn slower) is never the verdict alone.

The advice for a verdict is in gradsweep.telemetry.advice; every threshold is a config key
under `telemetry.` (conf/telemetry/default.yaml).
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from omegaconf import DictConfig

GRADIENT_FLOWS = ("vanishing", "weak", "healthy", "exploding", "uniformly_small", "non_finite")
LEARNING = ("learning", "stalled", "unstable", "diverged")
# The flow findings that are the verdict whatever the learning: each names its own fix.
FLOW_VERDICTS = ("non_finite", "exploding", "vanishing", "uniformly_small")
VERDICTS = (*FLOW_VERDICTS, "diverged", "unstable", "stalled", "healthy")


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the diagnosis; the defaults are conf/telemetry/default.yaml's."""

    vanishing_orders: float = 3.0  # first layer this many orders below the last: vanishing
    weak_orders: float = 1.0  # this many orders below, not yet vanishing: weak
    exploding_orders: float = 3.0  # first layer this many orders above the last
    exploding_norm: float = 1e3  # or the global norm above this
    small_norm: float = 1e-4  # every layer below this: uniformly small
    stall_drop: float = 0.1  # the loss came down less than this share of where it started
    unstable_acc_drop: float = 0.1  # val/acc ended this far (absolute) below its best
    unstable_loss_rise: float = 2.0  # or the loss ended this many times its lowest
    diverge_factor: float = 1.5  # the loss ended this many times where it started
    flagged_units: float = 0.5  # a layer with this share of units saturated or dead is cited


def thresholds_from_config(cfg_telemetry: DictConfig) -> Thresholds:
    """The thresholds `telemetry.*` sets; a key it lacks keeps its default."""
    names = [field.name for field in dataclasses.fields(Thresholds)]
    return Thresholds(
        **{name: float(cfg_telemetry[name]) for name in names if name in cfg_telemetry}
    )


@dataclass(frozen=True)
class GradientFlow:
    """The gradient-flow finding over a window of steps."""

    label: str  # one of GRADIENT_FLOWS
    log10_ratio: float  # median over the window of log10(first / last)
    layer_medians: tuple[float, ...]  # each weight layer's median gradient norm
    total_median: float
    reason: str


@dataclass(frozen=True)
class Finding:
    """A learning finding: its label (one of LEARNING) and the evidence."""

    label: str
    reason: str


@dataclass(frozen=True)
class Diagnosis:
    """Both findings, the verdict they make and the evidence a person reads."""

    gradient_flow: GradientFlow
    learning: Finding
    verdict: str
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
) -> GradientFlow:
    """The gradient flow over a window: `layer_norms[step][layer]` and `totals[step]`."""
    if not layer_norms:
        return GradientFlow("healthy", 0.0, (), 0.0, "no steps measured")
    # A layer without a gradient at a step reads NaN there and is left out of its
    # median; a NaN or inf gradient anywhere makes the global norm non-finite.
    medians = tuple(columns_median(layer_norms))
    ratios = [log10_ratio(row[0], row[-1]) for row in layer_norms]
    ratios = [r for r in ratios if not math.isnan(r)]
    if not all(math.isfinite(v) for v in totals):
        finite = [r for r in ratios if math.isfinite(r)]
        ratio = statistics.median(finite) if finite else math.nan
        return GradientFlow("non_finite", ratio, medians, math.nan, "NaN or inf in the gradients")
    total = statistics.median(totals)
    if not ratios:
        return GradientFlow("healthy", math.nan, medians, total, "no first/last pair")
    ratio = statistics.median(ratios)
    t = thresholds
    if ratio <= -t.vanishing_orders:
        reason = f"first layer's gradient is 10^{ratio:.1f} of the last layer's"
        return GradientFlow("vanishing", ratio, medians, total, reason)
    if ratio >= t.exploding_orders or total >= t.exploding_norm:
        reason = f"log10(first/last) = {ratio:+.1f}, global norm {total:.3g}"
        return GradientFlow("exploding", ratio, medians, total, reason)
    if max(m for m in medians if not math.isnan(m)) < t.small_norm:
        reason = f"every layer's gradient is below {t.small_norm:g} (largest {max(medians):.2g})"
        return GradientFlow("uniformly_small", ratio, medians, total, reason)
    if ratio <= -t.weak_orders:
        reason = f"first layer's gradient is 10^{ratio:.1f} of the last layer's: it learns slower"
        return GradientFlow("weak", ratio, medians, total, reason)
    reason = f"first/last within 10^{abs(ratio):.1f}, global norm {total:.3g}"
    return GradientFlow("healthy", ratio, medians, total, reason)


def combine(flow: GradientFlow, learning: Finding, activations: str = "") -> Diagnosis:
    """The verdict by precedence, and its reason: the evidence of the finding that decides it,
    then what else the run shows (a weak flow, the learning, the activations)."""
    if flow.label in FLOW_VERDICTS:
        verdict, evidence = flow.label, [flow.reason]
        if learning.label != "learning":
            evidence.append(f"{learning.label}: {learning.reason}")
    elif learning.label != "learning":
        verdict, evidence = learning.label, [learning.reason]
        if flow.label == "weak":
            evidence.append(f"weak gradient flow: {flow.reason}")
    else:
        verdict, evidence = "healthy", [flow.reason, learning.reason]
    if activations:
        evidence.append(activations)
    return Diagnosis(flow, learning, verdict, "; ".join(evidence))
