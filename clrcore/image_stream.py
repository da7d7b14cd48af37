"""Decode an image tree straight into on-disk arrays, for sets whose pixels do not fit in memory.

`image_tree` decodes every image into memory, then stacks the splits: peak memory is about twice the
decoded set. Here a first pass reads only the image headers (sizes, modes, which split and class),
which fixes every image's place and the stored shape; a second pass decodes image by image (in
chunks, in worker processes for big sets) into preallocated `.npy` files at the training size, so
peak memory is a few chunks, not the set. The result is the same arrays `image_tree` would build,
opened with `mmap_mode="r"`: the loaders then read one batch at a time (see loaders.py).
"""

from __future__ import annotations

import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from clrcore.archives import ArchiveError, iter_image_members
from clrcore.dataset_types import DatasetError, channel_stats
from clrcore.transforms import default_image_size, resize_shorter_and_centre_crop, stored_size

log = logging.getLogger(__name__)

STREAM_CHUNK = 256  # images per decode task: small, so the bytes in flight stay small
MEMMAP_ARRAYS = ("train_images", "test_images")


@dataclass
class Decoder:
    """image_tree's decoding, handed in (this module does not import image_tree: no import circle)."""

    chunk: Callable[[list[tuple[str, bytes]], int], list[tuple[np.ndarray, tuple[int, int]]]]
    pool: Callable[[int], Executor | None]
    parallel_min: int  # images submitted before a process pool is started
    gray_modes: set[str]
    max_pixels: int


def _header(where: str, data: bytes, decoder: Decoder) -> tuple[tuple[int, int], bool]:
    """The image's (width, height) and whether it is grayscale, from its header only."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
            if width * height > decoder.max_pixels:
                raise DatasetError("imagefolder", f"{where}: {width}x{height} is over the "
                                   f"{decoder.max_pixels}-pixel limit for one image")
            return (width, height), image.mode in decoder.gray_modes
    except UnidentifiedImageError:
        raise DatasetError("imagefolder", f"{where}: not a readable image (unknown format)") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise DatasetError("imagefolder", f"{where}: not a readable image ({err})") from None


def scan_tree(name: str, path: Path, decoder: Decoder) -> dict[str, dict[str, list[list]]]:
    """{split: {class: [[file name, is grayscale, (width, height)], ...]}} from the headers alone."""
    tree: dict[str, dict[str, list[list]]] = {}
    try:
        for split, cls, file_name, data in iter_image_members(path):
            size, gray = _header(f"{split}/{cls}/{file_name}", data, decoder)
            tree.setdefault(split, {}).setdefault(cls, []).append([file_name, gray, size])
    except ArchiveError as err:
        raise DatasetError(name, f"{path.name}: {err}") from err
    except DatasetError as err:
        raise DatasetError(name, f"{path.name}: {err.why}") from err
    return tree


def _places(by_class: dict, classes: list[str]) -> dict[tuple[str, str], int]:
    """Each (class, file name)'s row: class by class in `classes` order, files by name (as image_tree)."""
    index = {c: i for i, c in enumerate(classes)}
    ordered = [(cls, entry[0]) for cls in sorted(by_class, key=index.__getitem__)
               for entry in sorted(by_class[cls], key=lambda entry: entry[0])]
    return {key: i for i, key in enumerate(ordered)}


def image_decoded_bytes(width: int, height: int, keep: int) -> int:
    """An upper bound on one image's decoded bytes (3 channels) once its shorter side is shrunk to `keep`."""
    scale = min(1.0, keep / min(width, height)) if keep else 1.0
    return 3 * int(width * scale + 1) * int(height * scale + 1)


def decoded_bytes(tree: dict, crop: int | None, keep: int) -> int:
    """An upper bound on the decoded pixels of every image (3 channels), as stored."""
    if crop:
        return sum(len(e) for split in tree.values() for e in split.values()) * 3 * stored_size(crop) ** 2
    return sum(image_decoded_bytes(width, height, keep)
               for split in tree.values() for entries in split.values() for _, _, (width, height) in entries)


def streams(estimate: int, memmap_min_bytes: int | None, max_decoded_bytes: int) -> bool:
    """Whether a set of `estimate` decoded bytes (`decoded_bytes`) is decoded to disk: streaming is on (a
    threshold given) and the set reaches it or would not fit the in-memory cap. The API decides an
    upload's limits by it. A worker applies the same rule to the bytes it has decoded so far (never more
    than the estimate, `image_tree.load_image_tree`), so a set the API accepts past `max_decoded_bytes`
    is either streamed by the worker or fits its memory."""
    return memmap_min_bytes is not None and (estimate >= memmap_min_bytes or estimate > max_decoded_bytes)


