"""The webhooks worker's Celery app: consumes only the "webhooks" queue and never loads torch.

    celery -A worker.webhook_app worker -Q webhooks -P threads -c 16 --without-mingle --without-gossip

Threads, not solo: a delivery waits on a receiver's network, so one slow receiver must not hold up
the others (each attempt is bounded by `CLR_WEBHOOK_TIMEOUT`). It shares the broker options and key
prefix of the job workers (`jobs.queues`), but none of their tasks, heartbeats or sweeper.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from jobs.queues import WEBHOOKS_QUEUE, broker_transport_options
from jobs.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    app = Celery("clr-webhooks", broker=settings.redis_url, include=["worker.webhook_tasks"])
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        task_acks_late=True,  # a delivery cut short by a crash is tried again (receivers dedupe by webhook-id)
        worker_prefetch_multiplier=1,
        worker_concurrency=settings.webhook_concurrency,
        worker_pool="threads",
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(WEBHOOKS_QUEUE)],
        task_default_queue=WEBHOOKS_QUEUE,
        worker_send_task_events=False,
    )
    return app


app = create_app()
