"""`data=folder`: the user's own images, one sub-folder per class, found on disk before any
image is decoded (gradsweep.data.images decodes them).

The layouts torchvision's `ImageFolder` reads:

    <root>/<class>/.../<image>          one folder per class; a seeded share of the images
                                        (`data.val_fraction`) is held out for validation
    <root>/train/<class>/...            the splits as given: val/ (and test/, optional) hold
    <root>/val/<class>/...              class folders whose names are among train/'s
    <root>/test/<class>/...

Labels follow the sorted class-folder names, as ImageFolder numbers them (the classes of val/
and test/ take train/'s numbers). Images in sub-folders of a class folder count for that class;
names starting with "." (hidden files and folders, macOS's `._*` twins) are skipped, and so are
files without one of ImageFolder's image extensions. A bad layout (an empty folder, one class, a
class folder with no images) is a DataError here, in milliseconds.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradsweep.errors import DataError

logger = logging.getLogger(__name__)

FOLDER = "folder"  # the data config's name
# torchvision.datasets.folder.IMG_EXTENSIONS (compared case-insensitively, as it does).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
CHANNELS = (1, 3, 4)

LAYOUT_HINT = (
    "data=folder reads one sub-folder per class, <root>/<class>/<image> (e.g. <root>/cat/1.png, "
    "<root>/dog/2.png), or the splits as <root>/train/<class>/, <root>/val/<class>/ and "
    "optionally <root>/test/<class>/"
)


@dataclass(frozen=True)
class ImageFile:
    path: str  # a str, not a Path: pathlib costs ~25 us a file, a third of a cached load
    label: int
    size: int  # bytes and mtime_ns: what the processed-tensor cache is keyed by
    mtime_ns: int


@dataclass(frozen=True)
class FolderLayout:
    """The classes and the image files of each split, in a fixed order (class, then path)."""

    root: Path
    classes: tuple[str, ...]
    splits: dict[str, tuple[ImageFile, ...]]  # "train" always; "val" and "test" when given

    @property
    def count(self) -> int:
        return sum(len(files) for files in self.splits.values())

    def files(self) -> Iterator[ImageFile]:
        for split in self.splits.values():
            yield from split

    def listing(self, split: str) -> str:
        """A digest of a split's files (path, label, size, mtime): a cache key's file part."""
        digest = hashlib.sha256()
        start = len(str(self.root))  # each path starts with the root's
        for item in self.splits[split]:
            line = f"{item.path[start:]}\0{item.label}\0{item.size}\0{item.mtime_ns}\n"
            digest.update(line.encode("utf-8", "surrogateescape"))
        return digest.hexdigest()


def folder_root(cfg: Any) -> Path:
    """`data.root` for data=folder: it must be set (there is no default folder of images)."""
    if cfg.root is None:
        raise DataError(f"data=folder needs data.root=<your folder of images>. {LAYOUT_HINT}.")
    return Path(str(cfg.root)).expanduser()


def scan_layout(root: Path) -> FolderLayout:
    """The classes and image files under `root`; DataError for a layout that cannot train."""
    if not root.is_dir():
        state = "is not a folder" if root.exists() else "does not exist"
        raise DataError(f"data.root={root} {state}. {LAYOUT_HINT}.")
    folders = _visible(root)[0]
    if "train" in folders:
        others = sorted(set(folders) - set(SPLITS))
        if others:
            raise DataError(
                f"{root}/ holds train/ and also {', '.join(f + '/' for f in others)}: with a "
                f"train/ folder, class folders belong inside train/ (and val/, test/). "
                f"{LAYOUT_HINT}."
            )
        classes = _class_names(root / "train")
        splits = {
            split: _split_files(root / split, classes, split)
            for split in SPLITS
            if split in folders
        }
    else:
        classes = _class_names(root)
        splits = {"train": _split_files(root, classes, "")}
    return FolderLayout(root=root, classes=classes, splits=splits)


def _visible(folder: Path) -> tuple[list[str], list[str]]:
    """The sub-folder names and file names in `folder`, hidden ones left out, sorted."""
    folders, files = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            (folders if entry.is_dir() else files).append(entry.name)
    return sorted(folders), sorted(files)


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _class_names(folder: Path) -> tuple[str, ...]:
    """The class folders in `folder`, sorted; DataError when there are fewer than two."""
    classes, files = _visible(folder)
    images = [name for name in files if _is_image(name)]
    if not classes:
        if images:
            raise DataError(
                f"{folder}/ holds {len(images):,} images but no class folders: put each class's "
                f"images in a sub-folder named for the class ({folder}/cat/, {folder}/dog/). "
                f"{LAYOUT_HINT}."
            )
        raise DataError(f"{folder}/ is empty (no class folders, no images). {LAYOUT_HINT}.")
    if len(classes) == 1:
        raise DataError(
            f"{folder}/ holds one class folder ({classes[0]}/): a classifier needs at least two "
            f"classes. Add a folder of images for each other class. {LAYOUT_HINT}."
        )
    if images:
        logger.warning(
            "data: %d images directly in %s/ are in no class folder: skipped", len(images), folder
        )
    return tuple(classes)


def _split_files(folder: Path, train_classes: tuple[str, ...], split: str) -> tuple[ImageFile, ...]:
    """Every image of every class folder under `folder`, labelled by train's class order."""
    present = list(train_classes) if split in ("", "train") else _visible(folder)[0]
    unknown = [name for name in present if name not in train_classes]
    if unknown:
        raise DataError(
            f"{folder}/ has class folders that {folder.parent}/train/ lacks: "
            f"{', '.join(name + '/' for name in unknown)}. The classes of val/ and test/ must be "
            f"among train/'s (the labels are numbered from train/'s class folders)."
        )
    if not present:
        raise DataError(f"{folder}/ holds no class folders. {LAYOUT_HINT}.")
    label_of = {name: index for index, name in enumerate(train_classes)}
    found: list[ImageFile] = []
    empty: list[str] = []
    for name in present:
        before = len(found)
        others = _walk(str(folder / name), label_of[name], found)
        if len(found) == before:
            what = f"{others:,} file{'s' * (others != 1)}, none an image" if others else "empty"
            empty.append(f"{folder / name}/ ({what})")
    if empty:
        raise DataError(
            "class folders with no images: "
            + "; ".join(empty)
            + f". Put the class's images there (files ending in {', '.join(IMAGE_EXTENSIONS)}, "
            "any case) or remove the folder."
        )
    return tuple(found)


