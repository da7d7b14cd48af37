"""A training run's settings: what the trainer reads, built from a validated spec and the device.

`TrainConfig` is everything `trainer.train` needs besides the model and the data; `config_from_spec`
makes one from a job spec, deciding what the device decides (precision, memory format, compile).
`steps_per_epoch` is the count a schedule must be built for, and `seed_everything` seeds every global
RNG. Kept apart from the loop so that building a run's settings does not mean reading the loop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from clrcore.evaluation import EVAL_BATCH_SIZE
from clrcore.loaders import iters_per_epoch
from clrcore.schedules import Schedule

if TYPE_CHECKING:
    from clrcore.specs import TrainSpec

# Read the on-device loss buffer at least this often (in steps), so a NaN stops a run within this many
# steps even with no progress callback and a slow clock.
DIVERGENCE_CHECK_EVERY = 50

# Training drops the ragged last batch (see `steps_per_epoch`).
TRAIN_DROP_LAST = True


@dataclass
class TrainConfig:
    epochs: int
    batch_size: int
    schedule: Schedule  # evaluated per optimizer step (iteration), not per epoch
    optimizer: str = "sgd"  # "sgd" | "adamw"
    momentum: float = 0.9  # SGD momentum or AdamW beta1, when the schedule does not cycle it
    nesterov: bool = False
    weight_decay: float = 5e-4
    beta2: float = 0.999
    bn_bias_lr_scale: float = 1.0  # BatchNorm shifts train at this multiple of the scheduled LR
    norm_shift_decay: bool = False  # decay BatchNorm shifts too, by weight_decay / bn_bias_lr_scale (airbench)
    lookahead: bool = False  # weights pulled towards their moving average late in the run (lookahead.py)
    label_smoothing: float = 0.0
    translate: int = 0
    flip: bool = False
    flip_mode: str = "random"  # "random" | "alternate"; see loaders.alternating_flips
    tta_flip: bool = False
    tta_translate: bool = False
    seed: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"  # "bf16" | "fp32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode; "reduce-overhead" adds CUDA graphs
    checkpoint_path: Path | None = None
    eval_batch_size: int = EVAL_BATCH_SIZE
    normalize: str = "channel"  # "channel" | "pixel_mean" | "unit"; see loaders.normalization
    # Speed switches, each on by default where it pays; the GPU benchmark turns them off one at a time.
    device_data: bool = True  # whole split on the device when it fits; False forces the DataLoader path
    optimizer_impl: str = "auto"  # "auto" (fused on CUDA) | "fused" | "foreach" | "loop"
    sync_every: int = DIVERGENCE_CHECK_EVERY  # steps between reads of the on-device loss buffer


def resolve_device(name: str) -> torch.device:
    """'auto' is CUDA when present, else CPU; CUDA asked for but absent is an error, not a silent CPU run."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available on this machine")
    return torch.device(name)


def config_from_spec(spec: TrainSpec, schedule: Schedule, device: torch.device | str = "auto", *,
                     checkpoint_path: Path | None = None) -> TrainConfig:
    """The trainer's settings for a validated spec: the spec's choices plus what the device decides.

    bf16 autocast and channels_last pay off on CUDA only; on a CPU fp32 is both faster and exact.
    torch.compile is CUDA-only here (on CPU its compile time dwarfs the short runs it would speed up).
    """
    device = resolve_device(device) if isinstance(device, str) else device
    on_cuda = device.type == "cuda"
    precision = spec.precision
    if precision == "auto":
        precision = "bf16" if on_cuda and torch.cuda.is_bf16_supported() else "fp32"
    return TrainConfig(
        epochs=spec.epochs,
        batch_size=spec.batch_size,
        schedule=schedule,
        optimizer=spec.optimizer.name,
        momentum=spec.optimizer.momentum,
        nesterov=spec.optimizer.nesterov,
        weight_decay=spec.optimizer.weight_decay,
        beta2=spec.optimizer.beta2,
        bn_bias_lr_scale=spec.optimizer.bn_bias_lr_scale,
        norm_shift_decay=spec.optimizer.norm_shift_decay,
        lookahead=spec.optimizer.lookahead,
        label_smoothing=spec.label_smoothing,
        translate=spec.augment.translate,
        flip=spec.augment.flip,
        flip_mode=spec.augment.flip_mode,
        tta_flip=spec.tta_flip,
        tta_translate=spec.tta_translate,
        seed=spec.seed,
        device=device,
        precision=precision,
        channels_last=on_cuda,
        compile=spec.compile and on_cuda,
        compile_mode=spec.compile_mode,
        checkpoint_path=checkpoint_path,
        normalize=spec.normalize,
    )


def steps_per_epoch(num_images: int, batch_size: int) -> int:
    """Optimizer steps per epoch for a training split of `num_images`; what the schedule is built for.

    Training drops the ragged last batch (it skews BatchNorm statistics and makes one step of the
    schedule unlike the others), so build the schedule with this count, not ceil(n / batch_size).
    """
    return iters_per_epoch(num_images, batch_size, drop_last=TRAIN_DROP_LAST)


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's `random`, so a seeded run repeats exactly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
