"""Tiny datasets written in the real on-disk formats, for tests that must not download anything.

`write_mnist` writes the four uncompressed IDX files torchvision.datasets.MNIST reads;
`write_cifar10` writes the python pickles torchvision.datasets.CIFAR10 reads. CIFAR10 md5-checks
every file, so synthetic ones load only through `cifar10_without_md5()`, a subclass that lists no
checksums (torchvision's `check_integrity(path, None)` then checks only that the file exists).
Pass it to `gradsweep.data.load.load_data(..., dataset_classes={"cifar10": ...})`.
"""

from __future__ import annotations

import functools
import pickle
import struct
from pathlib import Path

import numpy as np

MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _labels(rng: np.random.Generator, n: int) -> np.ndarray:
    # Every class present (when n >= 10), in a shuffled order.
    return rng.permutation(np.arange(n) % 10).astype(np.uint8)


def write_idx_images(path: Path, images: np.ndarray) -> None:
    """An IDX3 file: big-endian header (2051, N, H, W), then the uint8 pixels row-major."""
    n, h, w = images.shape
    path.write_bytes(struct.pack(">4i", 2051, n, h, w) + images.astype(np.uint8).tobytes())


def write_idx_labels(path: Path, labels: np.ndarray) -> None:
    """An IDX1 file: big-endian header (2049, N), then one uint8 label per item."""
    path.write_bytes(struct.pack(">2i", 2049, len(labels)) + labels.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int, n_test: int, seed: int = 0) -> Path:
    """Random MNIST-shaped digits under root/MNIST/raw/; returns that folder."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx_images(raw / f"{split}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx_labels(raw / f"{split}-labels-idx1-ubyte", _labels(rng, n))
    return raw


def write_cifar10(root: Path, n_per_batch: int, n_test: int, seed: int = 0) -> Path:
    """Random CIFAR-10-shaped images under root/cifar-10-batches-py/; returns that folder.

    Five training batches of `n_per_batch` images and one test batch, as the python pickles of
    the original: str keys, "data" a (N, 3072) uint8 array (R, G, B planes), "labels" a list.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    for name, n in [*((name, n_per_batch) for name in names), ("test_batch", n_test)]:
        batch = {
            "batch_label": name,
            "data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            "labels": [int(y) for y in _labels(rng, n)],
            "filenames": [f"{name}_{i}.png" for i in range(n)],
        }
        (folder / name).write_bytes(pickle.dumps(batch))
    meta = {"label_names": list(CIFAR10_CLASSES), "num_cases_per_batch": n_per_batch}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return folder


@functools.cache
def cifar10_without_md5() -> type:
    """torchvision's CIFAR10 with the checksums removed, so synthetic files pass its checks."""
    from torchvision.datasets import CIFAR10  # imported here: it takes seconds

    class UncheckedCIFAR10(CIFAR10):
        train_list = [[name, None] for name, _ in CIFAR10.train_list]  # noqa: RUF012
        test_list = [[name, None] for name, _ in CIFAR10.test_list]  # noqa: RUF012
        meta = {**CIFAR10.meta, "md5": None}  # noqa: RUF012

    return UncheckedCIFAR10
