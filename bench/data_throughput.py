"""Batches per second: gradsweep's tensor-resident batching against torchvision's DataLoader.

    python bench/data_throughput.py [--root /tmp/gsdata] [--cifar-images DIR] [--rounds 7]

Batch 128, shuffled, on the CPU, in one process (DataLoader workers are processes of their own).

  gradsweep     gradsweep.data.batches.Batches over the split held as one normalized float tensor:
                a batch is an index_select of a random permutation; with augment, a random
                crop (reflect padding 4) and horizontal flip of the whole batch at once
  DataLoader    torchvision's dataset class, transform ToTensor + Normalize (with augment:
                RandomCrop(32, padding=4, reflect) + RandomHorizontalFlip before them), one
                PIL image per sample, num_workers 0 and 2 (persistent workers)

Data:
  MNIST         the real MNIST under --root (MNIST/raw/): torchvision.datasets.MNIST against
                gradsweep's load_data (55,000 training images after the validation split)
  CIFAR-10      the 10,000 real CIFAR-10 test images, PNG files under --cifar-images/<class>/,
                decoded once: torchvision.datasets.CIFAR10 reads them from the real
                cifar-10-batches-py pickle format (written to a temp folder, 5 x 2,000), so the
                DataLoader takes torchvision's own CIFAR-10 path (in-memory uint8 array, PIL
                per sample); gradsweep holds the same pixels as a tensor. One more row,
                ImageFolder over the PNG files, decodes a PNG per sample, as a folder of image
                files would be read.

Steady state: every loader's iterator is started (workers up, first batches out) before the
clock; an exhausted DataLoader epoch starts the next one inside the timed block, as training
would. Each round takes a block of batches from every loader in turn (interleaved, so machine
noise hits them alike); reported are the median batches/s over the rounds and gradsweep's
ratio to each DataLoader on the same data and augmentation.
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradsweep.data.batches import Batches
from gradsweep.data.load import load_data
from gradsweep.data.tensors import Data

BATCH = 128


def endless(make: Callable[[], Iterator]) -> Iterator:
    """Batches without end: a new epoch (a new iterator) when one runs out."""
    while True:
        yield from make()


def dataloader(dataset, workers: int) -> Iterator:
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=BATCH,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )
    return endless(lambda: iter(loader))


def transform(mean: tuple[float, ...], std: tuple[float, ...], augment: bool):
    from torchvision import transforms

    steps = [transforms.ToTensor(), transforms.Normalize(mean, std)]
    if augment:
        steps[:0] = [
            transforms.RandomCrop(32, padding=4, padding_mode="reflect"),
            transforms.RandomHorizontalFlip(),
        ]
    return transforms.Compose(steps)


def gradsweep_batches(data: Data, augment: bool) -> Iterator:
    return iter(Batches(data, BATCH, torch.Generator().manual_seed(0), augment=augment))


def mnist_loaders(root: str) -> dict[str, Iterator]:
    from torchvision.datasets import MNIST

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "mnist.yaml")
    cfg.root, cfg.source = root, "full"
    data = load_data(cfg)
    dataset = MNIST(root, train=True, transform=transform(data.mean, data.std, augment=False))
    return {
        "gradsweep Batches": gradsweep_batches(data, augment=False),
        "DataLoader, num_workers=0": dataloader(dataset, 0),
        "DataLoader, num_workers=2": dataloader(dataset, 2),
    }


def decode_pngs(folder: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Every <class>/*.png under folder as uint8 (N, 32, 32, 3), int labels (file order) and
    the class names: the sub-folders in sorted order, which for CIFAR-10 is its label order
    (and ImageFolder's)."""
    from PIL import Image

    classes = sorted(entry.name for entry in folder.iterdir() if entry.is_dir())
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in sorted((folder / name).glob("*.png")):
            with Image.open(path) as image:
                images.append(np.asarray(image.convert("RGB")))
            labels.append(label)
    return np.stack(images), np.array(labels), classes


