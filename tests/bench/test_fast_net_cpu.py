"""bench/fast_net_cpu.py runs end to end on a tiny archive of the CIFAR-10 layout (a smoke test only)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from clrcore import catalog
from tests.helpers import BENCH_SCRIPT_RUN

ROOT = Path(__file__).resolve().parents[2]


def tiny_cifar_archive(path: Path, train: int = 6, test: int = 2) -> Path:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w:gz") as archive:
        for split, count in (("train", train), ("test", test)):
            for k, cls in enumerate(catalog.CIFAR10_CLASSES):
                for i in range(count):
                    buffer = io.BytesIO()
                    pixels = np.clip(rng.normal(25 * k, 20, (32, 32, 3)), 0, 255).astype(np.uint8)  # learnable
                    Image.fromarray(pixels).save(buffer, "JPEG")
                    info = tarfile.TarInfo(f"{split}/{cls}/{i:04d}.jpg")
                    info.size = buffer.tell()
                    buffer.seek(0)
                    archive.addfile(info, buffer)
    return path


@BENCH_SCRIPT_RUN
def test_fast_net_cpu_prints_a_line_per_variant_and_the_range_test(tmp_path: Path) -> None:
    archive = tiny_cifar_archive(tmp_path / "cifar10-jpg.tar.gz")
    done = subprocess.run(
        [sys.executable, "bench/fast_net_cpu.py", "--data", str(archive), "--train-images", "40",
         "--test-images", "10", "--batch-size", "8", "--epochs", "1", "--sweep-iter", "20", "--seed", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert lines[0]["setup"]["train_images"] == 40 and lines[0]["setup"]["seed"] == 3
    picked = next(line["range_test"] for line in lines if "range_test" in line)["recommendation"]
    variants = [line for line in lines if "variant" in line]
    assert len(variants) == 8 and picked["max_lr"] > 0 and variants[3]["max_lr"] == picked["max_lr"]
    assert variants[6]["flip_mode"] == "alternate" and variants[7]["weight_decay"] == 1.33e-3
    for line in variants:
        assert set(line["test_acc"]) == {"none", "flip", "flip+translate"}
        assert all(0 <= acc <= 1 for acc in line["test_acc"].values()) and len(line["val_acc_by_epoch"]) == 1
