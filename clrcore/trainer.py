"""The training loop: a schedule applied every iteration, per-epoch evaluation, checkpoints and resume.

Read `train` top to bottom: set up (device, optimizer, loaders), resume from a checkpoint if there is
one, then for every epoch run `train_epoch` (the batch loop), evaluate on the test split, record the
history and write a checkpoint. Three decisions shape the code:

- No host synchronisation inside the batch loop. Per-step losses and correct counts stay on the device
  in two small buffers; they are read once per progress tick (at most every `Hooks.progress_interval`
  seconds), every `TrainConfig.sync_every` steps and at the epoch end. A GPU never waits on Python.
- Divergence still stops the run: at each of those reads a non-finite loss sum raises
  `TrainingDiverged`, naming the first bad step found in the buffer since the previous read.
- A checkpoint is written at the end of each epoch, with every RNG stream, so a resumed run continues
  bit for bit (on CPU) where the uninterrupted one would have been. A stop request mid-epoch keeps the
  last epoch's checkpoint and drops the partial epoch: resuming mid-epoch would also need the partial
  epoch's loss buffers and running sums in the checkpoint, for at most one epoch of work saved.

The run's settings (`TrainConfig`, `config_from_spec`, `steps_per_epoch`, seeding) live in
`train_setup.py` and the optimizer in `optim.py`, beside `lookahead.py`. What a caller sees (`Progress`,
`Hooks`, `StopRequested`, `TrainingDiverged`) lives in `hooks.py`, the resume checks and the fenced
checkpoint write in `resume.py`, the per-process torch.compile cache in `compile_cache.py`, evaluation
and test-time augmentation in `evaluation.py`. The hooks and errors stay importable from here.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from clrcore import batchnorm_stats, compile_cache, finetune
from clrcore.checkpoint import capture_rng_state, plain
from clrcore.evaluation import Prediction, evaluate
from clrcore.hooks import Hooks, Progress, StopRequested, TrainingDiverged
from clrcore.loaders import make_loader, normalization
from clrcore.lookahead import Lookahead
from clrcore.optim import build_optimizer
from clrcore.resume import config_summary, resume, save_epoch_checkpoint
from clrcore.schedules import set_hyperparams
from clrcore.train_setup import TRAIN_DROP_LAST, TrainConfig, seed_everything

if TYPE_CHECKING:
    from clrcore.datasets import Dataset

log = logging.getLogger(__name__)

# Per-iteration history keys (one value per optimizer step) and per-epoch keys (one per epoch).
ITERATION_KEYS = ("lr", "momentum", "loss")
EPOCH_KEYS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "epoch_time", "eval_time")


# ---------------------------------------------------------------- results


@dataclass
class TrainResult:
    history: dict[str, list]
    metrics: dict[str, float]  # test_loss, test_acc, train_loss, train_acc of the last epoch
    y_true: np.ndarray
    y_pred: np.ndarray
    epochs_run: int  # epochs trained by this call (fewer than config.epochs after a resume)
    resumed_from: int | None  # epochs already done in the checkpoint this call resumed from
    timings: dict[str, float]  # train_s (no eval, no warm-up), eval_s (the BatchNorm check too), warmup_s, compile_s
    # BatchNorm's running statistics checked before the final evaluation (None: no BatchNorm, or resumed
    # from a finished run's checkpoint, whose statistics were checked when it was written)
    batchnorm_check: batchnorm_stats.StatsCheck | None = None


def _autocast(config: TrainConfig) -> AbstractContextManager:
    return torch.autocast(config.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")


# ---------------------------------------------------------------- the batch loop


class _Ticker:
    """Decides when to read the device buffers and when to call `on_progress` (throttled by the clock)."""

    def __init__(self, hooks: Hooks) -> None:
        self.hooks = hooks
        self.last = -math.inf

    def due(self) -> bool:
        now = time.perf_counter()
        if now - self.last >= self.hooks.progress_interval:
            self.last = now
            return True
        return False

    def emit(self, progress: Progress) -> None:
        if self.hooks.on_progress is not None:
            self.hooks.on_progress(progress)

    def check_stop(self, where: str) -> None:
        if self.hooks.should_stop is not None and self.hooks.should_stop():
            raise StopRequested(f"stop requested {where}; the last complete epoch's checkpoint is kept")


@dataclass
class _EpochStats:
    loss: float
    acc: float
    step_losses: list[float]
    lrs: list[float]
    momentums: list[float]
    first_step_s: float = 0.0  # wall time of the first step, measured only when asked (compile cost)


def _read_running(losses: torch.Tensor, correct: torch.Tensor, done: int, seen: int, checked: int,
                  first_step: int, lrs: list[float]) -> tuple[float, float]:
    """Mean loss and accuracy of the epoch so far, in one host sync; raises on a non-finite loss."""
    loss_sum, correct_sum = torch.stack((losses[:done].sum(), correct[:done].sum())).double().tolist()
    if not math.isfinite(loss_sum):
        bad = (~torch.isfinite(losses[checked:done])).nonzero()
        index = checked + int(bad[0]) if len(bad) else done - 1
        raise TrainingDiverged(first_step + index, lrs[index])
    return loss_sum / done, correct_sum / seen


def train_epoch(
    forward: Callable[[torch.Tensor], torch.Tensor],
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    *,
    epoch: int,
    steps: int,
    ticker: _Ticker,
    time_first_step: bool = False,
    lookahead: Lookahead | None = None,
) -> _EpochStats:
    """One pass over the training data; iteration i of the run uses schedule.lr(i) and .momentum(i).

    With `time_first_step` the first step is synchronised and timed: that is where torch.compile works
    and where cuDNN autotunes its kernels (`cudnn.benchmark`), compiled or not.
    With `lookahead` the weights follow its average (see `lookahead.py`).
    """
    started = time.perf_counter()
    first_step_s = 0.0
    device, schedule = config.device, config.schedule
    first_step, total_steps = epoch * steps, config.epochs * steps
    losses = torch.zeros(steps, device=device)
    correct = torch.zeros(steps, device=device)
    lrs: list[float] = []
    momentums: list[float] = []
    seen, checked = 0, 0
    for i, (x, y) in enumerate(loader):
        ticker.check_stop(f"at epoch {epoch + 1}, step {first_step + i}")
        lr, momentum = schedule.lr(first_step + i), schedule.momentum(first_step + i)
        set_hyperparams(optimizer, lr, momentum)  # before this iteration's optimizer step
        lrs.append(lr)
        momentums.append(config.momentum if momentum is None else momentum)

        def forward_backward(x: torch.Tensor = x, y: torch.Tensor = y) -> tuple[torch.Tensor, torch.Tensor]:
            with _autocast(config):
                logits = forward(x)
                loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            return logits, loss

        # the first step compiles (forward and backward): a compiler failure there reruns it eager
        logits, loss = compile_cache.with_eager_fallback(forward, forward_backward) if i == 0 \
            else forward_backward()
        optimizer.step()
        if lookahead is not None:
            lookahead.after_step(first_step + i + 1)

        losses[i] = loss.detach()
        correct[i] = (logits.detach().argmax(dim=1) == y).sum()
        seen += y.shape[0]
        if time_first_step and i == 0:
            _synchronize(device)
            first_step_s = time.perf_counter() - started
        tick = ticker.due()
        if tick or i + 1 - checked >= config.sync_every:
            running_loss, running_acc = _read_running(losses, correct, i + 1, seen, checked, first_step, lrs)
            checked = i + 1
            if tick:
                ticker.emit(Progress("train", epoch + 1, config.epochs, first_step + i + 1, total_steps,
                                     {"loss": running_loss, "acc": running_acc, "lr": lr}))
    done = len(lrs)
    if done == 0:
        return _EpochStats(math.nan, math.nan, [], [], [])
    loss_mean, acc = _read_running(losses, correct, done, seen, checked, first_step, lrs)
    ticker.emit(Progress("train", epoch + 1, config.epochs, first_step + done, total_steps,
                         {"loss": loss_mean, "acc": acc, "lr": lrs[-1]}))
    return _EpochStats(loss_mean, acc, losses[:done].tolist(), lrs, momentums, first_step_s)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _compile_estimate(first_s: float, total_s: float, count: int) -> float:
    """Warm-up hidden in a first step (compiling, cuDNN autotuning, lazy allocations): how much longer
    it took than the average of the others."""
    if count < 2:
        return first_s
    return max(0.0, first_s - (total_s - first_s) / (count - 1))


# ---------------------------------------------------------------- train


def new_history() -> dict[str, list]:
    """Empty history: per-iteration lists (ITERATION_KEYS) and per-epoch lists (EPOCH_KEYS)."""
    return {key: [] for key in (*ITERATION_KEYS, *EPOCH_KEYS)}


def _record_epoch(history: dict[str, list], epoch: int, stats: _EpochStats, prediction: Prediction,
                  epoch_time: float, eval_time: float) -> None:
    history["lr"] += stats.lrs
    history["momentum"] += stats.momentums
    history["loss"] += stats.step_losses
    for key, value in (
        ("epoch", epoch), ("train_loss", stats.loss), ("train_acc", stats.acc),
        ("val_loss", prediction.loss), ("val_acc", prediction.accuracy),
        ("epoch_time", epoch_time), ("eval_time", eval_time),
    ):
        history[key].append(value)


def _evaluate_epoch(forward: Callable[[torch.Tensor], torch.Tensor], loader: Any, config: TrainConfig,
                    ticker: _Ticker, epoch: int, time_first_batch: bool) -> tuple[Prediction, float]:
    """Evaluate after an epoch, with stop checks and throttled progress; also the first batch's seconds.

    Test-time augmentation runs on the final epoch only: it multiplies evaluation work by up to six,
    and only the final predictions make the report. Earlier epochs' val_acc is single-view.
    """
    batches = len(loader)
    final = epoch + 1 == config.epochs
    started = time.perf_counter()
    first_batch_s = 0.0

    def on_batch(done: int) -> None:
        nonlocal first_batch_s
        if time_first_batch and done == 1:
            _synchronize(config.device)
            first_batch_s = time.perf_counter() - started
        ticker.check_stop(f"while evaluating epoch {epoch + 1}")
        if ticker.due():
            ticker.emit(Progress("eval", epoch + 1, config.epochs, done, batches, {}))

    prediction = evaluate(forward, loader, autocast=_autocast(config), tta_flip=final and config.tta_flip,
                          tta_translate=final and config.tta_translate, on_batch=on_batch)
    return prediction, first_batch_s


def train(
    model: nn.Module, dataset: Dataset, config: TrainConfig, *, hooks: Hooks | None = None
) -> TrainResult:
    """Train `model` (moved to config.device in place) on dataset.train, evaluating on dataset.test.

    Resumes from config.checkpoint_path when it exists and writes it after every epoch. Raises
    `StopRequested` when hooks.should_stop() turns true, `TrainingDiverged` on a NaN/inf loss.
    With `config.compile` on CUDA the work happens on a kept compiled twin of `model` (see
    `compile_cache.compiled_forward`) whose trained weights are copied back into `model` at the end.
    """
    hooks = hooks or Hooks()
    ticker = _Ticker(hooks)
    device = config.device
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest kernels once
        torch.set_float32_matmul_precision("high")
    seed_everything(config.seed)

    # -- setup: model, optimizer, data on the device
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    # `net` is what trains: `model` itself, or the kept compiled twin of its architecture
    net, compile_cached = model, False
    forward: Callable[[torch.Tensor], torch.Tensor] = model
    if config.compile and compile_cache.compile_supported(device):
        net, forward, compile_cached = compile_cache.compiled_forward(model, config)  # compiles lazily, on first use
    elif config.compile:
        log.warning("torch.compile is used on CUDA only; training uncompiled on %s", device)
    optimizer = build_optimizer(net, config)
    inputs = normalization(dataset, config.normalize)
    placement: dict[str, Any] = {"max_device_bytes": None if config.device_data else 0}
    train_loader = make_loader(
        dataset.train, config.batch_size, device=device, train=True,
        translate=config.translate, flip=config.flip, flip_mode=config.flip_mode,
        drop_last=TRAIN_DROP_LAST,
        # on the CPU even for CUDA: the loader draws each epoch's order and augmentation from it up
        # front, and a CPU stream gives the same batches on every device and in the host fallback
        generator=torch.Generator().manual_seed(config.seed),
        channels_last=config.channels_last, **inputs, **placement,
    )
    test_loader = make_loader(
        dataset.test, config.eval_batch_size, device=device, train=False,
        channels_last=config.channels_last, **inputs, **placement,
    )
    steps = len(train_loader)
    summary = config_summary(config, steps)
    crop_generator = getattr(train_loader, "crop_generator", None)  # mixed sizes: random-resized crops

    # -- resume: weights, optimizer state, RNG streams and history of the last complete epoch
    history, start_epoch, resumed_from = new_history(), 0, None
    timings = {"train_s": 0.0, "eval_s": 0.0, "warmup_s": 0.0, "compile_s": 0.0}
    checkpoint = Path(config.checkpoint_path) if config.checkpoint_path is not None else None
    if checkpoint is not None and checkpoint.exists():
        start_epoch, history, timings = resume(checkpoint, net, optimizer, train_loader.generator, summary,
                                               crop_generator)
        timings.setdefault("warmup_s", 0.0)  # checkpoints from before warm-up was reported apart
        resumed_from = start_epoch

    # -- the epochs
    last_eval: Prediction | None = None
    batchnorm_check: batchnorm_stats.StatsCheck | None = None
    lookahead = Lookahead(net, config.epochs * steps) if config.lookahead else None  # after `net` is final
    for epoch in range(start_epoch, config.epochs):
        warming = epoch == start_epoch  # this process's first steps: compile and/or cuDNN autotuning
        started = time.perf_counter()
        net.train()
        finetune.set_frozen(net, epoch)
        train_loader.set_epoch(epoch)
        if lookahead is not None:
            lookahead.start_epoch(epoch * steps)
        stats = train_epoch(forward, train_loader, optimizer, config, epoch=epoch, steps=steps, ticker=ticker,
                            time_first_step=warming, lookahead=lookahead)
        if lookahead is not None:
            lookahead.end_epoch()
        trained = time.perf_counter()
        if epoch + 1 == config.epochs:  # stale running statistics would spoil the final evaluation (its time)
            batchnorm_check = batchnorm_stats.check_and_refresh(net, train_loader, _autocast(config))
            if batchnorm_check is not None and batchnorm_check.refreshed:
                log.info("%s", batchnorm_check.note())
        net.eval()
        last_eval, first_eval_s = _evaluate_epoch(forward, test_loader, config, ticker, epoch, warming)
        finished = time.perf_counter()

        warmup_train = warmup_eval = 0.0
        if warming:  # the first steps' excess over a normal step is warm-up, reported apart from training
            warmup_train = _compile_estimate(stats.first_step_s, trained - started, steps)
            warmup_eval = _compile_estimate(first_eval_s, finished - trained, len(test_loader))
        timings["warmup_s"] += warmup_train + warmup_eval
        if forward is not net:  # compiled: the warm-up is mostly compile time
            timings["compile_s"] += warmup_train + warmup_eval
        timings["train_s"] += trained - started - warmup_train
        timings["eval_s"] += finished - trained - warmup_eval

        _record_epoch(history, epoch + 1, stats, last_eval, finished - started, finished - trained)
        log.info("epoch %d/%d: train loss %.4f acc %.4f, val loss %.4f acc %.4f (%.1fs)", epoch + 1,
                 config.epochs, stats.loss, stats.acc, last_eval.loss, last_eval.accuracy, finished - started)

        if checkpoint is not None:
            save_epoch_checkpoint(checkpoint, hooks, epoch + 1, {
                "epoch": epoch + 1,
                "step": (epoch + 1) * steps,
                "model": net.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": plain(config.schedule),
                "rng": capture_rng_state(train_loader.generator, crop_generator),
                "history": history,
                "config": summary,
                "timings": timings,
            })
        ticker.emit(Progress("eval", epoch + 1, config.epochs, len(test_loader), len(test_loader), {
            "train_loss": stats.loss, "train_acc": stats.acc,
            "val_loss": last_eval.loss, "val_acc": last_eval.accuracy,
        }))

    if last_eval is None:  # resumed from the checkpoint of a finished run: evaluate once for the report
        started = time.perf_counter()
        net.eval()
        last_eval = evaluate(forward, test_loader, autocast=_autocast(config), tta_flip=config.tta_flip,
                             tta_translate=config.tta_translate)
        timings["eval_s"] += time.perf_counter() - started
        ticker.emit(Progress("eval", config.epochs, config.epochs, len(test_loader), len(test_loader),
                             {"val_loss": last_eval.loss, "val_acc": last_eval.accuracy}))

    if net is not model:
        model.load_state_dict(net.state_dict())
        model.train(net.training)
    if forward is not net:
        timings["compile_cache_hit"] = float(compile_cached)
        timings["compile_failed"] = float(getattr(forward, "failure", None) is not None)
    metrics = {"test_loss": last_eval.loss, "test_acc": last_eval.accuracy}
    if history["train_loss"]:
        metrics.update(train_loss=history["train_loss"][-1], train_acc=history["train_acc"][-1])
    return TrainResult(
        history=history,
        metrics=metrics,
        y_true=last_eval.y_true,
        y_pred=last_eval.y_pred,
        epochs_run=max(config.epochs - start_epoch, 0),
        resumed_from=resumed_from,
        timings=timings,
        batchnorm_check=batchnorm_check,
    )
