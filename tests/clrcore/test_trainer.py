"""The training loop: schedule per iteration, optimizers, resume, reproducibility, divergence, stop, progress.

Everything runs on the CPU on a few hundred 16x16 digits with a tiny convnet, a couple of epochs each.
"""

from __future__ import annotations

import math
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from clrcore.checkpoint import capture_rng_state, load_checkpoint, restore_rng_state, save_checkpoint
from clrcore.datasets import Dataset, Split, load_digits_dataset, make_dataset
from clrcore.evaluation import predict
from clrcore.optim import build_optimizer
from clrcore.schedules import build_schedule
from clrcore.specs import TrainSpec
from clrcore.train_setup import DIVERGENCE_CHECK_EVERY, TrainConfig, config_from_spec, steps_per_epoch
from clrcore.trainer import Hooks, Progress, StopRequested, TrainingDiverged, train
from clrcore.transforms import resize_dataset

BATCH = 32


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_digits_dataset()


@pytest.fixture(scope="module")
def small(digits: Dataset) -> Dataset:
    """256 training and 128 test digits: 8 steps per epoch at batch 32."""
    return make_dataset("digits-small", Split(digits.train.images[:256], digits.train.labels[:256]),
                        Split(digits.test.images[:128], digits.test.labels[:128]), digits.classes)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 10),
    )


def make_config(epochs: int = 2, *, steps: int = 8, optimizer: str = "sgd", base_lr: float = 0.01,
                max_lr: float = 0.1, cycle_momentum: bool = False, **overrides) -> TrainConfig:
    schedule = build_schedule("triangular", base_lr=base_lr, max_lr=max_lr, step_size=max(steps // 2, 1),
                              total_steps=epochs * steps, cycle_momentum=cycle_momentum)
    fields = {"epochs": epochs, "batch_size": BATCH, "schedule": schedule, "optimizer": optimizer,
              "translate": 1, "seed": 0, **overrides}
    return TrainConfig(**fields)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


def without_times(history: dict) -> dict:
    return {k: v for k, v in history.items() if not k.endswith("_time")}


class NaNAt(nn.Module):
    """Wraps a model and poisons its output on the n-th training forward (0-based), to force divergence."""

    def __init__(self, inner: nn.Module, at: int) -> None:
        super().__init__()
        self.inner, self.at, self.calls = inner, at, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls - 1 >= self.at:
                out = out * float("nan")
        return out


# ---------------------------------------------------------------- schedule and optimizers


def test_schedule_sets_lr_and_momentum_before_every_optimizer_step(small: Dataset) -> None:
    config = make_config(epochs=2, cycle_momentum=True)
    seen: list[tuple[float, float]] = []

    def record(optimizer, args, kwargs) -> None:
        group = optimizer.param_groups[0]
        seen.append((group["lr"], group["momentum"]))

    handle = register_optimizer_step_pre_hook(record)
    try:
        result = train(tiny_net(), small, config)
    finally:
        handle.remove()
    total = 2 * steps_per_epoch(len(small.train), BATCH)
    expected_lr = [config.schedule.lr(i) for i in range(total)]
    expected_momentum = [config.schedule.momentum(i) for i in range(total)]
    assert result.history["lr"] == expected_lr
    assert result.history["momentum"] == expected_momentum
    assert [lr for lr, _ in seen] == expected_lr
    assert [m for _, m in seen] == expected_momentum
    assert len(result.history["loss"]) == total and len(result.history["train_loss"]) == 2


@pytest.mark.parametrize(("optimizer", "base_lr", "max_lr"), [("sgd", 0.01, 0.1), ("adamw", 1e-3, 1e-2)])
def test_sgd_and_adamw_lower_the_loss(small: Dataset, optimizer: str, base_lr: float, max_lr: float) -> None:
    config = make_config(epochs=3, optimizer=optimizer, base_lr=base_lr, max_lr=max_lr)
    result = train(tiny_net(), small, config)
    losses = result.history["train_loss"]
    assert losses[-1] < losses[0] * 0.8
    assert result.metrics["test_acc"] > 0.3
    assert result.y_true.shape == result.y_pred.shape == (len(small.test),)


def test_weight_decay_skips_batchnorm_and_biases() -> None:
    model = tiny_net()
    optimizer = build_optimizer(model, make_config(weight_decay=5e-4))
    decayed, plain = optimizer.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0.0
    assert all(p.ndim >= 2 for p in decayed["params"]) and all(p.ndim < 2 for p in plain["params"])
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_batchnorm_shifts_follow_the_schedule_at_their_lr_multiple(small: Dataset) -> None:
    model = tiny_net()
    config = make_config(epochs=1, bn_bias_lr_scale=64.0)
    optimizer = build_optimizer(model, config)
    decayed, plain, shifts = optimizer.param_groups
    norm_biases = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in shifts["params"]} == norm_biases and shifts["weight_decay"] == 0.0
    assert not norm_biases & {id(p) for p in plain["params"]}  # the conv and linear biases stay at 1x
    assert shifts["lr"] == pytest.approx(64 * decayed["lr"])

    seen: list[tuple[float, float]] = []
    handle = register_optimizer_step_pre_hook(
        lambda opt, args, kwargs: seen.append((opt.param_groups[0]["lr"], opt.param_groups[2]["lr"])))
    try:
        result = train(model, small, config)
    finally:
        handle.remove()
    assert [lr for lr, _ in seen] == result.history["lr"]  # the history keeps the weights' LR
    assert all(shift == pytest.approx(64 * lr) for lr, shift in seen)


