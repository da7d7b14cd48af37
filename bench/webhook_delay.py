"""Delay from a job's final state to the receiver's request, through the real path.

    nice -n 10 .venv/bin/python bench/webhook_delay.py --jobs 60 [--with-load 60]

Starts the API (uvicorn), one training worker, one webhooks worker (`worker.webhook_app`, threads) on
a private key prefix of the local Redis, and a receiver (`http.server`) on loopback. Submits short
range tests one after another, each with `notify` on that receiver, and measures for each the time
from `finished_at` (stamped by the worker's transition, in Redis) to the arrival of the
`job.succeeded` request; the same for `started` (from `started_at`) as a second series.

`--with-load S` runs `bench/load.py` beside it for S seconds (200 status pollers and 50 SSE streams
against its own API and worker, on the same machine and Redis), so the delay is measured while the
machine serves that load. load.py runs at most 600 s, so a longer S chains runs of it; samples are taken
only while one runs its clients (not during a run's start-up). Prints one JSON line: samples, median,
p99 and max in ms (and, with `--raw FILE`, writes every delay there, to pool runs).
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import signal
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


LOAD_CHUNK_S = 600  # bench/load.py's own cap (MAX_SECONDS)
LOAD_START_S = 15  # its API and worker start, then its 200 clients begin


class ChainedLoad:
    """`bench/load.py` for `seconds` in all, as consecutive runs of at most LOAD_CHUNK_S each."""

    def __init__(self, seconds: float) -> None:
        self.left, self.proc, self.results = seconds, None, []
        self.clients_from = self.clients_until = 0.0

    def running(self) -> bool:
        """True while a run's clients are on (not while it starts, nor while it winds down after its
        clients stopped, which can take minutes on a saturated machine); starts the next run when one
        ended and time is left."""
        if self.proc is not None and self.proc.poll() is not None:
            self._collect()
        if self.proc is None and self.left > LOAD_START_S:
            chunk = min(LOAD_CHUNK_S, self.left)
            self.left -= chunk + LOAD_START_S
            self.proc = subprocess.Popen([sys.executable, str(ROOT / "bench" / "load.py"), "--seconds", str(chunk)],
                                         cwd=ROOT, stdout=subprocess.PIPE, text=True)
            self.clients_from = time.monotonic() + LOAD_START_S
            self.clients_until = self.clients_from + chunk
        return self.proc is not None and self.clients_from <= time.monotonic() < self.clients_until

    def done(self) -> bool:
        return self.proc is None and self.left <= LOAD_START_S

    def _collect(self) -> None:
        assert self.proc is not None
        out, _ = self.proc.communicate()
        if out.strip():
            self.results.append(json.loads(out.strip().splitlines()[-1]))
        self.proc = None

    def stop(self) -> None:
        """End a run still going with SIGINT, so its `finally` stops its API and worker and removes its
        keys (SIGTERM left them running, orphaned)."""
        if self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGINT)
                try:
                    self.proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            self._collect()


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
            load = ChainedLoad(args.with_load)
        deadline = time.monotonic() + args.max_seconds
        with httpx.Client(base_url=api.url, timeout=30) as client:
            while len(finals) < args.jobs:
                if time.monotonic() > deadline or (load is not None and load.done()):
                    break
                if load is not None and not load.running():
                    time.sleep(0.5)  # with load: only samples taken while its clients run
                    continue
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
        if load is not None:
            load.stop()
    finally:
        if load is not None:
            load.stop()
        api.stop()
        hooks.terminate()
        hooks.wait(timeout=15)
        worker.stop(timeout=10)
        receiver.close()
        store.delete_all()
    result = {"final_state_to_receiver": summary(finals) if finals else None,
              "started_to_receiver": summary(starts) if starts else None,
              "with_load_seconds": args.with_load}
    if load is not None:
        result["load"] = [{k: r.get(k) for k in ("seconds", "pollers", "streams", "errors", "p50_ms", "p99_ms",
                                                 "achieved_status_rps")} for r in load.results]
    if args.raw is not None:
        args.raw.write_text(json.dumps({"final_state_to_receiver_s": finals, "started_to_receiver_s": starts}))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=60, help="stop after this many samples")
    parser.add_argument("--with-load", type=float, default=0, metavar="SECONDS",
                        help="run bench/load.py (200 pollers, 50 streams) this long beside (runs chained)")
    parser.add_argument("--raw", type=Path, default=None, help="write every delay (seconds) here as JSON")
    parser.add_argument("--max-seconds", type=float, default=300)
    args = parser.parse_args()
    print(json.dumps(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
