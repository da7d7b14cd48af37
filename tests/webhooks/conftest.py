"""Webhook fixtures: an API that knows alice's two webhook secrets (a rotation) and lets webhooks reach
loopback, and a real webhooks worker (`celery -A worker.webhook_app`) with the same settings."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from service.main import create_app
from tests.helpers import ROOT, settings_env
from tests.webhooks.receiver import WEBHOOK_ENV


@pytest.fixture(scope="session")
def hook_settings(settings: Settings) -> Settings:
    """Keys on (alice has webhook secrets, bob none), auto-device jobs parked on an unconsumed queue."""
    return settings.model_copy(update={
        "open_mode": False,
        "api_keys": "alice:alice-secret,bob:bob-secret",
        "default_queue": "parked",
        "rate_limit_per_minute": 100_000,
        "webhook_secrets": WEBHOOK_ENV["CLR_WEBHOOK_SECRETS"],
        "webhook_allow_networks": WEBHOOK_ENV["CLR_WEBHOOK_ALLOW_NETWORKS"],
        "webhook_retry_base": float(WEBHOOK_ENV["CLR_WEBHOOK_RETRY_BASE"]),
        "webhook_timeout": float(WEBHOOK_ENV["CLR_WEBHOOK_TIMEOUT"]),
        "webhook_resend_after": float(WEBHOOK_ENV["CLR_WEBHOOK_RESEND_AFTER"]),
    })


@pytest.fixture(scope="session")
def hook_client(hook_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(hook_settings)) as client:
        yield client


@contextmanager
def webhooks_worker(settings: Settings, log_path: Path) -> Iterator[Path]:
    """A real webhooks worker process on `settings`' key prefix, ready; yields its log file."""
    command = [sys.executable, "-m", "celery", "-A", "worker.webhook_app", "worker", "-Q", "webhooks",
               "-P", "threads", "-c", "8", "--without-mingle", "--without-gossip", "-l", "INFO"]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(command, cwd=ROOT, env=settings_env(settings, **WEBHOOK_ENV),
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while b" ready." not in log_path.read_bytes():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"webhooks worker did not start:\n{log_path.read_text()[-3000:]}")
                time.sleep(0.1)
            yield log_path
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="session")
def webhook_worker(hook_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The session's webhooks worker; yields its log file."""
    with webhooks_worker(hook_settings, tmp_path_factory.mktemp("webhook-worker") / "worker.log") as log_path:
        yield log_path