def test_config_from_spec_on_cpu_is_fp32_without_channels_last() -> None:
    spec = TrainSpec(max_lr=0.1, epochs=3, optimizer={"name": "adamw", "momentum": 0.8}, tta_flip=True)
    schedule = build_schedule("constant", base_lr=0.1, max_lr=0.1, step_size=1, total_steps=1)
    config = config_from_spec(spec, schedule, "cpu")
    assert (config.precision, config.channels_last, config.compile) == ("fp32", False, False)
    assert (config.optimizer, config.momentum, config.epochs, config.tta_flip) == ("adamw", 0.8, 3, True)
    assert config.device == torch.device("cpu")


def test_compile_on_cpu_is_skipped_with_a_warning(small: Dataset, caplog: pytest.LogCaptureFixture) -> None:
    result = train(tiny_net(), small, make_config(epochs=1, compile=True))
    assert "CUDA only" in caplog.text
    assert result.timings["compile_s"] == 0.0 and result.timings["train_s"] > 0


# ---------------------------------------------------------------- digits demo


@pytest.mark.slow
def test_digits_demo_reaches_95_percent_within_10_cpu_seconds(digits: Dataset) -> None:
    """ACCEPTANCE: all 1,437/360 digits, models.tiny_cnn, one triangular cycle of SGD 0.01-0.1 over 6 epochs.

    Timed as CPU time on one thread, so other processes on the machine do not make it flaky.
    """
    from clrcore.models import build_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = build_model("tiny_cnn", in_channels=1, num_classes=10, image_size=16)
        steps, epochs = steps_per_epoch(len(digits.train), 32), 6
        schedule = build_schedule("triangular", base_lr=0.01, max_lr=0.1, step_size=3 * steps,
                                  total_steps=epochs * steps)
        started = time.process_time()
        result = train(model, digits, TrainConfig(epochs=epochs, batch_size=32, schedule=schedule))
        cpu_seconds = time.process_time() - started
    finally:
        torch.set_num_threads(threads)
    assert result.metrics["test_acc"] >= 0.95, result.history["val_acc"]
    assert cpu_seconds < 10.0


# ---------------------------------------------------------------- resume and reproducibility


def stop_after_first_epoch() -> Hooks:
    """Hooks that stop a run once its first epoch's evaluation is done (a checkpoint at epoch 1)."""
    epoch_done = {"value": 0}

    def on_progress(p: Progress) -> None:
        if p.phase == "eval" and p.step == p.steps and "val_acc" in p.metrics:
            epoch_done["value"] = p.epoch

    return Hooks(on_progress=on_progress, should_stop=lambda: epoch_done["value"] >= 1)


@pytest.mark.parametrize("extra", [{}, {"bn_bias_lr_scale": 8.0}, {"lookahead": True}, {"flip_mode": "alternate"}],
                         ids=["plain", "scaled-shift-lr", "lookahead", "alternating-flips"])
