"""Batches for training and evaluation: the whole split on the device, augmented there.

Small image sets (CIFAR-10 is 150 MB as uint8) fit on any GPU many times over, so the fast path keeps
the split on the device as uint8 and makes each batch with one gather: no workers, no per-batch host
work, no sync. Every random draw of an epoch (order, shifts, flips) is made at its start from one
`torch.Generator`, so saving `loader.generator.get_state()` between epochs resumes the same batches,
and the host fallback (`HostLoader`, for splits too big for the device) yields exactly the same ones.
Like a DistributedSampler, a training loader is told its epoch (`set_epoch`) before each pass: the
alternating flips depend on it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from clrcore.datasets import Dataset, Split

log = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor]


def iters_per_epoch(n: int, batch_size: int, drop_last: bool) -> int:
    """Batches in one epoch; with drop_last a split smaller than one batch still gives one batch."""
    if n <= 0:
        return 0
    full, rest = divmod(n, batch_size)
    if drop_last:
        return max(full, 1)
    return full + (1 if rest else 0)


@dataclass
class EpochPlan:
    """Every random draw of one epoch, made up front: order, per-sample shifts and flips."""

    order: torch.Tensor  # int64 (N,)
    shift_y: torch.Tensor | None  # int64 (N,), in [-translate, translate]
    shift_x: torch.Tensor | None
    flip: torch.Tensor | None  # bool (N,)

    def to(self, device: torch.device) -> EpochPlan:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device, non_blocking=True)

        return EpochPlan(self.order.to(device, non_blocking=True), move(self.shift_y), move(self.shift_x),
                         move(self.flip))

    def batch(self, start: int, stop: int) -> EpochPlan:
        def part(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop]

        return EpochPlan(self.order[start:stop], part(self.shift_y), part(self.shift_x), part(self.flip))


FLIP_MODES = ("random", "alternate")


def alternating_flips(n: int, epoch: int, generator: torch.Generator) -> torch.Tensor:
    """Per-image flips that alternate: a random half in even epochs, the other half in odd ones.

    airbench's flip: over any two consecutive epochs every image is seen once each way, where random
    flips show a quarter of the images one way only. The per-image phase is drawn from the generator's
    seed, not its stream, so it is the same in every epoch and after a resume.
    """
    phase_source = torch.Generator(device=generator.device).manual_seed(generator.initial_seed())
    phase = torch.rand(n, generator=phase_source, device=generator.device) < 0.5
    return phase ^ bool(epoch % 2)


def plan_epoch(n: int, *, train: bool, translate: int, flip: bool, generator: torch.Generator,
               flip_mode: str = "random", epoch: int = 0) -> EpochPlan:
    """Draw an epoch's randomness from `generator` (nothing is drawn for evaluation)."""
    if flip_mode not in FLIP_MODES:
        raise ValueError(f"unknown flip mode {flip_mode!r}; known: {', '.join(FLIP_MODES)}")
    if not train:
        return EpochPlan(torch.arange(n), None, None, None)
    gen_device = generator.device
    order = torch.randperm(n, generator=generator, device=gen_device)
    shift_y = shift_x = flips = None
    if translate > 0:
        shift_y = torch.randint(-translate, translate + 1, (n,), generator=generator, device=gen_device)
        shift_x = torch.randint(-translate, translate + 1, (n,), generator=generator, device=gen_device)
    if flip and flip_mode == "alternate":
        flips = alternating_flips(n, epoch, generator)[order]
    elif flip:
        flips = torch.rand(n, generator=generator, device=gen_device) < 0.5
    return EpochPlan(order, shift_y, shift_x, flips)


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    # Mirror indices that fall off either edge back inside (valid for shifts smaller than `size`).
    last = size - 1
    return last - (last - index.abs()).abs()


