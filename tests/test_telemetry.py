"""Gradient norms, clipping and the verdict, against torch's own reference functions."""

from __future__ import annotations

import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gradsweep.run.models import mlp
from gradsweep.telemetry.advice import advise
from gradsweep.telemetry.diagnosis import Finding, Thresholds, combine, diagnose
from gradsweep.telemetry.gradients import Clipping
from gradsweep.telemetry.monitor import GradientMonitor


def small_model(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return mlp((1, 8, 8), 10, depth=4, width=16)


def backward(model: nn.Module, scale: float = 1.0, seed: int = 0) -> torch.Tensor:
    torch.manual_seed(seed)
    x, y = torch.randn(32, 1, 8, 8), torch.randint(0, 10, (32,))
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y) * scale
    loss.backward()
    return loss


@pytest.fixture(params=[False, True], ids=["host-decides", "sync-free"])
def sync_free(request: pytest.FixtureRequest) -> bool:
    """Both ways a GradientMonitor works: the host reads each step's values at once and
    decides clipping (the CPU's default), or never waits for the device (CUDA's default:
    clipping decided on the device, values read a step late), run here on the CPU."""
    return request.param


def step_row(monitor: GradientMonitor, loss: torch.Tensor) -> dict[str, float] | None:
    """This step's row, also when the monitor hands rows over a step late."""
    row = monitor.step(loss)
    return monitor.flush() if monitor.telemetry.sync_free else row


def test_fused_norms_equal_the_naive_loop(sync_free: bool) -> None:
    model = small_model()
    monitor = GradientMonitor(model, torch.zeros(2, 1, 8, 8), params="all", sync_free=sync_free)
    loss = backward(model)
    row = step_row(monitor, loss)
    # The seed's snippet: one .item() per parameter.
    for name, p in model.named_parameters():
        assert row[f"grad_norm/{name}"] == pytest.approx(p.grad.norm(2).item(), rel=1e-5)
    # The weight layers' series, by depth: the same norms under names every model shares.
    weights = [model.get_submodule(name).weight for name in monitor.layers]
    assert len(weights) == 5
    assert sorted(k for k in row if k.startswith("grad_flow/layer_")) == [
        f"grad_flow/layer_{index:03d}" for index in range(5)
    ]
    for index, weight in enumerate(weights):
        norm = weight.grad.norm().item()
        assert row[f"grad_flow/layer_{index:03d}"] == pytest.approx(norm, rel=1e-5)
    total = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert row["grad_norm/total"] == pytest.approx(total.item(), rel=1e-5)
    first, last = model[1].weight.grad.norm().item(), model[-1].weight.grad.norm().item()
    assert row["grad_flow/first"] == pytest.approx(first, rel=1e-5)
    assert row["grad_flow/last"] == pytest.approx(last, rel=1e-5)
    assert row["grad_flow/log10_ratio"] == pytest.approx(math.log10(first / last), rel=1e-5)


def test_parameters_without_gradient_are_skipped(sync_free: bool) -> None:
    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = small_model()
            self.unused = nn.Linear(3, 3)  # registered, never called: .grad stays None

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    model = WithUnused()
    monitor = GradientMonitor(
        model, torch.zeros(2, 1, 8, 8), Clipping("norm", max_norm=1e6), sync_free=sync_free
    )
    row = step_row(monitor, backward(model))
    assert "grad_norm/unused.weight" not in row and "grad_norm/unused.bias" not in row
    used = [p.grad.norm() for n, p in model.named_parameters() if not n.startswith("unused")]
    assert row["grad_norm/total"] == pytest.approx(torch.stack(used).norm().item(), rel=1e-5)
    assert row["clip/hit"] == 0.0 and monitor.gradient_flow().label != "non_finite"


def test_non_finite_gradients_are_reported(sync_free: bool) -> None:
    model = small_model()
    monitor = GradientMonitor(model, torch.zeros(2, 1, 8, 8), sync_free=sync_free)
    loss = backward(model)
    model[1].weight.grad[0, 0] = float("nan")
    row = step_row(monitor, loss)
    assert math.isnan(row["grad_flow/layer_000"]) and math.isnan(row["grad_norm/total"])
    assert monitor.non_finite_step == 0
    assert monitor.gradient_flow().label == "non_finite"


