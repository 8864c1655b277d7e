"""The record of a finished run: the flat keys `summary.json` and the W&B summary hold."""

from __future__ import annotations

import math
import statistics

from omegaconf import DictConfig
from torch import nn

from gradsweep.config import CHOICE_GROUPS, group_choice
from gradsweep.data.tensors import Data
from gradsweep.fixes.activations import dominant_activation
from gradsweep.fixes.pipeline import UNCHANGED
from gradsweep.telemetry.advice import advise
from gradsweep.telemetry.monitor import GradientMonitor


def build_summary(
    cfg: DictConfig,
    model: nn.Module,
    data: Data,
    monitor: GradientMonitor,
    evals: dict,
    steps: int,
) -> dict[str, object]:
    """The flat record of the run that summary.json and the W&B summary hold."""
    diagnosis = monitor.diagnosis(evals["val_history"], classes=data.num_classes)
    flow = diagnosis.gradient_flow
    activation = group_choice(cfg, "activation")
    if activation in UNCHANGED:  # advise on what the model really uses
        activation = dominant_activation(model) or activation
    clip_rate = monitor.clip.hit_rate if cfg.clipping.name != "none" else None
    update = [r for r in monitor.health.update_ratios if math.isfinite(r)]
    advice = advise(
        diagnosis,
        activation=activation,
        init=group_choice(cfg, "init"),
        norm=group_choice(cfg, "norm"),
        skip=group_choice(cfg, "skip"),
        batch_size=cfg.data.batch_size,
        clip_hit_rate=clip_rate,
        update_ratio=statistics.median(update) if update else None,
    )
    summary: dict[str, object] = {
        **{group: group_choice(cfg, group) for group in CHOICE_GROUPS},
        "seed": cfg.seed,
        **data.record(),  # data.source, and the class names where the source has them
        "steps": steps,
        "val/loss": evals["val"].get("loss", math.nan),
        "val/acc": evals["val"].get("acc", math.nan),
        "val/acc_best": evals["val_best"] if math.isfinite(evals["val_best"]) else math.nan,
        "grad_flow/log10_ratio": flow.log10_ratio,
        "grad_flow/first": flow.layer_medians[0] if flow.layer_medians else math.nan,
        "grad_flow/last": flow.layer_medians[-1] if flow.layer_medians else math.nan,
        "diagnosis/gradient_flow": flow.label,
        "diagnosis/learning": diagnosis.learning.label,
        "diagnosis/verdict": diagnosis.verdict,
        "diagnosis/reason": diagnosis.reason,
        "diagnosis/advice": advice,
    }
    if clip_rate is not None:
        summary["clip/hit_rate"] = clip_rate
    if monitor.non_finite_step is not None:
        summary["diagnosis/non_finite_step"] = monitor.non_finite_step
    if evals["test"] is not None:
        summary["test/loss"], summary["test/acc"] = evals["test"]["loss"], evals["test"]["acc"]
    return summary
