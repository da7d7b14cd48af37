"""Every change of a job's state reaches its webhook, whoever makes it: the sweeper (a lapsed lease hands
the job back, or honours a cancel), a worker's warm shutdown (the job back to the queue), the lease
keeper (failed at the deadline), the API (a job the broker refused stays queued) and a delete (by the
owner, or by retention); and a notice whose send failed is sent again by the webhooks workers. Through
the real path: the API, real workers, a real webhooks worker, a receiver on loopback; each payload
carries the job's `sequence`, so receivers can order what arrives out of order."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from pathlib import Path

from fastapi.testclient import TestClient

from clrclient import verify_webhook
from jobs.queues import DELIVER_WEBHOOK, WEBHOOKS_QUEUE
from jobs.records import LAPSED
from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from service.main import create_app
from tests.helpers import ALICE, RANGE_TEST, TRAIN, WorkerProcess
from tests.webhooks.conftest import webhooks_worker
from tests.webhooks.receiver import NEW_SECRET, Receiver
from worker.lease import LeaseKeeper, WorkerMonitor, worker_id

LONG_TRAIN = {**TRAIN, "epochs": 30, "train_subset": 1000}  # device auto: the app's default queue


def _payloads(receiver: Receiver, job_id: str) -> list[dict]:
    """The job's verified payloads, in arrival order."""
    out = [verify_webhook(NEW_SECRET, r["body"], r["headers"]) for r in list(receiver.requests)]
    return [p for p in out if p["data"]["id"] == job_id]


def _wait_payload(receiver: Receiver, job_id: str, kind: str, nth: int = 1, timeout: float = 30) -> dict:
    """The `nth` payload of type `kind` for the job, once it arrived."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in _payloads(receiver, job_id) if p["type"] == kind]
        if len(found) >= nth:
            return found[nth - 1]
        time.sleep(0.05)
    raise TimeoutError(f"{kind} #{nth} of {job_id}: got {[p['type'] for p in _payloads(receiver, job_id)]}")


def _wait_until(condition: Callable[[], bool], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def _parked_job(client: TestClient, url: str, events: list[str]) -> str:
    """A range test on the parked queue (nobody consumes it), with its webhook on `url`."""
    answer = client.post("/v1/jobs/range-test", json={**RANGE_TEST, "notify": {"url": url, "events": events}},
                         headers=ALICE)
    assert answer.status_code == 202, answer.text
    return answer.json()["id"]


def _sender(app) -> Callable[[str], None]:  # noqa: ANN001 (a Celery app)
    """What a worker process hands its store: `clr.deliver_webhook` by name to the webhooks queue."""
    return lambda delivery_id: app.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOKS_QUEUE)


def test_the_sweeper_announces_the_jobs_it_hands_back_or_ends(
    hook_client: TestClient, store: JobStore, worker: WorkerProcess, webhook_worker: Path
) -> None:
    """A worker that dies mid-job makes no call: the sweeper's recovery is what the receiver hears."""
    receiver = Receiver()
    events = ["queued", "started", "cancelled"]
    requeued = _parked_job(hook_client, receiver.url, events)
    cancelled = _parked_job(hook_client, receiver.url, events)
    try:
        for job_id in (requeued, cancelled):  # taken by a worker that then dies: its lease lapses
            assert store.leases.claim(job_id, "doomed-worker", 2.0)
            store.records.transition(job_id, JobState.RUNNING, holder="doomed-worker")
        assert hook_client.post(f"/v1/jobs/{cancelled}/cancel", headers=ALICE).json()["state"] == "cancelling"
        back = _wait_payload(receiver, requeued, "job.queued", nth=2)  # the session worker sweeps twice a second
        ended = _wait_payload(receiver, cancelled, "job.cancelled")
    finally:
        hook_client.post(f"/v1/jobs/{requeued}/cancel", headers=ALICE)  # it waits on the parked queue again
    last = _wait_payload(receiver, requeued, "job.cancelled")
    receiver.close()
    assert (back["previous"], back["reason"], back["data"]["state"]) == ("running", LAPSED, "queued")
    assert (ended["previous"], ended["reason"], ended["data"]["state"]) == ("cancelling", LAPSED, "cancelled")
    # queued 1, running 2 (the dead worker's), back in the queue 3, cancelled 4: the order, whatever the arrival
    assert [p["sequence"] for p in sorted(_payloads(receiver, requeued), key=lambda p: p["sequence"])] == [1, 3, 4]
    assert last["previous"] == "queued" and last["sequence"] == 4
    assert ended["sequence"] == 4  # queued 1, running 2, cancelling 3 (no webhook: still running), cancelled 4