def cifar10_root(images: np.ndarray, labels: np.ndarray, classes: list[str], root: Path) -> Path:
    """The images as torchvision's cifar-10-batches-py/ (5 training batches and a test batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)  # R, G, B planes, as CIFAR
    parts = np.array_split(np.arange(len(images)), 5)
    for i, part in enumerate(parts, start=1):
        batch = {"data": planes[part], "labels": labels[part].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    batch = {"data": planes, "labels": labels.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(batch))
    meta = {"label_names": classes}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta))
    return root


def cifar_loaders(png_folder: Path, tmp: Path) -> dict[str, Iterator]:
    from torchvision.datasets import CIFAR10, ImageFolder

    class CIFAR10Files(CIFAR10):
        """torchvision's CIFAR10 without the md5 list: these pickles are not the published
        files (the same pixels, regrouped), so only their presence is checked."""

        train_list = [[name, None] for name, _ in CIFAR10.train_list]  # noqa: RUF012
        test_list = [[name, None] for name, _ in CIFAR10.test_list]  # noqa: RUF012
        meta = {**CIFAR10.meta, "md5": None}  # noqa: RUF012

    images, labels, classes = decode_pngs(png_folder)
    root = cifar10_root(images, labels, classes, tmp)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div_(255)
    std, mean = torch.std_mean(x, dim=(0, 2, 3), keepdim=True)
    x = x.sub_(mean).div_(std).contiguous()
    y = torch.from_numpy(labels)
    data = Data(x, y, x[:1], y[:1], None, None, "full", "CIFAR-10 test PNGs", 10, (3, 32, 32))
    mean_, std_ = tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())

    loaders = {
        "gradsweep Batches": gradsweep_batches(data, augment=False),
        "gradsweep Batches, augment": gradsweep_batches(data, augment=True),
    }
    for augment in (False, True):
        dataset = CIFAR10Files(str(root), train=True, transform=transform(mean_, std_, augment))
        suffix = ", augment" if augment else ""
        for workers in (0, 2):
            loaders[f"DataLoader, num_workers={workers}{suffix}"] = dataloader(dataset, workers)
    folder = ImageFolder(str(png_folder), transform=transform(mean_, std_, augment=False))
    loaders["DataLoader over PNG files (ImageFolder), num_workers=2"] = dataloader(folder, 2)
    return loaders


def measure(loaders: dict[str, Iterator], rounds: int) -> dict[str, float]:
    """Median batches/s of each loader over interleaved rounds."""
    for stream in loaders.values():  # start workers, fill prefetch queues
        for _ in range(3):
            next(stream)
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(rounds):
        for name, stream in loaders.items():
            # Enough batches for a block of ~0.1 s or more whichever the loader.
            count = 300 if name.startswith("gradsweep") else 30
            start = time.perf_counter()
            for _ in range(count):
                next(stream)
            rates[name].append(count / (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/tmp/gsdata", help="folder holding MNIST/raw/")
    parser.add_argument(
        "--cifar-images",
        default="/work/shared/data/cifar10-test-images",
        help="folder of <class>/*.png CIFAR-10 images",
    )
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    torch.set_num_threads(1)

    print(f"Batch {BATCH}, CPU, median of {args.rounds} interleaved rounds.\n")
    print("| data | loader | batches/s | gradsweep speed-up |")
    print("| --- | --- | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="gradsweep-data-bench-") as tmp:
        for title, loaders in (
            ("MNIST", lambda: mnist_loaders(args.root)),
            ("CIFAR-10", lambda: cifar_loaders(Path(args.cifar_images), Path(tmp))),
        ):
            rates = measure(loaders(), args.rounds)
            for name, rate in rates.items():
                ours = "gradsweep Batches" + (", augment" if name.endswith("augment") else "")
                ratio = "" if name.startswith("gradsweep") else f"{rates[ours] / rate:.0f}x"
                print(f"| {title} | {name} | {rate:,.0f} | {ratio} |", flush=True)


if __name__ == "__main__":
    main()
