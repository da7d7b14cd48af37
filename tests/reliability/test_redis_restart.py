"""Redis restarts (append-only file on) while a job trains and the API serves.

Meanwhile the API answers 503 with a reason, never 500; afterwards no job record is lost, the running
job finishes, and the worker consumes again (workers have been seen alive but deaf after a broker
reconnect, celery#8030), which a job sent after the restart proves.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from service.main import create_app
from tests.helpers import FINAL, WorkerProcess
from tests.reliability.redis_server import RedisServer

pytestmark = pytest.mark.slow

TRAIN = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "epochs": 15, "train_subset": 1000,
         "batch_size": 64, "policy": "triangular", "base_lr": 0.01, "max_lr": 0.1, "step_size": 1,
         "augment": {"translate": 0, "flip": False}}
QUICK = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "train_subset": 300, "batch_size": 64,
         "num_iter": 10}


def wait_state(client: TestClient, job_id: str, done, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        if response.status_code == 200 and done(job := response.json()):
            return job
        assert response.status_code in (200, 503), response.text
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id}: {client.get(f'/v1/jobs/{job_id}').text}")


def test_redis_restart_mid_job_is_503_meanwhile_and_loses_nothing(
    settings: Settings, own_redis: RedisServer, tmp_path: Path
) -> None:
    # A lease longer than the outage: the worker keeps its job through the restart (AOF keeps the lease).
    ours = settings.model_copy(update={"redis_url": own_redis.url, "lease_seconds": 10.0,
                                       "heartbeat_seconds": 0.5, "default_queue": "cpu"})
    store = JobStore.from_settings(ours)
    worker = WorkerProcess(ours, tmp_path / "worker.log")
    try:
        worker.wait_ready(store)
        with TestClient(create_app(ours)) as api:
            running = api.post("/v1/jobs/train", json=TRAIN).json()["id"]
            parked = [store.records.create("range_test", QUICK, "local", queue="parked")["id"] for _ in range(3)]
            store.records.request_cancel(parked[0])
            wait_state(api, running, lambda j: (j["progress"] or {}).get("epoch", 0) >= 2, timeout=60)
            before = {job_id: store.records.get(job_id) for job_id in [running, *parked]}

            own_redis.stop()
            outage = {
                "get": api.get(f"/v1/jobs/{running}"),
                "list": api.get("/v1/jobs"),
                "submit": api.post("/v1/jobs/range-test", json=QUICK),
                "cancel": api.post(f"/v1/jobs/{parked[1]}/cancel"),
                "delete": api.delete(f"/v1/jobs/{parked[0]}"),  # cancelled, so deletable: kept all the same
                "events": api.get(f"/v1/jobs/{running}/events"),
                "readyz": api.get("/readyz"),
            }
            healthz = api.get("/healthz")
            time.sleep(1.0)
            own_redis.start()

            for name, response in outage.items():
                assert response.status_code == 503, (name, response.status_code, response.text)
                assert "unavailable" in response.json()["detail"] or "not ready" in response.json()["detail"]
            assert healthz.status_code == 200

            job = wait_state(api, running, lambda j: j["state"] in FINAL, timeout=120)
            assert job["state"] == "succeeded", job["error"]
            for job_id, record in before.items():  # every record is back, the parked ones unchanged
                assert store.records.get(job_id) is not None
                if job_id != running:
                    assert store.records.get(job_id) == record
            assert store.records.get(parked[0])["state"] == JobState.CANCELLED

            after = api.post("/v1/jobs/range-test", json=QUICK)
            assert after.status_code == 202, after.text
            assert wait_state(api, after.json()["id"], lambda j: j["state"] in FINAL, 60)["state"] == "succeeded"
    finally:
        worker.stop()
        store.redis.close()
