"""The worker's Celery app: Redis broker, tasks by name, settings chosen for long GPU jobs.

Run one worker process per GPU (`CUDA_VISIBLE_DEVICES=N`, `CLR_QUEUE=gpu`) and any number on the CPU
queue:

    celery -A worker.celery_app worker -Q "$CLR_QUEUE" -P solo -c 1 --without-mingle --without-gossip

or simply `python -m worker`, which passes those options.

Choices, and why:
- Solo pool: the task runs in the worker's main process, which never forks, so CUDA is safe (CUDA
  does not survive fork; prefork children could not start DataLoader workers either). Concurrency 1:
  one job per GPU at a time.
- `task_acks_late` + prefetch 1: a message is acknowledged only after its job ended, so a killed
  worker's job is delivered again; `task_reject_on_worker_lost` does the same for a lost pool child.
  A job may therefore be delivered twice: the job lease (`worker/lease.py`) makes a second delivery of
  a running job return without training, and a finished job's record makes it a no-op.
- No result backend: the job record in Redis is the truth (an unknown Celery task id reads PENDING,
  celery#4450).
- Kombu keys get the store's key prefix (`global_keyprefix`), so two deployments or test sessions on
  one Redis never consume each other's queues. The API's sending app must use the same options
  (`jobs.queues.broker_transport_options`).
- `worker_cancel_long_running_tasks_on_connection_loss=True` (Celery 6's default; False only warns):
  on a broker connection loss Celery cancels unacknowledged late-ack tasks, since their ack can no
  longer reach the broker and the message will be redelivered anyway. With the solo pool the consumer
  loop is blocked while a job trains, so a loss is noticed only once the job returned; the setting
  then merely drops the stale request (solo cannot terminate a job), and the redelivered message finds
  a final job record and does nothing. Jobs never rely on it: the lease and the record guard them.
"""

from __future__ import annotations

import logging

from celery import Celery
from kombu import Queue

from jobs.queues import broker_transport_options
from jobs.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app bound to `settings`; its worker consumes only `settings.queue`."""
    settings = settings or get_settings()
    app = Celery("clr", broker=settings.redis_url, include=["worker.tasks"])
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,  # a worker outlives a Redis restart, however long
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_concurrency=1,
        worker_pool="solo",
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        task_queues=[Queue(settings.queue)],  # what this worker consumes; sending to any queue still works
        task_default_queue="cpu",
        task_create_missing_queues=True,
        worker_send_task_events=False,
    )
    return app


app = create_app()