def gather_batch(images: torch.Tensor, plan: EpochPlan) -> torch.Tensor:
    """Select, shift (reflect-padded) and flip a batch of uint8 images in a single indexing op.

    Translation is a crop of the reflect-padded image, done as per-sample row and column indices
    rather than padding the set; a flip reverses the column indices. No per-sample Python loop.
    """
    _, channels, height, width = images.shape
    order = plan.order
    if plan.shift_y is None and plan.flip is None:
        return images[order]
    device = images.device
    rows = torch.arange(height, device=device).expand(len(order), height)
    cols = torch.arange(width, device=device).expand(len(order), width)
    if plan.flip is not None:
        cols = torch.where(plan.flip[:, None], width - 1 - cols, cols)
    if plan.shift_y is not None and plan.shift_x is not None:  # drawn together
        rows = _reflect(rows + plan.shift_y[:, None], height)
        cols = _reflect(cols + plan.shift_x[:, None], width)
    chans = torch.arange(channels, device=device)
    return images[order[:, None, None, None], chans[None, :, None, None], rows[:, None, :, None],
                  cols[:, None, None, :]]


NORMALIZE_MODES = ("channel", "pixel_mean", "unit")


def normalization(dataset: Dataset, mode: str = "channel") -> dict[str, Any]:
    """The `mean`, `std` and `pixel_mean` keyword arguments of `make_loader` for a spec's `normalize`.

    channel: (x / 255 - mean) / std per channel. pixel_mean: x - mean image, on the 0..255 scale, as
    the Keras CLR blog feeds CIFAR-10. unit: x / 255, as the blog feeds Fashion-MNIST.
    """
    if mode == "channel":
        return {"mean": dataset.mean, "std": dataset.std, "pixel_mean": None}
    channels = dataset.train.images.shape[1]
    if mode == "unit":
        return {"mean": (0.0,) * channels, "std": (1.0,) * channels, "pixel_mean": None}
    if mode == "pixel_mean":
        return {"mean": dataset.mean, "std": dataset.std, "pixel_mean": dataset.pixel_mean()}
    raise ValueError(f"unknown normalize mode {mode!r}; known: {', '.join(NORMALIZE_MODES)}")


class _Normaliser:
    """uint8 NCHW to normalised float32 as one multiply-add: x * scale + shift.

    Per channel: (x / 255 - mean) / std. With `pixel_mean` (a float (C, H, W) image on the 0..255
    scale) instead: x - pixel_mean, unscaled; the mean is subtracted after the shift and flip, which
    differs from shifting the mean-subtracted image only where the mean image itself varies.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device,
                 channels_last: bool, pixel_mean: np.ndarray | None = None) -> None:
        if pixel_mean is not None:
            self.scale = torch.ones(1, 1, 1, 1, device=device)
            self.shift = -torch.as_tensor(np.asarray(pixel_mean, dtype=np.float32), device=device)[None]
        else:
            mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            self.scale = 1.0 / (255.0 * std_t)
            self.shift = -mean_t / std_t
        self.channels_last = channels_last

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = torch.addcmul(self.shift, images.float(), self.scale)
        return out.contiguous(memory_format=torch.channels_last) if self.channels_last else out


def normalised_images(split: Split, *, device: torch.device | str, mean: Sequence[float],
                      std: Sequence[float], pixel_mean: np.ndarray | None = None) -> torch.Tensor:
    """The split's images as the model will see them (no augmentation), as one float tensor on `device`."""
    device = torch.device(device)
    images = torch.from_numpy(np.ascontiguousarray(split.images)).to(device)
    return _Normaliser(mean, std, device, False, pixel_mean)(images)


def _default_generator() -> torch.Generator:
    # Seeded from torch's global RNG, so torch.manual_seed still makes a run reproducible.
    seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator().manual_seed(seed)


class _EpochLoader:
    """What both loaders share: batch size, augmentation settings, the epoch and its draws, normalising.

    Subclasses say where the images live and how a batch plan becomes a batch (`batches`).
    """

    def __init__(self, n: int, batch_size: int, *, device: torch.device | str, mean: Sequence[float],
                 std: Sequence[float], train: bool, translate: int, flip: bool, flip_mode: str, drop_last: bool,
                 generator: torch.Generator | None, channels_last: bool, pixel_mean: np.ndarray | None) -> None:
        self.n, self.batch_size, self.device = n, batch_size, torch.device(device)
        self.train, self.translate, self.flip, self.drop_last = train, translate, flip, drop_last
        self.flip_mode, self.epoch = flip_mode, 0
        self.generator = generator if generator is not None else _default_generator()
        self.normalise = _Normaliser(mean, std, self.device, channels_last, pixel_mean)

    def __len__(self) -> int:
        return iters_per_epoch(self.n, self.batch_size, self.drop_last)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches()

    def batches(self, skip: int = 0) -> Iterator[Batch]:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next pass belongs to (what alternating flips depend on)."""
        self.epoch = epoch

    def batch_plans(self, device: torch.device, skip: int = 0) -> Iterator[EpochPlan]:
        """Draw this epoch's plan (on `device`), then yield it a batch at a time, leaving out the first `skip`."""
        plan = plan_epoch(self.n, train=self.train, translate=self.translate, flip=self.flip,
                          generator=self.generator, flip_mode=self.flip_mode, epoch=self.epoch).to(device)
        for i in range(skip, len(self)):
            yield plan.batch(i * self.batch_size, min((i + 1) * self.batch_size, self.n))