@pytest.mark.parametrize("clipping", ["none", "norm", "value"])
def test_no_gradient_is_kept_past_the_step(clipping: str, sync_free: bool) -> None:
    # Kept, a step's gradients would live through the next backward, which would then
    # allocate a fresh set: zero_grad(set_to_none=True) must free them.
    model = small_model()
    monitor = GradientMonitor(
        model, torch.zeros(2, 1, 8, 8), Clipping(clipping), sync_free=sync_free
    )
    monitor.step(backward(model))
    gradients = [weakref.ref(p.grad) for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    assert [ref() for ref in gradients] == [None] * len(gradients)


def test_weights_filter_and_regex_select_what_is_logged() -> None:
    model = small_model()
    weights = GradientMonitor(model, torch.zeros(2, 1, 8, 8), params="weights")
    row = weights.step(backward(model))
    assert sorted(k for k in row if k.startswith("grad_norm/")) == sorted(
        [f"grad_norm/{i}.weight" for i in (1, 3, 5, 7, 9)] + ["grad_norm/total"]
    )
    regex = GradientMonitor(model, torch.zeros(2, 1, 8, 8), params=r"bias$")
    row = regex.step(backward(model))
    assert all(k.endswith("bias") or k == "grad_norm/total" for k in row if "grad_norm/" in k)
    with pytest.raises(ValueError, match="matches no parameter"):
        GradientMonitor(model, torch.zeros(2, 1, 8, 8), params="nothing_like_this")


def test_sync_free_rows_arrive_a_step_late_in_order() -> None:
    class Rows(list):
        def log(self, metrics: dict[str, float], step: int) -> None:
            self.append((step, metrics["train/loss"]))

    model, tracker = small_model(), Rows()
    monitor = GradientMonitor(model, torch.zeros(2, 1, 8, 8), tracker=tracker, sync_free=True)
    first = backward(model, seed=0)
    assert monitor.step(first) is None  # still in flight
    second = backward(model, seed=1)
    assert monitor.step(second)["train/loss"] == pytest.approx(first.item())
    assert monitor.flush()["train/loss"] == pytest.approx(second.item())
    assert monitor.flush() is None
    assert [step for step, _ in tracker] == [0, 1]


def test_log_every_n_steps_still_clips_and_counts_every_step(sync_free: bool) -> None:
    model = small_model()
    monitor = GradientMonitor(
        model,
        torch.zeros(2, 1, 8, 8),
        Clipping("norm", max_norm=1e-9),
        log_every_n_steps=3,
        sync_free=sync_free,
    )
    rows = [step_row(monitor, backward(model, seed=s)) for s in range(7)]
    assert [r is not None for r in rows] == [True, False, False, True, False, False, True]
    assert rows[-1]["clip/hit_rate"] == 1.0 and monitor.clip.steps == 7


def test_norm_clipping_equals_clip_grad_norm_and_counts_hits(sync_free: bool) -> None:
    reference, model = small_model(), small_model()
    monitor = GradientMonitor(
        model, torch.zeros(2, 1, 8, 8), Clipping("norm", max_norm=0.5), sync_free=sync_free
    )
    # A known schedule: loss scales that put the global norm above or below 0.5.
    scales = [10.0, 0.001, 10.0, 10.0, 0.001, 0.001, 10.0, 0.001]
    expected_hits = 0
    for step, scale in enumerate(scales):
        backward(reference, scale, seed=step)
        total = nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.5)
        expected_hits += bool(total > 0.5)
        row = step_row(monitor, backward(model, scale, seed=step))
        assert row["clip/hit"] == float(total > 0.5)
        assert row["grad_norm/total"] == pytest.approx(total.item(), rel=1e-5)  # before clipping
        for p, q in zip(model.parameters(), reference.parameters(), strict=True):
            torch.testing.assert_close(p.grad, q.grad)
    assert expected_hits == 4
    assert monitor.clip.hits == 4 and monitor.clip.hit_rate == pytest.approx(4 / len(scales))
    assert row["clip/hit_rate"] == pytest.approx(0.5)


