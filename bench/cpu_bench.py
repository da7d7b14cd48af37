"""How much `clrcore.trainer.train` costs over a bare hand-written PyTorch loop, on the CPU.

Both train the same model (same initial weights) on the same synthetic 32x32 images with the same
batch size, number of steps and SGD settings, without evaluation in the timed part. The trainer's
extras (schedule every iteration, on-device loss buffers, divergence checks, uint8 data normalised per
batch, history) should cost at most a few percent: the goal is a ratio of 0.97 or better.

Runs alternate (bare, trainer, bare, trainer, ...) so drift on a shared machine hits both alike, and
the best of each is kept. Two clocks: wall time (the trainer's `train_s + warmup_s`, which leaves
out evaluation) and process CPU time around the whole call (setup and the one small evaluation
included, so it is the stricter figure); on one thread CPU time shrugs off other processes' load.
Prints one JSON line per run and a final summary line:

    .venv/bin/python bench/cpu_bench.py --threads 1 --steps 100 --repeats 6
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clrcore.datasets import Split, make_dataset
from clrcore.models import build_model
from clrcore.schedules import build_schedule
from clrcore.train_setup import TrainConfig, steps_per_epoch
from clrcore.trainer import train

LR, MOMENTUM, WEIGHT_DECAY = 0.05, 0.9, 5e-4


def synthetic_split(n: int, seed: int, channels: int = 3, size: int = 32) -> Split:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, channels, size, size), dtype=np.uint8)
    return Split(images, rng.integers(0, 10, size=n).astype(np.int64))


def fresh_model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, in_channels=3, num_classes=10, image_size=32)


def bare_loop(name: str, images: torch.Tensor, labels: torch.Tensor, batch_size: int,
              epochs: int) -> tuple[float, float]:
    """A hand-written loop: pre-normalised float images, one permutation per epoch, plain SGD.

    Returns (wall seconds, CPU seconds).
    """
    model = fresh_model(name).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY)
    steps = len(labels) // batch_size
    generator = torch.Generator().manual_seed(0)
    started, cpu_started = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        order = torch.randperm(len(labels), generator=generator)
        for i in range(steps):
            index = order[i * batch_size:(i + 1) * batch_size]
            loss = F.cross_entropy(model(images[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return time.perf_counter() - started, time.process_time() - cpu_started


def trainer_run(name: str, dataset, batch_size: int, epochs: int) -> tuple[float, float]:
    """`train` with a constant schedule and no augmentation.

    Returns (its own train seconds, without evaluation; CPU seconds of the whole call).
    """
    schedule = build_schedule("constant", base_lr=LR, max_lr=LR, step_size=1, total_steps=1)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, schedule=schedule, momentum=MOMENTUM,
                         weight_decay=WEIGHT_DECAY, translate=0, flip=False)
    model = fresh_model(name)
    cpu_started = time.process_time()
    result = train(model, dataset, config)
    return result.timings["train_s"] + result.timings["warmup_s"], time.process_time() - cpu_started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny_cnn")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--steps-per-epoch", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    n = args.steps_per_epoch * args.batch_size
    epochs = args.steps // args.steps_per_epoch
    dataset = make_dataset("bench", synthetic_split(n, 0), synthetic_split(args.batch_size, 1),
                           [str(i) for i in range(10)])
    assert steps_per_epoch(n, args.batch_size) == args.steps_per_epoch
    mean = torch.tensor(dataset.mean).view(1, -1, 1, 1)
    std = torch.tensor(dataset.std).view(1, -1, 1, 1)
    images = (torch.from_numpy(dataset.train.images).float() / 255 - mean) / std
    labels = torch.from_numpy(dataset.train.labels)
    images_per_run = epochs * args.steps_per_epoch * args.batch_size

    trainer_run(args.model, dataset, args.batch_size, 1)  # warm-up: allocator, kernels, imports
    best = {(what, clock): 0.0 for what in ("bare", "trainer") for clock in ("wall", "cpu")}
    for repeat in range(args.repeats):
        for what in ("bare", "trainer"):
            if what == "bare":
                wall, cpu = bare_loop(args.model, images, labels, args.batch_size, epochs)
            else:
                wall, cpu = trainer_run(args.model, dataset, args.batch_size, epochs)
            rates = {"wall": images_per_run / wall, "cpu": images_per_run / cpu}
            for clock, rate in rates.items():
                best[what, clock] = max(best[what, clock], rate)
            print(json.dumps({"what": what, "repeat": repeat, "images_per_s": round(rates["wall"], 1),
                              "images_per_cpu_s": round(rates["cpu"], 1)}), flush=True)
    print(json.dumps({
        "what": "summary", "model": args.model, "threads": args.threads, "batch_size": args.batch_size,
        "steps": epochs * args.steps_per_epoch,
        "bare_images_per_s": round(best["bare", "wall"], 1),
        "trainer_images_per_s": round(best["trainer", "wall"], 1),
        "ratio": round(best["trainer", "wall"] / best["bare", "wall"], 4),
        "bare_images_per_cpu_s": round(best["bare", "cpu"], 1),
        "trainer_images_per_cpu_s": round(best["trainer", "cpu"], 1),
        "ratio_cpu": round(best["trainer", "cpu"] / best["bare", "cpu"], 4),
    }), flush=True)


if __name__ == "__main__":
    main()
