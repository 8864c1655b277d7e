"""data=folder: the user's own images in class folders, through the real code.

Every test writes tiny real image files (PNG, JPEG, ...) with Pillow under tmp_path and loads
them through gradsweep's loader, decoder and cache; a bad folder must fail with a message that
names the file or the setting to change, before any training.
"""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from omegaconf import DictConfig, OmegaConf
from PIL import Image, ImageOps

from gradsweep.cli.main import main as gradsweep_main
from gradsweep.data import cache as data_cache
from gradsweep.data.folders import IMAGE_EXTENSIONS, scan_layout
from gradsweep.data.load import load_data
from gradsweep.data.sources import SPECS, dataset_shape, missing_message
from gradsweep.data.tensors import Data
from gradsweep.errors import ConfigError, DataError
from gradsweep.run.training import train
from gradsweep.run.validate import check_config

ROOT = Path(__file__).resolve().parents[1]
HANG_S = 600  # a bound for a hang, not a measurement


def folder_cfg(root: Path | None, **overrides: Any) -> DictConfig:
    """The shipped conf/data/folder.yaml with some keys changed, as Hydra would hand it over."""
    cfg = OmegaConf.load(ROOT / "conf" / "data" / "folder.yaml")
    assert isinstance(cfg, DictConfig)
    cfg.root = None if root is None else str(root)
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def save(path: Path, image: Image.Image | np.ndarray, **options: Any) -> Path:
    """Write a real image file (the format from the extension)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **options)
    return path


def pixels(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def class_folders(root: Path, counts: dict[str, int], size=(6, 5), mode="RGB", ext="png") -> Path:
    """root/<class>/<i>.<ext>: random pixels, a different seed per image."""
    shape = (*size, 3) if mode == "RGB" else size
    for c, (name, count) in enumerate(counts.items()):
        for i in range(count):
            save(root / name / f"{i}.{ext}", pixels(100 * c + i, shape))
    return root


def raw(data: Data, x: torch.Tensor) -> torch.Tensor:
    """Back to the uint8 pixels (undo the normalization)."""
    mean = torch.tensor(data.mean).view(-1, 1, 1)
    std = torch.tensor(data.std).view(-1, 1, 1)
    return ((x * std + mean) * 255).round().to(torch.uint8)


def all_images(data: Data) -> tuple[torch.Tensor, torch.Tensor]:
    """Train and val, back as uint8, with their labels."""
    x = torch.cat([raw(data, data.train_x), raw(data, data.val_x)])
    return x, torch.cat([data.train_y, data.val_y])


def as_set(x: torch.Tensor, y: torch.Tensor) -> set[bytes]:
    pairs = zip(x, y, strict=True)
    return {bytes(img.numpy().tobytes()) + bytes([int(label)]) for img, label in pairs}


def expected_set(files: dict[Path, int], convert: str = "RGB") -> set[bytes]:
    """What each file holds, read by Pillow directly (ImageFolder's loader: convert("RGB"))."""
    out = set()
    for path, label in files.items():
        with Image.open(path) as image:
            array = np.asarray(image.convert(convert))
        array = array[None] if array.ndim == 2 else array.transpose(2, 0, 1)
        out.add(bytes(np.ascontiguousarray(array).tobytes()) + bytes([label]))
    return out


# --- what a good folder gives ---------------------------------------------------------------


def test_labels_follow_sorted_class_folders_and_hidden_names_are_skipped(tmp_path: Path) -> None:
    root = tmp_path / "images"
    files: dict[Path, int] = {}
    # Made out of order; labels follow the sorted names: ant 0, bee 1, cat 2.
    for label, name in ((2, "cat"), (0, "ant"), (1, "bee")):
        for i in range(4):
            files[save(root / name / f"{i}.png", pixels(10 * label + i, (6, 5, 3)))] = label
    files[save(root / "bee" / "nested" / "deep.PNG", pixels(99, (6, 5, 3)))] = 1  # any case
    files[save(root / "ant" / "photo.JPG", pixels(98, (6, 5, 3)), quality=95)] = 0
    # Skipped: hidden files and folders, macOS twins, other extensions, loose root files.
    save(root / "cat" / ".hidden.png", pixels(1, (6, 5, 3)))
    save(root / "cat" / "._0.png", pixels(2, (6, 5, 3)))
    save(root / "cat" / ".thumbs" / "t.png", pixels(3, (9, 9, 3)))
    save(root / ".trash" / "x.png", pixels(4, (6, 5, 3)))  # not a class either
    (root / "cat" / "notes.txt").write_text("not an image")
    (root / "labels.csv").write_text("a,b\n")

    data = load_data(folder_cfg(root, val_fraction=0.25))

    assert data.classes == ("ant", "bee", "cat") and data.num_classes == 3
    assert data.input_shape == (3, 6, 5)
    assert len(data.train_y) + len(data.val_y) == len(files) == 14
    assert data.test_x is None
    assert as_set(*all_images(data)) == expected_set(files)
    assert data.record() == {"data.source": "full", "data.classes": "ant,bee,cat"}


def test_linked_folders_are_followed_once(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 2, "b": 2})
    class_folders(tmp_path / "elsewhere", {"more": 3})
    (root / "a" / "linked").symlink_to(tmp_path / "elsewhere" / "more")  # counts for a
    (root / "b" / "loop").symlink_to(root / "b")  # back up the tree: not walked twice
    layout = scan_layout(root)
    assert [len([f for f in layout.files() if f.label == k]) for k in (0, 1)] == [5, 2]


