"""DELETE /v1/jobs/{id}: a finished job goes for good (record, events, indexes, run folder); a job
that may still change or be written to stays, with a 409 that says what to do."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from tests.helpers import ALICE, BOB, mark_running


def _finish(store: JobStore, job_id: str, state: JobState = JobState.SUCCEEDED, *, release: bool = True) -> None:
    mark_running(store, job_id)
    store.records.transition(job_id, state, error="stopped" if state == JobState.FAILED else None)
    if release:
        store.leases.release(job_id, "test-driver")


def _run_folder(settings: Settings, job_id: str) -> Path:
    folder = Path(settings.artifact_dir) / job_id
    (folder / "checkpoints").mkdir(parents=True)
    (folder / "model.pt").write_bytes(b"PK weights")
    (folder / "checkpoints" / "last.pt").write_bytes(b"PK checkpoint")
    return folder


@pytest.mark.parametrize("state", [JobState.SUCCEEDED, JobState.FAILED])
def test_finished_job_is_removed_with_its_files(client: TestClient, store: JobStore, api_settings: Settings,
                                                job_id: str, state: JobState) -> None:
    folder = _run_folder(api_settings, job_id)
    _finish(store, job_id, state)
    assert client.get(f"/v1/jobs/{job_id}/artifacts/model.pt", headers=ALICE).status_code == 200

    response = client.delete(f"/v1/jobs/{job_id}", headers=ALICE)
    assert response.status_code == 204 and response.content == b""
    assert not folder.exists()
    assert client.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/events", headers=ALICE).status_code == 404
    listed = client.get("/v1/jobs", params={"limit": 100}, headers=ALICE).json()["items"]
    assert job_id not in [job["id"] for job in listed]
    assert not store.redis.exists(store.keys.job(job_id), store.keys.events(job_id))
    assert not any(store.redis.sismember(key, job_id) for key in store.keys.states())
    assert client.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 404


def test_cancelled_queued_job_without_folder_is_removed(client: TestClient, job_id: str) -> None:
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).json()["state"] == "cancelled"
    assert client.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 204
    assert client.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 404


def test_queued_or_running_job_is_409_and_kept(client: TestClient, store: JobStore, job_id: str) -> None:
    queued = client.delete(f"/v1/jobs/{job_id}", headers=ALICE)
    assert queued.status_code == 409
    assert "queued" in queued.json()["detail"] and "cancel it" in queued.json()["detail"]
    mark_running(store, job_id)
    running = client.delete(f"/v1/jobs/{job_id}", headers=ALICE)
    assert running.status_code == 409 and "running" in running.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["state"] == "running"


def test_finished_job_whose_worker_still_holds_it_is_409_until_released(
        client: TestClient, store: JobStore, api_settings: Settings, job_id: str) -> None:
    folder = _run_folder(api_settings, job_id)
    _finish(store, job_id, release=False)
    busy = client.delete(f"/v1/jobs/{job_id}", headers=ALICE)
    assert busy.status_code == 409 and "still finishing" in busy.json()["detail"]
    assert folder.exists() and client.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 200
    store.leases.release(job_id, "test-driver")
    assert client.delete(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 204
    assert not folder.exists()


def test_another_keys_job_is_404_and_kept(client: TestClient, store: JobStore, api_settings: Settings,
                                          job_id: str) -> None:
    folder = _run_folder(api_settings, job_id)
    _finish(store, job_id)
    assert client.delete(f"/v1/jobs/{job_id}", headers=BOB).status_code == 404
    assert folder.exists() and client.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 200
