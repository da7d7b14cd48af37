"""Images per second of the mixed-size decode path (decode, shrink, resize to the stored square) at a
training size of 64 and 224 px, on generated JPEG photos of four sizes and aspect ratios.

    nice -n 10 .venv/bin/python bench/decode_sizes.py --images 400 --workers 1 2

No decode cache (each run decodes everything). Prints one JSON line per (size, workers).
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from clrcore.image_tree import load_image_tree

SHAPES = [(320, 240), (500, 375), (640, 480), (480, 640)]  # camera-like sizes, landscape and portrait


def write_archive(path: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    with tarfile.open(path, "w") as archive:
        for i in range(count):
            split = "train" if i % 5 else "test"
            width, height = SHAPES[i % len(SHAPES)]
            # smooth noise (upsampled) compresses like a photo, unlike white noise
            small = rng.integers(0, 255, size=(height // 16, width // 16, 3), dtype=np.uint8)
            image = Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=90)
            info = tarfile.TarInfo(f"{split}/class{i % 2}/{i:05d}.jpg")
            info.size = buffer.tell()
            archive.addfile(info, io.BytesIO(buffer.getvalue()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 224])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
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