def test_a_seeded_share_is_held_out_when_there_is_no_val_folder(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 20, "b": 20})
    data = load_data(folder_cfg(root, val_fraction=0.2))
    again = load_data(folder_cfg(root, val_fraction=0.2))
    assert (len(data.train_y), len(data.val_y)) == (32, 8)
    assert torch.equal(data.val_x, again.val_x) and torch.equal(data.train_y, again.train_y)
    assert len(load_data(folder_cfg(root, val_fraction=0.5)).val_y) == 20


def test_train_val_test_folders_are_used_as_given(tmp_path: Path) -> None:
    root = tmp_path / "images"
    class_folders(root / "train", {"cat": 5, "dog": 4, "eel": 3})
    val = {save(root / "val" / "dog" / "v.png", pixels(500, (6, 5, 3))): 1}  # a subset
    test = {
        save(root / "test" / "eel" / "t0.png", pixels(600, (6, 5, 3))): 2,
        save(root / "test" / "cat" / "t1.png", pixels(601, (6, 5, 3))): 0,
    }
    data = load_data(folder_cfg(root))
    assert data.classes == ("cat", "dog", "eel")
    assert len(data.train_y) == 12  # nothing held out
    assert as_set(raw(data, data.val_x), data.val_y) == expected_set(val)
    assert data.test_x is not None and data.test_y is not None
    assert as_set(raw(data, data.test_x), data.test_y) == expected_set(test)


def test_normalization_comes_from_the_training_split_alone(tmp_path: Path) -> None:
    root = tmp_path / "images"
    class_folders(root / "train", {"a": 3, "b": 3})
    save(root / "val" / "a" / "white.png", np.full((6, 5, 3), 255, np.uint8))
    data = load_data(folder_cfg(root))
    train = raw(data, data.train_x).double() / 255
    assert torch.allclose(torch.tensor(data.mean), train.mean(dim=(0, 2, 3)).float(), atol=1e-6)
    std = train.transpose(0, 1).reshape(3, -1).std(dim=1)
    assert torch.allclose(torch.tensor(data.std), std.float(), atol=1e-6)


