"""Dataset registry: every catalog name to a `Dataset` of uint8 NCHW arrays, with a decode cache.

Training feeds from whole uint8 arrays held on the device (see `loaders.py`), so every source (the
torchvision sets, JPEG/PNG trees and archives, scikit-learn's digits, generated patterns) ends up in
the same shape. Decoding tens of thousands of images costs seconds; the decoded arrays are cached as
an .npz keyed by the file's path, size and mtime. This module does not import torch at load time, so
the decode worker processes start fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import pickle
import sys
import tempfile
import zipfile
from collections.abc import Callable
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clrcore import catalog
from clrcore.archives import ArchiveError, iter_image_members

log = logging.getLogger(__name__)

CACHE_VERSION = 1
CACHE_FIELDS = {"train_images", "train_labels", "test_images", "test_labels", "classes", "mean", "std"}
CIFAR10_ARCHIVE = "cifar10-jpg.tar.gz"
DECODE_CHUNK = 2048
PARALLEL_MIN_IMAGES = 2048  # below this a process pool costs more than it saves
MAX_DECODED_BYTES = 32 * 2**30
MAX_IMAGE_PIXELS = 4096 * 4096
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, C, H, W)
    labels: np.ndarray  # int64, (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    name: str
    train: Split
    test: Split
    classes: list[str]
    mean: tuple[float, ...]  # per channel, on the 0..1 scale, computed on train
    std: tuple[float, ...]
    # the train split's mean image, float32 (C, H, W) on the 0..255 scale; computed on first use
    _pixel_mean: np.ndarray | None = field(default=None, repr=False, compare=False)

    def pixel_mean(self) -> np.ndarray:
        """The per-pixel mean of the training images, as the Keras CLR blog subtracts it.

        Computed once and kept: a second loader (range test, evaluation) for the same dataset reuses it.
        """
        if self._pixel_mean is None:
            self._pixel_mean = pixel_mean(self.train.images)
        return self._pixel_mean


class DatasetError(ValueError):
    """A dataset that cannot be loaded; the message says which dataset and file, and why."""

    def __init__(self, name: str, why: str | None = None) -> None:
        # DatasetError("cifar10", "why") is the usual form; a single argument is taken as the message.
        super().__init__(f"dataset {name!r}: {why}" if why is not None else name)
        self.dataset = name if why is not None else ""
        self.why = why if why is not None else name

    def __reduce__(self):  # so the error survives the trip back from a decode worker process
        return (DatasetError, (self.dataset, self.why))


# ---------------------------------------------------------------------------------------------
# Shared helpers


def channel_stats(images: np.ndarray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale, from exact integer sums taken in chunks.

    Integer sums need no float copy of the whole set and take well under a second for CIFAR-10.
    """
    n, channels = images.shape[:2]
    flat = images.reshape(n, channels, -1)
    total = np.zeros(channels, dtype=np.int64)
    squares = np.zeros(channels, dtype=np.int64)
    for start in range(0, n, chunk):
        block = flat[start:start + chunk].astype(np.int64)
        total += block.sum(axis=(0, 2))
        squares += np.einsum("ncp,ncp->c", block, block)
    count = max(n * flat.shape[2], 1)
    mean = total / count
    var = np.maximum(squares / count - mean**2, 0.0)
    return tuple(float(m / 255) for m in mean), tuple(float(max(v**0.5 / 255, 1e-6)) for v in var)


