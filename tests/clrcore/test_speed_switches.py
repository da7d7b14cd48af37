"""The trainer's speed switches and input normalisations: each changes how fast, never what is learned.

The GPU benchmark turns these off one at a time on CUDA; here each runs on the CPU and must give the
same training as the default path (torch.compile is stood in for by a plain wrapper, so the per-process
compile cache runs the same code as on a GPU).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from clrcore import compile_cache
from clrcore.datasets import Dataset, Split, load_digits_dataset, make_dataset, pixel_mean
from clrcore.loaders import HostLoader, make_loader, normalization
from clrcore.optim import build_optimizer
from clrcore.schedules import build_schedule
from clrcore.train_setup import TrainConfig
from clrcore.trainer import train

BATCH = 32


@pytest.fixture(scope="module")
def small() -> Dataset:
    digits = load_digits_dataset()
    return make_dataset("digits-small", Split(digits.train.images[:256], digits.train.labels[:256]),
                        Split(digits.test.images[:100], digits.test.labels[:100]), digits.classes)


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(8 * 8 * 8, 10))


def config(**overrides) -> TrainConfig:
    schedule = build_schedule("triangular", base_lr=0.01, max_lr=0.1, step_size=4, total_steps=16)
    fields = {"epochs": 2, "batch_size": BATCH, "schedule": schedule, "translate": 1, "flip": True}
    return TrainConfig(**{**fields, **overrides})


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], exact: bool = True) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6, msg=key)


# ---------------------------------------------------------------- normalisation


def test_pixel_mean_is_the_mean_training_image(small: Dataset) -> None:
    expected = small.train.images.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(pixel_mean(small.train.images, chunk=7), expected, rtol=1e-6)
    assert small.pixel_mean() is small.pixel_mean()  # computed once per dataset


@pytest.mark.parametrize("mode", ["channel", "pixel_mean", "unit"])
def test_each_normalisation_gives_the_documented_inputs(small: Dataset, mode: str) -> None:
    loader = make_loader(small.test, 64, device="cpu", train=False, **normalization(small, mode))
    x, _ = next(iter(loader))
    raw = torch.from_numpy(small.test.images[:64]).double()
    if mode == "channel":
        mean, std = torch.tensor(small.mean).view(1, -1, 1, 1), torch.tensor(small.std).view(1, -1, 1, 1)
        expected = (raw / 255 - mean) / std
    elif mode == "pixel_mean":  # the blog's CIFAR-10: minus the mean image, no scaling
        expected = raw - torch.from_numpy(small.pixel_mean()).double()
    else:  # the blog's Fashion-MNIST: 0..1
        expected = raw / 255
    torch.testing.assert_close(x.double(), expected, rtol=1e-5, atol=1e-4)


def test_unknown_normalisation_is_an_error(small: Dataset) -> None:
    with pytest.raises(ValueError, match="normalize"):
        normalization(small, "zscore")


# ---------------------------------------------------------------- speed switches


@pytest.fixture(scope="module")
def reference(small: Dataset) -> tuple[dict, dict]:
    model = tiny_net(0)
    result = train(model, small, config())
    return weights(model), result.history


@pytest.mark.parametrize("switch", [
    {"sync_every": 1},  # the naive loop's per-step host read
    {"eval_batch_size": 7},  # small evaluation batches
    {"device_data": False},  # DataLoader workers instead of the split held by the device
    {"optimizer_impl": "loop"},
])
def test_switch_trains_exactly_like_the_default_path(small: Dataset, reference, switch: dict) -> None:
    model = tiny_net(0)
    result = train(model, small, config(**switch))
    assert_close(weights(model), reference[0])
    assert result.history["val_acc"] == reference[1]["val_acc"]


@pytest.mark.parametrize("impl", ["foreach", "fused"])
def test_other_optimizer_implementations_agree_to_rounding(small: Dataset, reference, impl: str) -> None:
    model = tiny_net(0)
    train(model, small, config(optimizer_impl=impl))
    assert_close(weights(model), reference[0], exact=False)


def test_device_data_off_uses_the_host_loader(small: Dataset) -> None:
    loader = make_loader(small.train, BATCH, device="cpu", train=True, max_device_bytes=0, num_workers=0,
                         **normalization(small))
    assert isinstance(loader, HostLoader)


def test_unknown_optimizer_impl_is_an_error(small: Dataset) -> None:
    with pytest.raises(ValueError, match="optimizer_impl"):
        build_optimizer(tiny_net(0), config(optimizer_impl="turbo"))


# ---------------------------------------------------------------- compile cache


@pytest.fixture
def fake_compile(monkeypatch) -> list[nn.Module]:
    """torch.compile stand-in that records what it compiled; compile allowed on the CPU."""
    compiled: list[nn.Module] = []

    def compile_model(module: nn.Module, mode: str = "default"):
        compiled.append(module)
        return lambda x: module(x)

    monkeypatch.setattr(compile_cache, "compile_supported", lambda device: True)
    monkeypatch.setattr(compile_cache, "compile_model", compile_model)
    compile_cache.clear_compile_cache()
    yield compiled
    compile_cache.clear_compile_cache()


def test_compiled_net_is_reused_by_the_next_job_with_that_jobs_fresh_weights(small: Dataset,
                                                                            fake_compile) -> None:
    first = tiny_net(0)
    first_result = train(first, small, config(compile=True))
    first_trained = weights(first)
    second = tiny_net(1)
    second_result = train(second, small, config(compile=True, seed=1))

    assert len(fake_compile) == 1  # compiled once, reused for the second job
    assert fake_compile[0] is not first and fake_compile[0] is not second  # a kept twin, not the caller's
    assert first_result.timings["compile_cache_hit"] == 0.0
    assert second_result.timings["compile_cache_hit"] == 1.0
    assert_close(weights(first), first_trained)  # the first job's model is left as it was trained

    plain = tiny_net(1)
    plain_result = train(plain, small, config(seed=1))
    assert_close(weights(second), weights(plain))  # same as an uncompiled run from the same seed
    assert second_result.history["val_acc"] == plain_result.history["val_acc"]


def test_another_architecture_or_precision_compiles_again(small: Dataset, fake_compile) -> None:
    train(tiny_net(0), small, config(compile=True))
    wider = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 16 * 16, 10))
    train(wider, small, config(compile=True))
    train(tiny_net(0), small, replace(config(compile=True), precision="bf16", epochs=1))
    assert len(fake_compile) == 3


def test_compile_stays_off_on_the_cpu(small: Dataset, monkeypatch) -> None:
    compile_cache.clear_compile_cache()
    monkeypatch.setattr(compile_cache, "compile_model", lambda module: pytest.fail("compiled on the CPU"))
    result = train(tiny_net(0), small, config(compile=True, epochs=1))
    assert "compile_cache_hit" not in result.timings


def test_host_loader_is_freed_without_the_cyclic_collector(small: Dataset) -> None:
    # a reference cycle left worker shutdown to the cyclic collector, which cost 5 s per worker
    import gc
    import weakref

    loader = make_loader(small.train, BATCH, device="cpu", train=True, max_device_bytes=0, num_workers=1,
                         **normalization(small))
    assert sum(1 for _ in loader) == len(loader)
    ref = weakref.ref(loader)
    gc.disable()
    try:
        del loader
        assert ref() is None
    finally:
        gc.enable()