def _walk(folder: str, label: int, found: list[ImageFile], seen: set | None = None) -> int:
    """Append the images under `folder` (recursively, symlinks followed but each folder once,
    hidden names skipped, in sorted order) to `found`; the count of other files seen."""
    seen = set() if seen is None else seen
    here = os.stat(folder)
    if (here.st_dev, here.st_ino) in seen:  # a link back up the tree
        return 0
    seen.add((here.st_dev, here.st_ino))
    others = 0
    with os.scandir(folder) as scan:
        entries = sorted((e for e in scan if not e.name.startswith(".")), key=lambda e: e.name)
    for entry in entries:
        if entry.is_dir():
            others += _walk(entry.path, label, found, seen)
        elif _is_image(entry.name):
            try:
                stat = entry.stat()
                size, mtime = stat.st_size, stat.st_mtime_ns
            except OSError:  # a broken link: decoding names it
                size, mtime = -1, 0
            found.append(ImageFile(entry.path, label, size, mtime))
        else:
            others += 1
    return others


def image_size(cfg: Any) -> tuple[int, int] | None:
    """`data.image_size` as (height, width): an int is a square, a pair is [height, width]."""
    value = cfg.get("image_size")
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value, value
    height, width = list(value)
    return int(height), int(width)


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _size_ok(size: object) -> bool:
    if size is None or _positive_int(size):
        return True
    if isinstance(size, (str, bytes)) or not hasattr(size, "__len__"):
        return False
    return len(size) == 2 and all(_positive_int(v) for v in size)


def config_problems(cfg: Any) -> list[str]:
    """What is wrong with a data=folder config, each with the override that fixes it."""
    problems = []
    if cfg.get("root") is None:
        problems.append("data=folder needs data.root=<a folder with one sub-folder per class>")
    fraction = cfg.get("val_fraction")
    number = isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
    if not (number and 0 < fraction < 1):
        problems.append(
            f"data.val_fraction={fraction!r} must be a number between 0 and 1, e.g. "
            "data.val_fraction=0.1 (used when the folder has no val/)"
        )
    channels = cfg.get("channels")
    if channels is not None and not (_positive_int(channels) and channels in CHANNELS):
        problems.append(
            f"data.channels={channels!r}: choose 1 (grey), 3 (RGB), 4 (RGBA) or null (from "
            "the images: 3 if any is in colour, else 1)"
        )
    size = cfg.get("image_size")
    if not _size_ok(size):
        problems.append(
            f"data.image_size={size!r}: use a size in pixels (data.image_size=32: the shorter "
            "side scaled to 32, then the centre 32x32), [height,width] (data.image_size=[32,48]"
            ": scaled to exactly that), or null (the images' own size, which all must share)"
        )
    return problems
