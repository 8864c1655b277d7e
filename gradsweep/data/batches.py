"""The batches a run trains on, drawn from a dataset held on the device.

Fast data in the airbench style: a whole split is one tensor on the device, a batch is an index
slice of a random permutation, and augmentation runs batched on the device. There is no
DataLoader and no per-sample PIL transform, so a step costs one gather, not a Python loop.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from gradsweep.data.tensors import Data
from gradsweep.errors import DataError


class Batches:
    """Endless shuffled minibatches of the training split.

    Each epoch draws a fresh permutation from `generator` and walks it in slices of `batch_size`;
    the last partial batch of each epoch is dropped, so BatchNorm never sees a batch of one and
    every step has the same shape. With `augment`, each batch goes through `random_crop_flip`,
    drawing from the same generator. Iterate one stream at a time: the position lives on the
    object, which is what `state_dict` saves.
    """

    def __init__(
        self, data: Data, batch_size: int, generator: torch.Generator, augment: bool = False
    ) -> None:
        n = len(data.train_y)
        if not 1 <= batch_size <= n:
            raise DataError(
                f"data.batch_size={batch_size} must be between 1 and the {n:,} training images."
            )
        device = data.train_x.device
        if generator.device.type != device.type:
            raise ValueError(
                f"the generator is on {generator.device} but the data on {device}: permutations "
                f"are drawn where the data lives, so create it with torch.Generator(device=...)."
            )
        self.data = data
        self.batch_size = batch_size
        self.generator = generator
        self.augment = augment
        self.steps_per_epoch = n // batch_size
        self.epoch = 0  # epochs completed
        self.step = 0  # batches already taken from the current epoch's permutation
        self._perm: torch.Tensor | None = None  # drawn when the epoch's first batch is taken

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, size = len(self.data.train_y), self.batch_size
        device = self.data.train_x.device
        while True:
            if self._perm is not None and self.step >= self.steps_per_epoch:
                self.epoch, self.step, self._perm = self.epoch + 1, 0, None
            if self._perm is None:
                self._perm = torch.randperm(n, generator=self.generator, device=device)
            idx = self._perm[self.step * size : (self.step + 1) * size]
            self.step += 1
            # index_select copies whole rows; x[idx] goes through the generic indexing kernel,
            # several times slower on CPU.
            x = self.data.train_x.index_select(0, idx)
            if self.augment:
                x = random_crop_flip(x, self.generator)
            yield x, self.data.train_y.index_select(0, idx)

    def state_dict(self) -> dict[str, Any]:
        """Where the stream stands: resuming from it yields exactly the batches that would follow.

        Holds the current permutation itself (8 bytes an image) rather than replaying the
        generator, because augmentation draws from the same generator between batches.
        """
        return {
            "epoch": self.epoch,
            "step": self.step,
            "perm": None if self._perm is None else self._perm.cpu(),
            "generator": self.generator.get_state(),
            "batch_size": self.batch_size,
            "num_samples": len(self.data.train_y),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        n = len(self.data.train_y)
        if (state["batch_size"], state["num_samples"]) != (self.batch_size, n):
            raise ValueError(
                f"the saved stream has batch size {state['batch_size']} over "
                f"{state['num_samples']:,} images, this one {self.batch_size} over {n:,}: "
                f"it cannot resume it."
            )
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        perm = state["perm"]
        self._perm = None if perm is None else perm.to(self.data.train_x.device)
        self.generator.set_state(state["generator"])


def random_crop_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop of the reflect-padded images, and a horizontal flip with p=0.5, per sample.

    Batched on x's device: each sample's crop offsets and flip are drawn at once (in the order
    row offsets, column offsets, flips), and the output is one gather from the padded batch.
    """
    n, c, h, w = x.shape
    if padding and not padding < min(h, w):
        raise ValueError(f"padding={padding} must be below the image size {h}x{w} to reflect.")
    padded = F.pad(x, (padding,) * 4, mode="reflect") if padding else x
    device = x.device
    top = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    left = torch.randint(0, 2 * padding + 1, (n,), generator=generator, device=device)
    flip = torch.rand(n, generator=generator, device=device) < 0.5

    rows = top[:, None] + torch.arange(h, device=device)  # (n, h)
    cols = left[:, None] + torch.arange(w, device=device)  # (n, w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flip reads the columns backwards
    # Flat offsets into each padded image, the same for every channel: torch.gather on the
    # flattened images is several times faster than indexing with four broadcast index tensors.
    width = w + 2 * padding
    offsets = (rows[:, :, None] * width + cols[:, None, :]).view(n, 1, h * w).expand(n, c, h * w)
    return padded.flatten(2).gather(2, offsets).view(n, c, h, w)


def iterate_eval(
    x: torch.Tensor, y: torch.Tensor, batch_size: int
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Sequential chunks of a split for evaluation, the last one partial (nothing is dropped)."""
    for start in range(0, len(y), batch_size):
        yield x[start : start + batch_size], y[start : start + batch_size]