def test_resumed_run_equals_uninterrupted_run(small: Dataset, tmp_path: Path, extra: dict) -> None:
    straight_model = tiny_net()
    straight = train(straight_model, small, make_config(epochs=3, flip=True, **extra))

    checkpoint = tmp_path / "last.pt"
    hooks = stop_after_first_epoch()
    with pytest.raises(StopRequested):
        train(tiny_net(), small, make_config(epochs=3, flip=True, checkpoint_path=checkpoint, **extra), hooks=hooks)
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1

    torch.manual_seed(123)  # the global RNG state at resume time must not matter
    resumed_model = tiny_net(seed=7)  # nor the fresh initialisation: the checkpoint replaces it
    resumed = train(resumed_model, small, make_config(epochs=3, flip=True, checkpoint_path=checkpoint, **extra))
    assert resumed.resumed_from == 1 and resumed.epochs_run == 2
    assert_same_weights(straight_model, resumed_model)
    assert without_times(resumed.history) == without_times(straight.history)
    assert np.array_equal(resumed.y_pred, straight.y_pred)


def test_resumed_run_draws_the_same_random_resized_crops(small: Dataset, tmp_path: Path) -> None:
    # Stored as 19 px squares, trained on random-resized 16 px crops (the mixed-size path): the crops'
    # own generator must be checkpointed, or the resumed epochs see other crops than the straight run.
    cropped = resize_dataset(small, 16)
    assert cropped.train.crop == 16 and cropped.train.images.shape[-1] == 19
    straight_model = tiny_net()
    straight = train(straight_model, cropped, make_config(epochs=3, flip=True))

    checkpoint = tmp_path / "last.pt"
    hooks = stop_after_first_epoch()
    with pytest.raises(StopRequested):
        train(tiny_net(), cropped, make_config(epochs=3, flip=True, checkpoint_path=checkpoint), hooks=hooks)
    assert torch.load(checkpoint, weights_only=True)["rng"]["crop"] is not None

    resumed_model = tiny_net(seed=7)
    resumed = train(resumed_model, cropped, make_config(epochs=3, flip=True, checkpoint_path=checkpoint))
    assert resumed.resumed_from == 1
    assert_same_weights(straight_model, resumed_model)
    assert without_times(resumed.history) == without_times(straight.history)


@pytest.mark.parametrize("refuse_from_call", [3, 4], ids=["before-epoch-2-save", "at-epoch-2-rename"])
def test_may_write_turning_false_stops_without_writing_the_checkpoint(
    small: Dataset, tmp_path: Path, refuse_from_call: int
) -> None:
    # Asked twice per checkpoint (before serialising, before the rename): calls 1-2 are epoch 1's.
    checkpoint = tmp_path / "last.pt"
    calls = {"n": 0}

    def may_write() -> bool:
        calls["n"] += 1
        return calls["n"] < refuse_from_call

    with pytest.raises(StopRequested, match="^lease lost: checkpoint of epoch 2"):
        train(tiny_net(), small, make_config(epochs=3, checkpoint_path=checkpoint),
              hooks=Hooks(may_write=may_write))
    assert torch.load(checkpoint, weights_only=True)["epoch"] == 1
    assert calls["n"] == refuse_from_call
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]  # no temp file left behind


def test_lookahead_changes_where_the_run_ends_and_still_learns(small: Dataset) -> None:
    plain_model, averaged_model = tiny_net(), tiny_net()
    train(plain_model, small, make_config(epochs=3))
    result = train(averaged_model, small, make_config(epochs=3, lookahead=True))
    assert not torch.equal(plain_model[0].weight, averaged_model[0].weight)
    assert result.history["train_loss"][-1] < result.history["train_loss"][0]


def test_resuming_a_finished_run_only_evaluates(small: Dataset, tmp_path: Path) -> None:
    config = make_config(epochs=1, checkpoint_path=tmp_path / "last.pt")
    first = train(tiny_net(), small, config)
    again = train(tiny_net(seed=5), small, config)
    assert again.epochs_run == 0 and again.resumed_from == 1
    assert again.metrics["test_acc"] == first.metrics["test_acc"]
    assert np.array_equal(again.y_pred, first.y_pred)


def test_training_loader_is_told_each_epoch(small: Dataset, tmp_path: Path, monkeypatch) -> None:
    import clrcore.trainer as trainer_module

    told: list[int] = []
    real_make_loader = trainer_module.make_loader

    def recording_make_loader(*args, **kwargs):
        made = real_make_loader(*args, **kwargs)
        if kwargs["train"]:
            assert made.flip_mode == "alternate"
            real_set_epoch = made.set_epoch
            made.set_epoch = lambda epoch: (told.append(epoch), real_set_epoch(epoch))
        return made

    monkeypatch.setattr(trainer_module, "make_loader", recording_make_loader)
    checkpoint = tmp_path / "last.pt"
    train(tiny_net(), small, make_config(epochs=2, flip=True, flip_mode="alternate", checkpoint_path=checkpoint))
    train(tiny_net(), small, make_config(epochs=3, flip=True, flip_mode="alternate", checkpoint_path=checkpoint))
    assert told == [0, 1, 2]  # the resumed run starts at the epoch it resumes


