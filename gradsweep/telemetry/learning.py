"""The learning finding: is the model learning, from its loss and validation accuracy?

A gradient can reach the first layer and the model still learn nothing (a loss that stays at
ln(classes), chance), or learn and then lose it. Judged over the whole run:

    diverged  the loss ended `diverge_factor` times above where it started, or became NaN/inf
    unstable  val/acc ended `unstable_acc_drop` below its best, or the loss ended
              `unstable_loss_rise` times above the lowest it reached, or it ended more
              than `stall_drop` above where it started
    stalled   the loss ended within `stall_drop` of where it started: it has not come down
              (a classifier still at ln(classes) is at chance)
    learning  otherwise

"Where it started" and "ended" are medians over the first and last few measured steps (the
verdict's window, or a quarter of the run if shorter), so one noisy batch decides nothing.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

from gradsweep.telemetry.diagnosis import Finding, Thresholds

# Fewer measured steps than this: too early to say anything of the learning.
MIN_STEPS = 4


def judge_learning(
    losses: Sequence[float],
    val_accuracy: Sequence[float] = (),
    thresholds: Thresholds | None = None,
    window: int = 50,
    classes: int | None = None,
) -> Finding:
    """The learning finding from the training loss of each measured step, in order, and the
    validation accuracy of each evaluation, in order. `classes` puts a stalled loss beside
    ln(classes), a classifier's loss at chance."""
    t = thresholds or Thresholds()
    broken = next((i for i, loss in enumerate(losses) if not math.isfinite(loss)), None)
    if broken is not None:
        return Finding("diverged", f"the loss became {losses[broken]} at measured step {broken}")
    if len(losses) < MIN_STEPS:
        return Finding("learning", f"too few steps to judge ({len(losses)})")
    span = max(1, min(window, len(losses) // 4))
    blocks = [statistics.median(losses[i : i + span]) for i in range(0, len(losses), span)]
    start, end, lowest = blocks[0], statistics.median(losses[-span:]), min(blocks)
    path = f"the loss went from {start:.4g} (first {span} steps) to {end:.4g} (last {span})"
    if end >= start * t.diverge_factor:
        return Finding("diverged", f"{path}, {end / start:.1f}x where it started")
    finite_acc = [a for a in val_accuracy if math.isfinite(a)]
    if finite_acc and max(finite_acc) - finite_acc[-1] >= t.unstable_acc_drop:
        return Finding(
            "unstable", f"val/acc fell from its best {max(finite_acc):.3f} to {finite_acc[-1]:.3f}"
        )
    if end >= lowest * t.unstable_loss_rise:
        return Finding("unstable", f"the loss came down to {lowest:.4g}, then back up to {end:.4g}")
    if end > start * (1 + t.stall_drop):
        return Finding("unstable", f"{path}: it went up")
    if end > start * (1 - t.stall_drop):
        at_chance = classes and abs(end - math.log(classes)) <= t.stall_drop * math.log(classes)
        chance = f", ln {classes} = {math.log(classes):.3g}: chance" if at_chance else ""
        return Finding("stalled", f"{path}: it has not come down{chance}")
    accuracy = f", val/acc {finite_acc[-1]:.3f}" if finite_acc else ""
    return Finding("learning", f"{path}{accuracy}")
