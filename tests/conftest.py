"""Shared fixtures: real Redis under a key prefix of this session's own, and real Celery worker processes.

Nothing is mocked: the store talks to the Redis at `CLR_TEST_REDIS_URL` (default the local one), and
workers are `celery -A worker.celery_app worker` subprocesses. Every Redis key of the session, the
Celery queues included, lives under one unique prefix, so parallel sessions on one Redis never meet.
"""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from jobs.settings import Settings
from jobs.store import JobStore
from jobs.workers import WorkerRegistry

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
WORKER_START_TIMEOUT_S = 90.0


def _redis_url() -> str:
    return os.environ.get("CLR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings of this test session: own key prefix, temp folders, short leases so recovery is quick."""
    url = _redis_url()
    try:
        redis.Redis.from_url(url, socket_connect_timeout=2).ping()
    except redis.ConnectionError as exc:
        pytest.exit(f"no Redis at {url} (start one with scripts/redis.sh): {exc}", returncode=2)
    base = tmp_path_factory.mktemp("clr")
    return Settings(
        redis_url=url,
        key_prefix=f"test-{secrets.token_hex(4)}",
        artifact_dir=base / "artifacts",
        data_dir=base / "data",
        download=False,
        open_mode=True,
        lease_seconds=2.0,
        heartbeat_seconds=0.3,
        sweep_interval=0.5,
        progress_interval=0.2,
        visibility_timeout=3600,
        job_time_limit=3000,  # the visibility timeout must cover a whole job
        max_deliveries=3,
        requeue_after_seconds=3600,  # the session's workers must not pick up jobs tests leave queued
    )


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


@pytest.fixture(scope="session")
def store(settings: Settings) -> Iterator[JobStore]:
    """The session's store; every key under its prefix is removed at the end."""
    job_store = JobStore.from_settings(settings)
    yield job_store
    job_store.delete_all()
    job_store.redis.close()


@pytest.fixture(scope="session")
def workers(store: JobStore) -> WorkerRegistry:
    """The session's worker registry, on the store's connection (its keys go with the store's)."""
    return WorkerRegistry(store.redis, store.prefix)


class WorkerProcess:
    """A real `celery worker` subprocess with this session's settings; its log goes to a file."""

    def __init__(self, settings: Settings, log_path: Path, **env: str) -> None:
        self.log_path = log_path
        self.queue = env.get("CLR_QUEUE", settings.queue)
        name = f"w{secrets.token_hex(3)}@%h"
        command = [sys.executable, "-m", "celery", "-A", "worker.celery_app", "worker", "-P", "solo",
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


@pytest.fixture(scope="session")
def start_worker(
    settings: Settings, store: JobStore, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: start a ready worker (`start_worker(CLR_QUEUE="gpu")`); all are stopped at session end."""
    workers: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(wait: bool = True, **env: str) -> WorkerProcess:
        worker = WorkerProcess(settings, logs / f"worker-{len(workers)}.log", **env)
        workers.append(worker)
        if wait:
            worker.wait_ready(store)
        return worker

    yield start
    for worker in workers:
        worker.stop()


@pytest.fixture(scope="session")
def worker(start_worker: Callable[..., WorkerProcess]) -> WorkerProcess:
    """One worker on the "cpu" queue, shared by the session (tests that kill workers start their own)."""
    return start_worker()


@pytest.fixture(scope="session")
def celery_sender(settings: Settings):
    """A Celery app that sends tasks by name with the session's broker options (as the API does)."""
    from worker.celery_app import create_app

    app = create_app(settings)
    yield app
    app.close()
