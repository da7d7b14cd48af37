"""Fair turns end to end (issue 14 item 10): one key's 600 queued jobs do not starve another key's one
job, through the real API and a real worker (one job at a time), on a key prefix of this test's own.

Before `jobs.turns` the API sent every job straight into Celery's first-in, first-out queue, and the
second key's job ran after all 600 (this test timed out waiting for it).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from service.main import create_app
from tests.helpers import FINAL, WorkerProcess

FLOOD = 600
TINY = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "train_subset": 64, "batch_size": 16,
        "num_iter": 5}
WAIT_S = 240.0  # the quiet key's job must end long before 600 others could (about 2 s each here)


@pytest.fixture
def own_prefix(settings: Settings, tmp_path: Path) -> Iterator[tuple[Settings, JobStore]]:
    """The session's settings on a fresh key prefix (its own queues and turns), and its store."""
    mine = settings.model_copy(update={
        "key_prefix": f"fair-{secrets.token_hex(3)}", "open_mode": False,
        "api_keys": "busy:busy-secret,quiet:quiet-secret", "rate_limit_per_minute": 100_000,
        "max_active_jobs_per_key": 1000, "artifact_dir": tmp_path / "artifacts"})
    store = JobStore.from_settings(mine)
    yield mine, store
    store.delete_all()
    store.redis.close()


@pytest.fixture
def one_worker(own_prefix: tuple[Settings, JobStore], tmp_path: Path) -> Iterator[WorkerProcess]:
    settings, store = own_prefix
    worker = WorkerProcess(settings, tmp_path / "worker.log", CLR_ARTIFACT_DIR=str(settings.artifact_dir))
    try:
        worker.wait_ready(store)
        yield worker
    finally:
        worker.stop()


def test_a_keys_one_job_runs_among_the_first_while_another_key_has_600_queued(
    own_prefix: tuple[Settings, JobStore], one_worker: WorkerProcess,
) -> None:
    settings, store = own_prefix
    busy, quiet = {"Authorization": "Bearer busy-secret"}, {"Authorization": "Bearer quiet-secret"}
    with TestClient(create_app(settings)) as client:
        flood = [_submit(client, busy) for _ in range(FLOOD)]
        single = _submit(client, quiet)
        record = _wait(store, single, lambda r: r["state"] in FINAL, one_worker.log_tail)
        assert record["state"] == JobState.SUCCEEDED.value, record
        # One worker, one job at a time. While the 600 were being submitted the worker ran some of them;
        # from the quiet key's submit on, only the busy job already in the Celery queue and one more turn
        # of the busy key may start before it (three allows one extra message from racing dispatchers).
        window = (record["created_at"], record["started_at"])
        cut_in = [r for r in map(store.records.get, flood)
                  if r and r["started_at"] is not None and window[0] < r["started_at"] < window[1]]
        assert len(cut_in) <= 3, f"{len(cut_in)} of the busy key's jobs started after the quiet key's was submitted"
        assert client.get(f"/v1/jobs/{flood[-1]}", headers=busy).json()["state"] == "queued"
        listed = client.get("/v1/jobs", params={"state": "queued", "limit": 5}, headers=busy).json()
        assert len(listed["items"]) == 5  # waiting jobs are listed as queued, as before
        cancelled = client.post(f"/v1/jobs/{flood[-1]}/cancel", headers=busy).json()
        assert cancelled["state"] == JobState.CANCELLED.value  # a waiting job cancels at once
    assert flood[-1] not in store.turns.waiting_ids("cpu")


def _submit(client: TestClient, headers: dict[str, str]) -> str:
    response = client.post("/v1/jobs/range-test", json=TINY, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _wait(store: JobStore, job_id: str, done: Callable[[dict], bool], log: Callable[[], str]) -> dict:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        record = store.records.get(job_id)
        if record is not None and done(record):
            return record
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {store.records.get(job_id)}\n{log()}")
