"""The API process dies (SIGKILL) while a job trains and a client follows its event stream.

Nothing is lost: the job goes on in the worker, the record is intact behind the new API process, and
the SSE client that reconnects with `Last-Event-ID` receives every event exactly once, in order, up
to the final state (the log is a Redis Stream, not Pub/Sub, so events survive the API).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from jobs.settings import Settings
from jobs.store import JobStore
from service.routes.jobs import CLIENT_EVENTS
from tests.helpers import WorkerProcess
from tests.reliability.api_server import ApiServer, sse_events

pytestmark = pytest.mark.slow

TRAIN = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "epochs": 10, "train_subset": 1000,
         "batch_size": 64, "policy": "triangular", "base_lr": 0.01, "max_lr": 0.1, "step_size": 1,
         "augment": {"translate": 0, "flip": False}}


def test_api_killed_mid_stream_client_resumes_without_gaps_or_duplicates(
    settings: Settings, store: JobStore, worker: WorkerProcess, tmp_path: Path
) -> None:
    api = ApiServer(settings, tmp_path / "api.log")
    api.start()
    try:
        job_id = httpx.post(f"{api.url}/v1/jobs/train", json=TRAIN, timeout=10).json()["id"]
        seen: list[tuple[str, str, dict]] = []
        # The stream breaks when its server dies.
        with pytest.raises(httpx.HTTPError), \
                httpx.stream("GET", f"{api.url}/v1/jobs/{job_id}/events", timeout=10) as response:
            for event_id, name, data in sse_events(response):
                seen.append((event_id, name, json.loads(data)))
                if sum(1 for _, n, _ in seen if n == "progress") >= 5:
                    api.kill()
        assert store.records.get(job_id)["state"] == "running"  # the worker trains on without an API

        api.start()  # a new process on the same port
        assert httpx.get(f"{api.url}/v1/jobs/{job_id}", timeout=10).json()["state"] in ("running", "succeeded")
        headers = {"Last-Event-ID": seen[-1][0]}
        with httpx.stream("GET", f"{api.url}/v1/jobs/{job_id}/events", headers=headers, timeout=30) as response:
            assert response.status_code == 200
            for event_id, name, data in sse_events(response):
                seen.append((event_id, name, json.loads(data)))

        ids = [event_id for event_id, _, _ in seen]
        assert len(ids) == len(set(ids)), "an event was delivered twice"
        logged = [event_id for event_id, name, _ in store.events.read(job_id, count=100_000)
                  if name in CLIENT_EVENTS]  # operators' events (delivery, recovered) are not relayed
        assert ids == logged[: len(ids)], "an event is missing or out of order"
        assert seen[-1][1] == "state" and seen[-1][2]["state"] == "succeeded"
        assert logged[len(ids):] == []  # nothing after the final state either
    finally:
        api.stop()


def test_jobs_submitted_before_an_api_restart_are_all_there_after(
    settings: Settings, store: JobStore, tmp_path: Path
) -> None:
    parked = settings.model_copy(update={"default_queue": "parked"})
    api = ApiServer(parked, tmp_path / "api.log")
    api.start()
    try:
        body = {"dataset": "digits", "model": "tiny_cnn", "num_iter": 10}
        ids = [httpx.post(f"{api.url}/v1/jobs/range-test", json=body, timeout=10).json()["id"] for _ in range(5)]
        api.kill()
        time.sleep(0.2)
        api.start()
        listed = httpx.get(f"{api.url}/v1/jobs", params={"kind": "range_test", "limit": 100}, timeout=10).json()
        assert set(ids) <= {job["id"] for job in listed["items"]}
    finally:
        api.stop()