def test_channels_follow_the_images_grey_palette_rgba_and_16_bit(tmp_path: Path) -> None:
    grey = class_folders(tmp_path / "grey", {"a": 2, "b": 2}, mode="L")
    save(grey / "b" / "deep.png", Image.fromarray(np.full((6, 5), 0x1234, np.uint16)))
    data = load_data(folder_cfg(grey, val_fraction=0.2))
    assert data.input_shape == (1, 6, 5)
    x, _ = all_images(data)
    assert any(bool((img == 0x12).all()) for img in x)  # 16-bit: its top 8 bits

    mixed = class_folders(tmp_path / "mixed", {"a": 2, "b": 2}, mode="L")
    palette = Image.fromarray(pixels(7, (6, 5)) % 4, "P")
    palette.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 9, 9, 9])
    files = {save(mixed / "a" / "palette.png", palette): 0}
    files[save(mixed / "b" / "rgba.png", Image.fromarray(pixels(8, (6, 5, 4)), "RGBA"))] = 1
    files[save(mixed / "b" / "cmyk.jpg", Image.fromarray(pixels(9, (6, 5, 4)), "CMYK"))] = 1
    grey_file = mixed / "a" / "0.png"
    data = load_data(folder_cfg(mixed, val_fraction=0.2))
    assert data.input_shape == (3, 6, 5)  # one colour image makes every image RGB
    got = as_set(*all_images(data))
    assert expected_set(files) <= got  # palette, alpha dropped, CMYK: as convert("RGB")
    assert expected_set({grey_file: 0}) <= got  # grey repeated on R, G and B


def test_channels_setting_converts_every_image(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 2, "b": 2})
    rgba = save(root / "a" / "alpha.png", Image.fromarray(pixels(5, (6, 5, 4)), "RGBA"))
    one = load_data(folder_cfg(root, channels=1, val_fraction=0.2))
    assert one.input_shape == (1, 6, 5)
    assert expected_set({root / "b" / "1.png": 1}, "L") <= as_set(*all_images(one))
    four = load_data(folder_cfg(root, channels=4, val_fraction=0.2))
    assert four.input_shape == (4, 6, 5)
    assert expected_set({rgba: 0}, "RGBA") <= as_set(*all_images(four))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 2, "b": 2}, size=(5, 6), ext="jpg")
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 6 high x 5 wide; shown turned 90 degrees clockwise: 5 x 6
    turned = save(root / "a" / "turned.jpg", pixels(3, (6, 5, 3)), exif=exif, quality=95)
    data = load_data(folder_cfg(root, val_fraction=0.2))
    assert data.input_shape == (3, 5, 6)
    with Image.open(turned) as image:
        shown = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    assert shown.shape == (5, 6, 3)
    key = bytes(np.ascontiguousarray(shown.transpose(2, 0, 1)).tobytes()) + bytes([0])
    assert key in as_set(*all_images(data))


def test_image_size_resizes_images_of_any_size(tmp_path: Path) -> None:
    root = tmp_path / "images"
    save(root / "a" / "wide.png", pixels(1, (10, 20, 3)))
    save(root / "a" / "tall.jpg", pixels(2, (30, 12, 3)), quality=90)
    save(root / "b" / "small.bmp", pixels(3, (4, 4, 3)))
    save(root / "b" / "grey.tif", pixels(4, (16, 16)))
    square = load_data(folder_cfg(root, image_size=8, val_fraction=0.25))
    assert square.input_shape == (3, 8, 8)
    # The centre square of the shorter side scaled to 8, as ImageOps.fit makes it.
    with Image.open(root / "a" / "wide.png") as image:
        fitted = np.asarray(ImageOps.fit(image.convert("RGB"), (8, 8), Image.Resampling.BILINEAR))
    key = bytes(np.ascontiguousarray(fitted.transpose(2, 0, 1)).tobytes()) + bytes([0])
    assert key in as_set(*all_images(square))
    pair = load_data(folder_cfg(root, image_size=[6, 10], val_fraction=0.25))
    assert pair.input_shape == (3, 6, 10)
    assert dataset_shape(folder_cfg(root, image_size=[6, 10])) == ((3, 6, 10), 2)


def test_dataset_shape_reads_the_folder_without_decoding(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 2, "b": 2, "c": 1}, size=(7, 9), mode="L")
    assert dataset_shape(folder_cfg(root)) == ((1, 7, 9), 3)
    assert dataset_shape(folder_cfg(root, channels=3)) == ((3, 7, 9), 3)
    assert dataset_shape("cifar10") == ((3, 32, 32), 10)


