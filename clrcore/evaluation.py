"""Evaluation: predictions over a split in large batches, with optional test-time augmentation.

Test-time augmentation averages the logits of a few views of each image. `tta_flip` adds the mirror
image; `tta_translate` adds the image shifted one pixel up-left and one pixel down-right (reflected
borders), each with its mirror when `tta_flip` is on, weighted half for the unshifted views and half
for the shifted ones: airbench94's "level 2" (on the JPEG CIFAR-10 copy it lifts airbench94 from 89.8 %
to 90.7 %, shared/data/README.md). The trainer applies it to the final evaluation only.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clrcore.loaders import make_loader

if TYPE_CHECKING:
    from clrcore.datasets import Split

# Evaluation has no backward pass and no optimizer state, so it can afford far larger batches. 1000
# divides the 10,000-image test splits of CIFAR-10 and (Fashion-)MNIST: a compiled model then sees a
# single evaluation batch shape instead of compiling once more for a ragged last batch.
EVAL_BATCH_SIZE = 1000

Forward = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Prediction:
    """One pass over a split: labels, predicted classes (numpy, for the report), mean loss, accuracy."""

    y_true: np.ndarray
    y_pred: np.ndarray
    loss: float
    accuracy: float


def tta_logits(model: Forward, images: torch.Tensor, *, flip: bool = False, translate: bool = False) -> torch.Tensor:
    """Logits of `images` averaged over the test-time views (just `model(images)` with neither)."""

    layout = torch.channels_last if images.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format

    def view(x: torch.Tensor) -> torch.Tensor:
        # every view in the input's layout: a compiled model then sees the strides it was compiled for
        return x.contiguous(memory_format=layout)

    if not (flip or translate):
        return model(images)

    def kept(x: torch.Tensor) -> torch.Tensor:
        # A model compiled with CUDA graphs ("reduce-overhead") returns its graph's static output buffer,
        # which the next call overwrites: each view's logits are copied out before the next view runs.
        return model(x).clone()

    def mirrored(x: torch.Tensor) -> torch.Tensor:
        return (kept(x) + kept(view(torch.flip(x, dims=(-1,))))) / 2 if flip else kept(x)

    logits = mirrored(images)
    if not translate:
        return logits
    height, width = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    shifted = mirrored(view(padded[..., :height, :width])) + mirrored(view(padded[..., 2:, 2:]))
    return logits / 2 + shifted / 4


def evaluate(
    model: Forward,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    autocast: AbstractContextManager | None = None,
    tta_flip: bool = False,
    tta_translate: bool = False,
    on_batch: Callable[[int], None] | None = None,
) -> Prediction:
    """Predict every batch of `loader` with gradients off; one host transfer at the end.

    The loss is plain cross-entropy (no label smoothing) so it compares across recipes. `on_batch(done)`
    runs after every batch without synchronising (the trainer checks its stop flag and ticks progress
    there).
    """
    loss_sum = None
    preds, labels = [], []
    with torch.no_grad():
        for index, (x, y) in enumerate(loader):
            with autocast if autocast is not None else nullcontext():
                logits = tta_logits(model, x, flip=tta_flip, translate=tta_translate)
                batch_loss = F.cross_entropy(logits.float(), y, reduction="sum")
            loss_sum = batch_loss if loss_sum is None else loss_sum + batch_loss
            preds.append(logits.argmax(dim=1))
            labels.append(y)
            if on_batch is not None:
                on_batch(index + 1)
    if not preds:
        return Prediction(np.empty(0, np.int64), np.empty(0, np.int64), math.nan, math.nan)
    y_pred = torch.cat(preds).cpu().numpy()
    y_true = torch.cat(labels).cpu().numpy()
    assert loss_sum is not None  # there were batches
    loss = float(loss_sum) / len(y_true)
    return Prediction(y_true, y_pred, loss, float((y_pred == y_true).mean()))


def predict(
    model: nn.Module,
    split: Split,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    device: torch.device | str = "cpu",
    batch_size: int = EVAL_BATCH_SIZE,
    precision: str = "fp32",
    tta_flip: bool = False,
    tta_translate: bool = False,
    channels_last: bool = False,
    pixel_mean: np.ndarray | None = None,
) -> Prediction:
    """Evaluate `model` on a whole split (no augmentation, in order); for reports outside training.

    `pixel_mean` (a (C, H, W) mean image on the 0..255 scale) replaces mean/std, as in training.
    """
    device = torch.device(device)
    loader = make_loader(split, batch_size, device=device, mean=mean, std=std, train=False,
                         channels_last=channels_last, pixel_mean=pixel_mean)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
    was_training = model.training
    model.eval()
    try:
        return evaluate(model, loader, autocast=autocast, tta_flip=tta_flip, tta_translate=tta_translate)
    finally:
        model.train(was_training)
