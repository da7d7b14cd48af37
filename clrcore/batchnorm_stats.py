"""BatchNorm's running statistics, checked at the end of training and recomputed when they went stale.

A BatchNorm net trains on each batch's own statistics and is evaluated on the running averages it
kept. When the activations' scale keeps moving (weights whose norm BatchNorm hides, grown large at a
high LR), those averages can trail the final weights by orders of magnitude: resnet_fast on digits at
max LR 0.045 ended with a training loss of 0.37 and 10-16 % test accuracy, its running variances up to
1e19; the same weights with the statistics recomputed read 97-99 % (docs/benchmarks.md, issue 12).

So the trainer compares, before the final evaluation, the loss on a few training batches
with the running statistics against the loss with each batch's own. Nets whose averages hold read
nearly the same (the check then changes nothing); when the running loss is far above, the statistics
are recomputed over the training data ("precise BN", `torch.optim.swa_utils.update_bn`); the training
summary's `batchnorm_check` says which, with both losses. Short runs trip it too (16 steps leave
momentum 0.1's averages 19 % at their initial values), and the recomputation is what they need.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.optim.swa_utils import update_bn

# Stale when the loss with the running statistics exceeds STALE_FACTOR x the loss with batch statistics
# plus STALE_MARGIN nats. On fourteen runs of four nets (bench/batchnorm_check.py, docs/benchmarks.md) healthy
# ones read 0.81-1.10x and the failed ones 20x and 53x (1.6x for a milder one); a false alarm costs only the
# recomputation.
STALE_FACTOR = 1.25
STALE_MARGIN = 0.1
CHECK_BATCHES = 8  # training batches the check reads (two forward passes each)
REFRESH_BATCHES = 200  # at most this many training batches recompute the statistics (Detectron2's PreciseBN)


@dataclass(frozen=True)
class StatsCheck:
    """The two losses the check compared, and whether the statistics were recomputed."""

    running_loss: float
    batch_loss: float
    refreshed: bool
    batches: int = 0  # batches the recomputation read; 0 when nothing was recomputed

    def note(self) -> str:
        return (f"BatchNorm's running statistics had gone stale (training loss {self.running_loss:.3g} with them, "
                f"{self.batch_loss:.3g} with each batch's own): recomputed over {self.batches} training batches "
                "before the final evaluation")


def batchnorm_layers(net: nn.Module) -> list[_BatchNorm]:
    return [m for m in net.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


def _mean_loss(net: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
               autocast: AbstractContextManager) -> float:
    total, count = 0.0, 0
    with torch.no_grad(), autocast:
        for x, y in batches:
            total += float(F.cross_entropy(net(x).float(), y, reduction="sum"))
            count += len(y)
    return total / max(count, 1)


def compare_losses(net: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                   autocast: AbstractContextManager | None = None) -> tuple[float, float]:
    """(loss with the running statistics, loss with each batch's statistics) on `batches`; the net's
    weights, buffers and mode are left as they were. Only BatchNorm layers switch mode: dropout stays off."""
    autocast = autocast or nullcontext()
    layers = batchnorm_layers(net)
    kept = [{k: v.clone() for k, v in m.state_dict().items()} for m in layers]
    was_training = [m.training for m in net.modules()]
    try:
        net.eval()
        running = _mean_loss(net, batches, autocast)
        for m in layers:
            m.train()
        batch = _mean_loss(net, batches, autocast)
    finally:
        for layer, state in zip(layers, kept, strict=True):
            layer.load_state_dict(state)
        for module, mode in zip(net.modules(), was_training, strict=True):
            module.training = mode
    return running, batch


def is_stale(running_loss: float, batch_loss: float) -> bool:
    """The running statistics failed: their loss is far above the batch statistics' (or not finite)."""
    if not math.isfinite(batch_loss):
        return False  # the weights themselves failed; new statistics cannot help
    return not running_loss <= STALE_FACTOR * batch_loss + STALE_MARGIN


def check_and_refresh(net: nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                      autocast: AbstractContextManager | None = None) -> StatsCheck | None:
    """Compare the losses on the loader's first batches; recompute the statistics when they are stale.

    `loader` yields shuffled training batches, ready for the net (the training loader: PreciseBN
    recomputes on the training distribution, augmentation included). Returns None for a net without
    BatchNorm. The recomputation reads at most REFRESH_BATCHES batches, with every layer in training
    mode as `update_bn` does.
    """
    if not batchnorm_layers(net):
        return None
    batches = list(itertools.islice(loader, CHECK_BATCHES))
    if not batches:
        return None
    running, batch = compare_losses(net, batches, autocast)
    if not is_stale(running, batch):
        return StatsCheck(running, batch, refreshed=False)
    was_training, read = net.training, 0

    def counted() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        nonlocal read
        for item in itertools.islice(loader, REFRESH_BATCHES):  # streamed: a GPU holds one batch at a time
            read += 1
            yield item

    with autocast or nullcontext():
        update_bn(counted(), net)
    net.train(was_training)
    return StatsCheck(running, batch, refreshed=True, batches=read)