def test_same_seed_same_weights(small: Dataset) -> None:
    a, b = tiny_net(), tiny_net()
    ra = train(a, small, make_config(epochs=2, flip=True))
    rb = train(b, small, make_config(epochs=2, flip=True))
    assert_same_weights(a, b)
    assert ra.history["loss"] == rb.history["loss"]


def test_checkpoint_is_a_plain_dict_loadable_with_weights_only(small: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "ck" / "last.pt"
    model = tiny_net()
    train(model, small, make_config(epochs=1, checkpoint_path=path))
    state = torch.load(path, weights_only=True)
    assert {"model", "optimizer", "epoch", "step", "schedule", "rng", "history", "config"} <= state.keys()
    assert state["epoch"] == 1 and state["step"] == steps_per_epoch(len(small.train), BATCH)
    assert state["schedule"]["policy"] == "triangular"
    assert set(state["rng"]) == {"torch", "cuda", "numpy", "python", "loader", "crop"}
    assert_same_weights(model, _loaded(state["model"]))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temp files left behind


def _loaded(state_dict: dict) -> nn.Module:
    model = tiny_net(seed=9)
    model.load_state_dict(state_dict)
    return model


# ---------------------------------------------------------------- divergence, stop, progress


@pytest.mark.parametrize("interval", [0.0, 60.0])
def test_nan_loss_raises_training_diverged_naming_step_and_lr(small: Dataset, interval: float) -> None:
    config = make_config(epochs=2)
    bad_step = 11  # in the second epoch; with a slow clock only the epoch-end check can catch it
    with pytest.raises(TrainingDiverged) as caught:
        train(NaNAt(tiny_net(), at=bad_step), small, config, hooks=Hooks(progress_interval=interval))
    lr = config.schedule.lr(bad_step)
    assert str(caught.value) == f"loss diverged at step {bad_step}, lr {lr:.3g}"
    assert caught.value.step == bad_step and caught.value.lr == lr
    again = pickle.loads(pickle.dumps(caught.value))
    assert str(again) == str(caught.value)


def test_divergence_is_caught_within_the_check_interval_not_at_epoch_end(small: Dataset) -> None:
    model = NaNAt(tiny_net(), at=5)
    config = make_config(epochs=1, steps=64, batch_size=4)  # 64 steps in the epoch
    with pytest.raises(TrainingDiverged, match="^loss diverged at step 5,"):
        train(model, small, config, hooks=Hooks(progress_interval=60))
    assert model.calls <= 1 + DIVERGENCE_CHECK_EVERY < 64


def test_huge_lr_diverges() -> None:
    dataset = _noise_dataset()
    schedule = build_schedule("constant", base_lr=1e38, max_lr=1e38, step_size=1, total_steps=1)
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))  # no BatchNorm to tame the weights
    with pytest.raises(TrainingDiverged, match=r"^loss diverged at step 1, lr 1e\+38$"):
        train(linear, dataset, TrainConfig(epochs=3, batch_size=BATCH, schedule=schedule, weight_decay=0))


def _noise_dataset() -> Dataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(128, 1, 16, 16), dtype=np.uint8)
    labels = rng.integers(0, 10, size=128).astype(np.int64)
    return make_dataset("noise", Split(images, labels), Split(images[:32], labels[:32]), list("0123456789"))


def test_should_stop_stops_within_one_batch(small: Dataset) -> None:
    model = NaNAt(tiny_net(), at=10**9)  # only counts training forwards
    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return model.calls >= 3

    with pytest.raises(StopRequested):
        train(model, small, make_config(epochs=2), hooks=Hooks(should_stop=should_stop))
    assert model.calls == 3


