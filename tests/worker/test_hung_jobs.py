"""A hung but alive worker does not keep its job (issue 14 item 8): the lease is renewed only while the
job progresses, the job fails at its deadline even if its training thread is stuck, the time limit
counts across deliveries, and a silent download gives up."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobs.states import JobState
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from tests.helpers import train_spec
from worker.lease import LeaseKeeper, worker_id


def running_job(store: JobStore) -> str:
    job_id = store.records.create("train", train_spec(), "hung", queue="parked")["id"]
    assert store.leases.claim(job_id, worker_id(), lease_seconds=60)
    store.records.transition(job_id, JobState.RUNNING, holder=worker_id())
    return job_id


def wait_until(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_a_job_without_progress_stops_having_its_lease_renewed(store: JobStore, workers: WorkerRegistry) -> None:
    job_id = running_job(store)
    keeper = LeaseKeeper(store, workers, job_id, queue="parked", lease_seconds=60, interval=0.1,
                         stall_seconds=0.6)
    keeper.start()
    try:
        for _ in range(8):  # progressing: renewed all along
            time.sleep(0.1)
            keeper.progressed()
        assert not keeper.lost.is_set()
        ttl_before = store.redis.pttl(store.keys.lease(job_id))
        wait_until(keeper.lost.is_set, timeout=5)  # then hung: no report for the stall bound
        assert keeper.stalled
        time.sleep(0.3)
        assert store.redis.pttl(store.keys.lease(job_id)) < ttl_before  # no renewal since: it will lapse
    finally:
        keeper.stop()


def test_a_hung_job_fails_at_its_deadline_from_the_lease_keeper(store: JobStore, workers: WorkerRegistry) -> None:
    job_id = running_job(store)
    keeper = LeaseKeeper(store, workers, job_id, queue="parked", lease_seconds=0.5, interval=0.1,
                         time_left=0.3, time_limit_error="time limit of 0.3 s exceeded")
    keeper.start()  # the training thread is "stuck": it never checks its StopCheck
    try:
        wait_until(lambda: store.records.get(job_id)["state"] == JobState.FAILED, timeout=5)
        assert store.records.get(job_id)["error"] == "time limit of 0.3 s exceeded"
        assert keeper.lost.is_set()  # whatever the stuck thread does later is not written
    finally:
        keeper.stop()


def test_renewals_add_up_the_run_time_across_deliveries(store: JobStore) -> None:
    job_id = running_job(store)
    assert store.leases.renew(job_id, worker_id(), 60, ran_seconds=5.0)
    assert store.leases.renew(job_id, worker_id(), 60, ran_seconds=2.5)
    assert not store.leases.renew(job_id, "someone-else", 60, ran_seconds=100.0)
    assert store.records.get(job_id)["run_seconds"] == pytest.approx(7.5)


@pytest.fixture
def worker_tasks(store: JobStore, workers: WorkerRegistry, monkeypatch: pytest.MonkeyPatch):
    import worker.tasks as tasks

    monkeypatch.setattr(tasks, "_store", store)
    monkeypatch.setattr(tasks, "_workers", workers)
    return tasks


def test_a_job_that_used_its_time_limit_in_earlier_deliveries_fails_without_training(
    store: JobStore, worker_tasks
) -> None:
    job_id = store.records.create("train", train_spec(), "hung", queue="parked")["id"]
    store.redis.hset(store.keys.job(job_id), "run_seconds", repr(worker_tasks.settings.job_time_limit + 1))
    assert worker_tasks.execute(job_id) == "time_limit"
    record = store.records.get(job_id)
    assert record["state"] == JobState.FAILED and record["error"].startswith("time limit of")
    assert store.leases.holder(job_id) is None


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP server that accepts and never answers: a stalled download."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    thread = threading.Thread(target=lambda: held.append(server.accept()[0]), daemon=True)
    thread.start()
    yield server.getsockname()[1]
    for conn in held:
        conn.close()
    server.close()


def test_a_silent_download_gives_up_after_the_read_timeout(silent_server: int) -> None:
    from clrcore.net import read_timeout

    start = time.monotonic()
    with read_timeout(0.5), pytest.raises((TimeoutError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{silent_server}/cifar-10-python.tar.gz")  # noqa: S310
    assert time.monotonic() - start < 5


def test_a_failure_reason_shows_no_absolute_server_path(worker_tasks) -> None:
    """Issue 14 item 13: the data and artifact folders by their setting name, other paths by their last part."""
    data = Path(worker_tasks.settings.data_dir).resolve()
    reason = worker_tasks.failure_reason(RuntimeError(
        f"not found under {data}/cifar10; see /usr/lib/python3/site-packages/torchvision/x.py (line 3)"))
    assert "/" not in reason.replace("data_dir/", ""), reason
    assert reason == "not found under data_dir/cifar10; see x.py (line 3)"
    assert worker_tasks.failure_reason(ValueError("loss is nan at step 3 (lr=0.5/step)")) == \
        "loss is nan at step 3 (lr=0.5/step)"
