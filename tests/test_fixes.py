"""Each fix does what it says, on the built-in models composed from every config option."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch import nn

from gradsweep.config import compose
from gradsweep.errors import ShapeMismatchError
from gradsweep.fixes.layers import weight_layers
from gradsweep.fixes.pipeline import apply_fixes
from gradsweep.fixes.residual import Residual, projection
from gradsweep.fixes.skips import add_residual
from gradsweep.run.models import create_model

CONF = Path(__file__).resolve().parents[1] / "conf"
# data=folder takes its shape from the images: a grey, non-square one here.
SHAPES = {"mnist": (1, 28, 28), "cifar10": (3, 32, 32), "folder": (1, 20, 24)}


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def build(*overrides: str, data: str = "mnist") -> tuple[nn.Module, torch.Tensor, list[str]]:
    cfg = compose([f"data={data}", *overrides])
    shape = SHAPES[data]
    torch.manual_seed(0)
    model = create_model(cfg.model, shape, 10)
    sample = torch.randn(4, *shape)
    account = apply_fixes(model, cfg, sample)
    return model, sample, account


def forward_backward(model: nn.Module, sample: torch.Tensor) -> None:
    out = model(sample)
    assert out.shape == (len(sample), 10)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    ("group", "option"),
    [
        (g, o)
        for g in ("activation", "init", "norm", "skip", "clipping", "optimizer", "data")
        for o in options(g)
        if o != "keep"
    ],
)
@pytest.mark.parametrize("model", ["mlp", "cnn"])
def test_every_option_composes_and_trains_a_step(group: str, option: str, model: str) -> None:
    data = option if group == "data" else "mnist"
    net, sample, _ = build(f"model={model}", f"{group}={option}", "model.depth=6", data=data)
    forward_backward(net, sample)


def test_activation_swaps_every_module() -> None:
    net, _, account = build("activation=leaky_relu")
    acts = [m for m in net.modules() if isinstance(m, nn.LeakyReLU)]
    assert len(acts) == 20 and all(a.negative_slope == 0.01 for a in acts)
    assert not any(isinstance(m, nn.Sigmoid) for m in net.modules())
    assert account == ["activation: swapped 20 Sigmoid -> LeakyReLU(negative_slope=0.01)"]


@pytest.mark.parametrize(
    ("model", "norm", "expected"),
    [
        ("mlp", "batch", nn.BatchNorm1d),
        ("mlp", "layer", nn.LayerNorm),
        ("mlp", "group", nn.GroupNorm),
        ("cnn", "batch", nn.BatchNorm2d),
        ("cnn", "layer", nn.GroupNorm),
        ("cnn", "group", nn.GroupNorm),
    ],
)
def test_norm_sits_between_each_hidden_layer_and_its_activation(model, norm, expected) -> None:
    net, sample, _ = build(f"model={model}", f"norm={norm}", "activation=relu")
    children = list(net)
    hidden = [i for i, m in enumerate(children) if isinstance(m, (nn.Linear, nn.Conv2d))][:-1]
    for i in hidden:
        assert isinstance(children[i + 1], expected), children[i + 1]
        assert isinstance(children[i + 2], nn.ReLU)
    # The classifier feeds no activation, so no norm follows it.
    assert isinstance(children[-1], nn.Linear)
    assert sum(isinstance(m, expected) for m in net.modules()) == len(hidden)
    if model == "cnn" and norm == "layer":
        assert all(m.num_groups == 1 for m in net.modules() if isinstance(m, nn.GroupNorm))
    forward_backward(net, sample)


def test_residual_mlp_projects_only_where_widths_differ() -> None:
    net, sample, account = build("skip=residual")
    blocks = [m for m in net.modules() if isinstance(m, Residual)]
    assert len(blocks) == 10  # 20 hidden layers in blocks of 2
    first, *rest = blocks
    assert isinstance(first.shortcut, nn.Linear) and first.shortcut.bias is None
    assert (first.shortcut.in_features, first.shortcut.out_features) == (784, 256)
    assert all(isinstance(b.shortcut, nn.Identity) for b in rest)
    assert "1 with projections" in account[-1]
    # Projections are not weight layers: telemetry still sees 20 hidden + classifier.
    assert len(weight_layers(net, sample)) == 21


def test_residual_cnn_projects_with_stride() -> None:
    net, sample, _ = build("model=cnn", "skip=residual", "activation=relu", data="cifar10")
    projections = [b.shortcut for b in net.modules() if isinstance(b, Residual)]
    strided = [p for p in projections if isinstance(p, nn.Conv2d) and p.stride == (2, 2)]
    assert strided and all(p.kernel_size == (1, 1) and p.bias is None for p in strided)
    forward_backward(net, sample)


@pytest.mark.parametrize(
    ("placement", "chosen"), [("nearest_input", [0, 1, 2]), ("nearest_output", [7, 8, 9])]
)
def test_residual_placement_picks_blocks_nearest_one_end(placement, chosen) -> None:
    net, _, account = build("skip=residual", f"skip.placement={placement}", "skip.count=3")
    wrapped = [i for i, m in enumerate(net) if isinstance(m, Residual)]
    assert len(wrapped) == 3
    assert "wrapped 3 of 10 blocks" in account[-1]
    layers_before = [sum(isinstance(m, nn.Linear) for m in list(net)[:i]) for i in wrapped]
    # Unwrapped blocks keep their 2 Linear each in the main stack.
    assert layers_before == ([0, 0, 0] if placement == "nearest_input" else [14, 14, 14])
    assert chosen  # the block indices, for the reader


def test_shape_mismatch_is_an_error_naming_both_shapes() -> None:
    with pytest.raises(ShapeMismatchError, match=r"\(4, 8\).*\(4, 3, 2, 2\)"):
        projection(torch.zeros(4, 8), torch.zeros(4, 3, 2, 2))
    block = Residual(nn.Linear(8, 4), nn.Identity())
    with pytest.raises(ShapeMismatchError, match=r"\(2, 4\).*\(2, 8\)"):
        block(torch.zeros(2, 8))


def test_residual_refuses_a_stack_with_nothing_to_wrap() -> None:
    account = add_residual(nn.Sequential(nn.Linear(4, 4)), torch.zeros(2, 4))
    assert "nothing changed" in account


@pytest.mark.parametrize(
    ("init", "activation", "gain"),
    [
        ("kaiming", "relu", math.sqrt(2)),
        ("kaiming", "gelu", math.sqrt(2)),  # calculate_gain has no GELU: ReLU's gain
        ("kaiming", "leaky_relu", math.sqrt(2 / (1 + 0.01**2))),
        ("kaiming", "tanh", 5 / 3),
        ("xavier", "sigmoid", 1.0),
        ("xavier", "silu", math.sqrt(2)),
        ("auto", "relu", math.sqrt(2)),  # auto -> kaiming
        ("auto", "tanh", 5 / 3),  # auto -> xavier
    ],
)
def test_init_weight_std_matches_theory_and_biases_are_zero(init, activation, gain) -> None:
    net, _, _ = build(f"init={init}", f"activation={activation}", "model.width=512")
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    hidden = linears[1]  # 512 -> 512: fan_in == fan_out
    xavier = init == "xavier" or (init == "auto" and activation == "tanh")
    expected = gain * math.sqrt(2 / (512 + 512)) if xavier else gain / math.sqrt(512)
    assert hidden.weight.std().item() == pytest.approx(expected, rel=0.02)
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)


def test_kaiming_on_conv_uses_fan_out() -> None:
    net, _, _ = build("model=cnn", "init=kaiming", "activation=relu")
    conv = [m for m in net.modules() if isinstance(m, nn.Conv2d)][1]  # 16 -> 16, 3x3
    fan_out = conv.out_channels * 9
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.1)


def test_default_init_leaves_pytorch_weights() -> None:
    torch.manual_seed(0)
    plain = create_model(compose().model, (1, 28, 28), 10)
    net, _, account = build("init=default")
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), net.parameters(), strict=True))
    assert account == ["activation: all 20 activations already are Sigmoid(); nothing swapped"]