# --- bad folders: clear errors before any training --------------------------------------------


def _empty(root: Path) -> None:
    root.mkdir()
    (root / ".DS_Store").write_bytes(b"")


def _loose_images(root: Path) -> None:
    for i in range(3):
        save(root / f"{i}.png", pixels(i, (4, 4, 3)))


def _one_class(root: Path) -> None:
    class_folders(root, {"cat": 3})


def _class_without_images(root: Path) -> None:
    class_folders(root, {"cat": 2, "dog": 2})
    (root / "eel").mkdir()
    (root / "eel" / "readme.txt").write_text("no images yet")
    (root / "eel" / ".hidden.png").write_bytes(b"")


def _train_beside_classes(root: Path) -> None:
    class_folders(root / "train", {"cat": 2, "dog": 2})
    class_folders(root, {"cat": 1})


def _val_class_not_in_train(root: Path) -> None:
    class_folders(root / "train", {"cat": 2, "dog": 2})
    class_folders(root / "val", {"cat": 1, "zebra": 1})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "does not exist"),
        (_empty, "is empty (no class folders, no images)"),
        (_loose_images, "holds 3 images but no class folders"),
        (_one_class, "holds one class folder (cat/): a classifier needs at least two classes"),
        (_class_without_images, "eel/ (1 file, none an image)"),
        (_train_beside_classes, "holds train/ and also cat/"),
        (_val_class_not_in_train, "has class folders that"),
    ],
)
def test_a_bad_layout_is_named_before_anything_is_decoded(tmp_path: Path, make, message) -> None:
    root = tmp_path / "images"
    if make is not None:
        make(root)
    with pytest.raises(DataError) as error:
        load_data(folder_cfg(root))
    assert message in str(error.value)
    if make is not _val_class_not_in_train:
        assert "one sub-folder per class" in str(error.value) or "remove the folder" in str(
            error.value
        )


def test_unreadable_and_truncated_images_are_each_named(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 3, "b": 3})
    whole = io.BytesIO()
    Image.fromarray(pixels(1, (64, 64, 3))).save(whole, "PNG")
    truncated = root / "a" / "cut.png"
    truncated.write_bytes(whole.getvalue()[: len(whole.getvalue()) // 2])
    fake = root / "b" / "fake.jpg"
    fake.write_bytes(b"this is not a JPEG")
    gone = root / "b" / "gone.png"
    gone.symlink_to(tmp_path / "deleted.png")  # a broken link
    with pytest.raises(DataError) as error:
        load_data(folder_cfg(root))
    text = str(error.value)
    assert "3 of 9 images under" in text and "do not decode" in text
    assert f"{truncated}: OSError" in text and "truncated" in text
    assert f"{fake}: UnidentifiedImageError" in text
    assert f"{gone}: FileNotFoundError" in text
    assert "Delete each one or replace it" in text


def test_mixed_sizes_without_image_size_name_the_setting(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 3, "b": 2}, size=(8, 8))
    odd = save(root / "b" / "odd.png", pixels(1, (12, 10, 3)))
    with pytest.raises(DataError) as error:
        load_data(folder_cfg(root))
    text = str(error.value)
    assert "come in 2 sizes" in text and "8x8 (5 images" in text
    assert f"12x10 (1 image, e.g. {odd})" in text
    assert "set data.image_size=8" in text and "data.image_size=[8,8]" in text
    with pytest.raises(DataError, match="come in 2 sizes"):
        dataset_shape(folder_cfg(root))  # gradsweep show says the same
    assert load_data(folder_cfg(root, image_size=8, val_fraction=0.2)).input_shape == (3, 8, 8)


def test_a_dataset_too_big_for_memory_is_refused_before_decoding(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 2, "b": 2})
    (root / "b" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n")  # decoding would fail on it
    with pytest.raises(DataError) as error:
        load_data(folder_cfg(root, image_size=1_000_000))
    text = str(error.value)
    assert "5 images of 3x1000000x1000000 would take about" in text
    assert "is available: set data.image_size=" in text
    assert "Estimated before decoding, from data.image_size" in text


def test_a_bad_folder_fails_in_train_before_any_step(make_cfg, tmp_path: Path) -> None:
    root = tmp_path / "images"
    _one_class(root)
    cfg = make_cfg("data=folder", "data.source=full", f"data.root={root}")
    with pytest.raises(DataError, match="at least two classes"):
        train(cfg, run_dir=tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ([], "data=folder needs data.root="),
        (["data.root=x", "data.val_fraction=1.5"], "data.val_fraction=1.5 must be a number"),
        (["data.root=x", "data.channels=2"], "data.channels=2: choose 1 (grey), 3 (RGB)"),
        (["data.root=x", "data.image_size=0"], "data.image_size=0: use a size in pixels"),
        (["data.root=x", "data.image_size=[1,2,3]"], "data.image_size=[1, 2, 3]"),
        (["data.root=x", "data.source=bundled"], "for folder use data.source=full"),
    ],
)
def test_check_config_names_each_folder_setting(make_cfg, overrides, message) -> None:
    cfg = make_cfg("data=folder", "data.source=full", *overrides)
    with pytest.raises(ConfigError) as error:
        check_config(cfg)
    assert message in str(error.value)


