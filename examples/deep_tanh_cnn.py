"""A user's deep tanh conv net, written the everyday way: a stack of 3x3 convolutions, each
followed by tanh, global average pooling, then a linear head. Its gradient reaches the first
layer (the flow is only weak), yet at its default scale it learns nothing: the loss stays at
ln(10), chance. gradsweep's verdict says so rather than `healthy`:

    python train.py model=custom model._target_=examples.deep_tanh_cnn.DeepTanhCNN
    python train.py model=custom model._target_=examples.deep_tanh_cnn.DeepTanhCNN \\
        activation=relu init=kaiming norm=batch

Keyword arguments come from the command line: `+model.depth=8 +model.width=16`
(CIFAR-10 images need `+model.in_channels=3`).
"""

from __future__ import annotations

import torch
from torch import nn


class DeepTanhCNN(nn.Module):
    """depth x (Conv2d 3x3 -> Tanh) -> global average pool -> Linear(num_classes)."""

    def __init__(
        self, depth: int = 12, width: int = 16, in_channels: int = 1, num_classes: int = 10
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for index in range(depth):
            layers += [nn.Conv2d(in_channels if index == 0 else width, width, 3, padding=1)]
            layers += [nn.Tanh()]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))
