"""What the service adds to a training job: queueing, progress writes, artifacts, notification.

Runs one training spec twice, alternating, `--repeats` times: through `clr train` in its own process
(job time = the run's own clock, imports excluded) and through the service (POST to a uvicorn API,
one `python -m worker` worker, follow the job's event stream to its end, GET the report). Prints
JSON lines: time from POST to the worker starting the job, training throughput (images/s over the
trainer's own train time) on both paths, and what the service adds: POST to report served, less the
job's own run time, as a share of that run time. Loopback only.

    .venv/bin/python bench/service_overhead.py --epochs 20 --repeats 5

With `--preset` it times that preset instead of the digits job, on the GPU worker queue when the device
is CUDA (issue 4's row "POST to report ready within train time + 3 s"); every repeat gets its own line,
so the worker's first job (torch.compile at work) and the warm ones after it show apart:

    python bench/service_overhead.py --preset cifar10-fast --data-dir .data \
        --dataset-path cifar10-jpg.tar.gz --max-lr 2.2 --device cuda --repeats 2 --no-direct
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


def _preset_spec(args: argparse.Namespace, epochs: int | None = None) -> dict:
    spec: dict = {"preset": args.preset, "device": args.device}
    for name in ("dataset_path", "max_lr"):
        if getattr(args, name) is not None:
            spec[name] = getattr(args, name)
    if epochs is not None:
        spec["epochs"] = epochs
    return spec


def _flags(spec: dict, prefix: str = "") -> list[str]:
    """A spec as `clr train` flags: nested fields joined with dashes, booleans spelled out."""
    flags: list[str] = []
    for name, value in spec.items():
        flag = f"{prefix}{name}".replace("_", "-")
        if isinstance(value, dict):
            flags += _flags(value, f"{prefix}{name}-")
        else:
            flags += [f"--{flag}", str(value).lower() if isinstance(value, bool) else str(value)]
    return flags


def _ts(value: str | float | None) -> float:
    if isinstance(value, int | float):
        return float(value)
    return datetime.fromisoformat(str(value)).timestamp()


def direct(spec: dict, work: Path, data_dir: Path) -> dict:
    """The same job through `clr train` in its own process, as a user would run it."""
    out = work / f"direct-{secrets.token_hex(3)}"
    subprocess.run([sys.executable, "-m", "clrcore.cli", "train", "--quiet", "--out", str(out),
                    "--data-dir", str(data_dir), *_flags(spec)], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
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
    result = job["result"]
    return {"wall_s": wall, "train_s": result["timings"]["train_s"], "job_s": result["seconds"],
            "compile_s": result["timings"].get("compile_s", 0.0), "warmup_s": result["timings"].get("warmup_s", 0.0),
            "eval_s": result["timings"].get("eval_s", 0.0),
            "accuracy": result["accuracy"], "max_lr": result["max_lr"],
            "queue_s": _ts(job["started_at"]) - _ts(job["created_at"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=None, help="default 20 for the digits job, the preset's own")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default=None, help="time this preset instead of the digits job")
    parser.add_argument("--dataset-path", default=None, help="with --preset: the archive, inside --data-dir")
    parser.add_argument("--max-lr", type=float, default=None, help="with --preset: fixed, so no range test runs")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (cuda jobs go to the gpu queue)")
    parser.add_argument("--data-dir", type=Path, default=None, help="datasets (default: a scratch folder)")
    parser.add_argument("--no-direct", action="store_true", help="skip the `clr train` runs (service path only)")
    args = parser.parse_args()
    if args.preset:
        spec, warmup = _preset_spec(args, args.epochs), _preset_spec(args, 1)
    else:
        spec, warmup = _spec(args.epochs or 20), _spec(1)
    queue = "gpu" if args.device.startswith("cuda") else "cpu"
    work = Path(tempfile.mkdtemp(prefix="clr-overhead-"))
    data_dir = (args.data_dir or work / "data").resolve()
    port = _free_port()
    env = {**os.environ, "CLR_OPEN_MODE": "true", "CLR_KEY_PREFIX": f"bench-{secrets.token_hex(4)}",
           "CLR_ARTIFACT_DIR": str(work / "artifacts"), "CLR_DATA_DIR": str(data_dir),
           "CLR_QUEUE": queue, "CLR_DEFAULT_QUEUE": queue, "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    procs = [
        subprocess.Popen([sys.executable, "-m", "uvicorn", "service.main:app", "--port", str(port),
                          "--log-level", "warning"], cwd=ROOT, env=env),
        subprocess.Popen([sys.executable, "-m", "worker", "--loglevel", "WARNING"], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    rows: dict[str, list[dict]] = {"direct": [], "service": []}
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
            if not args.preset:  # warm both paths: imports, dataset, allocator
                through_service(client, warmup)
                direct(warmup, work, data_dir)
            for repeat in range(args.repeats):
                if not args.no_direct:
                    rows["direct"].append(direct(spec, work, data_dir))
                rows["service"].append(through_service(client, spec))
                if args.preset:
                    print(json.dumps({"what": f"{args.preset} through the service", "repeat": repeat,
                                      "worker": "cold (first job)" if repeat == 0 else "warm",
                                      **{k: round(v, 3) for k, v in rows["service"][-1].items()},
                                      "post_to_report_minus_train_s": round(
                                          rows["service"][-1]["wall_s"] - rows["service"][-1]["train_s"], 3),
                                      "goal_s": 3.0}), flush=True)
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    if args.preset:
        return
    from clrcore.datasets import load_digits_dataset

    images = len(load_digits_dataset().train) // 64 * 64 * spec["epochs"]
    for path, runs in rows.items():
        if not runs:
            continue
        best = min(runs, key=lambda r: r["wall_s"])
        print(json.dumps({"what": f"train via {path}", "epochs": spec["epochs"], "wall_s": round(best["wall_s"], 3),
                          "train_images_per_s": round(images / best["train_s"], 1)}))
    queued = [r["queue_s"] for r in rows["service"]]
    print(json.dumps({"what": "POST to worker start", "median_ms": round(1000 * statistics.median(queued), 1),
                      "max_ms": round(1000 * max(queued), 1)}))
    svc = rows["service"]
    extra = [(r["wall_s"] - r["job_s"]) / r["job_s"] for r in svc]
    line = {"what": "service overhead", "job_s": round(statistics.median(r["job_s"] for r in svc), 3),
            "post_to_report_s": round(statistics.median(r["wall_s"] for r in svc), 3),
            "overhead_pct_of_job_time": round(100 * statistics.median(extra), 2), "goal_pct": 3.0}
    if rows["direct"]:
        line["train_throughput_service_over_clr"] = round(
            statistics.median(r["train_s"] for r in rows["direct"]) / statistics.median(r["train_s"] for r in svc), 3)
    print(json.dumps(line))


if __name__ == "__main__":
    main()
