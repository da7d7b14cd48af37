"""The by-name Celery client: the API enqueues job ids and imports no task code (and so no torch).

Names, queues and broker options come from `jobs.queues`, which the workers read too.
"""

from __future__ import annotations

import logging

from celery import Celery

from jobs.queues import CANARY_EXPIRES_S, DELIVER_WEBHOOK, PING, RUN_JOB, WEBHOOKS_QUEUE, broker_transport_options
from jobs.settings import Settings

logger = logging.getLogger(__name__)


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
        self._celery.send_task(RUN_JOB, args=[job_id], queue=queue)
        logger.info("job %s sent to queue %s", job_id, queue)

    def send_webhook(self, delivery_id: str) -> None:
        """`clr.deliver_webhook(delivery_id)` to the webhooks workers (never sent inline by the API)."""
        self._celery.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOKS_QUEUE)

    def send_canary(self, token: str, queue: str) -> None:
        """Readiness canary `clr.ping(token)`: the worker that takes it writes a reply under `token`.

        It expires, so canaries sent while no worker consumes do not pile up for later.
        """
        self._celery.send_task(PING, args=[token], queue=queue, expires=CANARY_EXPIRES_S)

    def close(self) -> None:
        self._celery.close()