def test_val_fraction_must_leave_images_to_train_on(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"a": 1, "b": 1})
    with pytest.raises(DataError, match=r"data.val_fraction=0.9 of the 2 images .* leaves none"):
        load_data(folder_cfg(root, val_fraction=0.9))


def test_cifar10_missing_message_mentions_data_folder(tmp_path: Path) -> None:
    text = missing_message(SPECS["cifar10"], tmp_path, bundled_hint=False)
    assert "data=folder data.root=<folder>" in text and "one sub-folder per class" in text


# --- the cache --------------------------------------------------------------------------------


def test_second_load_reads_the_cache_and_nothing_is_written_into_the_images(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.delenv(data_cache.ENV_VAR)  # the default location
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = class_folders(tmp_path / "images", {"a": 5, "b": 5})
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    with caplog.at_level(logging.INFO, logger="gradsweep"):
        cold, warm = load_data(folder_cfg(root)), load_data(folder_cfg(root))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("data: folder")]
    assert "decoded 10 images in" in lines[0] and "cached to" in lines[0]
    assert f"(cached in {tmp_path / 'xdg' / 'gradsweep'}" in lines[1]
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert len(list((tmp_path / "xdg").rglob("folder-train.pt"))) == 1
    for name in ("train_x", "train_y", "val_x", "val_y"):
        assert torch.equal(getattr(cold, name), getattr(warm, name)), name
    assert (cold.mean, cold.std, cold.classes) == (warm.mean, warm.std, warm.classes)


