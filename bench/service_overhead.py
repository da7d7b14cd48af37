"""What the service adds to a training job: queueing, progress writes, artifacts, notification.

Runs one training spec twice, alternating, `--repeats` times: through `clr train` in its own process
(job time = the run's own clock, imports excluded) and through the service (POST to a uvicorn API,
one `python -m worker` worker, follow the job's event stream to its end, GET the report). Prints
JSON lines: time from POST to the worker starting the job, training throughput (images/s over the
trainer's own train time) on both paths, and what the service adds: POST to report served, less the
job's own run time, as a share of that run time. Loopback only.

    .venv/bin/python bench/service_overhead.py --epochs 20 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spec(epochs: int) -> dict:
    return {"dataset": "digits", "model": "tiny_cnn", "batch_size": 64, "epochs": epochs,
            "policy": "triangular", "base_lr": 0.01, "max_lr": 0.2, "step_size": max(1, epochs // 4),
            "augment": {"translate": 1, "flip": False}, "device": "cpu"}


def _ts(value: str | float | None) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def direct(spec: dict, work: Path) -> dict:
    """The same job through `clr train` in its own process, as a user would run it."""
    out = work / f"direct-{secrets.token_hex(3)}"
    flags = ["--dataset", spec["dataset"], "--model", spec["model"], "--batch-size", str(spec["batch_size"]),
             "--epochs", str(spec["epochs"]), "--policy", spec["policy"], "--base-lr", str(spec["base_lr"]),
             "--max-lr", str(spec["max_lr"]), "--step-size", str(spec["step_size"]),
             "--augment-translate", str(spec["augment"]["translate"]), "--augment-flip", "false",
             "--device", spec["device"]]
    subprocess.run([sys.executable, "-m", "clrcore.cli", "train", "--quiet", "--out", str(out),
                    "--data-dir", str(work / "data"), *flags], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    summary = json.loads((out / "summary.json").read_text())
    shutil.rmtree(out, ignore_errors=True)
    return {"wall_s": summary["seconds"], "train_s": summary["timings"]["train_s"]}


def through_service(client: httpx.Client, spec: dict) -> dict:
    posted = time.perf_counter()
    job = client.post("/v1/jobs/train", json=spec).raise_for_status().json()
    # Wait on the event stream, as a calling service would: polling every 50 ms costs the API CPU
    # that the training on the same 2 cores then lacks (it cut measured throughput by about 10 %).
    with client.stream("GET", f"/v1/jobs/{job['id']}/events") as events:
        for _ in events.iter_lines():
            pass  # the server closes the stream after the final state
    job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
    if job["state"] != "succeeded":
        raise SystemExit(f"service job {job['state']}: {job.get('error')}")
    client.get(f"/v1/jobs/{job['id']}/report").raise_for_status()
    wall = time.perf_counter() - posted
    return {"wall_s": wall, "train_s": job["result"]["timings"]["train_s"], "job_s": job["result"]["seconds"],
            "queue_s": _ts(job["started_at"]) - _ts(job["created_at"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clr-overhead-"))
    port = _free_port()
    env = {**os.environ, "CLR_OPEN_MODE": "true", "CLR_KEY_PREFIX": f"bench-{secrets.token_hex(4)}",
           "CLR_ARTIFACT_DIR": str(work / "artifacts"), "CLR_DATA_DIR": str(work / "data"),
           "CLR_QUEUE": "cpu", "CLR_DEFAULT_QUEUE": "cpu", "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port),
                          "--log-level", "warning"], cwd=ROOT, env=env),
        subprocess.Popen([sys.executable, "-m", "worker", "--loglevel", "WARNING"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    spec = _spec(args.epochs)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if client.get("/readyz").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
            else:
                raise SystemExit("API/worker not ready in 120 s")
            through_service(client, _spec(1))  # warm both paths: imports, dataset, allocator
            direct(_spec(1), work)
            rows: dict[str, list[dict]] = {"direct": [], "service": []}
            for _ in range(args.repeats):
                rows["direct"].append(direct(spec, work))
                rows["service"].append(through_service(client, spec))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    from clrcore.datasets import load_digits_dataset

    images = len(load_digits_dataset().train) // 64 * 64 * args.epochs
    for path, runs in rows.items():
        best = min(runs, key=lambda r: r["wall_s"])
        print(json.dumps({"what": f"train via {path}", "epochs": args.epochs, "wall_s": round(best["wall_s"], 3),
                          "train_images_per_s": round(images / best["train_s"], 1)}))
    queue = [r["queue_s"] for r in rows["service"]]
    print(json.dumps({"what": "POST to worker start", "median_ms": round(1000 * statistics.median(queue), 1),
                      "max_ms": round(1000 * max(queue), 1)}))
    svc = rows["service"]
    extra = [(r["wall_s"] - r["job_s"]) / r["job_s"] for r in svc]
    ratio = statistics.median(r["train_s"] for r in rows["direct"]) / statistics.median(r["train_s"] for r in svc)
    print(json.dumps({"what": "service overhead", "job_s": round(statistics.median(r["job_s"] for r in svc), 3),
                      "post_to_report_s": round(statistics.median(r["wall_s"] for r in svc), 3),
                      "overhead_pct_of_job_time": round(100 * statistics.median(extra), 2), "goal_pct": 3.0,
                      "train_throughput_service_over_clr": round(ratio, 3)}))


if __name__ == "__main__":
    main()
