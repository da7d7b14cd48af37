"""The by-name Celery client: the API enqueues job ids and imports no task code (and so no torch).

Which queue a job goes to:
- `spec.device == "cuda"` -> "gpu" (only GPU workers can run it);
- `spec.device == "cpu"`  -> "cpu";
- `spec.device == "auto"` -> `Settings.default_queue` (default "cpu"; a deployment with GPU workers
  sets `CLR_DEFAULT_QUEUE=gpu` so "auto" jobs land where the GPUs are).
"""

from __future__ import annotations

import logging

from celery import Celery

from jobs.settings import Settings
from service.store import broker_transport_options

logger = logging.getLogger(__name__)

TASK_NAME = "clr.run_job"
PING_TASK = "clr.ping"
CANARY_EXPIRES_S = 30
QUEUES = ("cpu", "gpu")


def queue_for(device: str, settings: Settings) -> str:
    """The queue for a spec's `device` field (see the module docstring)."""
    if device == "cuda":
        return "gpu"
    if device == "cpu":
        return "cpu"
    return settings.default_queue


class JobQueue:
    """Sends `clr.run_job(job_id)` to a queue; the job record in Redis, not Celery, is the truth."""

    def __init__(self, settings: Settings) -> None:
        self._celery = Celery("clr-api", broker=settings.redis_url, set_as_current=False)
        self._celery.conf.update(
            # A dead broker must answer quickly (503), not hang the request for Celery's long retry.
            task_publish_retry=True,
            task_publish_retry_policy={"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                       "interval_max": 0.5},
            broker_connection_timeout=2,
            broker_connection_retry_on_startup=False,
            # Same kombu key prefix as the workers, so each deployment (each test session) has its queues.
            broker_transport_options=broker_transport_options(settings),
        )

    def send(self, job_id: str, queue: str) -> None:
        self._celery.send_task(TASK_NAME, args=[job_id], queue=queue)
        logger.info("job %s sent to queue %s", job_id, queue)

    def send_canary(self, token: str, queue: str) -> None:
        """Readiness canary `clr.ping(token)`: the worker that takes it writes a reply under `token`.

        It expires, so canaries sent while no worker consumes do not pile up for later.
        """
        self._celery.send_task(PING_TASK, args=[token], queue=queue, expires=CANARY_EXPIRES_S)

    def close(self) -> None:
        self._celery.close()