def test_a_changed_image_rebuilds_the_cache(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = class_folders(tmp_path / "images", {"a": 3, "b": 3})
    first = load_data(folder_cfg(root, val_fraction=0.2))
    save(root / "a" / "0.png", np.zeros((6, 5, 3), np.uint8))  # same name, new pixels
    with caplog.at_level(logging.INFO, logger="gradsweep"):
        second = load_data(folder_cfg(root, val_fraction=0.2))
    assert any("is stale" in r.getMessage() for r in caplog.records)
    assert not torch.equal(
        torch.cat([first.train_x, first.val_x]), torch.cat([second.train_x, second.val_x])
    )
    assert len(load_data(folder_cfg(root, val_fraction=0.2, image_size=4)).train_y) == 5


def test_a_cache_folder_that_cannot_be_written_falls_back_and_says_where(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # The tests run as root, which chmod does not stop: a file where the folder would go does.
    blocked = tmp_path / "blocked"
    blocked.write_text("a file, not a folder")
    monkeypatch.setenv(data_cache.ENV_VAR, str(blocked))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = class_folders(tmp_path / "images", {"a": 3, "b": 3})
    with caplog.at_level(logging.INFO, logger="gradsweep"):
        load_data(folder_cfg(root))
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    fallback = next((tmp_path / "xdg" / "gradsweep").iterdir())
    assert warning == [
        f"data cache: cannot write to {blocked / fallback.name} (NotADirectoryError: [Errno 20] "
        f"Not a directory: '{blocked / fallback.name}'); cached in {fallback} instead"
    ]
    assert (fallback / "folder-train.pt").is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gradsweep"):
        load_data(folder_cfg(root))
    assert any(f"(cached in {fallback})" in r.getMessage() for r in caplog.records)


# --- training on a folder ---------------------------------------------------------------------


def test_training_sizes_the_model_from_the_folder_and_records_the_classes(
    make_cfg, tmp_path: Path
) -> None:
    root = class_folders(tmp_path / "images", {"x": 12, "y": 12, "z": 12}, size=(10, 12), mode="L")
    cfg = make_cfg("data=folder", "data.source=full", f"data.root={root}", "model=cnn",
                   "data.batch_size=8", "activation=relu", "init=kaiming", max_steps=4)  # fmt: skip
    train(cfg, run_dir=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"] == "folder" and summary["data.classes"] == "x,y,z"
    assert summary["data.source"] == "full" and summary["steps"] == 4


def test_show_sizes_the_model_from_the_folder(tmp_path: Path, capsys) -> None:
    root = class_folders(tmp_path / "images", {"x": 1, "y": 1, "z": 1}, size=(10, 12), mode="L")
    assert gradsweep_main(["show", "data=folder", f"data.root={root}", "model=cnn"]) == 0
    out = capsys.readouterr().out
    assert "Conv2d(1, 16" in out and "out_features=3" in out
    assert gradsweep_main(["show", "data=folder", f"data.root={root}", "model=mlp"]) == 0
    assert "in_features=120" in capsys.readouterr().out


@pytest.mark.slow  # imports torchvision (seconds)
def test_classes_labels_and_pixels_match_torchvision_imagefolder(tmp_path: Path) -> None:
    from torchvision.datasets import ImageFolder
    from torchvision.datasets.folder import IMG_EXTENSIONS

    assert tuple(IMG_EXTENSIONS) == IMAGE_EXTENSIONS
    root = class_folders(tmp_path / "images", {"b": 3, "a": 2, "c": 2})
    save(root / "a" / "sub" / "x.bmp", pixels(1, (6, 5, 3)))
    save(root / "c" / "y.webp", pixels(2, (6, 5, 3)), lossless=True)
    theirs = ImageFolder(str(root))
    layout = scan_layout(root)
    assert list(layout.classes) == theirs.classes
    ours = {(item.path, item.label) for item in layout.files()}
    assert ours == {(path, label) for path, label in theirs.samples}
    files = {Path(path): label for path, label in theirs.samples}
    data = load_data(folder_cfg(root, val_fraction=0.2))
    assert as_set(*all_images(data)) == expected_set(files)


@pytest.mark.slow  # starts python train.py
def test_train_py_on_a_folder_from_the_command_line(tmp_path: Path) -> None:
    root = class_folders(tmp_path / "images", {"cat": 10, "dog": 10}, size=(8, 8))
    result = subprocess.run(
        [sys.executable, "train.py", "logger=none", "data=folder", f"data.root={root}",
         "model=cnn", "data.batch_size=8", "trainer.max_steps=3",
         f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=HANG_S,
        env={**os.environ, "GRADSWEEP_CACHE_DIR": str(tmp_path / "cache")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "data: folder full (18 train / 2 val / no test)" in result.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["data"] == "folder" and summary["data.classes"] == "cat,dog"
    bad = subprocess.run(
        [sys.executable, "train.py", "logger=none", "data=folder",
         f"data.root={tmp_path / 'nothing'}", f"hydra.run.dir={tmp_path / 'bad'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=HANG_S,
    )  # fmt: skip
    assert bad.returncode == 2 and "does not exist" in bad.stderr
