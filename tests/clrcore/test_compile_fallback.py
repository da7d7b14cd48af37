"""A compiler that fails must not fail the job: the first step reruns eager, and so does evaluation.

torch.compile itself is stood in for (compiling on this CPU takes over a minute per graph): the stand-in
raises torch's own compiler errors where a machine without gcc or libcuda would, once in the forward
and once in the backward of the first step. Either way the run must equal an eager run bit for bit.
Also here: the warm-up of an eager run is reported apart from training, like a compiled run's.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from clrcore import compile_cache, optim
from clrcore.datasets import Dataset, Split, load_digits_dataset, make_dataset
from clrcore.schedules import build_schedule
from clrcore.train_setup import TrainConfig
from clrcore.trainer import train

BATCH = 32


@pytest.fixture(scope="module")
def small() -> Dataset:
    digits = load_digits_dataset()
    return make_dataset("digits-small", Split(digits.train.images[:256], digits.train.labels[:256]),
                        Split(digits.test.images[:100], digits.test.labels[:100]), digits.classes)


def tiny_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def config(**overrides) -> TrainConfig:
    schedule = build_schedule("triangular", base_lr=0.01, max_lr=0.1, step_size=4, total_steps=16)
    fields = {"epochs": 2, "batch_size": BATCH, "schedule": schedule, "translate": 1, "flip": True}
    return TrainConfig(**{**fields, **overrides})


def compiler_error() -> Exception:
    return torch._dynamo.exc.BackendCompilerFailed(lambda *a: None, RuntimeError("gcc: not found"), None)


class FailingBackward(torch.autograd.Function):
    """Identity forward whose backward fails the way a backward graph that cannot compile does."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        raise compiler_error()


@pytest.fixture
def broken_compiler(monkeypatch) -> dict[str, str]:
    """compile_model stand-in: `where["fails"]` says whether compiling fails in "forward" or "backward"."""
    where = {"fails": "forward", "calls": 0}

    def compile_model(module: nn.Module, mode: str = "default"):
        def compiled(x: torch.Tensor) -> torch.Tensor:
            where["calls"] += 1
            if where["fails"] == "forward":
                raise compiler_error()
            if where["fails"] == "other":
                raise ValueError("a bug in the model, not in the compiler")
            return FailingBackward.apply(module(x))  # the forward ran: BatchNorm statistics moved

        return compiled

    monkeypatch.setattr(compile_cache, "compile_supported", lambda device: True)
    monkeypatch.setattr(compile_cache, "compile_model", compile_model)
    compile_cache.clear_compile_cache()
    yield where
    compile_cache.clear_compile_cache()


@pytest.mark.parametrize("fails", ["forward", "backward"])
def test_a_compile_failure_at_the_first_step_trains_eager_exactly(small: Dataset, broken_compiler, fails) -> None:
    broken_compiler["fails"] = fails
    compiled = tiny_net()
    result = train(compiled, small, config(compile=True))
    eager = tiny_net()
    expected = train(eager, small, config())

    assert broken_compiler["calls"] == 1  # tried once, eager from then on (evaluation too)
    assert result.timings["compile_failed"] == 1.0
    for key, value in eager.state_dict().items():  # BatchNorm statistics of the failed try were undone
        assert torch.equal(compiled.state_dict()[key], value), key
    assert result.history["val_acc"] == expected.history["val_acc"]


def test_an_error_that_is_not_the_compilers_still_fails_the_job(small: Dataset, broken_compiler) -> None:
    broken_compiler["fails"] = "other"
    with pytest.raises(ValueError, match="a bug in the model"):
        train(tiny_net(), small, config(compile=True))


def test_compile_failures_are_told_apart_from_other_errors() -> None:
    assert compile_cache.is_compile_failure(compiler_error())
    try:
        try:
            raise compiler_error()
        except Exception as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert compile_cache.is_compile_failure(outer)  # the cause counts
    assert not compile_cache.is_compile_failure(ValueError("shape mismatch"))


class SlowFirstCall(nn.Module):
    """An eager net whose first forward stalls, as cuDNN's autotuning does on a GPU's first step."""

    def __init__(self, stall_s: float) -> None:
        super().__init__()
        self.net, self.stall_s, self.calls = tiny_net(), stall_s, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == 1:
            time.sleep(self.stall_s)
        return self.net(x)


def test_an_eager_runs_first_step_warm_up_is_reported_apart_from_training(small: Dataset) -> None:
    model = SlowFirstCall(1.5)  # well above a loaded machine's step-to-step noise
    result = train(model, small, config())
    timings, history = result.timings, result.history
    train_clock = sum(t - e for t, e in zip(history["epoch_time"], history["eval_time"], strict=True))
    assert timings["warmup_s"] >= 1.0 and timings["compile_s"] == 0.0
    assert timings["train_s"] <= train_clock - 1.0  # the stall is not training time
    total = timings["train_s"] + timings["eval_s"] + timings["warmup_s"]
    assert total == pytest.approx(sum(history["epoch_time"]), abs=1e-6)


def test_norm_shift_decay_pulls_batchnorm_shifts_as_hard_per_step_as_the_weights() -> None:
    optimizer = optim.build_optimizer(tiny_net(), config(bn_bias_lr_scale=64.0, norm_shift_decay=True,
                                                           weight_decay=1.28e-3))
    shifts = next(g for g in optimizer.param_groups if g.get("lr_scale") == 64.0)
    assert shifts["weight_decay"] == pytest.approx(2e-5) and len(shifts["params"]) == 1
    plain = optim.build_optimizer(tiny_net(), config(bn_bias_lr_scale=64.0))
    assert next(g for g in plain.param_groups if g.get("lr_scale") == 64.0)["weight_decay"] == 0.0


def test_compile_artifacts_round_trip_through_a_file(tmp_path: Path, monkeypatch) -> None:
    # A real CPU compile takes over a minute here; torch's save/load are stood in for, the file is real.
    loaded: list[bytes] = []
    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: (b"compiled code", object()))
    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", lambda data: loaded.append(data) or object())
    path = tmp_path / "compile_artifacts.bin"
    assert compile_cache.save_artifacts(path) == path.stat().st_size > 0
    assert compile_cache.load_artifacts(path) and loaded == [b"compiled code"]
    assert not compile_cache.load_artifacts(tmp_path / "absent.bin")

    monkeypatch.setattr(torch.compiler, "save_cache_artifacts", lambda: None)  # nothing compiled
    assert compile_cache.save_artifacts(tmp_path / "none.bin") == 0 and not (tmp_path / "none.bin").exists()

    def corrupt(data: bytes):
        raise RuntimeError("unpickling failed")

    monkeypatch.setattr(torch.compiler, "load_cache_artifacts", corrupt)
    assert not compile_cache.load_artifacts(path)  # a bad file costs the compile, never the run
