"""Dataset registry: every catalog name to a `Dataset` of uint8 NCHW arrays.

Training feeds from whole uint8 arrays held on the device (see `loaders.py`), so every source (the
torchvision sets, JPEG/PNG trees and archives, scikit-learn's digits, generated patterns) ends up in
the same shape. Trees and archives are decoded (in parallel, with a decode cache) by `image_tree.py`.
This module does not import torch at load time, so the decode worker processes start fast.
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable
from pathlib import Path

import numpy as np

from clrcore import catalog
from clrcore.dataset_types import Dataset, DatasetError, Split, channel_stats, make_dataset, pixel_mean
from clrcore.net import DOWNLOAD_READ_TIMEOUT_S, read_timeout

__all__ = ["Dataset", "DatasetError", "Split", "channel_stats", "make_dataset", "pixel_mean"]  # and below
from clrcore.cache_names import CACHE_DIR_NAME

log = logging.getLogger(__name__)

CIFAR10_ARCHIVE = "cifar10-jpg.tar.gz"


def sample(split: Split, count: int, seed: int = 0) -> Split:
    """`count` images drawn at random without replacement (the same ones for a given seed).

    Not the first `count`: image folders load class by class, so a prefix would hold one or two classes.
    """
    if count >= len(split.labels):
        return split
    index = np.sort(np.random.default_rng(seed).permutation(len(split.labels))[:count])
    return Split(split.images[index], split.labels[index], split.crop)


def with_train_subset(dataset: Dataset, count: int | None) -> Dataset:
    """The dataset with `count` training images drawn by `sample` (unchanged for None or too many);
    normalisation statistics are recomputed on the subset, as training on it would see them."""
    if not count or count >= len(dataset.train.labels):
        return dataset
    subset = make_dataset(dataset.name, sample(dataset.train, count), dataset.test, dataset.classes)
    subset.source_info = dataset.source_info
    return subset


def dataset_info(dataset: Dataset) -> dict:
    """A JSON-ready summary (classes, counts, image size, channels) for the API and upload checks."""
    _, channels, height, width = dataset.train.images.shape
    k = len(dataset.classes)
    train_counts = np.bincount(dataset.train.labels, minlength=k).tolist()
    test_counts = np.bincount(dataset.test.labels, minlength=k).tolist()
    return {
        "name": dataset.name,
        "classes": list(dataset.classes),
        "num_classes": k,
        "channels": int(channels),
        "height": int(height),
        "width": int(width),
        "image_size": int(height) if height == width else None,
        "input_shape": [int(channels), dataset.train.input_size, dataset.train.input_size]
        if dataset.train.crop else [int(channels), int(height), int(width)],
        **dataset.source_info,
        "train_count": len(dataset.train),
        "test_count": len(dataset.test),
        "train_counts": dict(zip(dataset.classes, train_counts, strict=True)),
        "test_counts": dict(zip(dataset.classes, test_counts, strict=True)),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
    }


# ---------------------------------------------------------------------------------------------
# Builders, one per catalog name


# What torchvision raises on files it cannot read: a short idx file fails int() or a reshape, a
# CIFAR batch fails its checksum ("not found or corrupted") or unpickling, a cut file hits EOF.
TORCHVISION_LOAD_ERRORS = (ValueError, OSError, EOFError, pickle.UnpicklingError, RuntimeError)


def _holds_files(root: Path) -> bool:
    return root.is_dir() and next((p for p in root.rglob("*") if p.is_file()), None) is not None


def _torchvision_split(name: str, data_dir: Path, download: bool, train: bool, hint: str = ""):
    import torchvision

    cls = {"cifar10": torchvision.datasets.CIFAR10, "mnist": torchvision.datasets.MNIST,
           "fashion_mnist": torchvision.datasets.FashionMNIST}[name]
    root = data_dir / name
    try:
        return cls(str(root), train=train, download=False)
    except TORCHVISION_LOAD_ERRORS as err:
        if not download:
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if _holds_files(root):  # torchvision says "not found" for a failed checksum too
                raise DatasetError(name, f"files under {root} are corrupt or incomplete: {reason}") from err
            raise DatasetError(name, f"not found under {root}; pass download=True (needs internet), put "
                               f"torchvision's files there{hint} ({err})") from err
    try:
        with read_timeout(DOWNLOAD_READ_TIMEOUT_S):  # torchvision's urllib calls pass no timeout
            return cls(str(root), train=train, download=True)
    except Exception as err:  # noqa: BLE001 - network and archive failures of every kind
        raise DatasetError(name, f"download into {root} failed: {err}") from err


def _load_torchvision(name: str, data_dir: Path, download: bool, hint: str = "") -> Dataset:
    splits = []
    for train in (True, False):
        source = _torchvision_split(name, data_dir, download, train, hint)
        images = np.asarray(source.data)
        images = images.transpose(0, 3, 1, 2) if images.ndim == 4 else images[:, None]
        splits.append(Split(np.ascontiguousarray(images, dtype=np.uint8),
                            np.asarray(source.targets, dtype=np.int64)))
    return make_dataset(name, splits[0], splits[1], list(catalog.DATASETS[name].classes))


def _resolve(data_dir: Path, path: str | None) -> Path | None:
    return None if path is None else Path(data_dir) / path


def _load_cifar10(data_dir: Path, path: str | None, download: bool, cache_dir: Path | None,
                  max_decoded: int | None = None, image_size: int | None = None) -> Dataset:
    from clrcore.image_tree import load_image_tree  # imported here: it loads PIL, which few sets need

    archive = _resolve(data_dir, path) or Path(data_dir) / CIFAR10_ARCHIVE
    if path is not None or archive.exists():
        return load_image_tree(archive, name="cifar10", classes=list(catalog.CIFAR10_CLASSES),
                               cache_dir=cache_dir, max_decoded_bytes=max_decoded, image_size=image_size)
    return _load_torchvision("cifar10", Path(data_dir), download, f", or put {CIFAR10_ARCHIVE} in {data_dir}")


def _load_imagefolder(data_dir: Path, path: str | None, cache_dir: Path | None,
                      max_decoded: int | None = None, image_size: int | None = None,
                      memmap_min_bytes: int | None = None) -> Dataset:
    from clrcore.image_tree import load_image_tree

    if path is None:
        raise DatasetError("imagefolder", "needs a path: a directory or archive laid out split/class/image")
    root = _resolve(data_dir, path)
    if root is None:
        raise DatasetError("imagefolder", "needs dataset_path (a directory or archive)")
    return load_image_tree(root, cache_dir=cache_dir, max_decoded_bytes=max_decoded, image_size=image_size,
                           memmap_min_bytes=memmap_min_bytes)


def load_digits_dataset() -> Dataset:
    """scikit-learn's 1,797 bundled 8x8 digits as 16x16 uint8 (nearest upsampling), split 80/20 by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    images = images.repeat(2, axis=1).repeat(2, axis=2)[:, None]
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, random_state=0, stratify=labels
    )
    return make_dataset("digits", Split(x_train, y_train), Split(x_test, y_test),
                        list(catalog.DIGIT_CLASSES))


