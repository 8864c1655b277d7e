"""data=folder: images decoded per second, cold and warm, and batches per second over them.

    python bench/folder_decode.py [--root /work/shared/data/cifar10-test-images] [--rounds 5]

--root is a folder of class folders (the CIFAR-10 test set as 10,000 PNG files by default).
Each round, in one process (imports are not timed), interleaved so machine noise hits all alike:

  cold          load_data(data=folder) with an empty cache folder: list the class folders,
                decode every image (Pillow, a thread per core), write the cache, split and
                normalize. The OS page cache is warm: "cold" means no processed-data cache.
  warm          the same with the cache in place: list the files (the cache key), read one
                tensor file, split and normalize
  decode, N     gradsweep.data.images.decode_layout alone, with N decoding threads
  ImageFolder   torchvision's ImageFolder, each image once through its own loader (PIL open +
                convert("RGB")) and pil_to_tensor: a single-pass baseline, as a DataLoader
                with no workers would decode an epoch

Reported: median seconds and images per second over the rounds; then batches per second of
gradsweep's Batches (batch 128, shuffled, tensor-resident, as training draws them) over the
loaded data, as bench/data_throughput.py measures MNIST's.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradsweep.data.batches import Batches
from gradsweep.data.folders import scan_layout
from gradsweep.data.images import ImageSettings, decode_layout
from gradsweep.data.load import load_data

BATCH = 128


def timed(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="/work/shared/data/cifar10-test-images")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)

    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import pil_to_tensor

    cfg = OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "data" / "folder.yaml")
    cfg.root = args.root
    layout = scan_layout(Path(args.root))
    settings = ImageSettings.from_cfg(cfg)
    folder = ImageFolder(args.root)
    count = layout.count
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    with tempfile.TemporaryDirectory(prefix="gradsweep-folder-bench-") as tmp:
        warm_cache = Path(tmp) / "warm"
        os.environ["GRADSWEEP_CACHE_DIR"] = str(warm_cache)
        load_data(cfg)  # fills the warm cache; not timed

        def cold() -> None:
            os.environ["GRADSWEEP_CACHE_DIR"] = tempfile.mkdtemp(dir=tmp)
            load_data(cfg)

        def warm() -> None:
            os.environ["GRADSWEEP_CACHE_DIR"] = str(warm_cache)
            load_data(cfg)

        def imagefolder() -> None:
            for index in range(len(folder)):
                pil_to_tensor(folder[index][0])

        variants = {
            "cold: load_data, no cache": cold,
            "warm: load_data, cached": warm,
            "decode only, 1 thread": lambda: decode_layout(layout, settings, workers=1),
            f"decode only, {min(8, cores or 1)} threads": lambda: decode_layout(layout, settings),
            "ImageFolder, one pass (PIL + pil_to_tensor)": imagefolder,
        }
        times: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                times[name].append(timed(run))
        os.environ["GRADSWEEP_CACHE_DIR"] = str(warm_cache)
        data = load_data(cfg)

    print(f"{count:,} images in {len(layout.classes)} class folders under {args.root}, ", end="")
    print(f"{cores} cores, median of {args.rounds} interleaved rounds.\n")
    print("| what | seconds | images/s |")
    print("| --- | ---: | ---: |")
    for name, values in times.items():
        seconds = statistics.median(values)
        print(f"| {name} | {seconds:.2f} | {count / seconds:,.0f} |")

    stream = iter(Batches(data, BATCH, torch.Generator().manual_seed(0)))
    for _ in range(3):
        next(stream)
    rates = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for _ in range(300):
            next(stream)
        rates.append(300 / (time.perf_counter() - start))
    shape = "x".join(str(n) for n in data.input_shape)
    print(
        f"\ngradsweep Batches over the loaded folder ({len(data.train_y):,} training images, "
        f"{shape}, batch {BATCH}): {statistics.median(rates):,.0f} batches/s"
    )


if __name__ == "__main__":
    main()
