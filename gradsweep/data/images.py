"""Decoding a folder's images (gradsweep.data.folders found them) into uint8 tensors, with Pillow.

Each image is decoded once, by a thread pool (Pillow's decoders release the GIL): its EXIF
orientation applied, grey, palette, RGBA, CMYK and 16-bit images brought to `data.channels`
(default: 3 if any image is in colour, else 1; an alpha channel is dropped unless
data.channels=4, as ImageFolder's RGB loader drops it), and resized when `data.image_size` is
set (an int: the shorter side scaled to it, then the centre square; a pair [height, width]:
scaled to exactly that; Pillow's bilinear filter, antialiased). Unset, every image must share
one size. Every image that does not decode is named, and before any decoding the tensors'
size is checked against the memory there is.

Pillow, not torchvision.io: importing torchvision costs seconds, and a cached folder needs
neither.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gradsweep.data.folders import FolderLayout, ImageFile, folder_root, image_size, scan_layout
from gradsweep.errors import DataError, first_line

logger = logging.getLogger(__name__)

# Pillow's modes with one channel of values (as opposed to colour, or a palette of colours).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SIXTEEN_BIT = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N"})
_MODE_OF = {1: "L", 3: "RGB", 4: "RGBA"}
_ORIENTATION = 0x0112  # the EXIF tag
_SHOWN = 10  # bad images named in one message


@dataclass(frozen=True)
class ImageSettings:
    """How every image is brought to one tensor shape: `data.channels`, `data.image_size`."""

    channels: int | None  # None: from the images
    size: tuple[int, int] | None  # (height, width); None: the images' own
    crop: bool  # an int image_size: scale the shorter side, then take the centre

    @classmethod
    def from_cfg(cls, cfg: Any) -> ImageSettings:
        size = cfg.get("image_size")
        return cls(cfg.get("channels"), image_size(cfg), isinstance(size, int))

    def tag(self) -> str:
        """The part of a cache file's name that tells these settings apart ("" for defaults)."""
        size = "" if self.size is None else f"-{self.size[0]}x{self.size[1]}{'c' * self.crop}"
        return size + ("" if self.channels is None else f"-c{self.channels}")


def decoder() -> str:
    """What decodes the images, for the cache key: a new Pillow may decode differently."""
    import PIL

    return f"PIL {PIL.__version__}"


