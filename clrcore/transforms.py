"""Photos of any size to a training size: the resize policy, on the host once and on the device per batch.

Images are decoded once to a stored square of `stored_size(size)` pixels (shorter side resized to it,
then the centre cropped), so the whole split is still one uint8 array that fits the fast loaders and
the decode cache. Each batch is then cut to `size` on the device:
- training: a random-resized crop (area 35-100 % of the stored square, aspect 3/4-4/3) plus the
  loader's flips, as torchvision's RandomResizedCrop does per image, here batched with roi_align;
- evaluation: the centre `size` square: resize to size / 0.875 then centre crop, the usual ImageNet
  evaluation (256 -> 224).
Small uniform datasets (digits, CIFAR-10, MNIST) keep their own size and skip all this.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image

EVAL_CROP_FRACTION = 0.875
CROP_SCALE = (0.35, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)


def stored_size(size: int) -> int:
    """The stored square's side for training at `size` (256 for 224)."""
    return int(math.ceil(size / EVAL_CROP_FRACTION))


def resize_shorter_and_centre_crop(image: Image.Image, side: int) -> Image.Image:
    """Resize so the shorter side is `side` (antialiased), then take the centre `side` square."""
    width, height = image.size
    scale = side / min(width, height)
    new = (max(side, round(width * scale)), max(side, round(height * scale)))
    if new != (width, height):
        image = image.resize(new, Image.Resampling.BILINEAR, reducing_gap=3.0)
    left, top = (new[0] - side) // 2, (new[1] - side) // 2
    return image.crop((left, top, left + side, top + side))


def default_image_size(sizes: list[tuple[int, int]]) -> int:
    """A training size that fits the data: the median shorter side, clamped to 32..224, a multiple of 8."""
    median = float(np.median([min(w, h) for w, h in sizes])) if sizes else 32.0
    return int(min(224, max(32, round(median * EVAL_CROP_FRACTION / 8) * 8)))


def size_distribution(sizes: list[tuple[int, int]], top: int = 10) -> dict[str, Any]:
    """What GET /v1/datasets/{id} reports: how many images of each size, and their range."""
    if not sizes:
        return {"distinct": 0, "most_common": [], "min": None, "max": None}
    values, counts = np.unique(np.asarray(sizes), axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:top]
    widths, heights = zip(*sizes, strict=True)
    return {
        "distinct": len(values),
        "most_common": [{"width": int(values[i][0]), "height": int(values[i][1]), "count": int(counts[i])}
                        for i in order],
        "min": {"width": min(widths), "height": min(heights)},
        "max": {"width": max(widths), "height": max(heights)},
        "aspect_ratio": {"min": round(min(w / h for w, h in sizes), 3), "max": round(max(w / h for w, h in sizes), 3)},
    }


def resize_images(images: np.ndarray, side: int, chunk: int = 1024) -> np.ndarray:
    """uint8 NCHW (square or not) to N x C x side x side: shorter side to `side`, centre crop, in chunks."""
    import torch
    from torch.nn import functional

    n, channels, height, width = images.shape
    scale = side / min(height, width)
    new_h, new_w = max(side, round(height * scale)), max(side, round(width * scale))
    top, left = (new_h - side) // 2, (new_w - side) // 2
    out = np.empty((n, channels, side, side), dtype=np.uint8)
    for start in range(0, n, chunk):
        block = torch.from_numpy(images[start:start + chunk]).float()
        block = functional.interpolate(block, size=(new_h, new_w), mode="bilinear", antialias=True,
                                       align_corners=False)
        block = block[..., top:top + side, left:left + side]
        out[start:start + chunk] = block.round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def resize_dataset(dataset: Any, size: int) -> Any:
    """An in-memory dataset stored at stored_size(size) with crop=size (train and test), statistics redone."""
    from clrcore.dataset_types import Split, make_dataset

    side = stored_size(size)
    train = Split(resize_images(dataset.train.images, side), dataset.train.labels, size)
    test = Split(resize_images(dataset.test.images, side), dataset.test.labels, size)
    resized = make_dataset(dataset.name, train, test, dataset.classes)
    resized.source_info = {**dataset.source_info, "training_size": size, "stored_size": side}
    return resized


# ---------------------------------------------------------------------------------------------
# Per batch, on the device (torch imported lazily: the decode workers never need it)


def random_crop_boxes(n: int, side: int, generator: Any, scale: tuple[float, float] = CROP_SCALE,
                      ratio: tuple[float, float] = CROP_RATIO) -> Any:
    """n boxes (x1, y1, x2, y2) inside a side x side square, RandomResizedCrop's distribution."""
    import torch

    device = generator.device
    area = side * side * torch.empty(n, device=device).uniform_(*scale, generator=generator)
    log_ratio = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]),
                                                       generator=generator)
    aspect = torch.exp(log_ratio)
    width = torch.sqrt(area * aspect).clamp(1, side)
    height = torch.sqrt(area / aspect).clamp(1, side)
    x1 = torch.rand(n, device=device, generator=generator) * (side - width)
    y1 = torch.rand(n, device=device, generator=generator) * (side - height)
    return torch.stack([x1, y1, x1 + width, y1 + height], dim=1)


def crop_batch(images: Any, boxes: Any, size: int) -> Any:
    """Cut each float NCHW image's box and resize it to size x size (bilinear, one batched op)."""
    import torch
    from torchvision.ops import roi_align

    index = torch.arange(len(images), device=images.device, dtype=boxes.dtype)[:, None]
    rois = torch.cat([index, boxes.to(images.device)], dim=1).to(images.dtype)
    # sampling_ratio 2: each output pixel averages 2x2 samples, a light antialias for the shrinking crops
    return roi_align(images, rois, output_size=size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def centre_crop(images: Any, size: int) -> Any:
    side = images.shape[-1]
    start = (side - size) // 2
    return images[..., start:start + size, start:start + size]


class CroppedLoader:
    """Wraps a loader of stored squares: random-resized crops for training, the centre for evaluation.

    Everything else (length, epochs, generator state, `batches(skip)`) is the wrapped loader's.
    """

    def __init__(self, loader: Any, size: int, *, train: bool, scale: tuple[float, float] = CROP_SCALE) -> None:
        import torch

        self.loader, self.size, self.train, self.scale = loader, size, train, scale
        source = getattr(loader, "generator", None)
        seed = source.initial_seed() if source is not None else 0
        self.crop_generator = torch.Generator(device=getattr(loader, "device", "cpu")).manual_seed(seed + 1)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def _cut(self, images: Any) -> Any:
        if not self.train:
            return centre_crop(images, self.size)
        boxes = random_crop_boxes(len(images), images.shape[-1], self.crop_generator, self.scale)
        return crop_batch(images, boxes, self.size)

    def batches(self, skip: int = 0) -> Iterator[Any]:
        for images, labels in self.loader.batches(skip):
            yield self._cut(images), labels

    def __iter__(self) -> Iterator[Any]:
        return self.batches()
