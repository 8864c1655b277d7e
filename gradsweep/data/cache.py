"""A processed copy of each dataset split, as one tensor file, so later runs skip the decoding.

Reading MNIST or CIFAR-10 through torchvision costs seconds: `import torchvision` alone (it pulls
in torch._dynamo) and then the decoding. The first load of a split keeps its uint8 images
(N, C, H, W) and int64 labels, as they were before normalization, in `<name>-<split>.pt`; a later
load reads that file instead, with `torch.load(weights_only=True)` (tensors and plain containers
only, never arbitrary code).

A cache file is used only when it matches what it was made from. Its key holds the processing
version (`VERSION`), the dataset, the split, the reader, and each source file's path, size and
mtime_ns: a replaced, touched or resized source file is a stale key. The payload carries a CRC-32
of the tensors, because torch.load checks no checksum and would hand back a file damaged in the
middle as it is. A stale, truncated or damaged file is rebuilt, with one log line; it is never
read as data. Files are written to a temp name beside the final one and renamed, so a reader sees
a whole file or none, and concurrent runs (a sweep's first jobs) at worst both write it.

Where the files live (`cache_dirs`, in order of preference):

1. `$GRADSWEEP_CACHE_DIR/<hash of the root>/` when that variable names a folder
   (`GRADSWEEP_CACHE_DIR=off` turns the cache off);
2. else `<root>/gradsweep-cache/`, beside the data, when the root is writable (MNIST and
   CIFAR-10; never inside a folder of class folders, where it would read as one more class);
3. else `$XDG_CACHE_HOME/gradsweep/<hash of the root>/` (default `~/.cache/gradsweep/...`);
4. and, when none of those can be written, `<temp dir>/gradsweep-cache/<hash of the root>/`.

Splits are read from the first of those that can be written (or made), and written to the
first that takes them: a folder that cannot be written (read-only, full, a file in the way) is
passed over with one warning that says where the cache went instead.

Delete the folder at any time: the next run rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gradsweep.errors import first_line
from gradsweep.files import atomic_write

logger = logging.getLogger(__name__)

# Bump when what a cached split holds, or how it is made from the source files, changes.
VERSION = 1
FORMAT = "gradsweep-data-cache"
ENV_VAR = "GRADSWEEP_CACHE_DIR"
FOLDER = "gradsweep-cache"


def cache_dirs(root: Path | None, *, beside: bool = True) -> list[Path]:
    """The folders `root`'s cached splits may live in, in order of preference ([]: caching is
    off). `root` None: the bundled digits, which live inside an installed package and so are
    cached in the user's cache dir. `beside` False: never in `<root>/gradsweep-cache/`."""
    override = os.environ.get(ENV_VAR, "")
    if override.lower() == "off":
        return []
    tag = _root_tag(root)
    home = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    user = Path(home) / "gradsweep" / tag
    found = []
    if override:
        found.append(Path(override).expanduser() / tag)
    elif root is not None and beside:
        folder = root / FOLDER
        if os.access(folder if folder.is_dir() else root, os.W_OK | os.X_OK):
            found.append(folder)
    found += [user, Path(tempfile.gettempdir()) / FOLDER / tag]
    return list(dict.fromkeys(found))  # without repeats, in order


