"""Time the first (decode) and second (cache hit) load of the CIFAR-10 JPEG archive.

Prints one JSON object: seconds for the first load, the second and three more cache hits, array
shapes and the cache file size. The cache goes
to a fresh temporary folder, removed afterwards, so the first load always decodes.

    .venv/bin/python bench/decode_cache.py [--archive PATH] [--workers N]

Without --workers it goes through `load_dataset` exactly as a job does (decode processes: the CPU
count, at most 8); --workers 1 times the serial decode.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from clrcore.catalog import CIFAR10_CLASSES
from clrcore.datasets import load_dataset
from clrcore.image_tree import decode_workers, load_image_tree

DEFAULT_ARCHIVE = Path("/work/shared/data/cifar10-jpg.tar.gz")


def timed_load(archive: Path, cache_dir: Path, workers: int | None):
    start = time.perf_counter()
    if workers is None:
        dataset = load_dataset("cifar10", archive.parent, path=archive.name, cache_dir=cache_dir)
    else:
        dataset = load_image_tree(archive, name="cifar10", classes=list(CIFAR10_CLASSES), cache_dir=cache_dir,
                                  workers=workers)
    return dataset, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--workers", type=int, default=None, help="decode processes (default: automatic)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="clr-decode-cache-") as cache:
        first, first_s = timed_load(args.archive, Path(cache), args.workers)
        second, second_s = timed_load(args.archive, Path(cache), args.workers)
        # more hits, since one read of 176 MB is at the mercy of whatever else the machine is doing
        later_s = [timed_load(args.archive, Path(cache), args.workers)[1] for _ in range(3)]
        same = all(
            np.array_equal(a, b)
            for a, b in [(first.train.images, second.train.images), (first.test.labels, second.test.labels)]
        )
        cache_bytes = sum(f.stat().st_size for f in Path(cache).iterdir())
    print(json.dumps({
        "archive": str(args.archive),
        "workers": args.workers if args.workers is not None else decode_workers(None),
        "cpus": os.cpu_count(),
        "train_shape": list(first.train.images.shape),
        "test_shape": list(first.test.images.shape),
        "first_load_s": round(first_s, 3),
        "second_load_s": round(second_s, 3),
        "later_hits_s": [round(t, 3) for t in later_s],
        "cache_hit_identical": same,
        "cache_mb": round(cache_bytes / 2**20, 1),
        "mean": [round(m, 4) for m in first.mean],
        "std": [round(s, 4) for s in first.std],
    }, indent=2))


if __name__ == "__main__":
    main()
