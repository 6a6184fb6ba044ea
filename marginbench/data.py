"""Datasets -> an evaluation set: float32 NCHW images in [0,1], labels, source indices.

Datasets (``DatasetConfig.name``):

- ``cifar10`` / ``cifar100``: torchvision's copy under ``data_dir`` (``cifar-10-batches-py``,
  ``cifar-100-python``); downloaded only when ``download`` is true and the host answers.
- ``fashion_mnist``: the four IDX ``.gz`` files, looked up in ``data_dir`` (torchvision's
  ``FashionMNIST/raw`` or ``fashion-mnist/``), then in Debian's ``dataset-fashion-mnist``
  package (``/usr/share/datasets/fashion-mnist``), then downloaded by torchvision.
- ``imagenet``: a validation folder in ImageFolder layout (``<path>/<wnid>/<image>.JPEG``),
  resized to 256 and center-cropped to 224. Sample order is RobustBench's fixed list of 5,000
  validation images (the random subset its ImageNet evaluations use) when those files are
  present, else a seeded (seed 0) random permutation of the folder.
- ``npz``: ``path`` to a ``.npz`` with ``images`` (uint8 NHWC, or float NCHW in [0,1]) and
  ``labels``; optionally ``train_images`` / ``train_labels`` for held-out training data.

Subsets are the first ``n_samples`` in test-set order, or explicit ``indices``.
"""

from __future__ import annotations

import gzip
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from marginbench.config import DatasetConfig
from marginbench.errors import MarginbenchError
from marginbench.network import host_reachable

log = logging.getLogger(__name__)

DATASETS = ("cifar10", "cifar100", "fashion_mnist", "imagenet", "npz",
            "fashion_mnist_pairs", "fashion_mnist_pairs_left")
INPUT_SHAPES = {
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
    "fashion_mnist": (1, 28, 28),
    "imagenet": (3, 224, 224),
    "fashion_mnist_pairs": (1, 28, 56),
    "fashion_mnist_pairs_left": (1, 28, 56),
}
# Fashion-MNIST pairs: a real 100-class task built from local data (CIFAR-100 cannot be
# downloaded offline). Image i of a split is item i (left) beside item PERM[i] (right), 28x56,
# PERM a fixed seeded permutation per split; class 10*left + right. The "_left" variant has
# the same inputs with the left item's class (10 classes): the same architecture at K=10, to
# compare estimator costs across K.
PAIR_SEEDS = {"test": 15, "train": 16}
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = {
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
}
CIFAR_URLS = {
    "cifar10": ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", "cifar-10-batches-py"),
    "cifar100": ("https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", "cifar-100-python"),
}
IMAGENET_SEED = 0


