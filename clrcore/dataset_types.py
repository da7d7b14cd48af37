"""The shape every dataset ends in: uint8 NCHW splits, their normalisation statistics, and the error.

`datasets.py` (the registry of sources) and `image_tree.py` (image folders and archives) both build
these; keeping them here lets each import the types without importing the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Split:
    images: np.ndarray  # uint8, (N, C, H, W)
    labels: np.ndarray  # int64, (N,)
    # train and evaluate on crops of this side, cut from the stored squares by the loaders
    # (transforms.CroppedLoader); None: the images are used at their own size
    crop: int | None = None

    @property
    def input_size(self) -> int:
        """The side the model sees."""
        return self.crop or int(self.images.shape[2])

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
    # what decoding found and did: the files' size distribution, grayscale files made RGB
    source_info: dict = field(default_factory=dict, compare=False)

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


def channel_stats(images: np.ndarray, chunk_bytes: int = 16 * 2**20) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std on the 0..1 scale, from exact integer sums taken in chunks.

    Integer sums need no float copy of the whole set and take well under a second for CIFAR-10.
    Chunks hold at most `chunk_bytes` of int64, whatever the image size (1024 images at 224 px were
    1.6 GB), so a memmapped set is summed in bounded memory.
    """
    n, channels = images.shape[:2]
    flat = images.reshape(n, channels, -1)
    chunk = max(1, chunk_bytes // (8 * channels * flat.shape[2]))
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