def test_a_worker_shutdown_hands_the_job_back_and_announces_it_queued(
    hook_settings: Settings, start_worker: Callable[..., WorkerProcess], webhook_worker: Path
) -> None:
    queue = f"handback-{secrets.token_hex(3)}"
    worker = start_worker(CLR_QUEUE=queue)
    receiver = Receiver()
    with TestClient(create_app(hook_settings.model_copy(update={"default_queue": queue}))) as client:
        body = {**LONG_TRAIN, "notify": {"url": receiver.url, "events": ["queued", "started", "cancelled"]}}
        job_id = client.post("/v1/jobs/train", json=body, headers=ALICE).json()["id"]
        try:
            started = _wait_payload(receiver, job_id, "job.started", timeout=60)
            worker.stop()  # warm shutdown: the job stops at its next batch and goes back to the queue
            back = _wait_payload(receiver, job_id, "job.queued", nth=2)
        finally:
            client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)  # nobody consumes its queue now
        _wait_payload(receiver, job_id, "job.cancelled")
    receiver.close()
    assert (started["sequence"], started["previous"]) == (2, "queued")
    assert (back["sequence"], back["previous"], back["data"]["state"]) == (3, "running", "queued")
    assert "shut down" in back["reason"] and back["data"]["deliveries"] == 1


def test_a_job_the_broker_refused_is_announced_queued_and_stays_queued(
    hook_settings: Settings, store: JobStore, webhook_worker: Path
) -> None:
    """The job is stored waiting its key's turn (`jobs.turns`) before any broker push: a push that fails
    delays it (the stale-queued sweep re-sends it), it neither fails it nor loses its `queued` notice."""
    queue = f"poisoned-{secrets.token_hex(3)}"
    poisoned = f"{store.prefix}:broker:{queue}"
    store.redis.set(poisoned, "not a list")  # the broker's push onto this queue fails (WRONGTYPE); others work
    receiver = Receiver()
    try:
        with TestClient(create_app(hook_settings.model_copy(update={"default_queue": queue}))) as client:
            body = {**RANGE_TEST, "notify": {"url": receiver.url}}
            answer = client.post("/v1/jobs/range-test", json=body, headers=ALICE)
            assert answer.status_code == 202, answer.text
        (request,) = receiver.wait_for(1)
        time.sleep(0.5)  # nothing else follows: no worker consumes this queue
    finally:
        receiver.close()
        store.redis.delete(poisoned)
    assert len(receiver.requests) == 1
    payload = verify_webhook(NEW_SECRET, request["body"], request["headers"])
    assert (payload["type"], payload["sequence"]) == ("job.queued", 1)
    assert store.records.get(payload["data"]["id"])["state"] == "queued"


def test_a_hung_job_failed_by_its_lease_keeper_is_announced(
    hook_client: TestClient, hook_settings: Settings, celery_sender, workers: WorkerRegistry,  # noqa: ANN001
    webhook_worker: Path,
) -> None:
    """The lease keeper ends a job whose training thread is stuck; the store it holds is the worker's,
    built with the webhook sender, as `worker.tasks.store()` builds it."""
    wired = JobStore.from_settings(hook_settings, send_webhook=_sender(celery_sender))
    receiver = Receiver()
    job_id = _parked_job(hook_client, receiver.url, ["started", "failed"])
    assert wired.leases.claim(job_id, worker_id(), lease_seconds=60)
    wired.records.transition(job_id, JobState.RUNNING, holder=worker_id())
    keeper = LeaseKeeper(wired, workers, job_id, queue="parked", lease_seconds=0.5, interval=0.1,
                         time_left=0.3, time_limit_error="time limit of 0.3 s exceeded")
    keeper.start()  # the training thread is "stuck": it never checks its StopCheck
    try:
        failed = _wait_payload(receiver, job_id, "job.failed")
        started = _wait_payload(receiver, job_id, "job.started")
    finally:
        keeper.stop()
        wired.leases.release(job_id, worker_id())
        wired.redis.close()
        receiver.close()
    assert (started["sequence"], failed["sequence"], failed["previous"]) == (2, 3, "running")
    assert failed["reason"] == failed["data"]["error"] == "time limit of 0.3 s exceeded"