class DeviceLoader(_EpochLoader):
    """Iterable of (normalised float NCHW images, int64 labels), with the whole split on `device`.

    Each epoch draws its order, shifts and flips from `generator` at the start, then builds each
    batch on the device. `batches(skip=k)` resumes mid-epoch after restoring the generator state
    saved before that epoch.
    """

    def __init__(self, split: Split, batch_size: int, *, device: torch.device | str, mean: Sequence[float],
                 std: Sequence[float], train: bool, translate: int = 0, flip: bool = False,
                 drop_last: bool = False, generator: torch.Generator | None = None,
                 channels_last: bool = False, pixel_mean: np.ndarray | None = None,
                 flip_mode: str = "random") -> None:
        super().__init__(len(split.labels), batch_size, device=device, mean=mean, std=std, train=train,
                         translate=translate, flip=flip, flip_mode=flip_mode, drop_last=drop_last,
                         generator=generator, channels_last=channels_last, pixel_mean=pixel_mean)
        self.images = _on_device(split.images, self.device)
        self.labels = torch.from_numpy(np.ascontiguousarray(split.labels)).to(self.device)

    def batches(self, skip: int = 0) -> Iterator[Batch]:
        """One epoch of batches, leaving out the first `skip` (all draws are still made)."""
        for part in self.batch_plans(self.device, skip):
            yield self.normalise(gather_batch(self.images, part)), self.labels[part.order]


def is_mapped(images: np.ndarray) -> bool:
    """A split read from disk a batch at a time (a memmapped decode cache, image_stream.py)."""
    return isinstance(images, np.memmap)


def _on_device(images: np.ndarray, device: torch.device, chunk: int = 4096) -> torch.Tensor:
    """The images as one tensor on `device`; a memmap is copied a chunk at a time (no host copy of it all)."""
    if not is_mapped(images):
        return torch.from_numpy(np.ascontiguousarray(images)).to(device)
    out = torch.empty(images.shape, dtype=torch.uint8, device=device)
    for start in range(0, len(images), chunk):
        out[start:start + chunk] = torch.from_numpy(np.array(images[start:start + chunk])).to(device)
    return out


class _PlannedBatches(TorchDataset):
    """Host-side source for HostLoader: an item is one batch plan, the result its uint8 images.

    A memmapped split stays on disk: each item reads its batch's rows, then shifts and flips them.
    """

    def __init__(self, split: Split) -> None:
        self.mapped = split.images if is_mapped(split.images) else None
        self.images = None if self.mapped is not None else torch.from_numpy(np.ascontiguousarray(split.images))
        self.labels = torch.from_numpy(np.ascontiguousarray(split.labels))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, plan: EpochPlan) -> Batch:
        if self.mapped is None:
            assert self.images is not None
            return gather_batch(self.images, plan), self.labels[plan.order]
        rows = torch.from_numpy(np.asarray(self.mapped[plan.order.numpy()]))  # only this batch is read
        local = EpochPlan(torch.arange(len(rows)), plan.shift_y, plan.shift_x, plan.flip)
        return gather_batch(rows, local), self.labels[plan.order]


class _PlanSampler:
    """Yields one EpochPlan slice per batch; the epoch's draws happen in the main process."""

    def __init__(self, loader: HostLoader) -> None:
        # A weak reference: a strong one would make HostLoader -> DataLoader -> sampler -> HostLoader a
        # cycle, left to the cyclic collector, which tears down the worker queues before the worker
        # iterator's shutdown can use them: each worker then costs a 5 s join timeout.
        self.loader = weakref.proxy(loader)
        self.skip = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[EpochPlan]:
        skip, self.skip = self.skip, 0
        return self.loader.batch_plans(torch.device("cpu"), skip)