class _Writer:
    """Rows of two preallocated .npy files, created on the first image (which fixes the stored shape)."""

    def __init__(self, name: str, where: Path, files: dict[str, Path], counts: dict[str, int],
                 channels: int) -> None:
        self.name, self.where, self.files, self.counts, self.channels = name, where, files, counts, channels
        self.arrays: dict[str, np.ndarray] = {}
        self.temps: dict[str, Path] = {}
        self.shape: tuple[int, int] | None = None

    def put(self, key: str, row: int, array: np.ndarray, label: str) -> None:
        if self.shape is None:
            self.shape = array.shape[:2]
            for array_key, file in self.files.items():
                fd, temp = tempfile.mkstemp(prefix=file.name.removesuffix(".npy") + ".", suffix=".tmp",
                                            dir=file.parent)
                os.close(fd)
                self.temps[array_key] = Path(temp)
                self.arrays[array_key] = np.lib.format.open_memmap(
                    temp, mode="w+", dtype=np.uint8, shape=(self.counts[array_key], self.channels, *self.shape))
        if array.shape[:2] != self.shape:
            raise DatasetError(self.name, f"{self.where.name}: {label} is {array.shape[1]}x{array.shape[0]}, "
                               f"the others {self.shape[1]}x{self.shape[0]}; all images must be one size")
        self.arrays[key][row] = array if array.ndim == 2 else array.transpose(2, 0, 1)

    def commit(self) -> None:
        """Flush, then rename each temp file to its name (os.replace: atomic in one folder)."""
        for key, array in self.arrays.items():
            array.flush()  # type: ignore[attr-defined]
            del array
            os.replace(self.temps[key], self.files[key])
        self.arrays.clear()

    def discard(self) -> None:
        self.arrays.clear()
        for temp in self.temps.values():
            temp.unlink(missing_ok=True)


def _decoded(path: Path, wanted: set[str], keep: int, workers: int,
             decoder: Decoder) -> Iterator[tuple[str, str, str, np.ndarray]]:
    """(split, class, file name, decoded array) for members of the `wanted` splits, at most a few chunks
    of them in memory: chunks go to worker processes with 2 per worker outstanding."""
    pool: Executor | None = None
    pool_tried = False
    submitted = 0
    chunks: list[tuple[Future | list, list[tuple[str, str, str]]]] = []
    pending: list[tuple[str, bytes]] = []
    names: list[tuple[str, str, str]] = []

    def drain(limit: int) -> Iterator[tuple[str, str, str, np.ndarray]]:
        while len(chunks) > limit:
            result, labels = chunks.pop(0)
            arrays = result.result() if isinstance(result, Future) else result
            for (split, cls, file_name), (array, _) in zip(labels, arrays, strict=True):
                yield split, cls, file_name, array

    try:
        for split, cls, file_name, data in iter_image_members(path):
            if split not in wanted:
                continue
            pending.append((f"{split}/{cls}/{file_name}", data))
            names.append((split, cls, file_name))
            if len(pending) < STREAM_CHUNK:
                continue
            submitted += len(pending)
            if not pool_tried and submitted >= decoder.parallel_min:
                pool, pool_tried = decoder.pool(workers), True
            chunks.append((pool.submit(decoder.chunk, pending, keep) if pool is not None
                           else decoder.chunk(pending, keep), names))
            pending, names = [], []
            yield from drain(2 * workers if pool is not None else 0)
        if pending:
            chunks.append((decoder.chunk(pending, keep), names))
        yield from drain(0)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)


def stream_arrays(name: str, path: Path, tree: dict, train_key: str, test_key: str, classes: list[str],
                  image_size: int | None, keep: int, workers: int, files: dict[str, Path], decoder: Decoder) -> dict:
    """Decode the `train_key` and `test_key` splits of the scanned `tree` into `files` (.npy, by array
    name) and return the small arrays of the cache (labels, classes, sizes, statistics)."""
    train, test = tree[train_key], tree[test_key]
    source_sizes = [e[2] for split in (train, test) for entries in split.values() for e in entries]
    grays = [e[1] for split in (train, test) for entries in split.values() for e in entries]
    gray = all(grays)
    crop = None if image_size is None and len(set(source_sizes)) == 1 else (
        image_size or default_image_size(source_sizes))
    side = stored_size(crop) if crop else 0
    need = decoded_bytes({"train": train, "test": test}, crop, keep) // (3 if gray else 1)
    free = shutil.disk_usage(next(iter(files.values())).parent).free
    if need > free:
        raise DatasetError(name, f"{path.name}: decoding needs about {need} bytes on disk, {free} are free")
    places = {"train_images": _places(train, classes), "test_images": _places(test, classes)}
    which = {train_key: "train_images", test_key: "test_images"}
    writer = _Writer(name, path, files, {k: len(v) for k, v in places.items()}, 1 if gray else 3)
    try:
        for split, cls, file_name, array in _decoded(path, set(which), keep, workers, decoder):
            if side and array.shape[:2] != (side, side):
                array = np.asarray(resize_shorter_and_centre_crop(Image.fromarray(array), side))
            key = which[split]
            writer.put(key, places[key][(cls, file_name)], array, f"{split}/{cls}/{file_name}")
        writer.commit()
    except BaseException:
        writer.discard()
        raise
    index = {c: i for i, c in enumerate(classes)}
    labels = {key: np.empty(len(rows), dtype=np.int64) for key, rows in places.items()}
    for key, rows in places.items():
        for (cls, _), row in rows.items():
            labels[key][row] = index[cls]
    mean, std = channel_stats(np.load(files["train_images"], mmap_mode="r"))
    return {
        "train_labels": labels["train_images"], "test_labels": labels["test_images"],
        "classes": np.asarray(classes),
        "source_sizes": np.asarray(source_sizes, dtype=np.int32).reshape(-1, 2),
        "gray_converted": np.asarray(0 if gray else sum(grays)),
        "crop": np.asarray(crop or 0),
        "mean": np.asarray(mean), "std": np.asarray(std),
        "memmap": np.asarray(1),
    }
