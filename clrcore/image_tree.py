"""Image trees and archives laid out split/class/image, decoded to a `Dataset`, with a decode cache.

Decoding tens of thousands of JPEGs or PNGs costs seconds, so big sets are decoded in chunks by a pool
of worker processes while reading goes on, and the decoded arrays are cached as an .npz keyed by the
source's path, size and mtime. This module does not import torch at load time, so the decode worker
processes start fast.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import multiprocessing
import os
import sys
import tempfile
import zipfile
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clrcore.archives import ArchiveError, iter_image_members
from clrcore.cache_names import cache_stem as _cache_stem
from clrcore.dataset_types import Dataset, DatasetError, Split, channel_stats
from clrcore.image_stream import MEMMAP_ARRAYS, Decoder, decoded_bytes, scan_tree, stream_arrays
from clrcore.transforms import default_image_size, resize_shorter_and_centre_crop, size_distribution, stored_size

log = logging.getLogger(__name__)

CACHE_VERSION = 2
CACHE_FIELDS = {"train_images", "train_labels", "test_images", "test_labels", "classes", "mean", "std",
                "source_sizes", "gray_converted", "crop"}
DECODE_CHUNK = 2048
PARALLEL_MIN_IMAGES = 2048  # below this a process pool costs more than it saves
MAX_DECODED_BYTES = 4 * 2**30  # default; a worker passes CLR_MAX_DECODED_BYTES, sized to its memory
MAX_IMAGE_PIXELS = 4096 * 4096
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


# ---------------------------------------------------------------------------------------------
# Image decoding (runs in worker processes for big sets)


# Mixed-size photos are shrunk while decoding so a tree of 12-megapixel photos never sits in memory at
# full size; the final resize to the training size happens once the size distribution is known.
KEEP_SHORTER_SIDE = stored_size(224)


def _shrink(image: Image.Image, keep: int) -> Image.Image:
    if min(image.size) <= keep:
        return image
    return resize_shorter_and_centre_crop(image, keep) if keep else image


def _decode_one(where: str, data: bytes, keep: int = 0) -> tuple[np.ndarray, tuple[int, int]]:
    """HxW or HxWx3 uint8 and the image's own (width, height); larger ones shrunk to `keep` if given."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size  # read from the header: refuse a decompression bomb before decoding
            if width * height > MAX_IMAGE_PIXELS:
                raise DatasetError("imagefolder", f"{where}: {width}x{height} is over the "
                                   f"{MAX_IMAGE_PIXELS}-pixel limit for one image")
            image.load()
            converted = image.convert("L" if image.mode in GRAY_MODES else "RGB")
            return np.asarray(_shrink(converted, keep)), (width, height)
    except UnidentifiedImageError:
        raise DatasetError("imagefolder", f"{where}: not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as err:  # truncated or corrupt data in a known format
        raise DatasetError("imagefolder", f"{where}: not a readable image ({err})") from None


def _decode_chunk(items: list[tuple[str, bytes]], keep: int = 0) -> list[tuple[np.ndarray, tuple[int, int]]]:
    """Decode one chunk to HxW (grayscale) or HxWx3 arrays; module-level so worker processes can run it."""
    return [_decode_one(where, data, keep) for where, data in items]


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


class _StreamInstead(Exception):
    """The in-memory decode reached the streaming threshold: the set is decoded to disk instead."""


def _read_tree(name: str, path: Path, workers: int | None, keep: int = 0,
               max_decoded_bytes: int = MAX_DECODED_BYTES,
               stream_at: int | None = None) -> dict[str, dict[str, list[list]]]:
    """Read every member, decoding in chunks (in worker processes for big sets) while reading goes on.

    Returns {split: {class: [[file name, HxW or HxWx3 uint8 array, (width, height)], ...]}}. Images
    with a shorter side over `keep` (when not 0) are shrunk to it while decoding. Decoded bytes are
    counted as chunks finish, so an archive that would not fit in memory fails early, or, once they
    reach `stream_at` (streaming on), stops with `_StreamInstead`.
    """
    workers = decode_workers(workers)
    tree: dict[str, dict[str, list[list]]] = {}
    pending: list[tuple[str, bytes]] = []
    slots: list[list] = []
    chunks: list[tuple[Future | list[tuple[np.ndarray, tuple[int, int]]], list[list]]] = []
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
            for entry, (array, source_size) in zip(entries, arrays, strict=True):
                entry[1], entry[2] = array, source_size
                decoded += array.nbytes
            if stream_at is not None and decoded >= stream_at:
                raise _StreamInstead()
            if decoded > max_decoded_bytes:
                raise DatasetError(name, f"more than {max_decoded_bytes} bytes of decoded images "
                                   "(CLR_MAX_DECODED_BYTES)")

    def flush() -> None:
        nonlocal pending, slots, pool, pool_tried, submitted
        if not pending:
            return
        submitted += len(pending)
        if not pool_tried and submitted >= PARALLEL_MIN_IMAGES:
            pool, pool_tried = _decode_pool(workers), True
        result: Future | list[tuple[np.ndarray, tuple[int, int]]] | None = None
        if pool is not None:
            try:
                result = pool.submit(_decode_chunk, pending, keep)
            except (OSError, RuntimeError, AssertionError) as err:  # the pool could not start workers
                log.warning("decoding in-process: worker pool failed (%s)", err)
                pool.shutdown(wait=False, cancel_futures=True)
                pool = None
        if result is None:
            result = _decode_chunk(pending, keep)
        chunks.append((result, slots))
        pending, slots = [], []
        collect(keep=2 * workers if pool is not None else 0)

    try:
        for split, cls, file_name, data in iter_image_members(path):
            entry = [file_name, None, None]
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


def _check_classes(name: str, path: Path, train: dict, test: dict, classes: list[str] | None) -> list[str]:
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
    return classes


def _stack_split(name: str, path: Path, split_name: str, by_class: dict, classes: list[str],
                 size: tuple[int, int], gray: bool) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    entries = [(cls, file_name, array) for cls in sorted(by_class, key=index.__getitem__)
               for file_name, array, _ in sorted(by_class[cls], key=lambda entry: entry[0])]
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


def _fit_sizes(tree: dict, image_size: int | None) -> int | None:
    """Resize every image to the stored square for training at `image_size` (or a size fitted to the
    data) when the sizes are mixed or a size was asked for; None (nothing done) for a uniform set
    trained at its own size. Returns the training (crop) size."""
    entries = [entry for split in tree.values() for by_class in split.values() for entry in by_class]
    sizes = {entry[2] for entry in entries}
    if image_size is None and len(sizes) == 1:
        return None
    crop = image_size or default_image_size([entry[2] for entry in entries])
    side = stored_size(crop)
    for entry in entries:
        array = entry[1]
        if array.shape[:2] != (side, side):
            image = Image.fromarray(array)
            entry[1] = np.asarray(resize_shorter_and_centre_crop(image, side))
    return crop


def _imagefolder_arrays(name: str, path: Path, classes: list[str] | None, workers: int | None,
                        image_size: int | None = None, max_decoded_bytes: int = MAX_DECODED_BYTES,
                        stream_at: int | None = None) -> dict:
    keep = stored_size(image_size) if image_size else KEEP_SHORTER_SIDE
    tree = _read_tree(name, path, workers, keep, max_decoded_bytes, stream_at)
    train, test = _pick_splits(name, path, tree)
    classes = _check_classes(name, path, train, test, classes)
    source_sizes = [e[2] for split in (train, test) for entries in split.values() for e in entries]
    # sizes of the files themselves (before any shrinking while decoding) decide uniform or mixed
    crop = _fit_sizes({"train": train, "test": test}, image_size)
    arrays_2d = [e[1].ndim == 2 for split in (train, test) for entries in split.values() for e in entries]
    gray = all(arrays_2d)
    first = next(e[1] for entries in train.values() for e in entries)
    size = first.shape[:2]
    train_split = _stack_split(name, path, "train", train, classes, size, gray)
    test_split = _stack_split(name, path, "test", test, classes, size, gray)
    return {
        "train_images": train_split.images, "train_labels": train_split.labels,
        "test_images": test_split.images, "test_labels": test_split.labels,
        "classes": np.asarray(classes),
        "source_sizes": np.asarray(source_sizes, dtype=np.int32).reshape(-1, 2),
        # grayscale images stacked into an RGB set (their one channel repeated three times)
        "gray_converted": np.asarray(0 if gray else sum(arrays_2d)),
        "crop": np.asarray(crop or 0),
    }


# ---------------------------------------------------------------------------------------------
# Decode cache


def cache_key(name: str, path: Path, image_size: int | None = None) -> str:
    """sha256 of the source's identity (path, size, mtime; every file's for a directory), not its bytes.

    Hashing 20 MB of archive on every load would cost more than reading the cache.
    """
    path = path.resolve()
    if path.is_dir():
        stats: list[tuple[object, ...]] = sorted(
            (str(p.relative_to(path)), p.lstat().st_size, p.lstat().st_mtime_ns) for p in path.rglob("*")
        )
    else:
        info = path.stat()
        stats = [(info.st_size, info.st_mtime_ns)]
    identity = json.dumps([CACHE_VERSION, name, str(path), stats, image_size])
    return hashlib.sha256(identity.encode()).hexdigest()


def _prune_cache(current: Path) -> None:
    """Remove older caches of the same source at the same training size (other sizes stay useful)."""
    stem = current.name.rsplit("-", 1)[0]
    olds = [*current.parent.glob(f"{stem}-*.npz"), *current.parent.glob(f"{stem}-*.npy")]
    for old in olds:
        if old.name.split(".", 1)[0] != current.stem and old.name.rsplit("-", 1)[0] == stem:
            old.unlink(missing_ok=True)
            log.info("removed stale decode cache %s", old.name)


def memmap_files(cache_file: Path) -> dict[str, Path]:
    """The .npy files of a streamed cache (image_stream), next to its .npz of small arrays."""
    return {key: cache_file.with_name(f"{cache_file.stem}.{key}.npy") for key in MEMMAP_ARRAYS}


def _read_cache(file: Path) -> dict | None:
    """The cache's arrays; a streamed cache's images opened with mmap_mode="r" (read a batch at a time)."""
    try:
        with np.load(file, allow_pickle=False) as cached:
            arrays = {key: cached[key] for key in cached.files}
        if "memmap" in arrays:
            for key, npy in memmap_files(file).items():
                arrays[key] = np.load(npy, mmap_mode="r", allow_pickle=False)
        return arrays
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


def _in_memory_arrays(name: str, path: Path, classes: list[str] | None, workers: int | None,
                      image_size: int | None, cap: int, stream_at: int | None, cache_file: Path | None) -> dict:
    """Decode into memory (`_StreamInstead` once `stream_at` bytes are decoded), then cache as one .npz."""
    arrays = _imagefolder_arrays(name, path, classes, workers, image_size, cap, stream_at)
    arrays.update(zip(("mean", "std"), map(np.asarray, channel_stats(arrays["train_images"])), strict=True))
    if cache_file is not None:
        _write_cache(cache_file, arrays)
        _prune_cache(cache_file)
    return arrays


def _streamed_arrays(name: str, path: Path, classes: list[str] | None, workers: int | None,
                     image_size: int | None, cache_file: Path) -> dict:
    """Decode into memmapped .npy files next to `cache_file`. Writes the .npz of small arrays last: its
    presence means the .npy files are complete."""
    # read at call time, so the limits and hooks set on this module apply
    decoder = Decoder(_decode_chunk, _decode_pool, PARALLEL_MIN_IMAGES, GRAY_MODES, MAX_IMAGE_PIXELS)
    keep = stored_size(image_size) if image_size else KEEP_SHORTER_SIDE
    tree = scan_tree(name, path, decoder)
    train, test = _pick_splits(name, path, tree)
    classes = _check_classes(name, path, train, test, classes)
    test_key = "test" if "test" in tree else "val"
    estimate = decoded_bytes({"train": train, "test": test}, image_size, keep)
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    files = memmap_files(cache_file)
    small = stream_arrays(name, path, tree, "train", test_key, classes, image_size, keep,
                          decode_workers(workers), files, decoder)
    _write_cache(cache_file, small)
    _prune_cache(cache_file)
    log.info("dataset %s: %d bytes decoded to memmapped %s", name, estimate, files["train_images"].name)
    arrays = _read_cache(cache_file)
    if arrays is None:  # _write_cache could not write the small arrays (it logged why)
        raise DatasetError(name, f"{path.name}: its decode cache on disk could not be written or read back")
    return arrays


def load_image_tree(
    path: Path,
    *,
    name: str = "imagefolder",
    classes: list[str] | None = None,
    cache_dir: Path | None = None,
    workers: int | None = None,
    image_size: int | None = None,
    max_decoded_bytes: int | None = None,
    memmap_min_bytes: int | None = None,
) -> Dataset:
    """Load a directory or archive laid out split/class/image (train plus test or val), cached.

    `classes` fixes the label order (and requires exactly those classes); by default it is the sorted
    folder names. `workers` is the number of decode processes (default: CPU count, at most 8).
    Mixed sizes (or any `image_size`) are stored as squares of `transforms.stored_size(size)` and the
    splits carry `crop=size`: the loaders cut the training size from them (see transforms.py).
    Grayscale files in a colour set become RGB; `Dataset.source_info` counts them and reports sizes.
    `max_decoded_bytes` (default `MAX_DECODED_BYTES`) refuses a tree whose pixels would not fit in memory.
    `memmap_min_bytes` (with a `cache_dir`): a tree whose decoded pixels reach it, or would pass
    `max_decoded_bytes`, is decoded image by image into .npy files and its splits are read-only memmaps
    (image_stream.py); disk, not memory, then bounds it. None (the default) always decodes into memory.

    With a threshold the decode starts in memory all the same and switches to disk once its decoded
    bytes reach it (at most the threshold, plus the chunks in flight, is decoded twice, and held in
    memory meanwhile, as for any in-memory decode up to the cap): the header
    pass that streaming needs first costs nearly a full decode on a tar.gz (51 s against 59 s for the
    60,000 CIFAR-10 JPEGs, 2 decode workers, on a busy 2-core machine), which small sets, the common
    case, then never pay.
    """
    path = Path(path)
    if not path.exists():
        raise DatasetError(name, f"{path}: no such file or directory")
    cache_file = None
    arrays = None
    if cache_dir is not None:
        stem = _cache_stem(name, path) + (f"-{image_size}px" if image_size else "")
        cache_file = Path(cache_dir) / f"{stem}-{cache_key(name, path, image_size)[:24]}.npz"
        arrays = _read_cache(cache_file)
        if arrays is not None and not arrays.keys() >= CACHE_FIELDS:
            log.warning("ignoring incomplete decode cache %s", cache_file)
            arrays = None
    cap = MAX_DECODED_BYTES if max_decoded_bytes is None else max_decoded_bytes
    # streams() on the bytes decoded so far: at the threshold, or past the in-memory cap
    stream_at = None if cache_file is None or memmap_min_bytes is None else min(memmap_min_bytes, cap + 1)
    if arrays is None and cache_file is not None and stream_at == 0:
        arrays = _streamed_arrays(name, path, classes, workers, image_size, cache_file)
    if arrays is None:
        try:
            arrays = _in_memory_arrays(name, path, classes, workers, image_size, cap, stream_at, cache_file)
        except _StreamInstead:
            assert cache_file is not None
            log.info("dataset %s: %s decoded bytes reached, decoding to disk instead", name, stream_at)
            arrays = _streamed_arrays(name, path, classes, workers, image_size, cache_file)
    crop = int(arrays["crop"]) or None
    sizes = [(int(w), int(h)) for w, h in arrays["source_sizes"]]
    return Dataset(
        name,
        Split(arrays["train_images"], arrays["train_labels"], crop),
        Split(arrays["test_images"], arrays["test_labels"], crop),
        [str(c) for c in arrays["classes"]],
        tuple(float(m) for m in arrays["mean"]),
        tuple(float(s) for s in arrays["std"]),
        source_info={"sizes": size_distribution(sizes), "grayscale_converted_to_rgb": int(arrays["gray_converted"]),
                     "training_size": crop or int(arrays["train_images"].shape[-1]),
                     "stored_size": int(arrays["train_images"].shape[-1])},
    )
