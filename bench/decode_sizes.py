"""Images per second of the mixed-size decode path (decode, shrink, resize to the stored square) at a
training size of 64 and 224 px, on generated JPEG photos of four sizes and aspect ratios.

    nice -n 10 .venv/bin/python bench/decode_sizes.py --images 400 --workers 1 2

No decode cache (each run decodes everything). Prints one JSON line per (size, workers).

With --compare FOLDER: decode into a cache and train one epoch, once decoded into memory and once
streamed into memmapped .npy files (image_stream.py), each in a fresh subprocess; one JSON line per
path with images/s and memory: peak RSS (VmHWM, which counts the memmap's file pages the kernel can
drop) and the peak growth of private memory (Pss_Anon, summed over the process and its DataLoader
workers), sampled every 5 ms. The subprocesses run with MALLOC_MMAP_THRESHOLD_=1 MiB, so glibc
returns freed batches at once and the samples see live memory, not a heap kept for reuse.

    nice -n 10 .venv/bin/python bench/decode_sizes.py --compare /tmp/stream --images 3000 --sizes 128
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clrcore.dataset_types import Dataset
from clrcore.image_tree import load_image_tree
from clrcore.transforms import stored_size

SHAPES = [(320, 240), (500, 375), (640, 480), (480, 640)]  # camera-like sizes, landscape and portrait


def write_archive(path: Path, count: int, scale: int = 1) -> None:
    """`count` JPEGs, a fifth of them test, two classes; `scale` divides the photo sizes."""
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as archive:
        for i in range(count):
            split = "train" if i % 5 else "test"
            width, height = (side // scale for side in SHAPES[i % len(SHAPES)])
            # smooth noise (upsampled) compresses like a photo, unlike white noise
            small = rng.integers(0, 255, size=(height // 16, width // 16, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            info = tarfile.TarInfo(f"{split}/class{i % 2}/{i:05d}.jpg")
            info.size = buffer.tell()
            archive.addfile(info, io.BytesIO(buffer.getvalue()))


def _rollup_kib(pid: int | str, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:  # a worker that just exited
        pass
    return 0


def private_bytes() -> int:
    """Private memory of this process and its children: the sum of their Pss_Anon (anonymous pages,
    a page shared copy-on-write after a fork split between its sharers), not the memmap's file pages."""
    children = []
    for task in Path("/proc/self/task").iterdir():
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    return 1024 * sum(_rollup_kib(pid, "Pss_Anon") for pid in ["self", *children])


class PeakSampler(threading.Thread):
    """The peak of `private_bytes`, read every 50 ms: a copy of the data (what the check guards against)
    lives far longer than that, and reading /proc more often took two thirds of the epoch's time."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak, self.done = private_bytes(), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, private_bytes())


def stream_check(folder: Path, images: int, size: int, path: str) -> dict:
    """Decode (into a fresh cache) and train one epoch of a linear model on 4x4-pooled pixels (the data
    path's cost, not a network's activations); time and memory of each."""
    import torch
    from torch import nn

    from clrcore.dataset_types import Split, make_dataset
    from clrcore.schedules import build_schedule
    from clrcore.train_setup import TrainConfig
    from clrcore.trainer import train

    torch.set_num_threads(1)
    archive = folder / "photos.tar"
    if not archive.exists():
        write_archive(archive, images, scale=3)
    cache = folder / f"cache-{path}"

    def epoch(ds: Dataset) -> None:
        model = nn.Sequential(nn.AvgPool2d(4), nn.Flatten(), nn.Linear(3 * (size // 4) ** 2, len(ds.classes)))
        steps = -(-len(ds.train) // 64)
        schedule = build_schedule("triangular", base_lr=0.01, max_lr=0.1, step_size=steps, total_steps=steps)
        train(model, ds, TrainConfig(epochs=1, batch_size=64, eval_batch_size=64, schedule=schedule, flip=True,
                                     seed=0, weight_decay=0.0))

    # warm up on 128 random images, so torch's one-off allocations (about 100 MB) are in the baseline
    side = stored_size(size)
    rng = np.random.default_rng(0)
    tiny = Split(rng.integers(0, 255, (128, 3, side, side), dtype=np.uint8), np.arange(128) % 2, size)
    epoch(make_dataset("warm-up", tiny, tiny, ["a", "b"]))
    del tiny
    baseline = private_bytes()
    sampler = PeakSampler()
    sampler.start()
    started = time.perf_counter()
    ds = load_image_tree(archive, image_size=size, workers=1, cache_dir=cache,
                         memmap_min_bytes=0 if path == "memmap" else None, max_decoded_bytes=2**40)
    decode_s = time.perf_counter() - started
    n = len(ds.train) + len(ds.test)
    started = time.perf_counter()
    epoch(ds)
    epoch_s = time.perf_counter() - started
    sampler.done.set()
    sampler.join()
    decoded = int(ds.train.images.nbytes + ds.test.images.nbytes)
    return {"path": path, "image_size": size, "stored": int(ds.train.images.shape[-1]), "images": n,
            "decoded_bytes": decoded, "decode_s": round(decode_s, 2), "decode_images_per_s": round(n / decode_s, 1),
            "epoch_s": round(epoch_s, 2), "epoch_images_per_s": round(n / epoch_s, 1),
            "peak_rss_bytes": 1024 * resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "baseline_private_bytes": baseline, "anon_growth_bytes": sampler.peak - baseline}


def compare(folder: Path, images: int, size: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    write_archive(folder / "photos.tar", images, scale=3)
    for path in ("memory", "memmap"):
        out = subprocess.run([sys.executable, __file__, "--stream-check", str(folder), "--path", path,
                              "--images", str(images), "--sizes", str(size)],
                             capture_output=True, text=True, check=True,
                             env={**os.environ, "MALLOC_MMAP_THRESHOLD_": str(2**20)})
        print(out.stdout.strip().splitlines()[-1], flush=True)
    print(json.dumps({"loadavg": [round(x, 2) for x in os.getloadavg()]}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--compare", type=Path, help="memmap against in-memory decode + one epoch, here")
    parser.add_argument("--stream-check", type=Path, help="one decode + epoch in this process, in this folder")
    parser.add_argument("--path", choices=["memory", "memmap"], default="memmap")
    args = parser.parse_args()
    if args.compare is not None:
        compare(args.compare, args.images, args.sizes[0])
        return
    if args.stream_check is not None:
        print(json.dumps(stream_check(args.stream_check, args.images, args.sizes[0], args.path)), flush=True)
        return
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / "photos.tar"
        write_archive(archive, args.images)
        for size in args.sizes:
            for workers in args.workers:
                started, cpu = time.perf_counter(), time.process_time()
                ds = load_image_tree(archive, image_size=size, workers=workers)
                seconds = time.perf_counter() - started
                n = len(ds.train) + len(ds.test)
                print(json.dumps({"image_size": size, "stored": ds.train.images.shape[-1], "workers": workers,
                                  "images": n, "seconds": round(seconds, 2),
                                  "images_per_s": round(n / seconds, 1),
                                  "main_cpu_s": round(time.process_time() - cpu, 2)}), flush=True)


if __name__ == "__main__":
    main()
