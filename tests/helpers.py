"""What several test modules share, in one place: no test module imports another one or a conftest.

Worker subprocesses, the API keys and specs the service tests use, the helpers that submit a job
straight to a worker and wait for it, SSE parsing, the endpoint tables the access tests walk.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from clrcore.specs import parse_spec
from jobs.queues import RUN_JOB
from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from jobs.workers import WorkerRegistry

if TYPE_CHECKING:
    from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[1]
WORKER_START_TIMEOUT_S = 90.0


def settings_env(settings: Settings, **overrides: str) -> dict[str, str]:
    """Environment variables that give a subprocess (worker, API server) these settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLR_")}
    for name in ("redis_url", "key_prefix", "artifact_dir", "data_dir", "download", "open_mode",
                 "lease_seconds", "heartbeat_seconds", "sweep_interval", "progress_interval",
                 "visibility_timeout", "max_deliveries", "job_time_limit", "queue", "requeue_after_seconds"):
        value = getattr(settings, name)
        env[f"CLR_{name.upper()}"] = str(value).lower() if isinstance(value, bool) else str(value)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **overrides})
    return env


class WorkerProcess:
    """A real `celery worker` subprocess with this session's settings; its log goes to a file."""

    def __init__(self, settings: Settings, log_path: Path, wrap: Sequence[str] = (), **env: str) -> None:
        """`wrap`: a command prefix (e.g. `ip netns exec NS`) that must exec the worker, keeping its pid."""
        self.log_path = log_path
        self.queue = env.get("CLR_QUEUE", settings.queue)
        name = f"w{secrets.token_hex(3)}@%h"
        command = [*wrap, sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", "solo",
                   "-c", "1", "-Q", self.queue, "-n", name, "--without-mingle", "--without-gossip",
                   "-l", "INFO"]
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(command, cwd=ROOT, env=settings_env(settings, **env),
                                     stdout=self._log, stderr=subprocess.STDOUT)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, store: JobStore, timeout: float = WORKER_START_TIMEOUT_S) -> None:
        """Until the worker's heartbeat appears (it is sent once torch is loaded and it consumes)."""
        registry = WorkerRegistry(store.redis, store.prefix)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with {self.proc.returncode}:\n{self.log_tail()}")
            if any(w["pid"] == self.pid for w in registry.live_workers(5.0)):
                return
            time.sleep(0.2)
        raise TimeoutError(f"worker not ready after {timeout} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no shutdown handler runs, the job's message stays unacknowledged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> None:
        """Warm shutdown (SIGTERM), then SIGKILL if it does not end in time."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")[-chars:]


# A whole benchmark script run end to end takes minutes on 2 cores: opt-in, so `make test` stays near ten
# minutes. `CLR_SLOW_TESTS=1 make test` runs them too (and the 60,000-JPEG decode).
BENCH_SCRIPT_RUN = pytest.mark.skipif(os.environ.get("CLR_SLOW_TESTS") != "1",
                                      reason="set CLR_SLOW_TESTS=1 (runs a whole benchmark script)")

ALICE = {"Authorization": "Bearer alice-secret"}
BOB = {"Authorization": "Bearer bob-secret"}
WRONG = {"Authorization": "Bearer not-a-key"}

def mark_running(store: JobStore, job_id: str, holder: str = "test-driver") -> None:
    """Move a job to running the way a worker does, lease first: the sweeper of any worker process
    still alive in the session hands running jobs without a lease back to the queue (twice a second)."""
    assert store.leases.claim(job_id, holder, 300)
    store.records.transition(job_id, JobState.RUNNING)


RANGE_TEST = {"dataset": "digits", "model": "tiny_cnn", "batch_size": 32, "num_iter": 10}
TRAIN = {"dataset": "digits", "model": "tiny_cnn", "epochs": 2, "batch_size": 32, "base_lr": 0.001,
         "max_lr": 0.05, "step_size": 1}


OWNER = "worker-tests"
FINAL = {s.value for s in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)}


def train_spec(**overrides) -> dict:
    """A digits training job that takes about a second per few epochs on one CPU thread."""
    spec = {"kind": "train", "dataset": "digits", "model": "tiny_cnn", "device": "cpu", "epochs": 2,
            "train_subset": 500, "batch_size": 64, "policy": "triangular", "base_lr": 0.01,
            "max_lr": 0.1, "step_size": 1, "augment": {"translate": 0, "flip": False}, **overrides}
    return parse_spec(spec).model_dump(mode="json")


def range_test_spec(**overrides) -> dict:
    spec = {"kind": "range_test", "dataset": "digits", "model": "tiny_cnn", "device": "cpu",
            "train_subset": 500, "batch_size": 64, "num_iter": 20, **overrides}
    return parse_spec(spec).model_dump(mode="json")


def submit(store: JobStore, sender, spec: dict, queue: str = "cpu", send: bool = True) -> str:
    job_id = store.records.create(spec["kind"], spec, OWNER, queue=queue)["id"]
    if send:
        sender.send_task(RUN_JOB, args=[job_id], queue=queue)
    return job_id


def wait_for(
    store: JobStore, job_id: str, done: Callable[[dict], bool] = lambda r: r["state"] in FINAL,
    timeout: float = 60.0,
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = store.records.get(job_id)
        if done(record):
            return record
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} still {store.records.get(job_id)}")


def parse_sse(text: str) -> list[dict]:
    """Events of an SSE body as dicts with id, event and (JSON-decoded) data; pings (comments) dropped."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict = {}
        for line in block.split("\n"):
            key, sep, value = line.partition(": ")
            if sep and key in ("id", "event", "data"):
                fields[key] = value
        if "data" in fields:
            fields["data"] = json.loads(fields["data"])
            events.append(fields)
    return events


JOB_ENDPOINTS = [
    ("GET", "/v1/jobs/{id}"),
    ("POST", "/v1/jobs/{id}/cancel"),
    ("GET", "/v1/jobs/{id}/events"),
    ("GET", "/v1/jobs/{id}/plots/history.png"),
    ("GET", "/v1/jobs/{id}/report"),
    ("GET", "/v1/jobs/{id}/report?format=text"),
    ("GET", "/v1/jobs/{id}/artifacts/spec.json"),
    ("GET", "/v1/jobs/{id}/artifacts/checkpoint"),
    ("POST", "/v1/jobs/{id}/suggest"),
    ("GET", "/v1/jobs/{id}/deliveries"),
]
# Job endpoints that name a thing inside the job: the owner gets 404 for one that does not exist.
JOB_PART_ENDPOINTS = [
    ("POST", "/v1/jobs/{id}/deliveries/msg_0123456789abcdef01234567/redeliver"),
]
OTHER_ENDPOINTS = [
    ("POST", "/v1/jobs/range-test"),
    ("POST", "/v1/jobs/train"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/datasets"),
    ("GET", "/v1/models"),
    ("GET", "/v1/presets"),
]
# Endpoints that remove the job: refused like the others, but never called with the owner's key here
# (the shared finished job must stay); tests/service/test_delete_job.py covers the owner's side.
REMOVING_JOB_ENDPOINTS = [
    ("DELETE", "/v1/jobs/{id}"),
]
BODIES = {"/v1/jobs/range-test": RANGE_TEST, "/v1/jobs/train": TRAIN}
SUGGEST_ROUTE = re.compile(r"/v1/jobs/[^/]+/suggest")


def body_for(path: str) -> dict | None:
    """The JSON body a matrix test sends to `path` (a job's suggest route takes its settings)."""
    path = path.split("?")[0]
    return {"rule": "valley"} if SUGGEST_ROUTE.fullmatch(path) else BODIES.get(path)


def write_range_test_log(run: Path, points: int = 120) -> Path:
    """A range_test_log.csv as the sweep writes it: a loss that falls, bottoms out and turns up."""
    path = run / "range_test_log.csv"
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "iteration", "lr", "loss", "smoothed", "skipped"])
        writer.writeheader()
        for i in range(points):
            x = -5 + 6 * i / (points - 1)  # log10(lr) from 1e-5 to 10
            loss = 2.3 - 1.8 / (1 + math.exp(-(x + 1.2) / 0.3)) + 16 * max(0.0, x + 0.52) ** 1.5
            writer.writerow({"step": i + 1, "iteration": i + 1, "lr": 10 ** x, "loss": loss, "smoothed": loss,
                             "skipped": False})
    return path


