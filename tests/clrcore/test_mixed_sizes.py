"""Photos of mixed sizes, aspect ratios and modes: decoded to one training size, cropped per batch."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from clrcore.datasets import dataset_info, load_dataset
from clrcore.loaders import make_loader
from clrcore.runs import run_job
from clrcore.specs import TrainSpec
from clrcore.transforms import CroppedLoader, stored_size

# (width, height, mode): four sizes, three aspect ratios, grayscale and colour mixed
SHAPES = [(40, 30, "RGB"), (64, 64, "L"), (50, 80, "RGB"), (120, 72, "L")]


def photo(label: int, width: int, height: int, mode: str, seed: int) -> bytes:
    """A class-dependent picture: class 0 bright in the top half, class 1 in the bottom (flips keep it)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(height, width, 3)).astype(np.uint8)
    half = slice(0, height // 2) if label == 0 else slice(height // 2, height)
    pixels[half] += 180
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG" if mode == "RGB" else "PNG")
    return buffer.getvalue()


def mixed_archive(path: Path, per_class: int = 16) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for split, count in (("train", per_class), ("test", per_class // 2)):
            for label, cls in enumerate(("top", "bottom")):
                for i in range(count):
                    width, height, mode = SHAPES[i % len(SHAPES)]
                    data = photo(label, width, height, mode, seed=hash((split, cls, i)) % 2**32)
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:03d}.{'jpg' if mode == 'RGB' else 'png'}")
                    info.size = len(data)
                    archive.addfile(info, io.BytesIO(data))
    return path


def test_mixed_archive_decodes_to_the_asked_size_with_the_conversion_reported(tmp_path):
    archive = mixed_archive(tmp_path / "photos.tar.gz")
    ds = load_dataset("imagefolder", tmp_path, path=archive.name, image_size=48)
    side = stored_size(48)
    assert ds.train.images.shape == (32, 3, side, side) and ds.train.crop == ds.test.crop == 48
    info = dataset_info(ds)
    assert info["input_shape"] == [3, 48, 48]
    assert info["grayscale_converted_to_rgb"] == 24  # half of the 48 files are grayscale
    sizes = {(s["width"], s["height"]): s["count"] for s in info["sizes"]["most_common"]}
    assert sizes == {(40, 30): 12, (64, 64): 12, (50, 80): 12, (120, 72): 12}
    assert info["sizes"]["min"] == {"width": 40, "height": 30} and info["sizes"]["aspect_ratio"]["max"] == 1.667
    # converted grayscale images have three equal channels
    gray = ds.train.images[1]  # file 001 is 64x64 L
    assert np.array_equal(gray[0], gray[1]) and np.array_equal(gray[1], gray[2])


def test_default_size_fits_the_data_and_the_cache_is_per_size(tmp_path):
    archive = mixed_archive(tmp_path / "photos.tar.gz")
    ds = load_dataset("imagefolder", tmp_path, path=archive.name)
    assert ds.train.crop == 48  # median shorter side 61 * 0.875, to a multiple of 8
    load_dataset("imagefolder", tmp_path, path=archive.name, image_size=32)
    caches = sorted(p.name for p in (tmp_path / ".cache").glob("*.npz"))
    assert len(caches) == 2 and any("-32px-" in name for name in caches)
    again = load_dataset("imagefolder", tmp_path, path=archive.name, image_size=32)
    assert again.train.images.shape[-1] == stored_size(32) and again.source_info["grayscale_converted_to_rgb"] == 24


def test_loaders_cut_random_crops_for_training_and_the_centre_for_evaluation(tmp_path):
    ds = load_dataset("imagefolder", tmp_path, path=mixed_archive(tmp_path / "p.tar.gz").name, image_size=32)
    common = dict(device="cpu", mean=ds.mean, std=ds.std)
    train = make_loader(ds.train, 8, train=True, flip=True, generator=torch.Generator().manual_seed(0), **common)
    test = make_loader(ds.test, 8, train=False, **common)
    assert isinstance(train, CroppedLoader) and len(train) == 4
    first = [x for x, _ in train]
    second = [x for x, _ in train]
    assert all(x.shape == (8, 3, 32, 32) for x in first)
    assert not torch.equal(first[0], second[0])  # new crops every epoch
    evaluated = [x for x, _ in test]
    assert evaluated[0].shape == (8, 3, 32, 32)
    assert torch.equal(evaluated[0], next(iter(test))[0])  # evaluation is deterministic


def test_a_training_run_on_the_mixed_archive(tmp_path):
    mixed_archive(tmp_path / "photos.tar.gz", per_class=24)
    spec = TrainSpec(dataset="imagefolder", dataset_path="photos.tar.gz", model="small_cnn", image_size=32,
                     epochs=4, batch_size=16, max_lr=0.05, policy="one_cycle", device="cpu")
    summary = run_job(spec, tmp_path / "run", data_dir=tmp_path)
    assert summary["accuracy"] >= 0.75  # top-versus-bottom brightness is easy at any size
