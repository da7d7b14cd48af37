"""Jobs through real Celery worker processes and real Redis: success, cancel, failure, duplicates, crashes."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from jobs.queues import PING, RUN_JOB
from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from tests.helpers import FINAL, range_test_spec, submit, train_spec, wait_for

pytestmark = pytest.mark.slow

def drain(workers: WorkerRegistry, sender, queue: str = "cpu", timeout: float = 60.0) -> None:
    """Until the one worker on `queue` took every message sent before: it answers a canary sent last."""
    token = secrets.token_hex(8)
    sender.send_task(PING, args=[token], queue=queue)
    deadline = time.monotonic() + timeout
    while workers.canary(token) is None:
        assert time.monotonic() < deadline, "worker did not answer the canary"
        time.sleep(0.05)


def deliveries(store: JobStore, job_id: str) -> list[dict]:
    return [d for _, e, d in store.events.read(job_id, count=10_000) if e == "delivery"]


def test_range_test_job_succeeds_with_its_artifacts(store: JobStore, celery_sender, worker) -> None:
    job_id = submit(store, celery_sender, range_test_spec())
    record = wait_for(store, job_id)
    assert record["state"] == "succeeded", record["error"]
    expected = {"spec.json", "range_test.json", "range_test_log.csv", "range_test.png"}
    assert expected <= set(record["artifacts"])
    assert record["artifacts"]["range_test.png"]["content_type"] == "image/png"
    assert record["result"] and record["deliveries"] == 1


def test_training_job_succeeds_with_report_plots_and_checkpoint(
    store: JobStore, celery_sender, worker, settings: Settings
) -> None:
    job_id = submit(store, celery_sender, train_spec())
    record = wait_for(store, job_id)
    assert record["state"] == "succeeded", record["error"]
    names = set(record["artifacts"])
    assert {"history.json", "report.json", "report.txt", "history.png", "confusion_matrix.png",
            "checkpoints/last.pt", "model.pt"} <= names
    assert record["progress"]["epoch"] == 2 and record["metrics"]
    run_dir = Path(settings.artifact_dir) / job_id
    assert (run_dir / "history.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert record["started_at"] <= record["finished_at"]
    events = {e for _, e, _ in store.events.read(job_id, count=10_000)}
    assert {"state", "progress"} <= events


def test_canary_proves_the_worker_consumes(workers: WorkerRegistry, celery_sender, worker) -> None:
    drain(workers, celery_sender)
    proven = workers.proven_workers(10.0, queue="cpu")
    assert worker.pid in {w["pid"] for w in proven}


def test_cancelled_queued_job_never_starts(
    store: JobStore, workers: WorkerRegistry, celery_sender, worker, settings: Settings
) -> None:
    job_id = submit(store, celery_sender, train_spec(), send=False)
    assert store.records.request_cancel(job_id)["state"] == "cancelled"
    celery_sender.send_task(RUN_JOB, args=[job_id], queue="cpu")
    drain(workers, celery_sender)
    record = store.records.get(job_id)
    assert record["state"] == "cancelled" and record["started_at"] is None and record["deliveries"] == 0
    assert not (Path(settings.artifact_dir) / job_id).exists()


def test_message_of_a_deleted_job_is_dropped_without_a_trace(
    store: JobStore, workers: WorkerRegistry, celery_sender, worker, settings: Settings
) -> None:
    # cancelled while queued, then deleted: its message is still in the queue when the worker gets to it
    job_id = submit(store, celery_sender, train_spec(), send=False)
    record = store.records.request_cancel(job_id)
    store.records.delete(record)
    celery_sender.send_task(RUN_JOB, args=[job_id], queue="cpu")
    drain(workers, celery_sender)
    assert store.records.get(job_id) is None
    assert not store.redis.exists(store.keys.job(job_id), store.keys.events(job_id))
    assert not (Path(settings.artifact_dir) / job_id).exists()


def test_cancel_of_running_job_stops_it_within_seconds_keeping_its_checkpoint(
    store: JobStore, celery_sender, worker
) -> None:
    job_id = submit(store, celery_sender, train_spec(epochs=200))
    wait_for(store, job_id, lambda r: (r["progress"] or {}).get("epoch", 0) >= 3 or r["state"] in FINAL)
    asked = time.monotonic()
    store.records.request_cancel(job_id)
    record = wait_for(store, job_id, timeout=10)
    stopped_after = time.monotonic() - asked
    assert record["state"] == "cancelled", record["error"]
    assert stopped_after < 3.0
    assert "checkpoints/last.pt" in record["artifacts"]


def test_diverging_job_fails_with_reason_and_worker_takes_the_next(
    store: JobStore, celery_sender, worker
) -> None:
    # A constant LR of 1000 with weight decay 1 scales the weights by -999 a step: the loss becomes NaN.
    exploding = {"name": "sgd", "momentum": 0.0, "weight_decay": 1.0}
    spec = train_spec(policy="constant", base_lr=None, max_lr=1000.0, optimizer=exploding)
    diverging = submit(store, celery_sender, spec)
    following = submit(store, celery_sender, range_test_spec(num_iter=10))
    record = wait_for(store, diverging)
    assert record["state"] == "failed" and record["error"].startswith("loss diverged at step"), record
    assert wait_for(store, following)["state"] == "succeeded"


def test_second_delivery_of_a_leased_job_does_not_train(
    store: JobStore, workers: WorkerRegistry, celery_sender, worker, settings: Settings
) -> None:
    job_id = submit(store, celery_sender, range_test_spec(num_iter=10), send=False)
    assert store.leases.claim(job_id, "another-worker", lease_seconds=60)
    store.records.transition(job_id, JobState.RUNNING)
    celery_sender.send_task(RUN_JOB, args=[job_id], queue="cpu")
    drain(workers, celery_sender)
    assert [d["outcome"] for d in deliveries(store, job_id)] == ["duplicate"]
    record = store.records.get(job_id)
    assert record["state"] == "running" and record["progress"] is None and record["deliveries"] == 1
    assert not (Path(settings.artifact_dir) / job_id).exists()
    # The other worker "dies": its lease lapses, a sweeper re-sends the job and it completes.
    store.leases.release(job_id, "another-worker")
    record = wait_for(store, job_id, timeout=30)
    assert record["state"] == "succeeded" and record["deliveries"] == 2
    assert "recovered" in {e for _, e, _ in store.events.read(job_id, count=10_000)}


def test_job_that_keeps_killing_its_worker_fails_at_the_delivery_cap(
    store: JobStore, celery_sender, worker, settings: Settings
) -> None:
    job_id = submit(store, celery_sender, train_spec(), send=False)
    for n in range(settings.max_deliveries):  # deliveries whose worker died: never released
        assert store.leases.claim(job_id, f"dead-worker-{n}", lease_seconds=0.05)
        time.sleep(0.1)  # the lease lapses
    celery_sender.send_task(RUN_JOB, args=[job_id], queue="cpu")
    record = wait_for(store, job_id)
    assert record["state"] == "failed"
    assert record["error"] == f"job killed its worker {settings.max_deliveries} times (out of memory?)"


def test_clean_hand_backs_do_not_count_towards_the_delivery_cap(
    store: JobStore, celery_sender, worker, settings: Settings
) -> None:
    job_id = submit(store, celery_sender, range_test_spec(num_iter=10), send=False)
    for n in range(settings.max_deliveries + 2):  # warm shutdowns: each released its lease
        assert store.leases.claim(job_id, f"stopped-worker-{n}", lease_seconds=60)
        store.leases.release(job_id, f"stopped-worker-{n}")
    celery_sender.send_task(RUN_JOB, args=[job_id], queue="cpu")
    record = wait_for(store, job_id)
    assert record["state"] == "succeeded", record["error"]
    assert record["crashes"] == 0 and record["deliveries"] == settings.max_deliveries + 3


def test_sigkilled_worker_job_resumes_from_checkpoint_on_a_new_worker(
    store: JobStore, celery_sender, start_worker, settings: Settings
) -> None:
    first = start_worker(CLR_QUEUE="gpu")
    # 10 epochs: killed after its 4th, with 6 left so it cannot finish first; the new worker trains the rest
    job_id = submit(store, celery_sender, train_spec(epochs=10, train_subset=1000), queue="gpu")
    wait_for(store, job_id, lambda r: (r["progress"] or {}).get("epoch", 0) >= 4 or r["state"] in FINAL)
    assert store.leases.holder(job_id).split(":")[1] == str(first.pid)
    first.kill()
    killed_at = store.records.get(job_id)["progress"]["epoch"]
    second = start_worker(CLR_QUEUE="gpu", wait=False)
    try:
        record = wait_for(store, job_id, timeout=240)  # a loaded 2-core machine needs a minute to boot and train
    finally:  # no gpu consumer outlives this test: later tests count what waits on the gpu queue
        second.stop()
    assert record["state"] == "succeeded", record["error"]
    assert record["deliveries"] == 2
    resumed_from = record["result"]["resumed_from"]
    assert 0 < resumed_from <= killed_at  # epochs finished before the kill were not trained again
    assert [d["outcome"] for d in deliveries(store, job_id)] == ["started", "started"]


def test_a_job_stored_but_never_sent_is_sent_by_the_sweeper_and_runs(
    store: JobStore, start_worker, settings: Settings
) -> None:
    # The API died between storing the job and sending its task: no message exists anywhere.
    queue = f"stale-{secrets.token_hex(3)}"  # own queue: other tests' leftover queued jobs stay out of it
    job_id = submit(store, None, range_test_spec(num_iter=10), queue=queue, send=False)
    start_worker(CLR_QUEUE=queue, CLR_REQUEUE_AFTER_SECONDS="1", wait=False)  # effective: 2 x lease = 4 s
    record = wait_for(store, job_id, timeout=90)
    assert record["state"] == "succeeded", record["error"]
    assert record["deliveries"] == 1
    assert record["started_at"] - record["created_at"] >= 2 * settings.lease_seconds


def test_progress_is_written_at_most_once_per_interval_even_across_phase_changes(
    store: JobStore, celery_sender, worker, settings: Settings
) -> None:
    # Tiny epochs change phase (train -> eval -> train) many times a second.
    job_id = submit(store, celery_sender, train_spec(epochs=25, train_subset=128))
    record = wait_for(store, job_id)
    assert record["state"] == "succeeded", record["error"]
    assert record["progress"]["epoch"] == 25  # the final state is always flushed
    times = sorted(int(event_id.split("-")[0]) for event_id, name, _ in
                   store.events.read(job_id, count=10_000) if name == "progress")
    assert len(times) >= 2
    busiest = max(sum(1 for t in times if start <= t < start + 1000) for start in times)
    assert busiest <= 1 / settings.progress_interval + 1, times