def test_a_deleted_job_is_announced_to_a_receiver_that_asked(hook_client: TestClient, webhook_worker: Path) -> None:
    receiver = Receiver()
    try:
        job_id = _parked_job(hook_client, receiver.url, ["cancelled", "deleted"])
        assert hook_client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).status_code == 202
        assert hook_client.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 204
        deleted = _wait_payload(receiver, job_id, "job.deleted")
        cancelled = _wait_payload(receiver, job_id, "job.cancelled")
    finally:
        receiver.close()
    assert (cancelled["sequence"], deleted["sequence"]) == (2, 3)
    assert deleted["data"]["state"] == "cancelled"  # the job as it was when it went


def test_retention_announces_the_jobs_it_removes(hook_settings: Settings, tmp_path: Path) -> None:
    """Retention deletes every finished job older than its bound, so it runs on a key prefix of its own
    (with a webhooks worker of its own): the session's finished jobs stay."""
    from worker.celery_app import create_app as create_celery_app

    own = hook_settings.model_copy(update={"key_prefix": f"{hook_settings.key_prefix}-retention"})
    app = create_celery_app(own)
    wired = JobStore.from_settings(own, send_webhook=_sender(app))
    receiver = Receiver()
    try:
        with webhooks_worker(own, tmp_path / "webhooks.log"):
            spec = {"kind": "range_test", **RANGE_TEST, "notify": {"url": receiver.url, "events": ["deleted"]}}
            job_id = wired.records.create("range_test", spec, "alice", queue="parked")["id"]
            wired.records.request_cancel(job_id)
            monitor = WorkerMonitor(wired, WorkerRegistry(wired.redis, wired.prefix), queue="parked",
                                    heartbeat_seconds=1, sweep_interval=1, resend=lambda *_: None,
                                    current_job=lambda: None, retention_seconds=0)
            assert monitor.expire_finished() == [job_id]
            deleted = _wait_payload(receiver, job_id, "job.deleted")
    finally:
        receiver.close()
        wired.delete_all()
        wired.redis.close()
        app.close()
    assert wired.records.get(job_id) is None
    assert (deleted["sequence"], deleted["data"]["state"]) == (3, "cancelled")
    assert json.dumps(deleted["data"]["spec"]["notify"]["events"]) == '["deleted"]'


def test_a_notice_whose_send_failed_is_sent_again_by_the_webhooks_worker(
    hook_client: TestClient, hook_settings: Settings, webhook_worker: Path
) -> None:
    """The process that changed the job could not reach the broker (here: a sender on a port nobody
    listens on): the delivery is recorded all the same, and the webhooks worker's sweep sends it."""
    from worker.celery_app import create_app as create_celery_app

    dead_broker = create_celery_app(hook_settings.model_copy(update={"redis_url": "redis://127.0.0.1:9/0"}))
    wired = JobStore.from_settings(hook_settings, send_webhook=_sender(dead_broker))
    receiver = Receiver()
    try:
        job_id = _parked_job(hook_client, receiver.url, ["cancelled"])
        started = time.monotonic()
        assert wired.records.request_cancel(job_id)["state"] == "cancelled"  # announced; its send fails
        assert time.monotonic() - started < 10  # the cancel did not wait on the broker for long
        (delivery,) = hook_client.get(f"/v1/jobs/{job_id}/deliveries", headers=ALICE).json()["items"]
        assert delivery["attempts"] == 0  # recorded, never sent
        cancelled = _wait_payload(receiver, job_id, "job.cancelled")  # swept after CLR_WEBHOOK_RESEND_AFTER
        _wait_until(lambda: wired.redis.zscore(f"{wired.prefix}:webhooks:due", delivery["id"]) is None)
    finally:
        receiver.close()
        wired.redis.close()
        dead_broker.close()
    assert cancelled["sequence"] == 2 and cancelled["data"]["state"] == "cancelled"