@dataclass
class EvalSet:
    images: torch.Tensor  # float32 NCHW [0,1], CPU
    labels: torch.Tensor  # int64
    indices: np.ndarray  # int64 index of each sample in its source split
    dataset: str  # cifar10 ...
    split: str  # test | train

    def __len__(self) -> int:
        return int(self.labels.shape[0])


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def to_float_nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> float32 NCHW in [0,1], standard (NCHW-contiguous) layout.

    The layout matters beyond speed: convolution kernels for other strides round
    differently (~1e-6 in the logits), and minimum-norm attacks amplify that into
    per-sample margin differences of up to ~2% (measured with FAB on fm_madry).
    """
    x = torch.from_numpy(np.ascontiguousarray(images))
    return x.permute(0, 3, 1, 2).contiguous().float().div_(255.0)


def _select(
    n_total: int, n_samples: int | None, indices: list[int] | None, what: str
) -> np.ndarray:
    """Positions to take from a split of ``n_total`` samples."""
    if indices is not None:
        idx = np.asarray(list(indices), dtype=np.int64)
        if idx.ndim != 1 or idx.size == 0:
            raise MarginbenchError(
                "indices must be a non-empty list of integers, e.g. indices=[0,5,7]"
            )
        bad = idx[(idx < 0) | (idx >= n_total)]
        if bad.size:
            raise MarginbenchError(
                f"indices {bad[:5].tolist()} are out of range for {what} ({n_total} samples: 0..{n_total - 1})"
            )
        if np.unique(idx).size != idx.size:
            raise MarginbenchError("indices contain duplicates; list each sample once")
        return idx
    if n_samples is None:
        return np.arange(n_total, dtype=np.int64)
    if int(n_samples) <= 0:
        raise MarginbenchError(
            f"n_samples={n_samples} must be positive (or null for the whole test set)"
        )
    if n_samples > n_total:
        log.warning(
            "n_samples=%d exceeds the %d samples of %s; using all of them", n_samples, n_total, what
        )
    return np.arange(min(int(n_samples), n_total), dtype=np.int64)


def _make(
    images_u8: np.ndarray | None,
    labels: np.ndarray,
    pos: np.ndarray,
    dataset: str,
    split: str,
    float_images: torch.Tensor | None = None,
    source_index: np.ndarray | None = None,
) -> EvalSet:
    if float_images is not None:
        x = float_images[torch.from_numpy(pos)].contiguous().float()
    else:
        x = to_float_nchw(images_u8[pos])
    y = torch.from_numpy(np.asarray(labels)[pos].astype(np.int64))
    idx = (source_index[pos] if source_index is not None else pos).astype(np.int64)
    return EvalSet(images=x, labels=y, indices=idx, dataset=dataset, split=split)


def fashion_pairs(images: np.ndarray, labels: np.ndarray, split: str, left_only: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST split (uint8 NHWC, labels) -> pairs (uint8 N x 28 x 56 x 1, labels)."""
    right = np.random.default_rng(PAIR_SEEDS[split]).permutation(len(labels))
    pairs = np.concatenate([images, images[right]], axis=2)  # side by side along the width
    pair_labels = labels if left_only else 10 * labels + labels[right]
    return pairs, pair_labels.astype(np.int64)


def _fashion_pair_arrays(name: str, data_dir: Path, train: bool, download: bool
                         ) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _fashion_arrays(data_dir, train=train, download=download)
    return fashion_pairs(images, labels, "train" if train else "test", left_only=name.endswith("_left"))


# --------------------------------------------------------------------------------------------
# CIFAR
# --------------------------------------------------------------------------------------------


def _cifar_arrays(
    name: str, data_dir: Path, train: bool, download: bool
) -> tuple[np.ndarray, np.ndarray]:
    from torchvision import datasets

    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    url, folder = CIFAR_URLS[name]
    data_dir = Path(data_dir)
    split = "train" if train else "test"
    try:
        ds = cls(root=str(data_dir), train=train, download=False)
    except RuntimeError:
        ds = None
    if ds is None:
        how = f"download {url} and extract it into {data_dir} (it creates {data_dir / folder})"
        if not download:
            raise MarginbenchError(
                f"{name} {split} set not found in {data_dir / folder} and dataset.download=false; {how}"
            )
        if not host_reachable("www.cs.toronto.edu"):
            raise MarginbenchError(
                f"{name} {split} set not found in {data_dir / folder} and the download host is unreachable; {how}"
            )
        try:
            data_dir.mkdir(parents=True, exist_ok=True)
            ds = cls(root=str(data_dir), train=train, download=True)
        except Exception as exc:
            raise MarginbenchError(
                f"downloading {name} failed ({type(exc).__name__}); {how}"
            ) from None
    return np.asarray(ds.data, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files, decoded with numpy)
# --------------------------------------------------------------------------------------------