def synthetic_dataset(
    n_train: int = 512,
    n_test: int = 256,
    num_classes: int = 10,
    image_size: int = 32,
    channels: int = 3,
    *,
    noise: float = 0.25,
    seed: int = 0,
) -> Dataset:
    """Class-dependent gratings (orientation and colour per class) plus noise: learnable in seconds.

    For tests and smoke runs that must not touch the disk or the network.
    """
    rng = np.random.default_rng(seed)
    grid = np.arange(image_size) / image_size
    yy, xx = np.meshgrid(grid, grid, indexing="ij")
    angles = np.pi * np.arange(num_classes) / num_classes
    freqs = 2.0 + np.arange(num_classes) % 3
    colour = rng.uniform(0, 2 * np.pi, size=(num_classes, channels))

    def make(n: int) -> Split:
        labels = np.arange(n, dtype=np.int64) % num_classes
        rng.shuffle(labels)
        phase = rng.uniform(0, 0.5, size=(n, 1, 1, 1))
        proj = (xx * np.cos(angles[labels])[:, None, None] + yy * np.sin(angles[labels])[:, None, None])
        waves = np.sin(2 * np.pi * (freqs[labels][:, None, None, None] * proj[:, None] + phase)
                       + colour[labels][:, :, None, None])
        pixels = 0.5 + 0.35 * waves + noise * rng.standard_normal(waves.shape)
        return Split(np.clip(pixels * 255, 0, 255).astype(np.uint8), labels)

    classes = [f"class{i}" for i in range(num_classes)]
    return make_dataset("synthetic", make(n_train), make(n_test), classes)


