"""The fixes on models gradsweep did not build: attribute layers, activations called in forward,
torchvision networks without norms; and the monitor in a user's own training loop."""

from __future__ import annotations

import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import gradsweep
from gradsweep.errors import ShapeMismatchError
from gradsweep.fixes import graphs
from gradsweep.fixes.activations import node_kind
from gradsweep.fixes.layers import weight_layers
from gradsweep.fixes.residual import Residual, Shortcut
from gradsweep.fixes.skips import add_residual

NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.LayerNorm, nn.GroupNorm)


class FunctionalNet(nn.Module):
    """Layers as attributes; every activation a call in forward, in each way users write one."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, stride=2, padding=1)
        self.fc1 = nn.Linear(16 * 14 * 14, 32)
        self.fc2 = nn.Linear(32, 32)
        self.fc3 = nn.Linear(32, 24)
        self.out = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.sigmoid(self.conv1(x))  # call_function torch.sigmoid
        x = F.tanh(self.conv2(x))  # traces as the method call x.tanh()
        x = x.flatten(1)
        x = F.relu(self.fc1(x))  # call_function F.relu
        x = self.fc2(x).sigmoid()  # call_method sigmoid
        x = F.sigmoid(self.fc3(x))  # traces as the method call x.sigmoid()
        return self.out(x)


class Untraceable(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(784, 16)
        self.act = nn.Tanh()
        self.fc2 = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.fc1(x.flatten(1)))
        if x.sum() > 0:
            x = torch.sigmoid(x)
        return self.fc2(x)


def sample() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(4, 1, 28, 28)


def counted(account: str, what: str) -> int:
    """The number the account gives before `what` ("swapped 5 torch.sigmoid" -> 5)."""
    found = re.findall(rf"(\d+) {re.escape(what)}", account)
    assert found, f"{what!r} not in {account!r}"
    return sum(int(n) for n in found)


def functional_kinds(model: nn.Module) -> list[str]:
    """Activation kinds still called as functions or methods in the model's forwards."""
    kinds = []
    for _, module in graphs.editable_modules(model):
        for node in graphs.trace(module).nodes:
            if node.op != "call_module" and node_kind(module, node):
                kinds.append(node_kind(module, node))
    return kinds


def runs_forward_and_backward(model: nn.Module, x: torch.Tensor, shape: tuple) -> None:
    model.zero_grad(set_to_none=True)
    out = model(x)
    assert out.shape == shape
    out.square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_functional_activations_are_swapped_in_the_traced_forward() -> None:
    model, x = FunctionalNet(), sample()
    names_before = {name for name, _ in model.named_parameters()}
    before = model(x)
    account = gradsweep.swap_activations(model, "gelu")
    assert functional_kinds(model) == []
    gelus = [m for m in model.modules() if isinstance(m, nn.GELU)]
    assert (
        len(gelus)
        == 5
        == counted(account, "torch.sigmoid")
        + counted(account, "x.tanh()")
        + (counted(account, "F.relu") + counted(account, "x.sigmoid()"))
    )
    assert "FunctionalNet.forward" in account
    assert isinstance(model, FunctionalNet)
    assert {name for name, _ in model.named_parameters()} == names_before
    assert not torch.allclose(model(x), before)  # the forward really changed
    runs_forward_and_backward(model, x, (4, 10))


def test_only_the_given_kinds_are_swapped() -> None:
    model = FunctionalNet()
    account = gradsweep.swap_activations(model, "relu", kinds={"sigmoid"})
    assert sorted(functional_kinds(model)) == ["relu", "tanh"]  # F.relu stays: it is relu
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 3
    assert counted(account, "torch.sigmoid") + counted(account, "x.sigmoid()") == 3


def test_calls_left_in_an_untraceable_forward_are_named() -> None:
    model = Untraceable()
    account = gradsweep.swap_activations(model, "gelu")
    assert "swapped 1 Tanh -> GELU" in account  # modules are swapped whatever forward does
    assert re.search(r"left torch\.sigmoid \(line \d+\) as they are", account), account
    assert "does not trace with torch.fx" in account
    runs_forward_and_backward(model, sample(), (4, 10))