def read_idx(path: Path) -> np.ndarray:
    """Decode an IDX file (optionally gzipped): magic 0x0000 <dtype> <ndim>, big-endian dims."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as fh:
        raw = fh.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise MarginbenchError(f"{path} is not an IDX file; delete it and fetch the dataset again")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if raw[2] not in dtypes:
        raise MarginbenchError(f"{path} has an unknown IDX data type 0x{raw[2]:02x}")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(int)
    data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise MarginbenchError(
            f"{path} is truncated ({data.size} values for shape {tuple(dims)}); fetch it again"
        )
    return data.reshape(tuple(dims))


def _fashion_candidates(data_dir: Path) -> list[Path]:
    data_dir = Path(data_dir)
    return [
        data_dir / "FashionMNIST" / "raw",
        data_dir / "fashion-mnist",
        data_dir / "fashion_mnist",
        DEBIAN_FASHION_MNIST,
    ]


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_arrays(data_dir: Path, train: bool, download: bool) -> tuple[np.ndarray, np.ndarray]:
    img_stem, lab_stem = FASHION_FILES["train" if train else "test"]
    for folder in _fashion_candidates(data_dir):
        img, lab = _find_idx(folder, img_stem), _find_idx(folder, lab_stem)
        if img and lab:
            images, labels = read_idx(img), read_idx(lab)
            if images.ndim != 3 or labels.shape[0] != images.shape[0]:
                raise MarginbenchError(
                    f"Fashion-MNIST files in {folder} are inconsistent; fetch them again"
                )
            return images[..., None].astype(np.uint8), labels.astype(np.int64)
    where = (
        f"apt-get install dataset-fashion-mnist (puts the files in {DEBIAN_FASHION_MNIST}), or place "
        f"{img_stem}.gz and {lab_stem}.gz in {Path(data_dir) / 'fashion-mnist'}"
    )
    if not download:
        raise MarginbenchError(f"Fashion-MNIST not found and dataset.download=false; {where}")
    if not host_reachable(
        "fashion-mnist.s3-website.eu-central-1.amazonaws.com"
    ) and not host_reachable("ossci-datasets.s3.amazonaws.com"):
        raise MarginbenchError(
            f"Fashion-MNIST not found and the download host is unreachable; {where}"
        )
    try:
        from torchvision import datasets

        Path(data_dir).mkdir(parents=True, exist_ok=True)
        datasets.FashionMNIST(root=str(data_dir), train=train, download=True)
    except Exception as exc:
        raise MarginbenchError(
            f"downloading Fashion-MNIST failed ({type(exc).__name__}); {where}"
        ) from None
    return _fashion_arrays(data_dir, train, download=False)


# --------------------------------------------------------------------------------------------
# ImageNet (validation folder)
# --------------------------------------------------------------------------------------------


def _robustbench_imagenet_list() -> tuple[list[str], dict[str, int]] | None:
    try:
        from importlib import resources

        root = resources.files("robustbench") / "helper_files"
        ids = [
            line.strip()
            for line in (root / "imagenet_test_image_ids.txt").read_text().splitlines()
            if line.strip()
        ]
        mapping = json.loads((root / "imagenet_class_to_id_map.json").read_text())
        return ids, mapping
    except Exception:  # robustbench missing or changed: fall back to the folder itself
        return None


def _imagenet_samples(folder: Path) -> tuple[list[tuple[Path, int]], str]:
    """(path, label) in evaluation order, and how that order was chosen."""
    if not folder.is_dir():
        raise MarginbenchError(
            f"ImageNet validation folder {folder} not found; set dataset.path to a folder of <wnid>/<image>.JPEG"
        )
    listed = _robustbench_imagenet_list()
    if listed is not None:
        ids, mapping = listed
        samples = [
            (folder / rel, mapping[rel.split("/")[0]])
            for rel in ids
            if rel.split("/")[0] in mapping
        ]
        if samples and all(p.is_file() for p, _ in samples):
            return samples, "robustbench"
    from torchvision.datasets import ImageFolder

    try:
        ds = ImageFolder(str(folder))
    except (FileNotFoundError, RuntimeError) as exc:
        raise MarginbenchError(
            f"{folder} is not an ImageFolder layout ({exc}); use <folder>/<wnid>/<image>.JPEG"
        ) from None
    if len(ds.classes) != 1000:
        log.warning(
            "%s has %d class folders, not ImageNet's 1000; labels follow the sorted folder names",
            folder,
            len(ds.classes),
        )
    order = np.random.default_rng(IMAGENET_SEED).permutation(len(ds.samples))
    return [(Path(ds.samples[i][0]), int(ds.samples[i][1])) for i in order], "permutation"


def _load_imagenet(cfg: DatasetConfig, n_samples: int | None, indices: list[int] | None) -> EvalSet:
    if not cfg.path:
        raise MarginbenchError(
            "dataset=imagenet needs dataset.path=/path/to/imagenet/val (a folder of <wnid>/<image>.JPEG)"
        )
    from PIL import Image
    from torchvision import transforms

    samples, _how = _imagenet_samples(Path(cfg.path).expanduser())
    pos = _select(len(samples), n_samples, indices, "the ImageNet evaluation list")
    tf = transforms.Compose(
        [transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor()]
    )
    images = torch.empty((len(pos), 3, 224, 224), dtype=torch.float32)
    for k, i in enumerate(pos):
        path, _ = samples[i]
        with Image.open(path) as im:
            images[k] = tf(im.convert("RGB"))
    labels = np.asarray([samples[i][1] for i in pos], dtype=np.int64)
    return EvalSet(
        images=images,
        labels=torch.from_numpy(labels),
        indices=pos.astype(np.int64),
        dataset="imagenet",
        split="test",
    )


# --------------------------------------------------------------------------------------------
# npz
# --------------------------------------------------------------------------------------------


def _npz_arrays(
    path: Path, images_key: str, labels_key: str
) -> tuple[np.ndarray | None, torch.Tensor | None, np.ndarray]:
    """(uint8 NHWC or None, float NCHW tensor or None, labels) from an npz file, validated."""
    if not path.is_file():
        raise MarginbenchError(f"dataset.path={str(path)!r}: file not found")
    try:
        with np.load(path, allow_pickle=False) as npz:
            if images_key not in npz.files or labels_key not in npz.files:
                raise MarginbenchError(
                    f"{path} must hold arrays {images_key!r} and {labels_key!r}; it holds {sorted(npz.files)}"
                )
            images, labels = npz[images_key], npz[labels_key]
    except MarginbenchError:
        raise
    except Exception as exc:
        raise MarginbenchError(
            f"cannot read {path} as an .npz file ({type(exc).__name__}: {exc})"
        ) from None
    if images.ndim != 4:
        raise MarginbenchError(
            f"{path}: {images_key} has shape {images.shape}; expected 4 dimensions (N,H,W,C uint8 or N,C,H,W float)"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise MarginbenchError(
            f"{path}: {labels_key} has shape {labels.shape}; expected ({images.shape[0]},), one label per image"
        )
    if not np.issubdtype(labels.dtype, np.integer):
        raise MarginbenchError(f"{path}: {labels_key} has dtype {labels.dtype}; expected integers")
    if labels.size and labels.min() < 0:
        raise MarginbenchError(f"{path}: {labels_key} contains negative labels")
    if images.dtype == np.uint8:
        if images.shape[-1] not in (1, 3):
            raise MarginbenchError(
                f"{path}: uint8 {images_key} has shape {images.shape}; uint8 images must be N,H,W,C with 1 or 3 channels"
            )
        return images, None, labels.astype(np.int64)
    if np.issubdtype(images.dtype, np.floating):
        if images.shape[1] not in (1, 3):
            raise MarginbenchError(
                f"{path}: float {images_key} has shape {images.shape}; float images must be N,C,H,W with 1 or 3 channels"
            )
        if not np.all(np.isfinite(images)):
            raise MarginbenchError(f"{path}: {images_key} contains NaN or infinite values")
        lo, hi = float(images.min()), float(images.max())
        if lo < 0.0 or hi > 1.0:
            raise MarginbenchError(
                f"{path}: float {images_key} range [{lo:.3g}, {hi:.3g}] is outside [0,1]; scale pixels to [0,1] (no normalisation)"
            )
        return (
            None,
            torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)),
            labels.astype(np.int64),
        )
    raise MarginbenchError(
        f"{path}: {images_key} has dtype {images.dtype}; use uint8 (N,H,W,C) or float32 in [0,1] (N,C,H,W)"
    )


def _load_npz(
    cfg: DatasetConfig, train: bool = False
) -> tuple[np.ndarray | None, torch.Tensor | None, np.ndarray]:
    if not cfg.path:
        raise MarginbenchError(
            "dataset=npz needs dataset.path=/path/to/file.npz (arrays images, labels)"
        )
    path = Path(cfg.path).expanduser()
    if train:
        return _npz_arrays(path, "train_images", "train_labels")
    return _npz_arrays(path, "images", "labels")


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def _check_name(cfg: DatasetConfig) -> str:
    name = str(cfg.name)
    if name == "auto":
        raise MarginbenchError(
            "dataset.name=auto must be replaced by the model's dataset before loading (see dataset_for_model)"
        )
    if name not in DATASETS:
        raise MarginbenchError(f"dataset {name!r} is unknown; choose one of {', '.join(DATASETS)}")
    return name


def dataset_for_model(cfg: DatasetConfig, entry: Any) -> DatasetConfig:
    """``cfg`` with ``name=auto`` replaced by the dataset the model was trained on."""
    if cfg.name != "auto":
        return cfg
    if not getattr(entry, "dataset", None) or entry.dataset == "npz":
        raise MarginbenchError(
            "dataset=auto: the model does not say which dataset it expects; set dataset=<name>"
        )
    if isinstance(cfg, DatasetConfig):
        return replace(cfg, name=entry.dataset)
    return DatasetConfig(
        name=entry.dataset,
        path=getattr(cfg, "path", None),
        download=bool(getattr(cfg, "download", True)),
    )


def load_eval_set(
    cfg: DatasetConfig, data_dir: Path | str, n_samples: int | None, indices: list[int] | None
) -> EvalSet:
    """The test images to evaluate: first ``n_samples`` in test-set order, or ``indices``."""
    name = _check_name(cfg)
    data_dir = Path(data_dir)
    download = bool(getattr(cfg, "download", True))
    if name in ("cifar10", "cifar100"):
        images, labels = _cifar_arrays(name, data_dir, train=False, download=download)
        pos = _select(len(labels), n_samples, indices, f"the {name} test set")
        return _make(images, labels, pos, name, "test")
    if name == "fashion_mnist":
        images, labels = _fashion_arrays(data_dir, train=False, download=download)
        pos = _select(len(labels), n_samples, indices, "the Fashion-MNIST test set")
        return _make(images, labels, pos, name, "test")
    if name.startswith("fashion_mnist_pairs"):
        images, labels = _fashion_pair_arrays(name, data_dir, train=False, download=download)
        pos = _select(len(labels), n_samples, indices, f"the {name} test set")
        return _make(images, labels, pos, name, "test")
    if name == "imagenet":
        return _load_imagenet(cfg, n_samples, indices)
    u8, fl, labels = _load_npz(cfg)
    pos = _select(len(labels), n_samples, indices, f"{cfg.path}")
    return _make(u8, labels, pos, "npz", "test", float_images=fl)


def load_heldout_train(cfg: DatasetConfig, data_dir: Path | str, n: int, seed: int) -> EvalSet:
    """A seeded random subset of ``n`` training images (for the pseudo-margin learner)."""
    name = _check_name(cfg)
    data_dir = Path(data_dir)
    download = bool(getattr(cfg, "download", True))
    if int(n) <= 0:
        raise MarginbenchError(f"the held-out training set size must be positive, got {n}")
    if name in ("cifar10", "cifar100"):
        images, labels = _cifar_arrays(name, data_dir, train=True, download=download)
        u8, fl = images, None
    elif name == "fashion_mnist":
        u8, labels = _fashion_arrays(data_dir, train=True, download=download)
        fl = None
    elif name.startswith("fashion_mnist_pairs"):
        u8, labels = _fashion_pair_arrays(name, data_dir, train=True, download=download)
        fl = None
    elif name == "imagenet":
        raise MarginbenchError(
            "a held-out ImageNet training split is not supported; use dataset=npz with train_images/train_labels"
        )
    else:
        if not cfg.path:
            raise MarginbenchError("dataset=npz needs dataset.path=/path/to/file.npz")
        with np.load(Path(cfg.path).expanduser(), allow_pickle=False) as npz:
            has_train = "train_images" in npz.files and "train_labels" in npz.files
        if not has_train:
            raise MarginbenchError(
                f"{cfg.path} has no training split; the pseudo-margin needs held-out training images: "
                "add arrays train_images and train_labels to the npz, or use a dataset with a training split"
            )
        u8, fl, labels = _load_npz(cfg, train=True)
    n_total = len(labels)
    if n > n_total:
        raise MarginbenchError(
            f"asked for {n} held-out training images but the training split has only {n_total}"
        )
    pos = np.sort(
        np.random.default_rng(int(seed)).choice(n_total, size=int(n), replace=False)
    ).astype(np.int64)
    return _make(u8, labels, pos, name, "train", float_images=fl)


def check_compatible(
    eval_set: EvalSet, entry: Any, model: torch.nn.Module | None = None, device: Any = None
) -> None:
    """Fail early, with a clear message, when the data cannot be fed to the model.

    Checks the dataset name (a CIFAR-10 model on CIFAR-100 ...), the input shape the model's
    dataset implies (channels, size), the label range vs the number of classes, and, when
    ``model`` is given, the logits' shape on two images.
    """
    code = getattr(entry, "code", "the model")
    model_ds = getattr(entry, "dataset", "") or ""
    num_classes = int(getattr(entry, "num_classes", 0) or 0)
    data_ds = eval_set.dataset
    if model_ds in INPUT_SHAPES and data_ds in INPUT_SHAPES and model_ds != data_ds:
        raise MarginbenchError(
            f"{code} is a {model_ds} model but the data is {data_ds}; use dataset={model_ds} (or dataset=auto)"
        )
    shape = tuple(eval_set.images.shape[1:])
    expected = INPUT_SHAPES.get(model_ds)
    if expected is not None and shape[0] != expected[0]:
        raise MarginbenchError(
            f"{code} expects {expected[0]}-channel images ({model_ds}), the data has {shape[0]} channels (shape {shape})"
        )
    if expected is not None and model_ds != "imagenet" and shape[1:] != expected[1:]:
        raise MarginbenchError(
            f"{code} expects {expected[1]}x{expected[2]} images ({model_ds}), the data is {shape[1]}x{shape[2]}"
        )
    if num_classes and len(eval_set) and int(eval_set.labels.max()) >= num_classes:
        raise MarginbenchError(
            f"labels go up to {int(eval_set.labels.max())} but {code} has {num_classes} classes; wrong dataset?"
        )
    if model is not None and len(eval_set):
        dev = (
            torch.device(device)
            if device is not None
            else next((p.device for p in model.parameters()), torch.device("cpu"))
        )
        try:
            with torch.no_grad():
                out = model(eval_set.images[:2].to(dev))
        except Exception as exc:
            raise MarginbenchError(
                f"{code} cannot process images of shape {shape} ({type(exc).__name__}: {exc})"
            ) from None
        if (
            not isinstance(out, torch.Tensor)
            or out.dim() != 2
            or (num_classes and out.shape[1] != num_classes)
        ):
            raise MarginbenchError(
                f"{code} returns shape {tuple(getattr(out, 'shape', ()))} for 2 images; expected (2, {num_classes or 'classes'}) logits"
            )