Loader = Callable[[Path, str | None, bool, Path | None, int | None], Dataset]

LOADERS: dict[str, Loader] = {
    "digits": lambda data_dir, path, download, cache_dir, max_decoded: load_digits_dataset(),
    "synthetic": lambda data_dir, path, download, cache_dir, max_decoded: synthetic_dataset(),
    "cifar10": lambda data_dir, path, download, cache_dir, max_decoded: _load_cifar10(
        data_dir, path, download, cache_dir, max_decoded),
    "fashion_mnist": lambda data_dir, path, download, cache_dir, max_decoded: _load_torchvision(
        "fashion_mnist", data_dir, download),
    "mnist": lambda data_dir, path, download, cache_dir, max_decoded: _load_torchvision("mnist", data_dir, download),
    "imagefolder": lambda data_dir, path, download, cache_dir, max_decoded: _load_imagefolder(
        data_dir, path, cache_dir, max_decoded),
}


def dataset_names() -> list[str]:
    return sorted(LOADERS)


def load_dataset(
    name: str,
    data_dir: Path,
    *,
    path: str | None = None,
    download: bool = False,
    cache_dir: Path | None = None,
    max_decoded_bytes: int | None = None,
    image_size: int | None = None,
    memmap_min_bytes: int | None = None,
) -> Dataset:
    """Load a catalog dataset as uint8 NCHW arrays with int64 labels and train-set statistics.

    `image_size` trains at that side: image trees are decoded to it (see `image_tree.load_image_tree`),
    in-memory sets are resized to it (`transforms.resize_dataset`); None keeps a uniform set's own size.

    `path` (relative to `data_dir`, or absolute) names the tree or archive for `imagefolder`, or the
    JPEG archive for `cifar10`. Decoded images are cached under `cache_dir` (default data_dir/.cache).
    `max_decoded_bytes` caps a tree's decoded pixels (default: `image_tree.MAX_DECODED_BYTES`); a
    worker sets it to what its memory holds. `memmap_min_bytes`: an `imagefolder` whose decoded pixels
    reach it is streamed to memmapped files and read a batch at a time (image_stream.py); None: never.
    """
    if name not in LOADERS:
        raise DatasetError(name, f"unknown dataset; known: {', '.join(dataset_names())}")
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir / CACHE_DIR_NAME
    if name == "imagefolder":
        dataset = _load_imagefolder(data_dir, path, cache_dir, max_decoded_bytes, image_size, memmap_min_bytes)
    elif image_size is not None and name == "cifar10" and (path is not None or (data_dir / CIFAR10_ARCHIVE).exists()):
        dataset = _load_cifar10(data_dir, path, download, cache_dir, max_decoded_bytes, image_size)
    else:
        dataset = LOADERS[name](data_dir, path, download, cache_dir, max_decoded_bytes)
    if image_size is not None and dataset.train.input_size != image_size:
        from clrcore.transforms import resize_dataset

        dataset = resize_dataset(dataset, image_size)
    log.info("dataset %s: %d train, %d test, shape %s", name, len(dataset.train), len(dataset.test),
             tuple(dataset.train.images.shape[1:]))
    return dataset

