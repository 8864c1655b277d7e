"""The next thing to try, given a run's diagnosis and the fixes already in place.

The advice agrees with the verdict: a fix is prescribed only for a problem the verdict names,
never after `healthy` (a weak gradient flow there gets an option, not a prescription), and
"no fix needed" never follows a learning problem. Gradient-flow problems follow the standard
order of fixes: activation, then init, then norm, then skip, with clipping as the guard rail;
learning problems turn to the learning rate, the optimizer, warm-up and clipping, or to the
flow fix a weak flow points to.
"""

from __future__ import annotations

from gradsweep.fixes.activations import RELU_FAMILY, SATURATING
from gradsweep.telemetry.diagnosis import Diagnosis

# An update this small against its weight (||dW|| / ||W|| per step) moves the model little: a
# healthy run's is about 1e-3.
SLOW_UPDATE = 1e-4


def advise(
    diagnosis: Diagnosis,
    activation: str,
    init: str,
    norm: str,
    skip: str,
    batch_size: int,
    clip_hit_rate: float | None = None,
    update_ratio: float | None = None,
) -> str:
    """What to try next. `update_ratio`: the median update-to-weight ratio over the weight
    layers at the last measurement, if measured."""
    flow_fix = next_flow_fix(activation, init, norm, skip, batch_size)
    verdict, flow = diagnosis.verdict, diagnosis.gradient_flow
    if verdict == "non_finite":
        return "lower optimizer.lr, or add clipping=norm"
    if verdict == "exploding":
        return (
            "add clipping=norm and lower optimizer.lr; then revisit init (init=kaiming or xavier)"
        )
    if verdict == "uniformly_small":
        return (
            "every layer is alike but tiny: a learning-rate issue, not vanishing; "
            "raise optimizer.lr"
        )
    if verdict == "vanishing":
        if clip_hit_rate is not None and clip_hit_rate > 0.9:
            return (
                f"clipping hit {clip_hit_rate:.0%} of steps: initialization or architecture "
                "still needs attention (init=kaiming, norm=batch, skip=residual)"
            )
        return flow_fix
    if verdict == "diverged":
        return "lower optimizer.lr (a tenth), and add clipping=norm"
    if verdict == "unstable":
        return (
            "lower optimizer.lr, or add clipping=norm: the run got worse after its best "
            "(a warm-up of the learning rate helps the same way)"
        )
    if verdict == "stalled":
        if flow.label == "weak":
            return f"{flow_fix}: the weak gradient flow may be what holds the first layers back"
        if update_ratio is not None and update_ratio < SLOW_UPDATE:
            return (
                f"raise optimizer.lr: a step moves the weights by {update_ratio:.0e} of their "
                "size (about 1e-3 in a healthy run)"
            )
        return "raise optimizer.lr, or try optimizer=adam"
    # healthy: nothing is prescribed.
    notes = []
    if flow.label == "weak":
        notes.append(
            f"the first layers get 10^{flow.log10_ratio:.1f} of the last layer's gradient and "
            f"learn slower; optionally {flow_fix}"
        )
    if clip_hit_rate is not None and clip_hit_rate > 0.9:
        notes.append(f"clipping hit {clip_hit_rate:.0%} of steps (clipping.max_norm is tight)")
    return "no fix needed" + ("; " + "; ".join(notes) if notes else "")


def next_flow_fix(activation: str, init: str, norm: str, skip: str, batch_size: int) -> str:
    """The next standard fix for a weak or vanishing gradient, in the order of fixes."""
    if activation in SATURATING:
        return "activation=gelu (or activation=relu): a non-saturating activation"
    if activation in RELU_FAMILY and init in {"default", "keep"}:
        return "init=kaiming: match the weight scale to the activation"
    if norm in {"none", "keep"}:
        return "norm=batch" if batch_size >= 8 else "norm=layer or norm=group (batch under 8)"
    if skip in {"none", "keep"}:
        return "skip=residual: shortcuts give the gradient a path around each block"
    return "all standard fixes are on: try a shallower model (model.depth) or a lower optimizer.lr"