@pytest.mark.parametrize(
    ("norm", "conv_norm", "fc_norm"),
    [
        ("batch", nn.BatchNorm2d, nn.BatchNorm1d),
        ("layer", nn.GroupNorm, nn.LayerNorm),
        ("group", nn.GroupNorm, nn.GroupNorm),
    ],
)
def test_norms_go_between_attribute_layers_and_activations_called_in_forward(
    norm, conv_norm, fc_norm
) -> None:
    model, x = FunctionalNet(), sample()
    names_before = {name for name, _ in model.named_parameters()}
    account = gradsweep.insert_norms(model, norm, num_groups=8)
    norms = {name: m for name, m in model.named_children() if isinstance(m, NORM_TYPES)}
    assert sorted(norms) == [f"{layer}_norm" for layer in ("conv1", "conv2", "fc1", "fc2", "fc3")]
    assert counted(account, "of them in FunctionalNet.forward") == 5
    for kind in {type(m) for m in norms.values()}:
        made = sum(isinstance(m, kind) for m in model.modules())
        assert counted(account, kind.__name__) == made
    # The right feature count: each norm fits the layer before it.
    widths = {"conv1": 8, "conv2": 16, "fc1": 32, "fc2": 32, "fc3": 24}
    for layer, width in widths.items():
        made = norms[f"{layer}_norm"]
        assert isinstance(made, conv_norm if layer.startswith("conv") else fc_norm)
        features = made.num_channels if isinstance(made, nn.GroupNorm) else None
        if isinstance(made, nn.LayerNorm):
            features = made.normalized_shape[0]
        if isinstance(made, (nn.BatchNorm1d, nn.BatchNorm2d)):
            features = made.num_features
        assert features == width
    # The old names stay; only the norms' own parameters are new.
    assert names_before < {name for name, _ in model.named_parameters()}
    assert "out_norm" not in norms  # the classifier feeds no activation
    runs_forward_and_backward(model, x, (4, 10))


def test_residual_in_the_traced_graph_spans_layer_and_activation() -> None:
    model, x = FunctionalNet(), sample()
    account = add_residual(model, x, block_size=2)
    shortcuts = {n: m for n, m in model.named_children() if isinstance(m, Shortcut)}
    # Runs of units: conv1 -> conv2 (flatten breaks the run), fc1 -> fc2 -> fc3.
    assert sorted(shortcuts) == ["conv1_shortcut", "fc1_shortcut", "fc3_shortcut"]
    assert "wrapped 3 of 3 blocks of 2" in account and "FunctionalNet.forward" in account
    conv = shortcuts["conv1_shortcut"].projection
    assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2) and conv.kernel_size == (1, 1)
    fc = shortcuts["fc1_shortcut"].projection
    assert (
        isinstance(fc, nn.Linear)
        and fc.bias is None
        and (fc.in_features, fc.out_features)
        == (
            16 * 14 * 14,
            32,
        )
    )
    # fc3 alone: 32 -> 24 needs a projection too; projections are not weight layers.
    assert isinstance(shortcuts["fc3_shortcut"].projection, nn.Linear)
    assert counted(account, "with projections") == 3
    assert weight_layers(model, x) == ["conv1", "conv2", "fc1", "fc2", "fc3", "out"]
    runs_forward_and_backward(model, x, (4, 10))
    # The shortcut adds the block's input to its activation's output.
    seen: dict[str, object] = {}
    model.fc1.register_forward_pre_hook(lambda _m, args: seen.update(block_input=args[0]))
    shortcut = shortcuts["fc1_shortcut"]
    shortcut.register_forward_hook(lambda _m, args, out: seen.update(args=args, out=out))
    model(x)
    activated, block_input = seen["args"]
    assert block_input is seen["block_input"]
    assert torch.allclose(seen["out"], activated + fc(block_input))


def test_a_named_lone_linear_is_widened_to_its_activation_in_forward() -> None:
    model, x = FunctionalNet(), sample()
    account = add_residual(model, x, modules=["fc2"])
    assert "fc2 + its x.sigmoid() in FunctionalNet.forward" in account
    assert isinstance(model.fc2, nn.Linear)  # not wrapped alone
    assert isinstance(model.fc2_shortcut, Shortcut)
    assert isinstance(model.fc2_shortcut.projection, nn.Identity)  # 32 -> 32
    runs_forward_and_backward(model, x, (4, 10))


def test_a_lone_linear_in_an_untraceable_forward_is_refused_plainly() -> None:
    model = Untraceable()
    plain = copy.deepcopy(model)
    account = add_residual(model, sample(), modules=["fc1"])
    assert "wrapped 0 of 1" in account
    assert "fc1 left as it is: a shortcut around it alone would span no activation" in account
    assert "does not trace with torch.fx" in account
    assert str(model) == str(plain)


class Blocks(nn.Module):
    """Submodules a user may name: same shape, wider, strided, and flattening."""

    def __init__(self) -> None:
        super().__init__()
        self.same = nn.Sequential(nn.Conv2d(1, 1, 3, padding=1), nn.ReLU())
        self.wider = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU())
        self.strided = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.odd = nn.Sequential(nn.Conv2d(16, 16, 4), nn.ReLU())  # 14 -> 11: no stride fits
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 11 * 11, 10), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.odd(self.strided(self.wider(self.same(x)))))


