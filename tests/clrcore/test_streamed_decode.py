"""Image trees decoded image by image into memmapped .npy caches: the same data and training as the
in-memory path, and memory bounded by a batch rather than the set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from clrcore import image_tree
from clrcore.cache_names import cache_files
from clrcore.image_tree import load_image_tree
from clrcore.loaders import DeviceLoader, HostLoader, make_loader
from clrcore.models import build_model
from clrcore.schedules import build_schedule
from clrcore.train_setup import TrainConfig
from clrcore.trainer import train
from tests.clrcore.test_mixed_sizes import mixed_archive

ROOT = Path(__file__).resolve().parents[2]
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(2**20)}


def _both(tmp_path: Path, image_size: int | None = 24):
    archive = mixed_archive(tmp_path / "photos.tar.gz")
    memory = load_image_tree(archive, cache_dir=tmp_path / "a", image_size=image_size)
    mapped = load_image_tree(archive, cache_dir=tmp_path / "b", image_size=image_size, memmap_min_bytes=0)
    return archive, memory, mapped


def test_streamed_cache_holds_the_in_memory_arrays_and_is_found_by_delete(tmp_path):
    archive, memory, mapped = _both(tmp_path)
    assert isinstance(mapped.train.images, np.memmap) and not isinstance(memory.train.images, np.memmap)
    for a, b in ((memory.train, mapped.train), (memory.test, mapped.test)):
        assert a.images.shape == b.images.shape and np.array_equal(a.images, b.images)
        assert np.array_equal(a.labels, b.labels) and a.crop == b.crop == 24
    assert memory.classes == mapped.classes and memory.mean == mapped.mean and memory.std == mapped.std
    assert memory.source_info == mapped.source_info
    # a second load reads the cache back as memmaps, without decoding
    again = load_image_tree(archive, cache_dir=tmp_path / "b", image_size=24, memmap_min_bytes=0)
    assert isinstance(again.train.images, np.memmap) and np.array_equal(again.test.images, memory.test.images)
    files = cache_files(tmp_path / "b", "imagefolder", archive)
    assert sorted(f.suffix for f in files) == [".npy", ".npy", ".npz"]
    assert all(f.name.startswith(files[0].name.split(".")[0]) for f in files)


def test_below_the_threshold_decodes_in_memory(tmp_path):
    archive = mixed_archive(tmp_path / "photos.tar.gz")
    ds = load_image_tree(archive, cache_dir=tmp_path / "c", image_size=24, memmap_min_bytes=2**40)
    assert not isinstance(ds.train.images, np.memmap)
    assert [f.suffix for f in cache_files(tmp_path / "c", "imagefolder", archive)] == [".npz"]


def test_a_small_set_never_pays_for_the_header_pass(tmp_path, monkeypatch):
    """Streaming on: the decode starts in memory and the header pass (nearly a decode's cost) runs only
    once the decoded bytes reach the threshold."""
    archive = mixed_archive(tmp_path / "photos.tar.gz")
    scans = []
    real_scan = image_tree.scan_tree
    monkeypatch.setattr(image_tree, "scan_tree", lambda *args: scans.append(1) or real_scan(*args))
    small = load_image_tree(archive, cache_dir=tmp_path / "c", image_size=24, memmap_min_bytes=2**30)
    assert not isinstance(small.train.images, np.memmap) and scans == []
    monkeypatch.setattr(image_tree, "DECODE_CHUNK", 8)  # decoded bytes are counted chunk by chunk
    # over the first chunk (at most 8 x 28 x 28 x 3 = 18,816 bytes), under the set's 48 images: a switch midway
    switched = load_image_tree(archive, cache_dir=tmp_path / "d", image_size=24, memmap_min_bytes=20_000)
    assert isinstance(switched.train.images, np.memmap) and scans == [1]
    assert np.array_equal(switched.train.images, small.train.images) and switched.mean == small.mean
    assert sorted(f.suffix for f in cache_files(tmp_path / "d", "imagefolder", archive)) == [".npy", ".npy", ".npz"]
    # past the in-memory cap is the same switch, whatever the threshold
    capped = load_image_tree(archive, cache_dir=tmp_path / "e", image_size=24, memmap_min_bytes=2**30,
                             max_decoded_bytes=1000)
    assert isinstance(capped.train.images, np.memmap) and np.array_equal(capped.test.images, small.test.images)


def test_memmapped_batches_match_the_device_loader(tmp_path):
    _, memory, mapped = _both(tmp_path, image_size=None)  # mixed sizes: crop fitted to the data
    common = dict(device="cpu", mean=memory.mean, std=memory.std, train=True, translate=2, flip=True)
    fast = make_loader(memory.train, 8, generator=torch.Generator().manual_seed(3), **common)
    disk = make_loader(mapped.train, 8, generator=torch.Generator().manual_seed(3), num_workers=0, **common)
    assert isinstance(disk.loader, HostLoader)
    for (xa, ya), (xb, yb) in zip(fast, disk, strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # a memmap that fits the device is copied there a chunk at a time (on CUDA); the same tensor results
    copied = DeviceLoader(mapped.test, 8, device="cpu", mean=memory.mean, std=memory.std, train=False)
    assert not isinstance(copied.images, np.memmap) and torch.equal(copied.images, torch.from_numpy(memory.test.images))


def test_training_on_the_memmap_gives_the_in_memory_losses(tmp_path):
    _, memory, mapped = _both(tmp_path)
    results = []
    for ds in (memory, mapped):
        model = build_model("tiny_cnn", 3, len(ds.classes), 24)
        torch.manual_seed(0)
        for p in model.parameters():
            torch.nn.init.normal_(p, std=0.05)
        schedule = build_schedule("triangular", base_lr=0.01, max_lr=0.1, step_size=2, total_steps=8,
                                  cycle_momentum=False)
        config = TrainConfig(epochs=2, batch_size=8, schedule=schedule, translate=1, flip=True, seed=0)
        results.append(train(model, ds, config))
    assert len(results[0].history["train_loss"]) == 2
    assert results[0].history["train_loss"] == results[1].history["train_loss"]  # bit-identical
    assert results[0].metrics == results[1].metrics


def test_decode_and_epoch_stay_within_a_fraction_of_the_decoded_size(tmp_path):
    """A subprocess decodes ~190 MB of pixels and trains one epoch over them; its private memory
    (Pss_Anon: what the kernel cannot drop, unlike the memmap's file pages) grows by under a quarter
    of that (about 30 MB measured: a few batches). glibc is told to return freed blocks over 1 MB at
    once, so the samples see live memory rather than a heap it keeps for reuse."""
    script = ROOT / "bench" / "decode_sizes.py"
    out = subprocess.run(
        [sys.executable, str(script), "--stream-check", str(tmp_path), "--images", "3000", "--sizes", "128"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **MALLOC_ENV},
    )
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["path"] == "memmap" and row["decoded_bytes"] > 150 * 2**20
    assert row["anon_growth_bytes"] < row["decoded_bytes"] / 4, row
