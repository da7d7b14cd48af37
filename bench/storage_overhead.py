"""Issue 13's figures: the object store against the local folder, the same jobs, the same machine.

Runs the same deployment in three modes, rotating the order per repeat: API (uvicorn) plus one worker
with the local folders (the default); API plus one worker with `CLR_STORAGE_URL` pointing at a
SeaweedFS (`weed mini` on free ports) and private folders for each process, the epoch checkpoint
uploaded by the background thread (`store`, the default); and the same with
`CLR_CHECKPOINT_UPLOAD=epoch`, training waiting at each epoch end until the checkpoint is stored
(`store-epoch`). In each deployment it runs the digits job and a CIFAR-10 subset (an image-folder zip
of `--cifar-per-class` training and a fifth as many test JPEGs per class from
../shared/data/cifar10-jpg.tar.gz, uploaded through the API in every mode), each after a 1-epoch
warm-up of the same job. Per job: POST to report served against the job's own run time
(`result.seconds`), as bench/service_overhead.py does, and the trainer's train time (does an upload
slow the loop?). From the store modes: the checkpoint uploads (seconds, bytes) and how long training
waited for them; and, for two jobs on one uploaded dataset in the same worker, what the dataset cache
downloaded.

    nice -n 10 .venv/bin/python bench/storage_overhead.py --epochs 20 --repeats 2 \
        --cifar ../shared/data/cifar10-jpg.tar.gz
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


def cifar_subset(archive: Path, per_class: int) -> bytes:
    """An image-folder zip of the first `per_class` training and `per_class // 5` test JPEGs (by name)
    of every class of the CIFAR-10 JPEG archive (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg)."""
    import tarfile

    wanted = {"train": per_class, "test": max(1, per_class // 5)}
    chosen: dict[str, bytes] = {}
    with tarfile.open(archive) as tar:
        names = sorted(m.name for m in tar.getmembers() if m.isfile() and m.name.endswith(".jpg"))
        picked: dict[tuple[str, str], int] = {}
        keep = []
        for name in names:
            split, cls = name.split("/")[:2]
            if picked.get((split, cls), 0) < wanted.get(split, 0):
                picked[(split, cls)] = picked.get((split, cls), 0) + 1
                keep.append(name)
        for name in keep:
            member = tar.extractfile(name)
            assert member is not None
            chosen[name] = member.read()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zipped:
        for name, data in chosen.items():
            zipped.writestr(name, data)
    return out.getvalue()


def _cifar_spec(dataset_id: str, epochs: int) -> dict:
    return {"dataset": dataset_id, "model": "tiny_cnn", "device": "cpu", "epochs": epochs, "batch_size": 64,
            "policy": "triangular", "base_lr": 0.01, "max_lr": 0.1, "step_size": max(1, epochs // 4),
            "augment": {"translate": 2, "flip": True}}


def _job_row(client: httpx.Client, spec: dict) -> dict:
    """One job through the service, with its storage figures (store modes)."""
    row = through_service(client, spec)
    job = client.get("/v1/jobs", params={"limit": 1}).json()["items"][0]
    storage = job["result"].get("storage") or {}
    uploads = storage.get("checkpoint_upload_s") or []
    row.update({"epochs": spec["epochs"], "resumed_from": job["result"].get("resumed_from") or 0,
                "upload_wait_s": storage.get("upload_wait_s", 0.0),
                "checkpoint_uploads": storage.get("checkpoint_uploads", 0),
                "checkpoint_bytes": storage.get("checkpoint_bytes", 0),
                "upload_median_s": statistics.median(uploads) if uploads else 0.0,
                "upload_max_s": max(uploads) if uploads else 0.0})
    return row


@contextmanager
def deployment(work: Path, store: bool, upload: str = "background",
               lease_seconds: float = 30.0) -> Iterator[httpx.Client]:
    """API + one worker; with `store`, a SeaweedFS between them and no folder shared."""
    port = _free_port()
    env = {**os.environ, "CLR_OPEN_MODE": "true", "CLR_KEY_PREFIX": f"bench-{secrets.token_hex(4)}",
           "CLR_QUEUE": "cpu", "CLR_DEFAULT_QUEUE": "cpu", "OMP_NUM_THREADS": str(os.cpu_count() or 1),
           "CLR_LEASE_SECONDS": str(lease_seconds)}
    procs: list[subprocess.Popen] = []
    api_env, worker_env = dict(env), dict(env)
    if store:
        s3_port = _free_port()
        s3 = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": secrets.token_hex(8),
              "AWS_DEFAULT_REGION": "us-east-1", "CLR_STORAGE_URL": "s3://clr/bench", "CLR_CHECKPOINT_UPLOAD": upload,
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
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a worker slow to shut down on a loaded machine
                proc.kill()
                proc.wait(timeout=10)
        if store:
            pid = (work / "weed" / "weed.pid").read_text().strip()
            subprocess.run(["kill", pid], check=False)


MODES = ("local", "store", "store-epoch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cifar", type=Path, default=None, help="cifar10-jpg.tar.gz (without it: digits only)")
    parser.add_argument("--cifar-per-class", type=int, default=250, help="training JPEGs per class")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--data", default="digits,cifar", help="which jobs: digits, cifar (needs --cifar)")
    parser.add_argument("--lease-seconds", type=float, default=600.0,
                        help="the workers' job lease; long, so a loaded machine starving the lease keeper "
                             "does not hand a job over mid-run (a redelivered job's times mean nothing)")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    cifar = cifar_subset(args.cifar, args.cifar_per_class) if args.cifar else None
    rows: dict[tuple[str, str], list[dict]] = {}
    cache_lines: list[dict] = []
    work = Path(tempfile.mkdtemp(prefix="clr-storage-"))
    try:
        for repeat in range(args.repeats):
            order = modes[repeat % len(modes):] + modes[:repeat % len(modes)]
            for mode in order:
                store, upload = mode != "local", "epoch" if mode == "store-epoch" else "background"
                with deployment(work / f"{mode}-{repeat}", store=store, upload=upload,
                                lease_seconds=args.lease_seconds) as client:
                    jobs = [("digits", _spec(args.epochs), _spec(1))] if "digits" in args.data else []
                    if cifar is not None and "cifar" in args.data:
                        dataset = client.post("/v1/datasets", params={"name": "cifar-subset"}, content=cifar,
                                              headers={"Content-Type": "application/zip"}).raise_for_status().json()
                        jobs.append(("cifar", _cifar_spec(dataset["id"], args.epochs), _cifar_spec(dataset["id"], 1)))
                    for name, spec, warmup in jobs:
                        through_service(client, warmup)
                        row = _job_row(client, spec)
                        rows.setdefault((name, mode), []).append(row)
                        print(json.dumps({"what": "job", "data": name, "mode": mode, "repeat": repeat,
                                          **{k: round(v, 4) for k, v in row.items()}}), flush=True)
                    if mode == "store" and not cache_lines:
                        cache_lines = _dataset_twice(client)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for (name, mode), runs in rows.items():
        extra = [(r["wall_s"] - r["job_s"]) / r["job_s"] for r in runs]
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        print(json.dumps({"what": "summary", "data": name, "mode": mode, "epochs": args.epochs, "repeats": len(runs),
                          "job_s": round(med["job_s"], 3), "post_to_report_s": round(med["wall_s"], 3),
                          "overhead_pct_of_job_time": round(100 * statistics.median(extra), 2),
                          "overhead_pct_each": [round(100 * e, 2) for e in extra],
                          "train_s": round(med["train_s"], 3), "train_s_each": [round(r["train_s"], 2) for r in runs],
                          "job_s_each": [round(r["job_s"], 2) for r in runs],
                          "accuracy": round(med["accuracy"], 4),
                          "checkpoint_uploads": [r["checkpoint_uploads"] for r in runs],
                          "checkpoint_bytes": runs[0]["checkpoint_bytes"],
                          "upload_median_s": round(med["upload_median_s"], 4),
                          "upload_max_s": round(max(r["upload_max_s"] for r in runs), 4),
                          "training_waited_s": round(med["upload_wait_s"], 3)}), flush=True)
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