class HostLoader(_EpochLoader):
    """DeviceLoader's twin for splits too big for the device: same batches, built by DataLoader workers.

    Workers gather and augment uint8 batches on the CPU; they travel as uint8 (pinned on CUDA) and
    are normalised on the device.
    """

    def __init__(self, split: Split, batch_size: int, *, device: torch.device | str, mean: Sequence[float],
                 std: Sequence[float], train: bool, translate: int = 0, flip: bool = False,
                 drop_last: bool = False, generator: torch.Generator | None = None,
                 channels_last: bool = False, num_workers: int = 2,
                 pixel_mean: np.ndarray | None = None, flip_mode: str = "random") -> None:
        super().__init__(len(split.labels), batch_size, device=device, mean=mean, std=std, train=train,
                         translate=translate, flip=flip, flip_mode=flip_mode, drop_last=drop_last,
                         generator=generator, channels_last=channels_last, pixel_mean=pixel_mean)
        self.source = _PlannedBatches(split)
        self.sampler = _PlanSampler(self)
        self.loader = DataLoader(
            self.source, batch_size=None, sampler=self.sampler, num_workers=num_workers,
            pin_memory=self.device.type == "cuda", persistent_workers=num_workers > 0,
        )

    def batches(self, skip: int = 0) -> Iterator[Batch]:
        """One epoch of batches, leaving out the first `skip` (all draws are still made)."""
        self.sampler.skip = skip
        for images, labels in self.loader:
            images = images.to(self.device, non_blocking=True)
            yield self.normalise(images), labels.to(self.device, non_blocking=True)


def split_bytes(split: Split) -> int:
    return int(split.images.nbytes + split.labels.nbytes)


def device_budget(device: torch.device) -> int | None:
    """Bytes a split may take on `device`: a quarter of free CUDA memory; unlimited on the CPU."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free // 4
    return None


def make_loader(split: Split, batch_size: int, *, device: torch.device | str, mean: Sequence[float],
                std: Sequence[float], train: bool, translate: int = 0, flip: bool = False,
                drop_last: bool = False, generator: torch.Generator | None = None,
                channels_last: bool = False, max_device_bytes: int | None = None,
                num_workers: int = 2, pixel_mean: np.ndarray | None = None,
                flip_mode: str = "random") -> DeviceLoader | HostLoader:
    """DeviceLoader if the split fits in `max_device_bytes` (default `device_budget`), else HostLoader.

    `max_device_bytes=0` forces the host path (the benchmark measures the device path against it).
    A memmapped split (a streamed decode cache) on the CPU always takes the host path, reading one
    batch at a time in this process; on CUDA it is copied to the device in chunks when it fits the budget.
    """
    device = torch.device(device)
    budget = max_device_bytes if max_device_bytes is not None else device_budget(device)
    common: dict[str, Any] = dict(device=device, mean=mean, std=std, train=train, translate=translate, flip=flip,
                  drop_last=drop_last, generator=generator, channels_last=channels_last,
                  pixel_mean=pixel_mean, flip_mode=flip_mode)
    size = split_bytes(split)
    mapped_on_host = is_mapped(split.images) and device.type == "cpu"  # on the CPU a device copy is a host copy
    if not mapped_on_host and (budget is None or size <= budget):
        loader: DeviceLoader | HostLoader = DeviceLoader(split, batch_size, **common)
    else:
        why = "memmapped" if mapped_on_host else f"over the {(budget or 0) / 2**20:.1f} MB device budget"
        log.info("split of %.1f MB %s: loading from the host with %d workers", size / 2**20, why,
                 0 if mapped_on_host else num_workers)
        # a memmap on the CPU is read in-process: each forked worker would copy-on-write a share of
        # the parent (about 150 MB each with torch loaded), more than the batches it reads ahead
        workers = 0 if mapped_on_host else num_workers
        loader = HostLoader(split, batch_size, num_workers=workers, **common)
    if split.crop:  # stored squares of a resized dataset: cut the training size per batch
        from clrcore.transforms import CroppedLoader

        return CroppedLoader(loader, split.crop, train=train)  # type: ignore[return-value]
    return loader