def pixel_mean(images: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Mean image (C, H, W) of uint8 NCHW `images`, float32 on the 0..255 scale.

    Summed in float64 chunks: no float copy of the whole set (600 MB for CIFAR-10 in float32).
    """
    total = np.zeros(images.shape[1:], dtype=np.float64)
    for start in range(0, len(images), chunk):
        total += images[start:start + chunk].sum(axis=0, dtype=np.float64)
    return (total / max(len(images), 1)).astype(np.float32)


def make_dataset(name: str, train: Split, test: Split, classes: list[str]) -> Dataset:
    """Build a `Dataset`, computing the normalisation statistics on the training split."""
    mean, std = channel_stats(train.images)
    return Dataset(name, train, test, list(classes), mean, std)


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
        "input_shape": [int(channels), int(height), int(width)],
        "train_count": len(dataset.train),
        "test_count": len(dataset.test),
        "train_counts": dict(zip(dataset.classes, train_counts, strict=True)),
        "test_counts": dict(zip(dataset.classes, test_counts, strict=True)),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
    }


# ---------------------------------------------------------------------------------------------
# Image decoding (runs in worker processes for big sets)


def _decode_one(where: str, data: bytes) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # read from the header: refuse a decompression bomb before decoding
            if width * height > MAX_IMAGE_PIXELS:
                raise DatasetError("imagefolder", f"{where}: {width}x{height} is over the "
                                   f"{MAX_IMAGE_PIXELS}-pixel limit for one image")
            image.load()
            if image.mode in GRAY_MODES:
                return np.asarray(image.convert("L"))
            return np.asarray(image.convert("RGB"))
    except UnidentifiedImageError:
        raise DatasetError("imagefolder", f"{where}: not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data in a known format
        raise DatasetError("imagefolder", f"{where}: not a readable image ({err})") from None


def _decode_chunk(items: list[tuple[str, bytes]]) -> list[np.ndarray]:
    """Decode one chunk to HxW (grayscale) or HxWx3 arrays; module-level so worker processes can run it."""
    return [_decode_one(where, data) for where, data in items]


def decode_workers(workers: int | None) -> int:
    """Decode processes to use: as asked, else the CPU count capped at 8 (reading is the other limit)."""
    return workers if workers is not None else min(os.cpu_count() or 1, 8)


def _decode_pool(workers: int) -> Executor | None:
    if workers <= 1:
        return None
    try:
        # fork starts fastest and does not re-import the caller's main module; a parent that has
        # initialised CUDA must not be forked, so then the slower forkserver is used.
        torch = sys.modules.get("torch")
        cuda_live = torch is not None and torch.cuda.is_initialized()
        context = multiprocessing.get_context("forkserver" if cuda_live else "fork")
        return ProcessPoolExecutor(max_workers=workers, mp_context=context)
    except (OSError, ValueError, AssertionError) as err:  # e.g. a daemonic parent
        log.warning("decoding in-process: no worker pool (%s)", err)
        return None


# ---------------------------------------------------------------------------------------------
# imagefolder: a tree or archive laid out split/class/image


def _read_tree(name: str, path: Path, workers: int | None) -> dict[str, dict[str, list[list]]]:
    """Read every member, decoding in chunks (in worker processes for big sets) while reading goes on.

    Returns {split: {class: [[file name, HxW or HxWx3 uint8 array], ...]}}. Decoded bytes are
    counted as chunks finish, so an archive that would not fit in memory fails early.
    """
    workers = decode_workers(workers)
    tree: dict[str, dict[str, list[list]]] = {}
    pending: list[tuple[str, bytes]] = []
    slots: list[list] = []
    chunks: list[tuple[Future | list[np.ndarray], list[list]]] = []
    pool: Executor | None = None
    pool_tried = False
    decoded = 0
    submitted = 0

    def collect(keep: int) -> None:
        """Resolve finished-or-oldest chunks until at most `keep` are outstanding."""
        nonlocal decoded
        while len(chunks) > keep:
            result, entries = chunks.pop(0)
            arrays = result.result() if isinstance(result, Future) else result
            for entry, array in zip(entries, arrays, strict=True):
                entry[1] = array
                decoded += array.nbytes
            if decoded > MAX_DECODED_BYTES:
                raise DatasetError(name, f"more than {MAX_DECODED_BYTES >> 30} GiB of decoded images")

    def flush() -> None:
        nonlocal pending, slots, pool, pool_tried, submitted
        if not pending:
            return
        submitted += len(pending)
        if not pool_tried and submitted >= PARALLEL_MIN_IMAGES:
            pool, pool_tried = _decode_pool(workers), True
        result: Future | list[np.ndarray] | None = None
        if pool is not None:
            try:
                result = pool.submit(_decode_chunk, pending)
            except (OSError, RuntimeError, AssertionError) as err:  # the pool could not start workers
                log.warning("decoding in-process: worker pool failed (%s)", err)
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
        if result is None:
            result = _decode_chunk(pending)
        chunks.append((result, slots))
        pending, slots = [], []
        collect(keep=2 * workers if pool is not None else 0)

    try:
        for split, cls, file_name, data in iter_image_members(path):
            entry = [file_name, None]
            tree.setdefault(split, {}).setdefault(cls, []).append(entry)
            pending.append((f"{split}/{cls}/{file_name}", data))
            slots.append(entry)
            if len(pending) >= DECODE_CHUNK:
                flush()
        flush()
        collect(keep=0)
    except ArchiveError as err:
        raise DatasetError(name, f"{path.name}: {err}") from err
    except DatasetError as err:
        raise DatasetError(name, f"{path.name}: {err.why}") from err
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return tree


def _pick_splits(name: str, path: Path, tree: dict) -> tuple[dict, dict]:
    if not tree:
        raise DatasetError(name, f"{path.name}: no images laid out split/class/image")
    if "train" not in tree:
        raise DatasetError(name, f"{path.name}: no 'train' split (found: {', '.join(sorted(tree))})")
    held_out = "test" if "test" in tree else "val" if "val" in tree else None
    if held_out is None:
        raise DatasetError(name, f"{path.name}: no 'test' or 'val' split next to 'train'")
    return tree["train"], tree[held_out]


def _stack_split(name: str, path: Path, split_name: str, by_class: dict, classes: list[str],
                 size: tuple[int, int], gray: bool) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    entries = [(cls, file_name, array) for cls in sorted(by_class, key=index.__getitem__)
               for file_name, array in sorted(by_class[cls], key=lambda entry: entry[0])]
    images = np.empty((len(entries), 1 if gray else 3, *size), dtype=np.uint8)
    labels = np.empty(len(entries), dtype=np.int64)
    for i, (cls, file_name, array) in enumerate(entries):
        if array.shape[:2] != size:
            raise DatasetError(name, f"{path.name}: {split_name}/{cls}/{file_name} is "
                               f"{array.shape[1]}x{array.shape[0]}, the others {size[1]}x{size[0]}; "
                               "all images must be one size")
        images[i] = array if array.ndim == 2 else array.transpose(2, 0, 1)
        labels[i] = index[cls]
    return Split(images, labels)


def _imagefolder_arrays(name: str, path: Path, classes: list[str] | None, workers: int | None) -> dict:
    tree = _read_tree(name, path, workers)
    train, test = _pick_splits(name, path, tree)
    if classes is None:
        classes = sorted(train)
    elif set(train) != set(classes):
        raise DatasetError(name, f"{path.name}: train classes {sorted(train)} are not {classes}")
    if len(classes) < 2:
        raise DatasetError(name, f"{path.name}: needs at least 2 classes in train, found {len(classes)}")
    missing = [c for c in classes if c not in test]
    if missing:
        raise DatasetError(name, f"{path.name}: class {missing[0]!r} is in train but not in the test split")
    extra = [c for c in test if c not in classes]
    if extra:
        raise DatasetError(name, f"{path.name}: class {extra[0]!r} is in the test split but not in train")
    gray = all(a.ndim == 2 for split in (train, test) for entries in split.values() for _, a in entries)
    first = next(a for entries in train.values() for _, a in entries)
    size = first.shape[:2]
    train_split = _stack_split(name, path, "train", train, classes, size, gray)
    test_split = _stack_split(name, path, "test", test, classes, size, gray)
    return {
        "train_images": train_split.images, "train_labels": train_split.labels,
        "test_images": test_split.images, "test_labels": test_split.labels,
        "classes": np.asarray(classes),
    }


# ---------------------------------------------------------------------------------------------
# Decode cache


def cache_key(name: str, path: Path) -> str:
    """sha256 of the source's identity (path, size, mtime; every file's for a directory), not its bytes.

    Hashing 20 MB of archive on every load would cost more than reading the cache.
    """
    path = path.resolve()
    if path.is_dir():
        stats = sorted(
            (str(p.relative_to(path)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in path.rglob("*")
        )
    else:
        info = path.stat()
        stats = [(info.st_size, info.st_mtime_ns)]
    identity = json.dumps([CACHE_VERSION, name, str(path), stats])
    return hashlib.sha256(identity.encode()).hexdigest()


def _cache_stem(name: str, path: Path) -> str:
    """Names the source (not its version), so older caches of the same file can be found and removed."""
    return f"{name}-{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"


def _prune_cache(current: Path) -> None:
    stem = current.name.rsplit("-", 1)[0]
    for old in current.parent.glob(f"{stem}-*.npz"):
        if old != current:
            old.unlink(missing_ok=True)
            log.info("removed stale decode cache %s", old.name)


def _read_cache(file: Path) -> dict | None:
    try:
        with np.load(file, allow_pickle=False) as cached:
            return {key: cached[key] for key in cached.files}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as err:
        log.warning("ignoring unreadable decode cache %s: %s", file, err)
        return None


def _write_cache(file: Path, arrays: dict) -> None:
    """Write atomically: a uniquely named temp file in the same folder, then os.replace."""
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=file.stem + ".", suffix=".tmp", dir=file.parent)
    except OSError as err:
        log.warning("not caching decoded images in %s: %s", file.parent, err)
        return
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, **arrays)
        os.replace(temp, file)
    except OSError as err:
        log.warning("not caching decoded images in %s: %s", file.parent, err)
        Path(temp).unlink(missing_ok=True)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def load_image_tree(
    path: Path,
    *,
    name: str = "imagefolder",
    classes: list[str] | None = None,
    cache_dir: Path | None = None,
    workers: int | None = None,
) -> Dataset:
    """Load a directory or archive laid out split/class/image (train plus test or val), cached.

    `classes` fixes the label order (and requires exactly those classes); by default it is the sorted
    folder names. `workers` is the number of decode processes (default: CPU count, at most 8).
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(name, f"{path}: no such file or directory")
    cache_file = None
    arrays = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"{_cache_stem(name, path)}-{cache_key(name, path)[:24]}.npz"
        arrays = _read_cache(cache_file)
        if arrays is not None and not arrays.keys() >= CACHE_FIELDS:
            log.warning("ignoring incomplete decode cache %s", cache_file)
            arrays = None
    if arrays is None:
        arrays = _imagefolder_arrays(name, path, classes, workers)
        arrays.update(zip(("mean", "std"), map(np.asarray, channel_stats(arrays["train_images"])),
                          strict=True))
        if cache_file is not None:
            _write_cache(cache_file, arrays)
            _prune_cache(cache_file)
    return Dataset(
        name,
        Split(arrays["train_images"], arrays["train_labels"]),
        Split(arrays["test_images"], arrays["test_labels"]),
        [str(c) for c in arrays["classes"]],
        tuple(float(m) for m in arrays["mean"]),
        tuple(float(s) for s in arrays["std"]),
    )


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