def test_named_modules_get_identity_or_projection_by_shape() -> None:
    model, x = Blocks(), sample()
    account = add_residual(model, x, modules=["same", "wider", "strided"])
    assert isinstance(model.same, Residual) and isinstance(model.same.shortcut, nn.Identity)
    wider, strided = model.wider.shortcut, model.strided.shortcut
    assert isinstance(wider, nn.Conv2d) and (wider.in_channels, wider.out_channels) == (1, 8)
    assert isinstance(strided, nn.Conv2d) and strided.stride == (2, 2) and strided.bias is None
    assert "wrapped 3 of 3 named modules" in account
    assert "strided (projection (8, 28, 28)->(16, 14, 14))" in account
    runs_forward_and_backward(model, x, (4, 10))


@pytest.mark.parametrize(
    ("name", "shapes"),
    [("odd", r"\(4, 16, 14, 14\).*\(4, 16, 11, 11\)"), ("head", r"\(4, 16, 11, 11\).*\(4, 10\)")],
)
def test_a_shortcut_no_projection_can_fit_names_both_shapes(name, shapes) -> None:
    with pytest.raises(ShapeMismatchError, match=shapes):
        add_residual(Blocks(), sample(), modules=[name])


def test_fix_reports_one_line_per_fix_and_matches_init_to_functional_activations() -> None:
    model, x = FunctionalNet(), sample()
    account = gradsweep.fix(model, x, init="xavier")  # activations kept: sigmoid dominates
    assert account == ["init: xavier normal on 6 weight layers (gain of sigmoid), biases zero"]
    account = gradsweep.fix(
        FunctionalNet(), x, activation="gelu", norm="layer", skip="residual", init="kaiming"
    )
    assert [line.split(":")[0] for line in account] == ["activation", "norm", "skip", "init"]
    assert "gain of relu for gelu" in account[-1]


@pytest.fixture(scope="module")
def torchvision_models():
    torchvision = pytest.importorskip("torchvision")
    return torchvision.models


@pytest.mark.slow  # torchvision's model zoo: VGG-11 forward and backward four times
def test_every_transform_on_torchvision_vgg11_without_batch_norm(torchvision_models) -> None:
    """VGG-11 as torchvision builds it (no BN, ReLU modules), each transform in turn."""
    torch.manual_seed(0)
    model = torchvision_models.vgg11(weights=None, num_classes=10)
    x = torch.randn(2, 3, 32, 32)

    account = gradsweep.swap_activations(model, "gelu")
    assert counted(account, "ReLU") == 10 == sum(isinstance(m, nn.GELU) for m in model.modules())
    runs_forward_and_backward(model, x, (2, 10))

    account = gradsweep.insert_norms(model, "batch")
    bn2d = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    bn1d = sum(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    assert (
        (counted(account, "BatchNorm2d"), counted(account, "BatchNorm1d"))
        == (bn2d, bn1d)
        == (
            8,
            2,
        )
    )
    runs_forward_and_backward(model, x, (2, 10))

    account = add_residual(model, x)
    blocks = [m for m in model.modules() if isinstance(m, Residual)]
    projected = [b for b in blocks if not isinstance(b.shortcut, nn.Identity)]
    assert counted(account, "of 5 blocks") == len(blocks) == 5
    assert counted(account, "with projections") == len(projected) == 4
    runs_forward_and_backward(model, x, (2, 10))

    account = gradsweep.initialize(model, "kaiming", "gelu")
    convs_and_linears = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert counted(account, "weight layers") == len(convs_and_linears) == 11 + 4
    runs_forward_and_backward(model, x, (2, 10))
    assert len(weight_layers(model, x)) == 11  # projections are not reported as layers


@pytest.mark.slow  # torchvision's model zoo
@pytest.mark.parametrize(
    ("fix", "choice"),
    [("activation", "silu"), ("norm", "batch"), ("skip", "residual"), ("init", "kaiming")],
)
def test_each_transform_on_torchvision_squeezenet(torchvision_models, fix, choice) -> None:
    """SqueezeNet's Fire modules hold their layers as attributes and call them in forward."""
    torch.manual_seed(0)
    model = torchvision_models.squeezenet1_1(weights=None, num_classes=10)
    x = torch.randn(2, 3, 64, 64)
    (account,) = gradsweep.fix(model, x, **{fix: choice})
    if fix == "activation":
        silus = sum(isinstance(m, nn.SiLU) for m in model.modules())
        assert counted(account, "ReLU") == silus == 26
    elif fix == "norm":
        assert counted(account, "BatchNorm2d") == 26
        assert counted(account, "of them in 8 Fire forwards") == 24
        assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 26
    elif fix == "skip":
        # Each Fire's squeeze and expand units, in the 8 Fire forwards.
        shortcuts = [m for m in model.modules() if isinstance(m, Shortcut)]
        assert counted(account, "of 24 blocks") == len(shortcuts) == 24
    else:
        assert counted(account, "weight layers") == 26
    runs_forward_and_backward(model, x, (2, 10))
