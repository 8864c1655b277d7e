"""gradsweep.data: sources, splits, normalization, batches and augmentation.

Offline and on CPU, through the real torchvision dataset classes: the datasets are tiny files in
the real on-disk formats (tests/datasets.py), written to tmp_path.
"""

from __future__ import annotations

import logging
import pickle
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf

from gradsweep.data.batches import Batches, iterate_eval, random_crop_flip
from gradsweep.data.load import load_data
from gradsweep.data.sources import dataset_shape, resolve_source
from gradsweep.data.tensors import Data
from gradsweep.errors import DataError
from tests.datasets import cifar10_without_md5, write_cifar10, write_mnist

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"


def data_cfg(name: str, **overrides: Any) -> DictConfig:
    """The shipped conf/data/<name>.yaml with some keys changed, as Hydra would hand it over."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert isinstance(cfg, DictConfig)
    for key, value in overrides.items():
        cfg[key] = str(value) if isinstance(value, Path) else value
    return cfg


def unnormalize(data: Data, x: torch.Tensor) -> torch.Tensor:
    """Back to the uint8 pixels the file held."""
    mean = torch.tensor(data.mean).view(-1, 1, 1)
    std = torch.tensor(data.std).view(-1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def rows(x: torch.Tensor, y: torch.Tensor) -> set[bytes]:
    """Each image with its label as one bytes key, to compare splits as sets."""
    flat = torch.cat([x.flatten(1), y[:, None].to(torch.uint8)], dim=1)
    return {bytes(row) for row in flat.numpy()}


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """A real failed download, even on a machine with network: every URL goes to a closed port.

    urllib reads the proxy variables when it builds its default opener, so the cached opener is
    dropped too (monkeypatch puts it back afterwards).
    """
    for var in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(urllib.request, "_opener", None)


# --- MNIST, full --------------------------------------------------------------------------------


def test_mnist_full_splits_and_normalizes(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, n_train=600, n_test=100, seed=1)
    data = load_data(data_cfg("mnist", root=tmp_path, val_size=100))

    assert data.source == "full"
    assert str(raw) in data.origin and "600 train / 100 test" in data.origin
    assert (data.num_classes, data.input_shape) == (10, (1, 28, 28))
    assert data.train_x.shape == (500, 1, 28, 28) and data.train_x.dtype == torch.float32
    assert data.val_x.shape == (100, 1, 28, 28) and data.val_y.shape == (100,)
    assert data.test_x is not None and data.test_y is not None
    assert data.test_x.shape == (100, 1, 28, 28)
    for y in (data.train_y, data.val_y, data.test_y):
        assert y.dtype == torch.int64 and int(y.min()) >= 0 and int(y.max()) <= 9

    # Normalized with the training split's own statistics.
    assert abs(data.train_x.mean().item()) < 1e-4
    assert abs(data.train_x.std().item() - 1) < 1e-4

    # Train and val together are exactly the training file, each image with its own label.
    images = np.fromfile(raw / "train-images-idx3-ubyte", np.uint8, offset=16)
    labels = np.fromfile(raw / "train-labels-idx1-ubyte", np.uint8, offset=8)
    original = rows(torch.from_numpy(images.reshape(-1, 1, 28, 28)), torch.from_numpy(labels))
    train = rows(unnormalize(data, data.train_x), data.train_y)
    val = rows(unnormalize(data, data.val_x), data.val_y)
    assert train | val == original and not train & val

    # The split is fixed (seed 0), not drawn from the run's seed: a sweep validates on one set.
    torch.manual_seed(123)
    again = load_data(data_cfg("mnist", root=tmp_path, val_size=100))
    assert torch.equal(again.val_x, data.val_x) and torch.equal(again.val_y, data.val_y)


def test_mnist_val_size_must_leave_training_images(tmp_path: Path) -> None:
    write_mnist(tmp_path, n_train=50, n_test=10)
    with pytest.raises(DataError, match=r"data\.val_size"):
        load_data(data_cfg("mnist", root=tmp_path, val_size=50))


def test_explicit_root_without_dataset_fails_fast_naming_the_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Fast because decided from the config and the file names alone: the reader (torchvision,
    # its import, any download) is never reached.
    def reader(*args: object) -> None:
        raise AssertionError("a missing dataset reached the reader")

    monkeypatch.setattr("gradsweep.data.load.read_full", reader)
    for name, folder in (("mnist", "MNIST/raw/"), ("cifar10", "cifar-10-batches-py/")):
        with pytest.raises(DataError) as err:
            load_data(data_cfg(name, root=tmp_path / "empty"))
        assert f"{tmp_path / 'empty'}/{folder}" in str(err.value)
        assert "data.root=" in str(err.value) and "data.download=true" in str(err.value)


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_full_with_download_and_no_network_fails_naming_the_folder(
    tmp_path: Path, name: str, no_network: None
) -> None:
    cfg = data_cfg(name, root=tmp_path, source="full", download=True)
    with pytest.raises(DataError, match=r"Downloading .* failed") as err:
        load_data(cfg)
    folder = "MNIST/raw/" if name == "mnist" else "cifar-10-batches-py/"
    assert f"{tmp_path}/{folder}" in str(err.value)
    assert ("data.source=bundled" in str(err.value)) == (name == "mnist")


def test_truncated_idx_file_is_named(tmp_path: Path) -> None:
    raw = write_mnist(tmp_path, n_train=40, n_test=10)
    path = raw / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DataError, match="truncated") as err:
        load_data(data_cfg("mnist", root=tmp_path, val_size=5))
    assert str(path) in str(err.value)


def test_compressed_files_only_ask_for_download(tmp_path: Path) -> None:
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in ("train-images", "train-labels", "t10k-images", "t10k-labels"):
        (raw / f"{name}-idx{3 if 'images' in name else 1}-ubyte.gz").write_bytes(b"\x1f\x8b")
    with pytest.raises(DataError, match=r"data\.download=true verifies the md5"):
        resolve_source(data_cfg("mnist", root=tmp_path))


# --- CIFAR-10 -----------------------------------------------------------------------------------


def test_cifar10_loads_through_the_unchecked_subclass(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, n_per_batch=40, n_test=30, seed=2)
    cfg = data_cfg("cifar10", root=tmp_path, val_size=50)
    data = load_data(cfg, dataset_classes={"cifar10": cifar10_without_md5()})

    assert data.source == "full" and str(folder) in data.origin
    assert (data.num_classes, data.input_shape) == (10, (3, 32, 32))
    assert data.train_x.shape == (150, 3, 32, 32) and data.val_x.shape == (50, 3, 32, 32)
    assert data.test_x is not None and data.test_y is not None
    assert data.test_x.shape == (30, 3, 32, 32)
    per_channel_mean = data.train_x.mean(dim=(0, 2, 3))
    per_channel_std = data.train_x.std(dim=(0, 2, 3))
    assert torch.allclose(per_channel_mean, torch.zeros(3), atol=1e-4)
    assert torch.allclose(per_channel_std, torch.ones(3), atol=1e-4)

    # Channels first, in the file's R, G, B plane order; test images in file order.
    batch = pickle.loads((folder / "test_batch").read_bytes())
    expected = torch.from_numpy(batch["data"].reshape(-1, 3, 32, 32))
    assert torch.equal(unnormalize(data, data.test_x), expected)
    assert data.test_y.tolist() == batch["labels"]


def test_cifar10_real_class_names_the_file_failing_its_md5(tmp_path: Path) -> None:
    folder = write_cifar10(tmp_path, n_per_batch=4, n_test=4)
    with pytest.raises(DataError, match="corrupt") as err:
        load_data(data_cfg("cifar10", root=tmp_path, val_size=2))
    assert str(folder / "data_batch_1") in str(err.value)


def test_dataset_shape_needs_no_files() -> None:
    assert dataset_shape("mnist") == ((1, 28, 28), 10)
    assert dataset_shape("cifar10") == ((3, 32, 32), 10)
    with pytest.raises(DataError, match=r"data\.name=svhn"):
        dataset_shape("svhn")


def test_cifar10_has_no_bundled_copy() -> None:
    with pytest.raises(DataError, match="no bundled copy"):
        load_data(data_cfg("cifar10", source="bundled"))


# --- bundled and auto ---------------------------------------------------------------------------


def test_bundled_mnist_caps_the_default_val_size() -> None:
    cfg = data_cfg("mnist", source="bundled")
    assert cfg.val_size == 5000  # the shipped default, which is the whole bundled set
    data = load_data(cfg)
    assert data.source == "bundled" and "capped at 1,000" in data.origin
    assert data.train_x.shape == (4000, 1, 28, 28) and data.val_x.shape == (1000, 1, 28, 28)
    assert data.test_x is None and data.test_y is None
    assert data.num_classes == 10
    assert torch.equal(torch.cat([data.train_y, data.val_y]).unique(), torch.arange(10))
    assert abs(data.train_x.mean().item()) < 1e-4

    smaller = load_data(data_cfg("mnist", source="bundled", val_size=200))
    assert (len(smaller.train_y), len(smaller.val_y)) == (4800, 200)


def test_auto_in_an_empty_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_source(data_cfg("mnist")) == ("bundled", None)
    with caplog.at_level(logging.INFO, logger="gradsweep.data.load"):
        data = load_data(data_cfg("mnist", val_size=100))
    assert data.source == "bundled"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "data/MNIST/raw/" in warnings[0] and "bundled" in warnings[0]

    with pytest.raises(DataError, match="cifar-10-batches-py"):
        load_data(data_cfg("cifar10"))


def test_auto_prefers_the_full_dataset_under_default_root(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    write_mnist(tmp_path / "data", n_train=30, n_test=10)
    assert resolve_source(data_cfg("mnist")) == ("full", Path("data"))
    assert load_data(data_cfg("mnist", val_size=10)).source == "full"


# --- Batches ------------------------------------------------------------------------------------


def index_data(n: int, size: int = 1) -> Data:
    """A Data whose image i is filled with the value i, so a batch shows which images it took."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, size, size).clone()
    y = torch.arange(n)
    return Data(x, y, x[:1], y[:1], None, None, "bundled", "test", n, (1, size, size))