def _load_cifar10(data_dir: Path, path: str | None, download: bool, cache_dir: Path | None) -> Dataset:
    archive = _resolve(data_dir, path) or Path(data_dir) / CIFAR10_ARCHIVE
    if path is not None or archive.exists():
        return load_image_tree(archive, name="cifar10", classes=list(catalog.CIFAR10_CLASSES),
                               cache_dir=cache_dir)
    return _load_torchvision("cifar10", Path(data_dir), download, f", or put {CIFAR10_ARCHIVE} in {data_dir}")


def _load_imagefolder(data_dir: Path, path: str | None, cache_dir: Path | None) -> Dataset:
    if path is None:
        raise DatasetError("imagefolder", "needs a path: a directory or archive laid out split/class/image")
    return load_image_tree(_resolve(data_dir, path), cache_dir=cache_dir)


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


Loader = Callable[[Path, str | None, bool, Path | None], Dataset]

LOADERS: dict[str, Loader] = {
    "digits": lambda data_dir, path, download, cache_dir: load_digits_dataset(),
    "synthetic": lambda data_dir, path, download, cache_dir: synthetic_dataset(),
    "cifar10": lambda data_dir, path, download, cache_dir: _load_cifar10(data_dir, path, download, cache_dir),
    "fashion_mnist": lambda data_dir, path, download, cache_dir: _load_torchvision(
        "fashion_mnist", data_dir, download),
    "mnist": lambda data_dir, path, download, cache_dir: _load_torchvision("mnist", data_dir, download),
    "imagefolder": lambda data_dir, path, download, cache_dir: _load_imagefolder(data_dir, path, cache_dir),
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
) -> Dataset:
    """Load a catalog dataset as uint8 NCHW arrays with int64 labels and train-set statistics.

    `path` (relative to `data_dir`, or absolute) names the tree or archive for `imagefolder`, or the
    JPEG archive for `cifar10`. Decoded images are cached under `cache_dir` (default data_dir/.cache).
    """
    if name not in LOADERS:
        raise DatasetError(name, f"unknown dataset; known: {', '.join(dataset_names())}")
    data_dir = Path(data_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else data_dir / ".cache"
    dataset = LOADERS[name](data_dir, path, download, cache_dir)
    log.info("dataset %s: %d train, %d test, shape %s", name, len(dataset.train), len(dataset.test),
             tuple(dataset.train.images.shape[1:]))
    return dataset

