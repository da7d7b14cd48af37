"""Measure the API's memory while it takes a large dataset upload: it should stay flat, whatever the size.

Starts the API (uvicorn, open mode, its own Redis key prefix and data dir) in a subprocess, builds a
tar of noise PNGs of about `--mb` megabytes, streams it as a chunked request body, and samples the
server's resident memory (/proc/<pid>/status) every 20 ms. Prints one JSON line: archive size, RSS
before, peak RSS while streaming, peak RSS while validating, and the answer.

    .venv/bin/python scripts/upload_memory.py --mb 200
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import secrets
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
from PIL import Image

log = logging.getLogger("upload_memory")
ROOT = Path(__file__).resolve().parents[1]
SIDE = 512  # a 512x512 RGB noise PNG is about 0.79 MB and does not compress
CHUNK = 64 * 1024


def build_tar(path: Path, megabytes: int) -> int:
    """A valid two-class archive (train and test) of noise images, about `megabytes` in size."""
    count = max(8, int(megabytes * 2**20 / (SIDE * SIDE * 3)))
    with tarfile.open(path, "w") as tar:
        for i in range(count):
            split = "test" if i % 8 < 2 else "train"
            buffer = io.BytesIO()
            Image.frombytes("RGB", (SIDE, SIDE), os.urandom(SIDE * SIDE * 3)).save(buffer, "PNG", compress_level=0)
            info = tarfile.TarInfo(f"{split}/{'ab'[i % 2]}/{i}.png")
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)
    return path.stat().st_size


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not found for pid {pid}")


class Sampler(threading.Thread):
    """Peak RSS of a process per phase ("stream", "validate"), sampled every 20 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.phase, self.peaks, self.done = pid, "stream", {}, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            self.peaks[self.phase] = max(self.peaks.get(self.phase, 0), rss_kib(self.pid))
            time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    work = Path(tempfile.mkdtemp(prefix="upload-memory-"))
    archive = work / "big.tar"
    size = build_tar(archive, args.mb)
    log.info("archive: %.1f MB", size / 2**20)
    env = {**os.environ, "CLR_OPEN_MODE": "true", "CLR_DATA_DIR": str(work / "data"),
           "CLR_KEY_PREFIX": f"memtest-{secrets.token_hex(4)}"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(args.port),
                               "--log-level", "warning"], cwd=ROOT, env=env)
    try:
        base = f"http://127.0.0.1:{args.port}"
        for _ in range(200):
            try:
                httpx.get(f"{base}/healthz", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        httpx.get(f"{base}/v1/datasets", timeout=5).raise_for_status()  # warm every import
        before = rss_kib(server.pid)
        sampler = Sampler(server.pid)
        sampler.start()

        def body() -> Iterator[bytes]:
            with archive.open("rb") as handle:
                while chunk := handle.read(CHUNK):
                    yield chunk
            sampler.phase = "validate"  # the whole body is sent; the server now checks every image

        started = time.perf_counter()
        response = httpx.post(f"{base}/v1/datasets", params={"name": "noise"}, content=body(),
                              headers={"Content-Type": "application/x-tar"}, timeout=600)
        elapsed = time.perf_counter() - started
        sampler.done.set()
        sampler.join()
        print(json.dumps({
            "archive_mb": round(size / 2**20, 1), "status": response.status_code, "seconds": round(elapsed, 1),
            "rss_before_mb": round(before / 1024, 1),
            "rss_peak_streaming_mb": round(sampler.peaks.get("stream", 0) / 1024, 1),
            "rss_peak_validating_mb": round(sampler.peaks.get("validate", 0) / 1024, 1),
            "vm_hwm_mb": round(rss_kib(server.pid, "VmHWM") / 1024, 1),
            "answer": response.json() if response.status_code != 201 else {
                k: response.json()[k] for k in ("id", "bytes", "counts", "width", "channels")},
        }))
        if response.status_code == 201:
            httpx.delete(f"{base}/v1/datasets/{response.json()['id']}", timeout=10)
    finally:
        server.terminate()
        server.wait(timeout=10)
        archive.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