def available_memory() -> int | None:
    """Bytes of memory a new allocation can take: MemAvailable, capped by a cgroup's limit."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pages = getattr(os, "sysconf_names", {}).get("SC_AVPHYS_PAGES")
        if pages is not None:
            found.append(os.sysconf(pages) * os.sysconf("SC_PAGE_SIZE"))
    try:  # cgroup v2: a container's limit, which MemAvailable (the host's) does not show
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(used))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def check_fits(layout: FolderLayout, settings: ImageSettings, device: torch.device) -> None:
    """DataError, before any decoding, when the dataset's tensors would not fit in memory.

    The estimate: every image at the settings' size (else the first image's) and channels
    (else the first image's), held as uint8 twice while the tensor is assembled, then as the
    float32 copy training reads beside a uint8 one: six bytes a pixel in memory on the CPU;
    with a GPU two in memory and five in the GPU's.
    """
    first, mode, (height, width) = "", "RGB", settings.size or (0, 0)
    if settings.size is None or settings.channels is None:
        for item in itertools.islice(layout.files(), 10):  # a broken image is named later
            try:
                mode, found = probe(item.path)
            except DataError:
                continue
            first, (height, width) = item.path, settings.size or found
            break
        else:
            return
    channels = settings.channels or (1 if mode in GREY_MODES else 3)
    budgets = [("memory", 6 if device.type == "cpu" else 2, available_memory())]
    if device.type == "cuda":
        budgets.append((f"{device} memory", 5, torch.cuda.mem_get_info(device)[0]))
    for where, factor, free in budgets:
        need = layout.count * channels * height * width * factor
        if free is None or need <= 0.8 * free:
            continue
        fits = math.isqrt(int(0.8 * free / (layout.count * channels * factor)))
        fits = fits - fits % 8 if fits >= 16 else fits
        smaller = _bytes(layout.count * channels * fits**2 * factor)
        way = f"set data.image_size={fits} (about {smaller}), or use fewer images"
        raise DataError(
            f"{layout.root}: {layout.count:,} images of {channels}x{height}x{width} would take "
            f"about {_bytes(need)} of {where} as tensors (uint8 while decoding, float32 to train "
            f"on) and {_bytes(free)} is available: {way if fits >= 4 else 'use fewer images'}. "
            f"Estimated before decoding, from "
            f"{'data.image_size' if settings.size else f'the size of {first}'}."
        )


def _bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    raise AssertionError  # unreachable


def probe(path: str | Path) -> tuple[str, tuple[int, int]]:
    """An image's mode and (height, width) as oriented, from its header alone (no decoding).

    The orientation is read where the header holds EXIF (JPEG, TIFF, WebP, a PNG whose eXIf
    chunk comes first); DataError naming the file if it is not an image.
    """
    from PIL import Image

    try:
        with Image.open(path) as image:
            orientation = image.getexif().get(_ORIENTATION, 1) if "exif" in image.info else 1
            return image.mode, _oriented(image.size, orientation)
    except Exception as err:
        raise DataError(_undecodable(1, [(path, first_line(err, with_type=True))])) from err


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return min(8, len(os.sched_getaffinity(0)))
    return min(8, os.cpu_count() or 1)


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(height, width) once the EXIF orientation is applied, from Pillow's (width, height)."""
    width, height = size
    return (width, height) if orientation in (5, 6, 7, 8) else (height, width)


def decode_layout(
    layout: FolderLayout, settings: ImageSettings, workers: int | None = None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every split as uint8 (N, C, H, W) images and int64 labels; DataError naming every
    image that does not decode, or the sizes when they differ and data.image_size is unset."""
    files = list(layout.files())
    mismatch = threading.Event()  # once sizes differ, the rest are only measured
    # The first image, here: unless data.image_size is set, its size is the one all must share.
    first = _decode(files[0].path, settings, None, mismatch)
    expect = None if settings.size is not None or isinstance(first[0], str) else first[1]
    chunks = [files[i : i + 256] for i in range(1, len(files), 256)]

    def decode_chunk(chunk: Sequence[ImageFile]) -> list[tuple[Any, Any]]:
        return [_decode(item.path, settings, expect, mismatch) for item in chunk]

    with ThreadPoolExecutor(max_workers=workers or _cpus()) as pool:
        results = [first, *(result for part in pool.map(decode_chunk, chunks) for result in part)]

    bad = [
        (item.path, why)
        for item, (why, _) in zip(files, results, strict=True)
        if isinstance(why, str)
    ]
    if bad:
        raise DataError(_undecodable(len(files), bad, layout.root))
    sizes = Counter(size for _, size in results)
    if settings.size is None and len(sizes) > 1:
        raise DataError(_mixed_sizes(layout.root, files, results, sizes))
    arrays = [array for array, _ in results]
    colour = any(array.ndim == 3 for array in arrays)
    channels = settings.channels or (3 if colour else 1)
    splits, start = {}, 0
    for split, items in layout.splits.items():
        part = arrays[start : start + len(items)]
        start += len(items)
        splits[split] = (_stack(part, channels), torch.tensor([i.label for i in items]))
    return splits


def _decode(
    path: str, settings: ImageSettings, expect: tuple[int, int] | None, mismatch: threading.Event
) -> tuple[np.ndarray | str | None, tuple[int, int]]:
    """(pixels, size as oriented): pixels (H, W) or (H, W, C) uint8; a str saying why the
    image does not decode; None when its size differs from `expect` (not decoded further)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            # PNG keeps its EXIF after the pixels: getexif() then decodes it, which load() reuses.
            orientation = image.getexif().get(_ORIENTATION, 1)
            size = _oriented(image.size, orientation)
            if expect is not None and (size != expect or mismatch.is_set()):
                mismatch.set()
                return None, size
            if settings.size is not None and image.format == "JPEG":
                # Decode at 1/2, 1/4 or 1/8 scale where that still covers the target size
                # (asked for as stored, before the orientation turns it).
                height, width = settings.size
                turned = orientation in (5, 6, 7, 8)
                image.draft(image.mode, (height, width) if turned else (width, height))
            image.load()
            return _pixels(image, orientation, settings), size
    except Exception as err:  # Pillow raises OSError, SyntaxError, ValueError... per format
        return first_line(err, with_type=True), (0, 0)


_TRANSPOSE = {2: "FLIP_LEFT_RIGHT", 3: "ROTATE_180", 4: "FLIP_TOP_BOTTOM", 5: "TRANSPOSE",
              6: "ROTATE_270", 7: "TRANSVERSE", 8: "ROTATE_90"}  # fmt: skip


def _pixels(image: Any, orientation: int, settings: ImageSettings) -> np.ndarray:
    from PIL import Image, ImageOps

    if orientation in _TRANSPOSE:
        image = image.transpose(getattr(Image.Transpose, _TRANSPOSE[orientation]))
    if image.mode in _SIXTEEN_BIT:  # 16-bit grey: the top 8 bits (convert("L") would clip)
        values = np.asarray(image).astype(np.int64).clip(0, 65535) >> 8
        image = Image.fromarray(values.astype(np.uint8), "L")
    target = _MODE_OF.get(settings.channels or 0)
    target = target or ("L" if image.mode in GREY_MODES else "RGB")
    if image.mode != target:
        image = image.convert(target)
    if settings.size is not None:
        height, width = settings.size
        if image.size != (width, height):
            bilinear = Image.Resampling.BILINEAR
            if settings.crop:
                image = ImageOps.fit(image, (width, height), method=bilinear)
            else:
                image = image.resize((width, height), bilinear)
    return np.asarray(image)


def _stack(arrays: Sequence[np.ndarray], channels: int) -> torch.Tensor:
    """(N, C, H, W) uint8 from (H, W) and (H, W, C) arrays; grey ones repeated to 3 channels."""
    height, width = arrays[0].shape[:2]
    out = np.empty((len(arrays), channels, height, width), dtype=np.uint8)
    for index, array in enumerate(arrays):
        out[index] = array if array.ndim == 2 else array.transpose(2, 0, 1)
    return torch.from_numpy(out)


def _undecodable(total: int, bad: Sequence[tuple[Any, str]], root: Path | None = None) -> str:
    where = f" under {root}/" if root else ""
    head = (
        f"{bad[0][0]} does not decode"
        if len(bad) == 1
        else f"{len(bad):,} of {total:,} images{where} do not decode"
    )
    lines = [f"  {path}: {why}" for path, why in bad[:_SHOWN]]
    if len(bad) > _SHOWN:
        lines.append(f"  ... and {len(bad) - _SHOWN:,} more")
    return (
        f"{head} (unreadable, truncated or not an image):\n"
        + "\n".join(lines)
        + "\nDelete each one or replace it with a good copy; data=folder reads every file with "
        "an image extension."
    )


def _mixed_sizes(
    root: Path, files: Sequence[ImageFile], results: Sequence[tuple[Any, Any]], sizes: Counter
) -> str:
    example = {}
    for item, (_, size) in zip(files, results, strict=True):
        example.setdefault(size, item.path)
    listed = ", ".join(
        f"{h}x{w} ({count:,} image{'s' * (count > 1)}, e.g. {example[(h, w)]})"
        for (h, w), count in sizes.most_common(5)
    )
    more = f" and {len(sizes) - 5} more sizes" if len(sizes) > 5 else ""
    (h, w), _ = sizes.most_common(1)[0]
    return (
        f"the images under {root}/ come in {len(sizes)} sizes (height x width): {listed}{more}. "
        f"A batch needs one size: set data.image_size={min(h, w)} (the shorter side scaled to "
        f"{min(h, w)}, then the centre square) or data.image_size=[{h},{w}] (every image "
        f"scaled to {h}x{w})."
    )


def folder_shape(cfg: Any) -> tuple[tuple[int, int, int], int]:
    """data=folder's (C, H, W) and class count, as loading would give them, from the folder
    names and the image headers (no decoding): for `gradsweep show`."""
    layout = scan_layout(folder_root(cfg))
    return _probe_shape(layout, ImageSettings.from_cfg(cfg)), len(layout.classes)


def _probe_shape(layout: FolderLayout, settings: ImageSettings) -> tuple[int, int, int]:
    channels, size = settings.channels, settings.size
    if channels is not None and size is not None:
        return (channels, *size)
    sizes: Counter = Counter()
    colour = False
    results = []
    files = list(layout.files())
    for item in files:
        mode, found = probe(item.path)
        colour = colour or mode not in GREY_MODES
        sizes[found] += 1
        results.append((None, found))
    if size is None and len(sizes) > 1:
        raise DataError(_mixed_sizes(layout.root, files, results, sizes))
    height, width = size or next(iter(sizes))
    return (channels or (3 if colour else 1), height, width)