def test_progress_is_monotonic_and_ends_at_one(small: Dataset) -> None:
    events: list[Progress] = []
    hooks = Hooks(on_progress=events.append, progress_interval=0)
    train(tiny_net(), small, make_config(epochs=2), hooks=hooks)
    steps = steps_per_epoch(len(small.train), BATCH)
    train_events = [p for p in events if p.phase == "train"]
    assert [p.step for p in train_events] == sorted(p.step for p in train_events)
    assert train_events[-1].step == train_events[-1].steps == 2 * steps
    assert all(math.isfinite(p.metrics["loss"]) and 0 <= p.metrics["acc"] <= 1 for p in train_events)
    fractions = [p.fraction for p in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    last = events[-1]
    assert last.phase == "eval" and {"val_loss", "val_acc", "train_loss", "train_acc"} <= last.metrics.keys()
    assert last.to_dict()["fraction"] == 1.0


def test_progress_is_throttled(small: Dataset) -> None:
    events: list[Progress] = []
    hooks = Hooks(on_progress=events.append, progress_interval=60)
    train(tiny_net(), small, make_config(epochs=2), hooks=hooks)
    # the first tick, then only the forced ones: train and eval end of each epoch
    assert [(p.phase, p.epoch) for p in events] == [("train", 1), ("train", 1), ("eval", 1),
                                                     ("train", 2), ("eval", 2)]


class CountsEvalForwards(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.eval_calls = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # evaluation reads the 128 test images in one batch; the BatchNorm check reads training batches of 32
        self.eval_calls += not self.training and x.shape[0] != BATCH
        return self.inner(x)


def test_test_time_augmentation_runs_on_the_final_evaluation_only(small: Dataset) -> None:
    model = CountsEvalForwards(tiny_net())
    result = train(model, small, make_config(epochs=2, tta_flip=True, tta_translate=True))
    assert model.eval_calls == 1 + 6  # one batch per evaluation: single view after epoch 1, six views after 2
    final = predict(model.inner, small.test, mean=small.mean, std=small.std, tta_flip=True, tta_translate=True)
    assert result.history["val_acc"][-1] == final.accuracy
    assert np.array_equal(result.y_pred, final.y_pred) and result.y_true.tolist() == small.test.labels.tolist()


def test_predict_with_flip_tta_matches_labels_shape(small: Dataset) -> None:
    prediction = predict(tiny_net(), small.test, mean=small.mean, std=small.std, tta_flip=True, batch_size=50)
    assert prediction.y_true.tolist() == small.test.labels.tolist()
    assert prediction.y_pred.shape == (len(small.test),) and math.isfinite(prediction.loss)


# ---------------------------------------------------------------- checkpoint file


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path: Path) -> None:
    import random

    generator = torch.Generator().manual_seed(3)
    save_checkpoint({"rng": capture_rng_state(generator)}, tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=generator))
    restore_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"], generator)
    second = (torch.rand(3), np.random.rand(3), random.random(), torch.rand(3, generator=generator))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    assert first[2] == second[2] and torch.equal(first[3], second[3])


def test_failed_checkpoint_write_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    save_checkpoint({"epoch": 1}, path)
    with pytest.raises(Exception):  # noqa: B017 - whatever pickling raises, the old file must survive
        save_checkpoint({"epoch": 2, "bad": lambda: None}, path)
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_resume_refuses_a_checkpoint_from_other_settings(small: Dataset, tmp_path: Path) -> None:
    path = tmp_path / "last.pt"
    train(tiny_net(), small, make_config(epochs=1, checkpoint_path=path))
    with pytest.raises(ValueError, match="batch_size"):
        train(tiny_net(), small, make_config(epochs=2, checkpoint_path=path, batch_size=16))


def test_held_batchnorm_statistics_are_checked_and_left_alone(small: Dataset) -> None:
    check = train(tiny_net(), small, make_config(epochs=1)).batchnorm_check
    assert check is not None and not check.refreshed
    assert check.running_loss <= 1.25 * check.batch_loss + 0.1


def test_stale_batchnorm_statistics_are_recomputed_before_the_final_evaluation(small: Dataset) -> None:
    net = tiny_net()
    with torch.no_grad():
        net[0].bias.add_(30.0)  # activations far from the running statistics' initial mean 0 and variance 1
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.0  # ... which then never follow them: stale at the end
    result = train(net, small, make_config(epochs=1))
    check = result.batchnorm_check
    assert check is not None and check.refreshed and check.batches == 8  # all of an epoch's 8 batches
    assert check.running_loss > 1.25 * check.batch_loss + 0.1
    assert result.metrics["test_loss"] < check.running_loss / 2  # evaluated with the recomputed statistics
    assert float(net[1].running_mean.mean()) > 10 and net[1].momentum == 0.0


def test_a_net_without_batchnorm_reports_no_check(small: Dataset) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16 * 16, 10))
    assert train(net, small, make_config(epochs=1)).batchnorm_check is None
