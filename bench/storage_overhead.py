"""Issue 13's figures: the object store against the local folder, the same jobs, the same machine.

Runs the same deployment twice, alternating the order per repeat: API (uvicorn) plus one worker with
the local folders (the default), and API plus one worker with `CLR_STORAGE_URL` pointing at a SeaweedFS
(`weed mini` on free ports) and private folders for each process. For each job it measures POST to
report served against the job's own run time (`result.seconds`), as bench/service_overhead.py does;
the store's share is the difference between the two modes. From the store-mode jobs it prints the
epoch checkpoint uploads (seconds and bytes per epoch; they run in a background thread, so the
training loop does not wait for them) and, for two jobs on one uploaded dataset in the same worker,
what the dataset cache downloaded.

    nice -n 10 .venv/bin/python bench/storage_overhead.py --epochs 20 --repeats 3
"""

from __future__ import annotations

import argparse
import io
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.service_overhead import _free_port, _spec, through_service  # noqa: E402


def _archive(per_class: int = 60, size: int = 32) -> bytes:
    """An uploadable image-folder zip (3 classes of noisy colour squares) of a few hundred kB."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for k, cls in enumerate(("red", "green", "blue")):
            for split, n in (("train", per_class), ("test", per_class // 3)):
                for i in range(n):
                    pixels = rng.integers(0, 80, (size, size, 3), dtype=np.uint8)
                    pixels[..., k] += 150
                    image = io.BytesIO()
                    Image.fromarray(pixels).save(image, "PNG")
                    archive.writestr(f"{split}/{cls}/{i}.png", image.getvalue())
    return out.getvalue()


@contextmanager
def deployment(work: Path, store: bool) -> Iterator[httpx.Client]:
    """API + one worker; with `store`, a SeaweedFS between them and no folder shared."""
    port = _free_port()
    env = {**os.environ, "CLR_OPEN_MODE": "true", "CLR_KEY_PREFIX": f"bench-{secrets.token_hex(4)}",
           "CLR_QUEUE": "cpu", "CLR_DEFAULT_QUEUE": "cpu", "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    procs: list[subprocess.Popen] = []
    api_env, worker_env = dict(env), dict(env)
    if store:
        s3_port = _free_port()
        s3 = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8),
              "AWS_DEFAULT_REGION": "us-east-1", "CLR_STORAGE_URL": "s3://clr/bench",
              "CLR_S3_ENDPOINT_URL": f"http://127.0.0.1:{s3_port}"}
        subprocess.run(["scripts/objectstore.sh"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                       env={**os.environ, **s3, "S3_PORT": str(s3_port), "S3_DIR": str(work / "weed")})
        for name, target in (("api", api_env), ("worker", worker_env)):
            target.update(s3)
            target.update({"CLR_ARTIFACT_DIR": str(work / name / "artifacts"),
                           "CLR_DATA_DIR": str(work / name / "data"), "CLR_WORKER_DIR": str(work / name / "scratch")})
    else:
        for target in (api_env, worker_env):
            target.update({"CLR_ARTIFACT_DIR": str(work / "artifacts"), "CLR_DATA_DIR": str(work / "data")})
    procs.append(subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port),
                                   "--log-level", "warning"], cwd=ROOT, env=api_env))
    procs.append(subprocess.Popen([sys.executable, "-m", "worker", "--loglevel", "WARNING"], cwd=ROOT,
                                  env=worker_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("API/worker not ready in 120 s")
                time.sleep(0.5)
            yield client
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        if store:
            pid = (work / "weed" / "weed.pid").read_text().strip()
            subprocess.run(["kill", pid], check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spec, warmup = _spec(args.epochs), _spec(1)
    rows: dict[str, list[dict]] = {"local": [], "store": []}
    checkpoints: list[dict] = []
    cache_lines: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="clr-storage-"))
    try:
        for repeat in range(args.repeats):
            order = ("local", "store") if repeat % 2 == 0 else ("store", "local")
            for mode in order:
                with deployment(work / f"{mode}-{repeat}", store=mode == "store") as client:
                    through_service(client, warmup)
                    row = through_service(client, spec)
                    rows[mode].append(row)
                    print(json.dumps({"what": "job", "mode": mode, "repeat": repeat,
                                      **{k: round(v, 3) for k, v in row.items()}}), flush=True)
                    if mode == "store":
                        job = client.get("/v1/jobs", params={"limit": 1}).json()["items"][0]
                        checkpoints.append(job["result"]["storage"])
                        if repeat == 0:
                            cache_lines = _dataset_twice(client)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for mode, runs in rows.items():
        extra = [(r["wall_s"] - r["job_s"]) / r["job_s"] for r in runs]
        print(json.dumps({"what": f"service overhead, {mode}", "epochs": args.epochs, "repeats": len(runs),
                          "job_s": round(statistics.median(r["job_s"] for r in runs), 3),
                          "post_to_report_s": round(statistics.median(r["wall_s"] for r in runs), 3),
                          "overhead_pct_of_job_time": round(100 * statistics.median(extra), 2),
                          "train_s": round(statistics.median(r["train_s"] for r in runs), 3)}))
    uploads = [s for c in checkpoints for s in c["checkpoint_upload_s"]]
    print(json.dumps({"what": "epoch checkpoint uploads (store mode, background thread)",
                      "uploads_per_job": [c["checkpoint_uploads"] for c in checkpoints],
                      "bytes_per_upload": checkpoints[0]["checkpoint_bytes"] if checkpoints else None,
                      "median_s": round(statistics.median(uploads), 4) if uploads else None,
                      "max_s": round(max(uploads), 4) if uploads else None}))
    for line in cache_lines:
        print(json.dumps(line))


def _dataset_twice(client: httpx.Client) -> list[dict]:
    """Upload one archive, train on it twice in the same worker: the second fetch is a cache hit."""
    archive = _archive()
    dataset = client.post("/v1/datasets", params={"name": "bench"}, content=archive,
                          headers={"Content-Type": "application/zip"}).raise_for_status().json()
    spec = {"dataset": dataset["id"], "model": "tiny_cnn", "device": "cpu", "epochs": 1, "batch_size": 32,
            "policy": "triangular", "base_lr": 0.01, "max_lr": 0.05, "step_size": 1,
            "augment": {"translate": 0, "flip": False}}
    lines = []
    for n in (1, 2):
        through_service(client, spec)
        job = client.get("/v1/jobs", params={"limit": 1}).json()["items"][0]
        lines.append({"what": f"job {n} on uploaded dataset ({len(archive)} bytes)",
                      **job["result"]["storage"]["dataset_cache"]})
    return lines


if __name__ == "__main__":
    main()