def _usable(folder: Path) -> bool:
    """Whether `folder` is, or could be made, a folder this process can write to."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent  # the nearest part of the path that is there
    return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def _root_tag(root: Path | None) -> str:
    # One folder per data root, so two roots' "mnist-train.pt" never overwrite each other.
    if root is None:
        return "bundled"
    return hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]


def make_key(dataset: str, split: str, reader: str, sources: Iterable[Path]) -> str:
    """What a split is made from, as one string: equal strings mean the same processed tensors."""
    files = []
    for path in sources:
        stat = path.stat()
        files.append([str(path.resolve()), stat.st_size, stat.st_mtime_ns])
    key = {"version": VERSION, "dataset": dataset, "split": split, "reader": reader}
    return json.dumps({**key, "files": files}, sort_keys=True)


def read_split(path: Path, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The cached (images, labels) at `path` if it holds exactly `key`'s split, else None.

    None, with one log line, for a stale key or a file that does not load or fails its
    checksum; None and no line when there is no file yet.
    """
    if not path.is_file():
        return None
    try:
        # mmap: the tensors page in from the OS cache as they are read, with no copy of the file.
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        if not isinstance(payload, dict) or payload.get("format") != FORMAT:
            raise ValueError("not a gradsweep data cache file")
        images, labels = payload["images"], payload["labels"]
        if not (
            isinstance(images, torch.Tensor)
            and isinstance(labels, torch.Tensor)
            and images.dtype == torch.uint8
            and images.ndim == 4
            and labels.dtype == torch.int64
            and labels.shape == images.shape[:1]
        ):
            raise ValueError("unexpected tensor shapes or dtypes")
    except Exception as err:  # torch.load raises RuntimeError, pickle and zip errors alike
        reason = first_line(err, with_type=True)
        logger.warning("data cache %s does not load (%s): rebuilding it", path, reason)
        return None
    if payload.get("key") != key:
        logger.info("data cache %s is stale (its source files changed): rebuilding it", path)
        return None
    if payload.get("crc32") != _crc32(images, labels):
        logger.warning("data cache %s is damaged (checksum mismatch): rebuilding it", path)
        return None
    return images, labels


def write_split(path: Path, key: str, images: torch.Tensor, labels: torch.Tensor) -> None:
    """Keep (images, labels) at `path` under `key`, atomically; OSError when it cannot."""
    images, labels = images.contiguous(), labels.contiguous()
    payload = {
        "format": FORMAT,
        "key": key,
        "crc32": _crc32(images, labels),
        "images": images,
        "labels": labels,
    }
    # No fsync: a file torn by a crash fails the reader's checks and is rebuilt, never used.
    with atomic_write(path, "wb") as handle:
        torch.save(payload, handle)


@dataclass(frozen=True)
class CachePlan:
    """Where a dataset's cached splits may be (`cache_dirs`) and what each must hold."""

    folders: list[Path] = field(default_factory=list)  # in order of preference
    files: dict[str, tuple[str, str]] = field(default_factory=dict)  # split -> (file, key)

    def read(self) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], Path | None]:
        """Every split, and the folder it was read from: the first folder that can hold the
        cache (the one `write` would fill). ({}, None) when a split there is missing, stale or
        damaged (the last two logged)."""
        folder = next((f for f in self.folders if _usable(f)), None)
        if folder is None:
            return {}, None
        splits = {}
        for split, (name, key) in self.files.items():
            hit = read_split(folder / name, key)
            if hit is None:
                return {}, None
            splits[split] = hit
        return splits, folder

    def write(self, splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> Path | None:
        """Keep every split in the first folder that takes them all; that folder, or None.

        A folder passed over is named in one warning, with where the cache went instead."""
        refused = []
        for folder in self.folders:
            try:
                for split, (name, key) in self.files.items():
                    write_split(folder / name, key, *splits[split])
            except OSError as err:
                refused.append(f"{folder} ({first_line(err, with_type=True)})")
                continue
            if refused:
                logger.warning(
                    "data cache: cannot write to %s; cached in %s instead", refused[0], folder
                )
            return folder
        if refused:
            logger.warning(
                "data cache not written (%s): loading from source each run", "; ".join(refused)
            )
        return None


def _crc32(images: torch.Tensor, labels: torch.Tensor) -> int:
    # zlib's CRC-32 runs at several GB/s: ~15 ms for MNIST's 47 MB of training images.
    crc = zlib.crc32(images.contiguous().view(-1).numpy())
    return zlib.crc32(labels.contiguous().view(-1).numpy(), crc)