def ids(x: torch.Tensor) -> list[int]:
    return x[:, 0, 0, 0].long().tolist()


def test_batches_drop_the_partial_batch_and_cover_each_epoch() -> None:
    data = index_data(103)
    batches = Batches(data, batch_size=10, generator=torch.Generator().manual_seed(0))
    assert batches.steps_per_epoch == 10
    stream = iter(batches)
    epochs = []
    for _ in range(3):
        taken = [next(stream) for _ in range(batches.steps_per_epoch)]
        assert all(
            x.shape == (10, 1, 1, 1) and torch.equal(x.view(-1), y.float()) for x, y in taken
        )
        epochs.append([i for x, _ in taken for i in ids(x)])
    for seen in epochs:
        assert len(set(seen)) == 100 and set(seen) <= set(range(103))
    assert epochs[0] != epochs[1]  # a fresh permutation each epoch


def test_batches_repeat_with_the_same_seed() -> None:
    def first(seed: int, count: int = 25) -> list[list[int]]:
        stream = iter(Batches(index_data(64), 8, torch.Generator().manual_seed(seed)))
        return [ids(next(stream)[0]) for _ in range(count)]

    assert first(7) == first(7)
    assert first(7) != first(8)


@pytest.mark.parametrize("augment", [False, True])
@pytest.mark.parametrize("taken", [0, 5, 8, 13])  # fresh, mid-epoch, at an epoch's end, later
def test_batches_state_dict_resumes_the_same_stream(augment: bool, taken: int) -> None:
    data = index_data(70, size=8)
    batches = Batches(data, 8, torch.Generator().manual_seed(3), augment=augment)
    stream = iter(batches)
    for _ in range(taken):
        next(stream)
    state = batches.state_dict()
    expected = [next(stream) for _ in range(12)]

    resumed = Batches(data, 8, torch.Generator().manual_seed(99), augment=augment)
    resumed.load_state_dict(state)
    again = iter(resumed)
    for x, y in expected:
        x2, y2 = next(again)
        assert torch.equal(x, x2) and torch.equal(y, y2)
    assert (resumed.epoch, resumed.step) == (batches.epoch, batches.step)


