"""DeviceLoader and HostLoader on the CPU: shapes, pairing, reproducibility, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clrcore.datasets import Split
from clrcore.loaders import (
    DeviceLoader,
    EpochPlan,
    HostLoader,
    gather_batch,
    iters_per_epoch,
    make_loader,
    plan_epoch,
)

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def labelled_split(n: int = 50, size: int = 6) -> Split:
    """Every image is filled with its own label (per channel offset), so pairing is checkable."""
    labels = np.arange(n, dtype=np.int64)
    images = np.zeros((n, 3, size, size), dtype=np.uint8)
    images += labels[:, None, None, None].astype(np.uint8)
    images += np.array([0, 50, 100], dtype=np.uint8)[None, :, None, None]
    return Split(images, labels)


def ramp_split(n: int = 8, size: int = 6) -> Split:
    """Images whose pixel value is its column index: flips and shifts show in the values."""
    row = np.arange(size, dtype=np.uint8)
    images = np.broadcast_to(row, (n, 3, size, size)).copy()
    return Split(images, np.zeros(n, dtype=np.int64))


def loader(split: Split, seed: int = 0, **kwargs) -> DeviceLoader:
    generator = torch.Generator().manual_seed(seed)
    options = dict(device="cpu", mean=MEAN, std=STD, train=True, generator=generator)
    return DeviceLoader(split, kwargs.pop("batch_size", 16), **{**options, **kwargs})


def raw(x: torch.Tensor, mean=MEAN, std=STD) -> torch.Tensor:
    """Undo the normalisation to get back uint8 pixel values."""
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return ((x * s + m) * 255).round().to(torch.uint8)


def test_iters_per_epoch():
    assert iters_per_epoch(50, 16, drop_last=False) == 4
    assert iters_per_epoch(50, 16, drop_last=True) == 3
    assert iters_per_epoch(48, 16, drop_last=False) == 3
    assert iters_per_epoch(5, 16, drop_last=True) == 1
    assert iters_per_epoch(0, 16, drop_last=False) == 0


@pytest.mark.parametrize("drop_last", [False, True])
def test_batches_have_the_right_shapes_and_types(drop_last):
    batches = list(loader(labelled_split(), drop_last=drop_last))
    assert len(batches) == iters_per_epoch(50, 16, drop_last)
    x, y = batches[0]
    assert x.shape == (16, 3, 6, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert sum(len(y) for _, y in batches) == (48 if drop_last else 50)


def test_labels_stay_paired_with_images_and_epoch_is_a_permutation():
    ys, xs = [], []
    for x, y in loader(labelled_split(), translate=1, flip=True):
        xs.append(raw(x))
        ys.append(y)
    y, x = torch.cat(ys), torch.cat(xs)
    assert sorted(y.tolist()) == list(range(50)) and y.tolist() != list(range(50))
    assert torch.equal(x[:, 0, 0, 0], y.to(torch.uint8))
    assert torch.equal(x[:, 2, 0, 0], y.to(torch.uint8) + 100)


def test_normalisation_uses_mean_and_std():
    x, _ = next(iter(loader(labelled_split(), train=False)))
    expected = (torch.tensor(0.0) / 255 - 0.5) / 0.25
    assert torch.allclose(x[0, 0], expected.expand(6, 6))


def test_eval_loader_keeps_order_and_draws_nothing():
    gen = torch.Generator().manual_seed(3)
    state = gen.get_state()
    dl = loader(labelled_split(), train=False, generator=gen, translate=2, flip=True)
    ys = torch.cat([y for _, y in dl])
    assert ys.tolist() == list(range(50))
    assert torch.equal(gen.get_state(), state)


def test_same_seed_same_batches_and_new_epoch_new_order():
    a = loader(labelled_split(), seed=1, translate=2, flip=True)
    b = loader(labelled_split(), seed=1, translate=2, flip=True)
    first_a, first_b = list(a), list(b)
    for (xa, ya), (xb, yb) in zip(first_a, first_b, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(next(iter(a))[1], first_a[0][1])
    other = loader(labelled_split(), seed=2)
    assert not torch.equal(next(iter(other))[1], first_a[0][1])


def test_generator_state_restores_an_epoch_and_skip_resumes_it():
    dl = loader(labelled_split(), translate=1, flip=True)
    list(dl)
    saved = dl.generator.get_state()
    epoch = list(dl)
    dl.generator.set_state(saved)
    again = list(dl)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch, again, strict=True))
    dl.generator.set_state(saved)
    resumed = list(dl.batches(skip=2))
    assert len(resumed) == len(epoch) - 2 and torch.equal(resumed[0][1], epoch[2][1])


def test_flip_reverses_columns():
    plan = EpochPlan(torch.arange(2), None, None, torch.tensor([True, False]))
    images = torch.from_numpy(ramp_split(2).images)
    out = gather_batch(images, plan)
    assert out[0, 0, 0].tolist() == [5, 4, 3, 2, 1, 0] and out[1, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]


def test_translate_shifts_with_reflection():
    plan = EpochPlan(torch.arange(2), torch.tensor([0, 0]), torch.tensor([2, -1]), None)
    out = gather_batch(torch.from_numpy(ramp_split(2).images), plan)
    assert out[0, 0, 0].tolist() == [2, 3, 4, 5, 4, 3]
    assert out[1, 0, 0].tolist() == [1, 0, 1, 2, 3, 4]


def test_augmentation_keeps_shape_and_flips_about_half():
    split = ramp_split(n=400)
    x, _ = next(iter(loader(split, batch_size=400, flip=True, translate=1, channels_last=True)))
    assert x.shape == (400, 3, 6, 6) and x.is_contiguous(memory_format=torch.channels_last)
    first_row = raw(x)[:, 0, 0]
    flipped = (first_row[:, 0] > first_row[:, -1]).float().mean().item()
    assert 0.35 < flipped < 0.65


def flipped_by_image(dl, epoch: int) -> dict[int, bool]:
    """image id (its label) -> whether that image came out mirrored, for one epoch of `ramp_labelled`."""
    dl.set_epoch(epoch)
    out = {}
    for x, y in dl:
        row = raw(x)[:, 0, 0]
        for label, first, last in zip(y.tolist(), row[:, 0].tolist(), row[:, -1].tolist(), strict=True):
            out[label] = first > last
    return out


def ramp_labelled(n: int = 200) -> Split:
    split = ramp_split(n)
    return Split(split.images, np.arange(n, dtype=np.int64))


def test_alternating_flips_show_every_image_both_ways_over_two_epochs():
    dl = loader(ramp_labelled(), batch_size=64, flip=True, flip_mode="alternate")
    epochs = [flipped_by_image(dl, epoch) for epoch in range(4)]
    assert 0.35 < sum(epochs[0].values()) / 200 < 0.65  # a random half first
    for before, after in zip(epochs, epochs[1:], strict=False):
        assert all(after[i] != before[i] for i in range(200))  # then each image the other way
    assert epochs[2] == epochs[0]
    again = loader(ramp_labelled(), batch_size=64, flip=True, flip_mode="alternate")
    again.generator.set_state(dl.generator.get_state())  # as a resume restores it, many epochs on
    assert flipped_by_image(again, 3) == epochs[3]
    other_seed = loader(ramp_labelled(), seed=7, batch_size=64, flip=True, flip_mode="alternate")
    assert flipped_by_image(other_seed, 0) != epochs[0]


def test_random_flips_do_not_alternate():
    dl = loader(ramp_labelled(), batch_size=64, flip=True)
    first, second = flipped_by_image(dl, 0), flipped_by_image(dl, 1)
    same = sum(first[i] == second[i] for i in range(200)) / 200
    assert 0.35 < same < 0.65


def test_unknown_flip_mode_is_refused():
    with pytest.raises(ValueError, match="flip mode 'sometimes'"):
        plan_epoch(4, train=True, translate=0, flip=True, generator=torch.Generator(), flip_mode="sometimes")


@pytest.mark.parametrize("num_workers", [0, 1])
def test_host_loader_yields_the_same_batches(num_workers):
    split = labelled_split()
    options = dict(device="cpu", mean=MEAN, std=STD, train=True, translate=1, flip=True, flip_mode="alternate")
    device = DeviceLoader(split, 16, generator=torch.Generator().manual_seed(5), **options)
    host = HostLoader(split, 16, generator=torch.Generator().manual_seed(5), num_workers=num_workers,
                      **options)
    assert len(host) == len(device)
    for epoch in range(2):
        device.set_epoch(epoch)
        host.set_epoch(epoch)
        for (xd, yd), (xh, yh) in zip(device, host, strict=True):
            assert torch.equal(yd, yh) and torch.equal(xd, xh)
    resumed_host, resumed_device = list(host.batches(skip=3)), list(device.batches(skip=3))
    assert len(resumed_host) == 1 and torch.equal(resumed_host[0][0], resumed_device[0][0])


def test_make_loader_picks_by_size():
    split = labelled_split()
    common = dict(device="cpu", mean=MEAN, std=STD, train=False)
    assert isinstance(make_loader(split, 8, **common), DeviceLoader)
    assert isinstance(make_loader(split, 8, max_device_bytes=10**6, **common), DeviceLoader)
    host = make_loader(split, 8, max_device_bytes=100, num_workers=0, **common)
    assert isinstance(host, HostLoader) and len(list(host)) == 7
