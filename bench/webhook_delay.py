"""Delay from a job's final state to the receiver's request, through the real path.

    nice -n 10 .venv/bin/python bench/webhook_delay.py --jobs 60 [--with-load 60]

Starts the API (uvicorn), one training worker, one webhooks worker (`worker.webhook_app`, threads) on
a private key prefix of the local Redis, and a receiver (`http.server`) on loopback. Submits short
range tests one after another, each with `notify` on that receiver, and measures for each the time
from `finished_at` (stamped by the worker's transition, in Redis) to the arrival of the
`job.succeeded` request; the same for `started` (from `started_at`) as a second series.

`--with-load S` runs `bench/load.py --seconds S` beside it (200 status pollers and 50 SSE streams
against its own API and worker, on the same machine and Redis), so the delay is measured while the
machine serves that load. Prints one JSON line: samples, median, p99 and max in ms.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.settings import Settings  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from tests.helpers import WorkerProcess, settings_env  # noqa: E402
from tests.reliability.api_server import ApiServer  # noqa: E402
from tests.webhooks.receiver import Receiver  # noqa: E402

KEY = "hook-secret"
HEADERS = {"Authorization": f"Bearer {KEY}"}
SECRET = "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
JOB = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "train_subset": 200, "batch_size": 32,
       "num_iter": 5}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def summary(delays: list[float]) -> dict:
    ms = [d * 1000 for d in delays]
    return {"samples": len(ms), "median_ms": round(statistics.median(ms), 1),
            "p99_ms": round(percentile(ms, 0.99), 1), "max_ms": round(max(ms), 1)}


def start_webhooks_worker(settings: Settings, log_path: Path, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "celery", "-A", "worker.webhook_app", "worker", "-Q", "webhooks",
               "-P", "threads", "-c", "8", "--without-mingle", "--without-gossip", "-l", "WARNING"]
    return subprocess.Popen(command, cwd=ROOT, env=settings_env(settings, **env),
                            stdout=log_path.open("wb"), stderr=subprocess.STDOUT)


def run(args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="webhook-delay-"))
    hook_env = {"CLR_WEBHOOK_SECRETS": f"hook:{SECRET}", "CLR_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8"}
    settings = Settings(redis_url=os.environ.get("CLR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        key_prefix=f"whdelay-{secrets.token_hex(4)}", artifact_dir=tmp / "artifacts",
                        data_dir=tmp / "data", download=False, open_mode=False, api_keys=f"hook:{KEY}",
                        rate_limit_per_minute=10_000_000, webhook_secrets=hook_env["CLR_WEBHOOK_SECRETS"],
                        webhook_allow_networks="127.0.0.0/8")
    store = JobStore.from_settings(settings)
    receiver = Receiver()
    worker = WorkerProcess(settings, tmp / "worker.log")
    hooks = start_webhooks_worker(settings, tmp / "webhooks.log", hook_env)
    api = ApiServer(settings, tmp / "api.log", **hook_env)
    load = None
    finals: list[float] = []
    starts: list[float] = []
    try:
        worker.wait_ready(store)
        api.start()
        if args.with_load:
            load = subprocess.Popen([sys.executable, str(ROOT / "bench" / "load.py"), "--seconds",
                                     str(args.with_load)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
            time.sleep(15)  # its API and worker start, then its 200 clients begin
        deadline = time.monotonic() + args.max_seconds
        with httpx.Client(base_url=api.url, timeout=30) as client:
            for _ in range(args.jobs):
                if time.monotonic() > deadline or (load is not None and load.poll() is not None):
                    break  # with load: only samples taken while the load runs
                body = {**JOB, "notify": {"url": receiver.url, "events": ["started", "succeeded"]}}
                job_id = client.post("/v1/jobs/range-test", json=body, headers=HEADERS).json()["id"]
                got = {}
                while len(got) < 2 and time.monotonic() < deadline:
                    for request in receiver.requests:
                        payload = json.loads(request["body"])
                        if payload["data"]["id"] == job_id:
                            got[payload["type"]] = request["at"]
                    time.sleep(0.005)
                record = store.records.get(job_id)
                if len(got) == 2 and record and record["state"] == "succeeded":
                    finals.append(got["job.succeeded"] - record["finished_at"])
                    starts.append(got["job.started"] - record["started_at"])
        load_result = None
        if load is not None:
            out, _ = load.communicate(timeout=args.with_load + 180)
            load_result = json.loads(out.strip().splitlines()[-1]) if out.strip() else None
    finally:
        if load is not None and load.poll() is None:
            load.terminate()
        api.stop()
        hooks.terminate()
        hooks.wait(timeout=15)
        worker.stop(timeout=10)
        receiver.close()
        store.delete_all()
    result = {"final_state_to_receiver": summary(finals) if finals else None,
              "started_to_receiver": summary(starts) if starts else None,
              "with_load_seconds": args.with_load}
    if load_result is not None:
        result["load"] = {k: load_result.get(k) for k in ("pollers", "streams", "errors", "p50_ms", "p99_ms",
                                                          "achieved_status_rps")}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60)
    parser.add_argument("--with-load", type=float, default=0, metavar="SECONDS",
                        help="run bench/load.py (200 pollers, 50 streams) this long beside")
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