def test_batches_reject_impossible_sizes() -> None:
    with pytest.raises(DataError, match=r"data\.batch_size"):
        Batches(index_data(5), 6, torch.Generator())
    resumed = Batches(index_data(50), 5, torch.Generator())
    with pytest.raises(ValueError, match="cannot resume"):
        resumed.load_state_dict(Batches(index_data(50), 10, torch.Generator()).state_dict())


def test_iterate_eval_keeps_every_sample() -> None:
    x, y = torch.randn(23, 1, 2, 2), torch.arange(23)
    chunks = list(iterate_eval(x, y, 10))
    assert [len(cy) for _, cy in chunks] == [10, 10, 3]
    assert torch.equal(torch.cat([cx for cx, _ in chunks]), x)


# --- random_crop_flip ---------------------------------------------------------------------------


def test_random_crop_flip_is_a_crop_of_the_padded_image() -> None:
    x = torch.randn(64, 3, 10, 12)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert out.shape == x.shape and out.dtype == x.dtype

    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")

    def crop(i: int, top: int, left: int, flip: bool) -> torch.Tensor:
        window = padded[i, :, top : top + 10, left : left + 12]
        return window.flip(-1) if flip else window

    found = []
    for i in range(len(x)):
        matches = [
            (top, left, flip)
            for top in range(5)
            for left in range(5)
            for flip in (False, True)
            if torch.equal(out[i], crop(i, top, left, flip))
        ]
        assert len(matches) == 1, f"sample {i} is no crop of its padded image"
        found.append(matches[0])
    assert {flip for *_, flip in found} == {False, True}  # p=0.5 over 64 samples
    assert len({(top, left) for top, left, _ in found}) > 5  # offsets drawn per sample

    again = random_crop_flip(x, torch.Generator().manual_seed(0), padding=2)
    assert torch.equal(out, again)
    assert not torch.equal(out, random_crop_flip(x, torch.Generator().manual_seed(1), padding=2))


def test_random_crop_flip_without_padding_only_flips() -> None:
    x = torch.randn(32, 3, 5, 5)
    out = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    for i in range(len(x)):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))
