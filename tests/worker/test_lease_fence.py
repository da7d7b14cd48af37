"""A worker that lost its lease ends nothing: the worker's own finishing steps, in-process, against a
job whose lease another worker now holds (issue 14 item 7). The SIGSTOP run with real workers is
tests/reliability/test_worker_faults.py -k frozen."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.states import JobState
from jobs.store import JobStore
from tests.helpers import train_spec


@pytest.fixture
def worker_tasks(store: JobStore, monkeypatch: pytest.MonkeyPatch):
    import worker.tasks as tasks

    monkeypatch.setattr(tasks, "_store", store)
    return tasks


def test_a_woken_worker_neither_finishes_the_job_nor_registers_its_files(
    store: JobStore, worker_tasks, tmp_path: Path
) -> None:
    from worker.lease import worker_id

    job_id = store.records.create("train", train_spec(), "fence")["id"]
    assert store.leases.claim(job_id, worker_id(), lease_seconds=60)  # worker A (this process) runs it
    worker_tasks.store().records.transition(job_id, JobState.RUNNING)
    store.redis.delete(store.keys.lease(job_id))  # A froze; its lease lapsed
    assert store.leases.claim(job_id, "worker-b", lease_seconds=60)  # B recovered it and trains
    run_dir = tmp_path / job_id
    run_dir.mkdir()
    (run_dir / "model.pt").write_bytes(b"A's model")

    worker_tasks.register_artifacts(job_id, run_dir)  # A wakes with model.pt written
    assert worker_tasks._finish(job_id, JobState.SUCCEEDED, result={"by": "a"}) is False

    record = store.records.get(job_id)
    assert record["state"] == JobState.RUNNING and record["result"] is None and record["artifacts"] == {}
    assert store.leases.holder(job_id) == "worker-b"
