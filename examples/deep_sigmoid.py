"""A user's deep sigmoid network, written the everyday way: layers held as attributes,
the nonlinearity called in `forward`. Its gradients vanish; gradsweep fixes it without
an edit to this file:

    python train.py model=custom model._target_=examples.deep_sigmoid.DeepSigmoid
    python train.py model=custom model._target_=examples.deep_sigmoid.DeepSigmoid \\
        activation=gelu init=kaiming

Keyword arguments come from the command line: `+model.depth=10 +model.width=128`
(CIFAR-10 images need `+model.in_features=3072`).
"""

from __future__ import annotations

import torch
from torch import nn


class DeepSigmoid(nn.Module):
    """Flatten -> depth x (Linear -> torch.sigmoid) -> Linear(num_classes)."""

    def __init__(
        self, depth: int = 20, width: int = 256, in_features: int = 784, num_classes: int = 10
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            [nn.Linear(in_features, width)] + [nn.Linear(width, width) for _ in range(depth - 1)]
        )
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        for layer in self.layers:
            x = torch.sigmoid(layer(x))
        return self.head(x)
