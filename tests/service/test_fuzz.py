"""Fuzz the API's OpenAPI schema with schemathesis: no 5xx, every response matching the schema.

A fixed seed and a small count keep CI quick and reproducible; `scripts/reliability/fuzz_full.py`
sends thousands of requests the same way and its figures go to `docs/reliability.md`.
"""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from scripts.reliability.fuzzing import fuzz_app
from service.main import create_app
from tests.helpers import ALICE, seed_jobs

CI_EXAMPLES = 15  # per operation and generation mode (positive, negative)


@pytest.fixture(scope="module")
def fuzz_target(api_settings: Settings, store: JobStore):
    app = create_app(api_settings)
    with TestClient(app) as client:
        yield app, seed_jobs(client, store, api_settings, ALICE)
    # Fuzzed bodies may ask for device "cpu": real tasks on the queue the session's workers consume.
    # Cancel what is still queued, so a later test's job never waits behind fuzzed ones.
    cursor = None
    while True:
        queued, cursor = store.records.list("alice", state=JobState.QUEUED.value, cursor=cursor, limit=100)
        for job in queued:
            store.records.request_cancel(job["id"])
        if cursor is None:
            break


def test_fuzzed_requests_get_no_5xx_and_match_the_schema(fuzz_target) -> None:
    app, job_ids = fuzz_target
    report = fuzz_app(app, headers=ALICE, examples=CI_EXAMPLES, job_ids=job_ids)
    print(report.summary())
    assert report.requests >= 150, report.summary()
    assert report.server_errors == 0, report.summary()
    assert report.failures == [], "\n".join(report.failures)
    assert sum(n for code, n in report.by_status.items() if 200 <= code < 300) > 0  # authenticated paths reached


@pytest.mark.parametrize("preset", [{"": {}}, ["digits-demo"], 7])
def test_a_preset_that_is_not_a_string_is_422_not_500(client: TestClient, preset: object) -> None:
    # Found by the full fuzz run: `{"preset": {...}}` reached a dict lookup and raised TypeError (500).
    response = client.post("/v1/jobs/train", json={"preset": preset}, headers=ALICE)
    assert response.status_code == 422, response.text
    assert any(err["loc"][-1] == "preset" for err in response.json()["detail"])


def test_a_last_event_id_beyond_64_bits_is_422_not_500(client: TestClient, job_id: str) -> None:
    # Found by the full fuzz run: 20-digit parts passed the header pattern, and Redis refused the id (500).
    client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)
    too_big = client.get(f"/v1/jobs/{job_id}/events", headers={**ALICE, "Last-Event-ID": "99999999999999999999-0"})
    assert too_big.status_code == 422, too_big.text
    largest = client.get(f"/v1/jobs/{job_id}/events", headers={**ALICE, "Last-Event-ID": "9999999999999999999-0"})
    assert largest.status_code == 200 and "event: state" in largest.text
