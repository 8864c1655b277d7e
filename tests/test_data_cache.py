"""The processed-data cache: a second load reads one tensor file instead of torchvision.

Real files through the real loaders: tiny MNIST/CIFAR-10 copies in their on-disk formats
(tests/datasets.py) under tmp_path, and a fresh interpreter where a test must show that
torchvision was never imported.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
from omegaconf import OmegaConf

from gradsweep.data import cache as data_cache
from gradsweep.data.load import load_data
from gradsweep.data.tensors import Data
from gradsweep.errors import DataError
from tests.datasets import cifar10_without_md5, write_cifar10, write_mnist

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ("train_x", "train_y", "val_x", "val_y", "test_x", "test_y")


def mnist_cfg(root: Path, **overrides: Any):
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "mnist.yaml")
    cfg.root = str(root)
    cfg.val_size = 50
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def assert_identical(a: Data, b: Data) -> None:
    for name in SPLITS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.dtype == y.dtype and torch.equal(x, y), name
    assert (a.mean, a.std, a.origin, a.source) == (b.mean, b.std, b.origin, b.source)


@pytest.fixture
def beside_the_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """The default location: <root>/gradsweep-cache/ (the suite otherwise uses its own dir)."""
    monkeypatch.delenv(data_cache.ENV_VAR, raising=False)


def identity(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_ino, stat.st_mtime_ns


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and "cache" in r.msg]


@pytest.mark.slow  # a fresh interpreter
def test_second_load_reads_the_cache_without_torchvision(
    tmp_path: Path, beside_the_data: None
) -> None:
    write_mnist(tmp_path, n_train=300, n_test=40, seed=3)
    cfg = mnist_cfg(tmp_path)
    cold = load_data(cfg)  # from the IDX files, through torchvision; writes the cache
    cache = tmp_path / "gradsweep-cache"
    files = sorted(p.name for p in cache.iterdir())
    assert files == ["mnist-test.pt", "mnist-train.pt"]
    # A file written again (a temp file renamed over it) is a new inode, whatever the clock.
    written = {name: identity(cache / name) for name in files}

    # A fresh interpreter: nothing has imported torchvision there unless the load does.
    script = textwrap.dedent(
        f"""
        import json, sys, torch
        from omegaconf import OmegaConf
        from gradsweep.data.load import load_data
        cfg = OmegaConf.create(json.loads({json.dumps(OmegaConf.to_container(cfg))!r}))
        data = load_data(cfg)
        torch.save({{k: getattr(data, k) for k in {SPLITS!r}}}, {str(tmp_path / "warm.pt")!r})
        print(json.dumps({{"torchvision": "torchvision" in sys.modules,
                          "mean": data.mean, "std": data.std}}))
        """
    )
    env = {k: v for k, v in os.environ.items() if k != data_cache.ENV_VAR}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["torchvision"] is False
    assert (tuple(report["mean"]), tuple(report["std"])) == (cold.mean, cold.std)
    warm = torch.load(tmp_path / "warm.pt", weights_only=True)
    for name in SPLITS:
        assert torch.equal(warm[name], getattr(cold, name)), name  # bit-identical
    # Read, not rewritten.
    assert {name: identity(cache / name) for name in files} == written


def test_cached_load_is_bit_identical_to_an_uncached_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    write_mnist(tmp_path, n_train=200, n_test=30, seed=4)
    cfg = mnist_cfg(tmp_path)
    monkeypatch.setenv(data_cache.ENV_VAR, "off")
    uncached = load_data(cfg)
    assert not (tmp_path / "gradsweep-cache").exists()

    where = tmp_path / "elsewhere"
    monkeypatch.setenv(data_cache.ENV_VAR, str(where))
    with caplog.at_level(logging.INFO, logger="gradsweep"):
        first, second = load_data(cfg), load_data(cfg)
    assert len(list(where.glob("*/mnist-*.pt"))) == 2
    assert not (tmp_path / "gradsweep-cache").exists()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: MNIST")]
    assert "(cached to " in lines[0] and "(cached in " in lines[1]
    assert_identical(first, uncached)
    assert_identical(second, uncached)


def test_a_changed_source_file_invalidates_the_cache(
    tmp_path: Path, beside_the_data: None, caplog: pytest.LogCaptureFixture
) -> None:
    raw = write_mnist(tmp_path, n_train=200, n_test=30, seed=5)
    cfg = mnist_cfg(tmp_path)
    before = load_data(cfg)

    # New pixels of the same size: only the file's identity (its mtime here) tells them apart.
    images = raw / "train-images-idx3-ubyte"
    stat = images.stat()
    write_mnist(tmp_path / "other", n_train=200, n_test=30, seed=6)
    images.write_bytes((tmp_path / "other" / "MNIST" / "raw" / images.name).read_bytes())
    os.utime(images, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    assert images.stat().st_size == stat.st_size

    with caplog.at_level(logging.INFO, logger="gradsweep"):
        after = load_data(cfg)
    stale = messages(caplog, logging.INFO)
    assert len(stale) == 1 and "stale" in stale[0] and "mnist-train.pt" in stale[0]
    assert not torch.equal(after.train_x, before.train_x)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gradsweep"):
        again = load_data(cfg)  # the rebuilt cache is current
    assert not messages(caplog, logging.INFO) and not messages(caplog, logging.WARNING)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(data_cache.ENV_VAR, "off")
        assert_identical(again, load_data(cfg))


@pytest.mark.parametrize("damage", ["truncated", "flipped byte", "not a cache"])
def test_a_damaged_cache_file_is_rebuilt_never_used(
    tmp_path: Path, beside_the_data: None, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    write_mnist(tmp_path, n_train=200, n_test=30, seed=7)
    cfg = mnist_cfg(tmp_path)
    good = load_data(cfg)
    path = tmp_path / "gradsweep-cache" / "mnist-train.pt"
    whole = path.read_bytes()
    if damage == "truncated":  # as a crash mid-write would leave it, were it not renamed
        path.write_bytes(whole[: len(whole) // 2])
    elif damage == "flipped byte":  # loads fine: only the checksum catches it
        blob = bytearray(whole)
        blob[len(whole) // 2] ^= 0xFF  # inside the images, ~98% of the file
        path.write_bytes(bytes(blob))
    else:
        torch.save({"images": torch.zeros(3)}, path)
    damaged = path.read_bytes()

    with caplog.at_level(logging.INFO, logger="gradsweep"):
        data = load_data(cfg)
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 1 and str(path) in warnings[0] and "rebuilding" in warnings[0]
    assert_identical(data, good)
    assert path.read_bytes() != damaged  # written again (whole: it reads back below)
    raw = tmp_path / "MNIST" / "raw"
    sources = [raw / "train-images-idx3-ubyte", raw / "train-labels-idx1-ubyte"]
    key = data_cache.make_key("mnist", "train", "torchvision.datasets.MNIST", sources)
    assert data_cache.read_split(path, key) is not None


def test_cifar10_cache_is_keyed_by_the_reader(tmp_path: Path, beside_the_data: None) -> None:
    write_cifar10(tmp_path, n_per_batch=20, n_test=10, seed=8)
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "cifar10.yaml")
    cfg.root, cfg.val_size = str(tmp_path), 20
    unchecked = {"cifar10": cifar10_without_md5()}
    first = load_data(cfg, dataset_classes=unchecked)
    assert len(list((tmp_path / "gradsweep-cache").glob("cifar10-*.pt"))) == 2
    assert_identical(load_data(cfg, dataset_classes=unchecked), first)

    # torchvision's own class md5-checks these synthetic files: a cache made by another reader
    # must not let it skip that check.
    with pytest.raises(DataError, match="corrupt"):
        load_data(cfg)


def test_bundled_digits_are_cached_too(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = mnist_cfg(tmp_path, source="bundled", val_size=100)
    monkeypatch.setenv(data_cache.ENV_VAR, "off")
    parsed = load_data(cfg)
    monkeypatch.setenv(data_cache.ENV_VAR, str(tmp_path / "cache"))
    load_data(cfg)
    assert [p.name for p in (tmp_path / "cache" / "bundled").iterdir()] == ["mnist-bundled.pt"]
    assert_identical(load_data(cfg), parsed)
