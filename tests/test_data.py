"""Datasets -> EvalSet: npz validation, subsets, Fashion-MNIST from IDX files, CIFAR offline
errors, ImageNet folders, held-out training subsets, model/data compatibility checks."""

from __future__ import annotations

import gzip
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from marginbench.config import DatasetConfig
from marginbench.data import (
    DEBIAN_FASHION_MNIST,
    check_compatible,
    dataset_for_model,
    load_eval_set,
    load_heldout_train,
    read_idx,
)
from marginbench.errors import MarginbenchError
from marginbench.models.registry import resolve_model


def npz_cfg(path) -> DatasetConfig:
    return DatasetConfig(name="npz", path=str(path))


def _save_idx(path: Path, array: np.ndarray) -> None:
    """Write an IDX file by hand: 0 0 <type 0x08 = uint8> <ndim>, big-endian uint32 dims."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


def test_npz_uint8_nhwc_exact_pixels(tiny_cifar_npz, tmp_path):
    es = load_eval_set(npz_cfg(tiny_cifar_npz), tmp_path, None, None)
    raw = np.load(tiny_cifar_npz)["images"]
    assert es.images.dtype == torch.float32 and es.images.shape == (8, 3, 32, 32)
    assert torch.equal(es.images[3, 1], torch.from_numpy(raw[3, :, :, 1]).float() / 255)
    assert es.labels.dtype == torch.int64 and es.labels.tolist() == list(range(8))
    assert es.indices.dtype == np.int64 and es.indices.tolist() == list(range(8))
    assert (es.dataset, es.split) == ("npz", "test")


def test_npz_float_nchw(tmp_path):
    x = np.random.default_rng(1).random((5, 1, 28, 28), dtype=np.float32)
    path = tmp_path / "f.npz"
    np.savez(path, images=x, labels=np.array([0, 1, 2, 3, 4]))
    es = load_eval_set(npz_cfg(path), tmp_path, 2, None)
    assert torch.equal(es.images, torch.from_numpy(x[:2]))


def test_first100_cifar_known_labels(cifar10_first100_npz, tmp_path):
    es = load_eval_set(npz_cfg(cifar10_first100_npz), tmp_path, 10, None)
    # the first CIFAR-10 test labels: cat ship ship airplane frog frog automobile frog cat automobile
    assert es.labels.tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    assert float(es.images.min()) >= 0.0 and float(es.images.max()) <= 1.0


@pytest.mark.parametrize(
    "images,labels,match",
    [
        (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.int64), "4 dimensions"),
        (np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.int64), "N,H,W,C"),
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.int64), "N,C,H,W"),
        (np.full((4, 3, 8, 8), 255.0, np.float32), np.zeros(4, np.int64), r"outside \[0,1\]"),
        (np.full((4, 3, 8, 8), np.nan, np.float32), np.zeros(4, np.int64), "NaN"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(3, np.int64), "one label per image"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.float32), "integers"),
        (np.zeros((4, 32, 32, 3), np.uint8), -np.ones(4, np.int64), "negative"),
        (np.zeros((4, 32, 32, 3), np.int16), np.zeros(4, np.int64), "dtype int16"),
    ],
)
def test_npz_validation_errors(tmp_path, images, labels, match):
    path = tmp_path / "bad.npz"
    np.savez(path, images=images, labels=labels)
    with pytest.raises(MarginbenchError, match=match) as info:
        load_eval_set(npz_cfg(path), tmp_path, None, None)
    assert "\n" not in str(info.value)


def test_npz_missing_keys_and_file(tmp_path):
    path = tmp_path / "keys.npz"
    np.savez(path, x=np.zeros((2, 8, 8, 3), np.uint8), y=np.zeros(2, np.int64))
    with pytest.raises(MarginbenchError, match="must hold arrays 'images' and 'labels'"):
        load_eval_set(npz_cfg(path), tmp_path, None, None)
    with pytest.raises(MarginbenchError, match="not found"):
        load_eval_set(npz_cfg(tmp_path / "nope.npz"), tmp_path, None, None)
    with pytest.raises(MarginbenchError, match="dataset.path"):
        load_eval_set(DatasetConfig(name="npz"), tmp_path, None, None)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MarginbenchError, match="cannot read"):
        load_eval_set(npz_cfg(tmp_path / "junk.npz"), tmp_path, None, None)


# --------------------------------------------------------------------------------------------
# Subsets
# --------------------------------------------------------------------------------------------


def test_subsets_first_n_and_indices(tiny_cifar_npz, tmp_path):
    full = load_eval_set(npz_cfg(tiny_cifar_npz), tmp_path, None, None)
    first = load_eval_set(npz_cfg(tiny_cifar_npz), tmp_path, 3, None)
    assert first.indices.tolist() == [0, 1, 2] and torch.equal(first.images, full.images[:3])
    picked = load_eval_set(npz_cfg(tiny_cifar_npz), tmp_path, 3, [6, 2, 5])  # indices win over n
    assert picked.indices.tolist() == [6, 2, 5] and picked.labels.tolist() == [6, 2, 5]
    assert torch.equal(picked.images[0], full.images[6])
    clamped = load_eval_set(npz_cfg(tiny_cifar_npz), tmp_path, 1000, None)
    assert len(clamped) == 8


@pytest.mark.parametrize(
    "n,indices,match",
    [
        (None, [0, 8], "out of range"),
        (None, [-1], "out of range"),
        (None, [1, 1], "duplicates"),
        (None, [], "non-empty"),
        (0, None, "must be positive"),
    ],
)
def test_subset_errors(tiny_cifar_npz, tmp_path, n, indices, match):
    with pytest.raises(MarginbenchError, match=match):
        load_eval_set(npz_cfg(tiny_cifar_npz), tmp_path, n, indices)


def test_dataset_name_errors_and_auto(tmp_path):
    with pytest.raises(MarginbenchError, match="unknown"):
        load_eval_set(DatasetConfig(name="mnist"), tmp_path, 10, None)
    with pytest.raises(MarginbenchError, match="auto"):
        load_eval_set(DatasetConfig(name="auto"), tmp_path, 10, None)
    assert dataset_for_model(DatasetConfig(), resolve_model("XU80")).name == "cifar10"
    assert dataset_for_model(DatasetConfig(), resolve_model("fm_trades")).name == "fashion_mnist"
    assert (
        dataset_for_model(DatasetConfig(name="npz", path="x"), resolve_model("XU80")).name == "npz"
    )


# --------------------------------------------------------------------------------------------
# CIFAR: a missing copy is a one-line error, fast, offline
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("download,offline", [(False, "0"), (True, "1")])
def test_cifar_missing_offline_error(tmp_path, monkeypatch, download, offline):
    monkeypatch.setenv("MARGINBENCH_OFFLINE", offline)
    start = time.perf_counter()
    with pytest.raises(MarginbenchError) as info:
        load_eval_set(DatasetConfig(name="cifar100", download=download), tmp_path, 10, None)
    assert time.perf_counter() - start < 10
    msg = str(info.value)
    assert (
        str(tmp_path / "cifar-100-python") in msg
        and "cifar-100-python.tar.gz" in msg
        and "\n" not in msg
    )


# --------------------------------------------------------------------------------------------
# Fashion-MNIST
# --------------------------------------------------------------------------------------------


def test_read_idx_known_array(tmp_path):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _save_idx(tmp_path / "a.gz", a)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), a)
    (tmp_path / "b").write_bytes(b"\x08\x03\x00\x00garbage")
    with pytest.raises(MarginbenchError, match="not an IDX"):
        read_idx(tmp_path / "b")


def test_fashion_mnist_from_data_dir_copy(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, (6, 28, 28)).astype(np.uint8)
    labels = np.array([5, 4, 3, 2, 1, 0], np.uint8)
    _save_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    _save_idx(folder / "t10k-labels-idx1-ubyte.gz", labels)
    es = load_eval_set(DatasetConfig(name="fashion_mnist", download=False), tmp_path, None, None)
    assert es.images.shape == (6, 1, 28, 28) and es.labels.tolist() == [5, 4, 3, 2, 1, 0]
    assert torch.equal(es.images[2, 0], torch.from_numpy(images[2]).float() / 255)


debian_fm = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)


@debian_fm
def test_fashion_mnist_test_set_from_debian(tmp_path):
    es = load_eval_set(DatasetConfig(name="fashion_mnist", download=False), tmp_path, None, None)
    assert es.images.shape == (10000, 1, 28, 28) and es.images.dtype == torch.float32
    # known facts about the Fashion-MNIST test set: 1,000 images per class, and its first labels
    assert np.bincount(es.labels.numpy()).tolist() == [1000] * 10
    assert es.labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert es.indices[-1] == 9999 and es.split == "test"


@debian_fm
def test_heldout_train_fashion_is_seeded(tmp_path):
    cfg = DatasetConfig(name="fashion_mnist", download=False)
    a = load_heldout_train(cfg, tmp_path, 50, seed=0)
    b = load_heldout_train(cfg, tmp_path, 50, seed=0)
    c = load_heldout_train(cfg, tmp_path, 50, seed=1)
    assert a.split == "train" and len(a) == 50 and len(set(a.indices.tolist())) == 50
    assert np.array_equal(a.indices, b.indices) and torch.equal(a.images, b.images)
    assert not np.array_equal(a.indices, c.indices)
    assert a.indices.max() < 60000


# --------------------------------------------------------------------------------------------
# Held-out training data from npz
# --------------------------------------------------------------------------------------------


def test_heldout_train_npz(tmp_path, tiny_cifar_npz):
    with pytest.raises(MarginbenchError, match="no training split"):
        load_heldout_train(npz_cfg(tiny_cifar_npz), tmp_path, 4, 0)
    rng = np.random.default_rng(2)
    path = tmp_path / "with_train.npz"
    train = rng.integers(0, 256, (20, 8, 8, 3)).astype(np.uint8)
    np.savez(
        path,
        images=train[:2],
        labels=np.zeros(2, np.int64),
        train_images=train,
        train_labels=np.arange(20),
    )
    held = load_heldout_train(npz_cfg(path), tmp_path, 5, 7)
    assert held.split == "train" and len(held) == 5
    assert held.labels.tolist() == held.indices.tolist()  # label i sits at index i
    assert torch.equal(
        held.images[0], torch.from_numpy(train[held.indices[0]]).permute(2, 0, 1).float() / 255
    )
    with pytest.raises(MarginbenchError, match="only 20"):
        load_heldout_train(npz_cfg(path), tmp_path, 21, 0)


# --------------------------------------------------------------------------------------------
# ImageNet folder
# --------------------------------------------------------------------------------------------


def test_imagenet_folder(tmp_path):
    from PIL import Image

    root = tmp_path / "val"
    for wnid, color in (("n01440764", (255, 0, 0)), ("n01443537", (0, 0, 255))):
        (root / wnid).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (300, 260), color).save(root / wnid / f"img{i}.png")
    es = load_eval_set(DatasetConfig(name="imagenet", path=str(root)), tmp_path, 4, None)
    assert es.images.shape == (4, 3, 224, 224) and es.dataset == "imagenet"
    for img, label in zip(es.images, es.labels, strict=True):
        # the red folder is class 0, the blue one class 1 (sorted wnids)
        assert float(img[0].mean()) == pytest.approx(1.0 if label == 0 else 0.0)
    again = load_eval_set(DatasetConfig(name="imagenet", path=str(root)), tmp_path, 4, None)
    assert np.array_equal(es.indices, again.indices)  # seeded order
    with pytest.raises(MarginbenchError, match="dataset.path"):
        load_eval_set(DatasetConfig(name="imagenet"), tmp_path, 4, None)
    with pytest.raises(MarginbenchError, match="not found"):
        load_eval_set(
            DatasetConfig(name="imagenet", path=str(tmp_path / "missing")), tmp_path, 4, None
        )


# --------------------------------------------------------------------------------------------
# Compatibility of data and model
# --------------------------------------------------------------------------------------------


def test_check_compatible(tiny_cifar_npz, tmp_path):
    cifar = load_eval_set(npz_cfg(tiny_cifar_npz), tmp_path, None, None)
    check_compatible(cifar, resolve_model("XU80"))
    with pytest.raises(MarginbenchError, match="1-channel"):
        check_compatible(cifar, resolve_model("fm_trades"))
    gray = np.zeros((3, 28, 28, 1), np.uint8)
    path = tmp_path / "gray.npz"
    np.savez(path, images=gray, labels=np.array([0, 1, 2]))
    with pytest.raises(MarginbenchError, match="3-channel"):
        check_compatible(load_eval_set(npz_cfg(path), tmp_path, None, None), resolve_model("XU80"))
    big = tmp_path / "labels.npz"
    np.savez(big, images=np.zeros((2, 32, 32, 3), np.uint8), labels=np.array([3, 57]))
    wide_labels = load_eval_set(npz_cfg(big), tmp_path, None, None)
    check_compatible(wide_labels, resolve_model("CU81"))  # 100 classes
    with pytest.raises(MarginbenchError, match="10 classes"):
        check_compatible(wide_labels, resolve_model("CU80"))


def test_check_compatible_dataset_mismatch_and_model_output(tiny_cifar_npz, tmp_path):
    from marginbench.data import EvalSet

    es = EvalSet(
        torch.zeros(2, 3, 32, 32),
        torch.zeros(2, dtype=torch.int64),
        np.arange(2),
        "cifar100",
        "test",
    )
    with pytest.raises(MarginbenchError, match="cifar10 model but the data is cifar100"):
        check_compatible(es, resolve_model("XU80"))
    cifar = load_eval_set(npz_cfg(tiny_cifar_npz), tmp_path, None, None)
    wrong_k = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 7))
    with pytest.raises(MarginbenchError, match=r"expected \(2, 10\)"):
        check_compatible(cifar, resolve_model("XU80"), model=wrong_k)
    gray_net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 30 * 30, 10)
    )
    with pytest.raises(MarginbenchError, match="cannot process"):
        check_compatible(cifar, resolve_model("XU80"), model=gray_net)
