"""Server-Sent Events: the job's Redis Stream relayed with ids, ending after the final state, resumable."""

from __future__ import annotations

import threading
import time

from fastapi.testclient import TestClient

from jobs.states import JobState
from jobs.store import JobStore
from tests.helpers import ALICE, mark_running, parse_sse


def _drive(store: JobStore, job_id: str, delay: float = 0.3) -> threading.Thread:
    """Run a job's life through the store from a thread while the client is streaming."""
    def life() -> None:
        time.sleep(delay)
        mark_running(store, job_id)
        for step in (1, 2):
            store.events.update_progress(job_id, {"phase": "train", "epoch": 1, "epochs": 1, "step": step, "steps": 2,
                                           "fraction": step / 2}, {"loss": 1.0 / step})
        store.records.transition(job_id, JobState.SUCCEEDED, result={"accuracy": 0.9})

    thread = threading.Thread(target=life, daemon=True)
    thread.start()
    return thread


def test_events_are_delivered_and_the_stream_ends_on_the_final_state(client: TestClient, store: JobStore,
                                                                      job_id: str) -> None:
    thread = _drive(store, job_id)
    started = time.monotonic()
    response = client.get(f"/v1/jobs/{job_id}/events", headers=ALICE)
    thread.join()
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [e["event"] for e in events] == ["state", "state", "progress", "progress", "state"]
    assert [e["data"]["state"] for e in events if e["event"] == "state"] == ["queued", "running", "succeeded"]
    assert events[3]["data"]["progress"]["fraction"] == 1.0
    assert all("-" in e["id"] for e in events)  # Redis Stream ids
    assert time.monotonic() - started < 10


def test_internal_events_stay_in_redis_and_never_reach_the_client(client: TestClient, store: JobStore,
                                                                  job_id: str) -> None:
    store.events.append(job_id, "delivery", {"worker": "host:123:abc", "outcome": "started", "delivery": 1})
    store.events.append(job_id, "recovered", {"by": "host:456:def", "queue": "cpu"})
    _drive(store, job_id, delay=0).join()
    response = client.get(f"/v1/jobs/{job_id}/events", headers=ALICE)
    events = parse_sse(response.text)
    assert [e["event"] for e in events] == ["state", "state", "progress", "progress", "state"]
    assert "host:" not in response.text
    logged = {name for _, name, _ in store.events.read(job_id, count=1000)}
    assert {"delivery", "recovered"} <= logged  # kept for operators


def test_last_event_id_resumes_after_that_event(client: TestClient, store: JobStore, job_id: str) -> None:
    _drive(store, job_id, delay=0).join()
    everything = parse_sse(client.get(f"/v1/jobs/{job_id}/events", headers=ALICE).text)
    resumed = parse_sse(client.get(f"/v1/jobs/{job_id}/events",
                                   headers={**ALICE, "Last-Event-ID": everything[1]["id"]}).text)
    assert [e["id"] for e in resumed] == [e["id"] for e in everything[2:]]


def test_resuming_after_the_final_event_gets_the_final_state_and_closes(client: TestClient, store: JobStore,
                                                                        job_id: str) -> None:
    _drive(store, job_id, delay=0).join()
    last = parse_sse(client.get(f"/v1/jobs/{job_id}/events", headers=ALICE).text)[-1]
    again = parse_sse(client.get(f"/v1/jobs/{job_id}/events", headers={**ALICE, "Last-Event-ID": last["id"]}).text)
    assert [(e["event"], e["data"]["state"]) for e in again] == [("state", "succeeded")]


def test_bad_last_event_id_is_422(client: TestClient, job_id: str) -> None:
    response = client.get(f"/v1/jobs/{job_id}/events", headers={**ALICE, "Last-Event-ID": "0; DROP"})
    assert response.status_code == 422


def test_keep_alive_pings_while_waiting(client: TestClient, store: JobStore, job_id: str,
                                        monkeypatch) -> None:
    monkeypatch.setattr("service.routes.jobs.SSE_PING_S", 0.2)
    thread = _drive(store, job_id, delay=1.0)
    response = client.get(f"/v1/jobs/{job_id}/events", headers=ALICE)
    thread.join()
    assert ": ping" in response.text
    assert parse_sse(response.text)[-1]["data"]["state"] == "succeeded"