def seed_jobs(client: TestClient, store: JobStore, settings: Settings, headers: dict[str, str]) -> list[str]:
    """Jobs of the fuzzing key in every final state, with files on disk, so job paths reach real data.

    Final states only: an event stream of a final job ends at once, a queued one would stream forever.
    """
    ids = []
    for path, body, end in (("/v1/jobs/train", TRAIN, JobState.SUCCEEDED),
                            ("/v1/jobs/range-test", RANGE_TEST, JobState.FAILED),
                            ("/v1/jobs/train", TRAIN, JobState.CANCELLED)):
        job_id = client.post(path, json=body, headers=headers).json()["id"]
        run = Path(settings.artifact_dir) / job_id
        (run / "checkpoints").mkdir(parents=True)
        for name in ("history.png", "report.json", "report.txt", "spec.json", "history.json",
                     "checkpoints/last.pt"):
            (run / name).write_bytes(b'{"accuracy": 0.9}')
        if end is JobState.CANCELLED:
            store.records.request_cancel(job_id)
        else:
            mark_running(store, job_id)
            error = "loss diverged at step 3, lr 9" if end is JobState.FAILED else None
            store.records.transition(job_id, end, error=error,
                                     result={"accuracy": 0.9} if end is JobState.SUCCEEDED else None)
        ids.append(job_id)
    return ids
