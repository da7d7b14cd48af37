"""Through the whole path: API -> Redis -> a real Celery worker process -> clrcore -> files over HTTP."""

from __future__ import annotations

import io
import time

import pytest
from fastapi.testclient import TestClient

from tests.helpers import ALICE, WorkerProcess, parse_sse

pytestmark = pytest.mark.slow

AUTO_TRAIN = {"preset": "digits-demo", "epochs": 3, "device": "cpu"}  # max_lr "auto": range test first


def _wait_for(client: TestClient, job_id: str, states: set[str], timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} still {job['state']}")


def test_auto_train_job_succeeds_with_report_plots_and_events(client: TestClient,
                                                              worker: WorkerProcess) -> None:
    from PIL import Image  # the test may decode PNGs; the API process never imports PIL

    assert client.get("/readyz").status_code == 200
    submitted = client.post("/v1/jobs/train", json=AUTO_TRAIN, headers=ALICE)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    assert submitted.json()["queue"] == "cpu"

    events = parse_sse(client.get(f"/v1/jobs/{job_id}/events", headers=ALICE).text)
    states = [e["data"]["state"] for e in events if e["event"] == "state"]
    assert states[0] == "queued" and "running" in states and states[-1] == "succeeded", \
        (states, events[-1], worker.log_tail())
    assert any(e["event"] == "progress" for e in events)

    job = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()
    assert job["state"] == "succeeded" and job["result"] and job["progress"]["fraction"] == 1.0
    assert job["result"]["lr_choice"]["source"] == "range_test" and job["result"]["epochs_run"] == 3
    assert job["spec"]["kind"] == "train" and job["spec"]["preset"] == "digits-demo"
    assert job["spec"]["epochs"] == 3 and "label_smoothing" not in job["spec"]  # the request, not defaults
    assert set(job["links"]["plots"]) >= {"range_test", "history", "lr_schedule", "confusion_matrix"}
    for url in job["links"]["plots"].values():
        png = client.get(url, headers=ALICE)
        assert png.headers["content-type"] == "image/png"
        Image.open(io.BytesIO(png.content)).verify()
    report = client.get(job["links"]["report"], headers=ALICE)
    assert report.status_code == 200 and report.json()
    assert "precision" in client.get(job["links"]["report_text"], headers=ALICE).text
    assert {"history.json", "model.pt", "spec.json", "range_test.json"} <= set(job["links"]["artifacts"])
    assert client.get(f"/v1/jobs/{job_id}/artifacts/model.pt", headers=ALICE).content[:2] == b"PK"

    deleted = client.delete(f"/v1/jobs/{job_id}", headers=ALICE)  # the worker has let go: it may go
    assert deleted.status_code == 204, deleted.text
    assert client.get(f"/v1/jobs/{job_id}", headers=ALICE).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/artifacts/model.pt", headers=ALICE).status_code == 404


def test_cancel_running_job_stops_it(client: TestClient, worker: WorkerProcess) -> None:
    long_job = {"dataset": "digits", "model": "tiny_cnn", "epochs": 200, "base_lr": 0.001, "max_lr": 0.05,
                "device": "cpu"}
    job_id = client.post("/v1/jobs/train", json=long_job, headers=ALICE).json()["id"]
    _wait_for(client, job_id, {"running"})
    response = client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)
    assert response.status_code == 202 and response.json()["state"] in ("cancelling", "cancelled")
    started = time.monotonic()
    job = _wait_for(client, job_id, {"cancelled", "failed", "succeeded"}, timeout=30)
    assert job["state"] == "cancelled", job
    assert time.monotonic() - started < 10
    assert client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE).status_code == 409
