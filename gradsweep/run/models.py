"""The built-in models: plain deep stacks, as a practitioner would first write them.

They use sigmoid and PyTorch's default init on purpose: this is the network whose
gradients vanish. The fixes are transforms applied afterwards (gradsweep.fixes.pipeline), the
same ones that fix a user's own model.
"""

from __future__ import annotations

import math

from torch import nn

from gradsweep.config import is_custom


def mlp(input_shape: tuple[int, ...], num_classes: int, depth: int, width: int) -> nn.Sequential:
    """Flatten -> depth x (Linear(width) -> Sigmoid) -> Linear(num_classes)."""
    layers: list[nn.Module] = [nn.Flatten()]
    features = math.prod(input_shape)
    for _ in range(depth):
        layers += [nn.Linear(features, width), nn.Sigmoid()]
        features = width
    layers.append(nn.Linear(features, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], num_classes: int, depth: int, width: int) -> nn.Sequential:
    """depth x (3x3 conv -> Sigmoid), global average pool, Linear(num_classes).

    The first conv has stride 2 and so does the one halfway down, where the channels
    double: 1x28x28 becomes 14x14 then 7x7, 3x32x32 becomes 16x16 then 8x8. The strided
    stem keeps a step of the default (depth 8, width 16) well under 100 ms on a 2-core CPU.
    """
    downsample_at = {0, depth // 2}
    layers: list[nn.Module] = []
    channels_in, channels = input_shape[0], width
    for index in range(depth):
        stride = 2 if index in downsample_at else 1
        if index in downsample_at and index > 0:
            channels *= 2
        layers += [
            nn.Conv2d(channels_in, channels, kernel_size=3, stride=stride, padding=1),
            nn.Sigmoid(),
        ]
        channels_in = channels
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels_in, num_classes)]
    return nn.Sequential(*layers)


# Name -> builder(input_shape, num_classes, depth, width). A new built-in model goes here.
MODELS = {"mlp": mlp, "cnn": cnn}


def create_model(cfg_model, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The plain model a config names: a built-in one, or the user's own via `_target_`.

    A user's model gets only the keyword arguments in its own config node; it is
    expected to take images of shape (B, *input_shape) and return class logits.
    """
    if is_custom(cfg_model):
        from hydra.utils import instantiate

        return instantiate(cfg_model)
    return MODELS[cfg_model.name](input_shape, num_classes, cfg_model.depth, cfg_model.width)
