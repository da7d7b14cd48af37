"""The Celery vocabulary the API (which sends) and the workers (which consume) share, defined once:
task names, queue names, which queue a spec goes to, and the broker's key prefix and options.

Tasks are sent by name, so the API imports no task code (and so no torch).

Which queue a job goes to:
- `spec.device == "cuda"` -> "gpu" (only GPU workers can run it);
- `spec.device == "cpu"`  -> "cpu";
- `spec.device == "auto"` -> `Settings.default_queue` (default "cpu"; a deployment with GPU workers
  sets `CLR_DEFAULT_QUEUE=gpu` so "auto" jobs land where the GPUs are).
"""

from __future__ import annotations

from typing import Any

from jobs.settings import Settings

RUN_JOB = "clr.run_job"  # clr.run_job(job_id): run (or resume, or skip) one job
PING = "clr.ping"  # clr.ping(token): the readiness canary
CANARY_EXPIRES_S = 30  # canaries sent while no worker consumes must not pile up for later
DELIVER_WEBHOOK = "clr.deliver_webhook"  # clr.deliver_webhook(delivery_id): one attempt, re-sent to retry
QUEUES = ("cpu", "gpu")
WEBHOOKS_QUEUE = "webhooks"  # its own workers (worker/webhook_app.py): a slow receiver never holds a GPU


def queue_for(device: str, settings: Settings) -> str:
    """The queue for a spec's `device` field (see the module docstring)."""
    if device == "cuda":
        return "gpu"
    if device == "cpu":
        return "cpu"
    return settings.default_queue


def broker_key_prefix(prefix: str) -> str:
    """Prefix of the kombu queue keys, so each key prefix (each test session) has its own queues."""
    return f"{prefix}:broker:"


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    """Celery `broker_transport_options` for the API's sending app and the worker's app alike."""
    return {
        "visibility_timeout": settings.visibility_timeout,
        "global_keyprefix": broker_key_prefix(settings.key_prefix),
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
    }
