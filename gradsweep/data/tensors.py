"""A dataset as tensors on the training device: split, normalized, ready for `Batches`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from gradsweep.errors import DataError

logger = logging.getLogger(__name__)

# The validation split is drawn with this seed, whatever the run's seed, so that every run of a
# sweep validates on the same images.
_SPLIT_SEED = 0


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors with == has no single truth value
class Data:
    """One dataset, split and normalized, as tensors on the training device.

    Images are float32 (N, C, H, W), scaled to [0, 1] and then normalized with the per-channel
    mean and std of the training split (after the validation images were taken out), so the
    validation and test images carry no statistics of their own. Labels are int64 (N,).
    """

    train_x: torch.Tensor = field(repr=False)
    train_y: torch.Tensor = field(repr=False)
    val_x: torch.Tensor = field(repr=False)
    val_y: torch.Tensor = field(repr=False)
    test_x: torch.Tensor | None = field(repr=False)  # None where the source has no test split
    test_y: torch.Tensor | None = field(repr=False)
    source: str  # "full" or "bundled": the source actually used
    origin: str  # where it came from, for people: "MNIST from data/MNIST/raw (60,000 ...)"
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    # The per-channel statistics (of pixels scaled to [0, 1]) the images were normalized with,
    # to undo it for pictures: pixel = x * std + mean.
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    classes: tuple[str, ...] = ()  # label i's name, where the source names them (data=folder)

    def record(self) -> dict[str, object]:
        """What the run's config and summary.json say of the data actually loaded."""
        named = {"data.classes": ",".join(self.classes)} if self.classes else {}
        return {"data.source": self.source, **named}


def split_and_normalize(
    device: torch.device,
    title: str,
    num_classes: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor | None,
    test_labels: torch.Tensor | None,
    *,
    val_size: int,
    source: str,
    origin: str,
    where: str,
    val: tuple[torch.Tensor, torch.Tensor] | None = None,
    classes: tuple[str, ...] = (),
) -> Data:
    """Hold out the validation images (or take `val` as given), normalize, move to the device,
    log the source line. `images` are uint8 (N, C, H, W), labels int64 in 0..num_classes-1."""
    n = len(labels)
    if val is None and not 0 < val_size < n:
        raise DataError(
            f"data.val_size={val_size:,} must be at least 1 and below the {n:,} training images "
            f"of {title} ({source})."
        )
    for y in (labels, test_labels, None if val is None else val[1]):
        if y is not None and len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
            raise DataError(
                f"{origin}: labels outside 0..{num_classes - 1}, so these files are not "
                f"{title}: replace them with a good copy."
            )

    if val is None:
        # A permutation seeded independently of the run: every run of a sweep validates on the
        # same images, and the split does not depend on the device.
        order = torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED))
        val_idx, train_idx = order[:val_size], order[val_size:]
        # index_select copies whole rows; x[idx] goes through the generic indexing kernel,
        # several times slower on CPU.
        val = images.index_select(0, val_idx), labels.index_select(0, val_idx)
        images, labels = images.index_select(0, train_idx), labels.index_select(0, train_idx)

    # Convert each split on the device: the float copy is four times the size of the uint8
    # one, so it is made once per split and normalized in place.
    shape = (images.shape[1], images.shape[2], images.shape[3])
    train_u8 = images.to(device)
    del images  # our training copy (after a hold-out) goes once its float copy is made
    mean, std = _channel_stats(train_u8)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.to(device).float().div_(255).sub_(mean).div_(std)

    train_x = prepare(train_u8)
    del train_u8
    test_x = None if test_images is None else prepare(test_images)
    test_y = None if test_labels is None else test_labels.to(device)
    data = Data(
        train_x=train_x,
        train_y=labels.to(device),
        val_x=prepare(val[0]),
        val_y=val[1].to(device),
        test_x=test_x,
        test_y=test_y,
        source=source,
        origin=origin,
        num_classes=num_classes,
        input_shape=shape,
        mean=tuple(mean.flatten().tolist()),
        std=tuple(std.flatten().tolist()),
        classes=tuple(classes),
    )
    test_count = "no test" if test_y is None else f"{len(test_y):,} test"
    logger.info(
        "data: %s %s (%s train / %s val / %s) %s",
        title,
        source,
        f"{len(data.train_y):,}",
        f"{len(data.val_y):,}",
        test_count,
        where,
    )
    return data


def _channel_stats(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) std of uint8 images scaled to [0, 1], as float32
    (1, C, 1, 1) tensors on the images' device.

    Computed from each channel's 256-bin histogram in float64: exact, and one pass over the
    uint8 pixels, several times faster than torch.std_mean over the float copy.
    """
    channels = images.shape[1]
    counts = torch.stack(
        [torch.bincount(images[:, c].reshape(-1), minlength=256) for c in range(channels)]
    ).double()  # (C, 256)
    values = torch.arange(256, dtype=torch.float64, device=images.device) / 255
    n = counts.sum(1)
    mean = (counts * values).sum(1) / n
    var = (counts * (values - mean[:, None]) ** 2).sum(1) / (n - 1).clamp_min(1)
    std = var.sqrt().clamp_min(1e-6)  # a constant channel would divide by zero
    shape = (1, channels, 1, 1)
    return mean.float().view(shape), std.float().view(shape)