@pytest.mark.parametrize("norm_type", [1.0, float("inf")])
def test_norm_clipping_with_other_norm_types(norm_type: float, sync_free: bool) -> None:
    reference, model = small_model(), small_model()
    clipping = Clipping("norm", max_norm=0.05, norm_type=norm_type)
    monitor = GradientMonitor(model, torch.zeros(2, 1, 8, 8), clipping, sync_free=sync_free)
    backward(reference, 5.0)
    nn.utils.clip_grad_norm_(reference.parameters(), max_norm=0.05, norm_type=norm_type)
    row = step_row(monitor, backward(model, 5.0))
    assert row["clip/hit"] == 1.0
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)


def test_value_clipping_equals_clip_grad_value_and_flags_any_clipped_element(
    sync_free: bool,
) -> None:
    reference, model = small_model(), small_model()
    clipping = Clipping("value", clip_value=0.01)
    monitor = GradientMonitor(model, torch.zeros(2, 1, 8, 8), clipping, sync_free=sync_free)
    backward(reference)
    largest = max(p.grad.abs().max().item() for p in reference.parameters())
    nn.utils.clip_grad_value_(reference.parameters(), 0.01)
    row = step_row(monitor, backward(model))
    assert row["clip/hit"] == float(largest > 0.01) == 1.0
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    loose_model = small_model()
    clipping = Clipping("value", clip_value=1e6)
    loose = GradientMonitor(loose_model, torch.zeros(2, 1, 8, 8), clipping, sync_free=sync_free)
    assert step_row(loose, backward(loose_model))["clip/hit"] == 0.0


# --- the verdict on constructed cases ---------------------------------------------------


def rows(first: float, last: float, middle: float | None = None, steps: int = 10):
    middle = math.sqrt(first * last) if middle is None else middle
    return [[first, middle, last]] * steps, [math.sqrt(first**2 + middle**2 + last**2)] * steps


@pytest.mark.parametrize(
    ("first", "last", "label"),
    [
        (1e-9, 1e-1, "vanishing"),
        (1e3, 1e-1, "exploding"),
        (1e-6, 2e-6, "uniformly_small"),
        (0.3, 0.5, "healthy"),
        (2e-3, 1e-1, "weak"),  # 1.7 orders down: under 3, not vanishing
        (3e-2, 1e-1, "healthy"),  # under 1 order
    ],
)
def test_verdict_labels(first: float, last: float, label: str) -> None:
    layers, totals = rows(first, last)
    assert diagnose(layers, totals).label == label


def test_verdict_exploding_on_global_norm_and_non_finite() -> None:
    layers, _ = rows(10.0, 10.0)
    assert diagnose(layers, [5e3] * 10).label == "exploding"
    layers, totals = rows(0.1, 0.1)
    totals[-1] = float("inf")
    assert diagnose(layers, totals).label == "non_finite"


def test_verdict_uses_the_median_over_the_window() -> None:
    layers, totals = rows(1e-9, 1e-1, steps=7)
    layers += [[0.5, 0.5, 0.5]] * 3  # a minority of healthy steps does not flip it
    assert diagnose(layers, totals + [1.0] * 3).label == "vanishing"
    assert diagnose(layers, totals + [1.0] * 3).log10_ratio == pytest.approx(-8.0)
    assert diagnose(*rows(1e-9, 1e-1), Thresholds(vanishing_orders=9)).label == "weak"
    assert diagnose(*rows(1e-9, 1e-1), Thresholds(vanishing_orders=9, weak_orders=9)).label == (
        "healthy"
    )


def test_advice_follows_the_order_of_fixes() -> None:
    learning = Finding("learning", "the loss went from 2.3 to 0.4")
    vanishing = combine(diagnose(*rows(1e-9, 1e-1)), learning)

    def ask(**changes: object) -> str:
        fixes = {"activation": "sigmoid", "init": "default", "norm": "none", "skip": "none"}
        return advise(vanishing, **{**fixes, "batch_size": 128, **changes})

    assert ask().startswith("activation=gelu")
    assert ask(activation="relu").startswith("init=kaiming")
    assert ask(activation="relu", init="kaiming").startswith("norm=batch")
    assert ask(activation="relu", init="kaiming", batch_size=4).startswith("norm=layer")
    assert ask(activation="relu", init="kaiming", norm="batch").startswith("skip=residual")
    assert "initialization or architecture" in ask(clip_hit_rate=0.95)
    small = combine(diagnose(*rows(1e-6, 2e-6)), learning)
    assert "learning-rate" in advise(small, "relu", "kaiming", "none", "none", 128)
