"""What writing an upload to disk costs per chunk: service.uploads.write_stream on an in-memory body.

write_stream flushes each chunk to the file as it is counted (so the file on disk never lags the bytes
the quota counted). This times it for body pieces of the sizes a socket hands over: 64 KiB (the usual
read) and smaller ones, as a loaded connection delivers them. No server, no network: the disk write alone.

    .venv/bin/python -m bench.upload_write
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio

from service.uploads import UploadRefused, write_stream

TOTAL = 64 * 2**20  # bytes per timed upload


def seconds(piece: int, folder: Path, repeats: int) -> float:
    """Median seconds to write TOTAL bytes in pieces of `piece` bytes."""
    data = b"\0" * piece

    async def body() -> AsyncIterator[bytes]:
        for _ in range(TOTAL // piece):
            yield data

    times = []
    for i in range(repeats):
        path = folder / f"part{i}.zip"
        started = time.perf_counter()
        anyio.run(write_stream, body(), path, TOTAL, UploadRefused(413, "too_large", "over"))
        times.append(time.perf_counter() - started)
        path.unlink()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    print("| piece | MB/s (median of", args.repeats, ") |\n| --- | --- |")
    with tempfile.TemporaryDirectory() as tmp:
        for piece in (65536, 16384, 4096, 1024):
            s = seconds(piece, Path(tmp), args.repeats)
            print(f"| {piece} B | {TOTAL / s / 1e6:.0f} |")


if __name__ == "__main__":
    main()
