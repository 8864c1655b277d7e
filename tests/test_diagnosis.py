"""The diagnosis: the learning finding on synthetic histories, the verdict's precedence, advice
that agrees with the verdict, and the layer health measured during training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from gradsweep.fixes.activations import swap_activations
from gradsweep.run.models import mlp
from gradsweep.telemetry.advice import advise
from gradsweep.telemetry.diagnosis import (
    FLOW_VERDICTS,
    GRADIENT_FLOWS,
    LEARNING,
    VERDICTS,
    Finding,
    GradientFlow,
    Thresholds,
    combine,
)
from gradsweep.telemetry.learning import judge_learning
from gradsweep.telemetry.monitor import GradientMonitor


def decaying(start: float, end: float, steps: int = 300) -> list[float]:
    return [end + (start - end) * math.exp(-5 * i / steps) for i in range(steps)]


@pytest.mark.parametrize(
    ("losses", "val_accuracy", "label", "evidence"),
    [
        (decaying(2.3, 0.3), [0.80, 0.88, 0.92], "learning", "val/acc 0.920"),
        ([2.30 + 0.01 * math.sin(i) for i in range(300)], [0.11, 0.10, 0.11], "stalled", "ln 10"),
        (decaying(2.3, 2.2), [0.15, 0.16, 0.17], "stalled", "not come down"),
        (decaying(2.3, 0.4), [0.82, 0.79, 0.58], "unstable", "best 0.820 to 0.580"),
        (decaying(2.3, 0.2, 200) + [1.1] * 100, [], "unstable", "back up to 1.1"),
        ([1.4 + 0.001 * i for i in range(300)], [], "unstable", "it went up"),
        (decaying(2.3, 0.5, 150) + decaying(0.5, 4.0, 150), [], "diverged", "x where it started"),
        ([2.3] * 10 + [math.nan] * 5, [], "diverged", "nan"),
    ],
    ids=[
        "learning",
        "at-chance",
        "barely",
        "acc-fell",
        "loss-rebounded",
        "loss-crept-up",
        "loss-rose",
        "nan",
    ],
)
def test_learning_findings(losses, val_accuracy, label, evidence) -> None:
    finding = judge_learning(losses, val_accuracy, Thresholds(), window=50, classes=10)
    assert finding.label == label
    assert evidence in finding.reason


def test_a_noisy_batch_decides_nothing() -> None:
    # One awful batch at the end of a learning run: the medians over the window ignore it.
    losses = decaying(2.3, 0.3)
    losses[-1] = 9.0
    assert judge_learning(losses, window=50).label == "learning"


def flow(label: str, ratio: float = -0.5) -> GradientFlow:
    return GradientFlow(label, ratio, (1e-2, 1e-1), 1.0, f"{label} evidence")


LEARNS = Finding("learning", "the loss went from 2.3 to 0.3")


@pytest.mark.parametrize("flow_label", GRADIENT_FLOWS)
@pytest.mark.parametrize("learning_label", LEARNING)
def test_the_verdict_follows_its_precedence(flow_label: str, learning_label: str) -> None:
    diagnosis = combine(flow(flow_label), Finding(learning_label, f"{learning_label} evidence"))
    if flow_label in FLOW_VERDICTS:
        expected = flow_label
    elif learning_label != "learning":
        expected = learning_label
    else:
        expected = "healthy"
    assert diagnosis.verdict == expected and expected in VERDICTS
    assert diagnosis.verdict != "weak"  # never the verdict alone
    if flow_label == "weak" and learning_label != "learning":
        assert "weak gradient flow" in diagnosis.reason  # the learning leads, citing the flow


FIXES = {"activation": "relu", "init": "kaiming", "norm": "none", "skip": "none", "batch_size": 128}


@pytest.mark.parametrize("flow_label", ["healthy", "weak"])
def test_no_fix_is_prescribed_after_healthy(flow_label: str) -> None:
    advice = advise(combine(flow(flow_label, -1.6), LEARNS), **FIXES)
    assert advice.startswith("no fix needed")
    if flow_label == "weak":  # an option, named as one
        assert "optionally norm=batch" in advice and "10^-1.6" in advice


@pytest.mark.parametrize("learning_label", ["stalled", "unstable", "diverged"])
@pytest.mark.parametrize("flow_label", ["healthy", "weak"])
def test_a_learning_problem_never_reads_no_fix_needed(flow_label, learning_label) -> None:
    diagnosis = combine(flow(flow_label), Finding(learning_label, "evidence"))
    advice = advise(diagnosis, **FIXES)
    assert "no fix needed" not in advice
    if learning_label == "stalled" and flow_label == "weak":
        assert advice.startswith("norm=batch")  # the flow fix the weak flow points to
    elif learning_label == "stalled":
        assert "optimizer.lr" in advice
    else:
        assert "lower optimizer.lr" in advice


def test_a_stalled_run_with_tiny_updates_is_told_to_raise_the_learning_rate() -> None:
    diagnosis = combine(flow("healthy"), Finding("stalled", "evidence"))
    advice = advise(diagnosis, **FIXES, update_ratio=3e-6)
    assert advice.startswith("raise optimizer.lr") and "3e-06" in advice


def test_thresholds_come_from_the_config(make_cfg) -> None:
    from gradsweep.telemetry.diagnosis import thresholds_from_config

    cfg = make_cfg("telemetry.stall_drop=0.3", "telemetry.weak_orders=2")
    thresholds = thresholds_from_config(cfg.telemetry)
    assert (thresholds.stall_drop, thresholds.weak_orders) == (0.3, 2.0)
    assert thresholds.vanishing_orders == Thresholds().vanishing_orders  # the defaults agree


def relu_mlp(depth: int, width: int) -> torch.nn.Module:
    model = mlp((1, 8, 8), 10, depth=depth, width=width)
    swap_activations(model, "relu")
    return model


def train_steps(monitor: GradientMonitor, model, steps: int, lr: float = 0.1) -> list:
    torch.manual_seed(0)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    rows = []
    for step in range(steps):
        with monitor.activations(step):
            loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        rows.append(monitor.step(loss, step=step))
        optimizer.step()
    return rows


def test_activations_and_update_ratios_only_on_their_steps_and_no_hook_left() -> None:
    torch.manual_seed(0)
    model = relu_mlp(depth=4, width=16)
    monitor = GradientMonitor(model, torch.zeros(2, 1, 8, 8), activations_every=3)
    rows = train_steps(monitor, model, steps=7)
    measured = {i for i, row in enumerate(rows) if any(k.startswith("act/") for k in row)}
    updated = {i for i, row in enumerate(rows) if any(k.startswith("update_ratio/") for k in row)}
    assert measured == {0, 3, 6}
    assert updated == {1, 4}  # the update a measured step made, read at the next step
    # Numbered like grad_flow/layer_NNN: one per hidden layer's activation, every weight layer.
    assert {k for k in rows[3] if k.startswith("act/dead/")} == {
        f"act/dead/layer_{i:03d}" for i in range(4)
    }
    assert not any(k.startswith("act/saturated/") for k in rows[3])  # no such thing for ReLU
    ratios = [rows[4][f"update_ratio/layer_{i:03d}"] for i in range(5)]
    assert all(0 < r < 1 for r in ratios)
    # The hooks lived for the measured forward passes only.
    assert all(not m._forward_hooks for m in model.modules())


def test_update_ratio_is_the_step_over_the_weight() -> None:
    torch.manual_seed(0)
    model = relu_mlp(depth=2, width=8)
    monitor = GradientMonitor(model, torch.zeros(2, 1, 8, 8), activations_every=2)
    first = model.get_submodule(monitor.layers[0]).weight
    before = first.detach().clone()
    rows = train_steps(monitor, model, steps=1)
    expected = ((first.detach() - before).norm() / before.norm()).item()
    row = monitor.step(
        F.cross_entropy(model(torch.randn(4, 1, 8, 8)), torch.zeros(4).long()), step=1
    )
    assert rows[0] is not None and row["update_ratio/layer_000"] == pytest.approx(expected)


def test_a_model_without_activation_modules_is_said_to_be_unmeasured() -> None:
    from examples.deep_sigmoid import DeepSigmoid

    model = DeepSigmoid(depth=3, width=8, in_features=64)
    monitor = GradientMonitor(model, torch.zeros(2, 1, 8, 8), activations_every=1)
    rows = train_steps(monitor, model, steps=2)
    assert monitor.health.measured_activations == 0
    assert not any(k.startswith("act/") for row in rows for k in row)
    assert "update_ratio/layer_000" in rows[1]  # the update ratio needs no hook


def test_a_deep_tanh_conv_net_at_chance_is_stalled_not_healthy(make_cfg, tmp_path) -> None:
    """The issue's case, small: the user's own tanh conv net learns nothing in its first steps
    on real digits while its gradient still reaches the first layer."""
    from gradsweep.run.training import train

    cfg = make_cfg(
        "model=custom",
        "model._target_=examples.deep_tanh_cnn.DeepTanhCNN",
        "+model.depth=8",
        "+model.width=8",
        max_steps=40,
    )
    summary = train(cfg, run_dir=tmp_path).summary
    assert summary["diagnosis/learning"] == "stalled"
    assert summary["diagnosis/verdict"] != "healthy"
    assert "the loss went from 2.3" in summary["diagnosis/reason"]
    assert "no fix needed" not in summary["diagnosis/advice"]
