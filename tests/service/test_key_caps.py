"""One tenant against everyone (issue 14 item 10): a key's queued plus running jobs and its open event
streams are capped (429 with Retry-After); other keys are not affected."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from service.main import create_app
from tests.helpers import RANGE_TEST


@pytest.fixture
def capped(api_settings: Settings) -> Iterator[tuple[TestClient, dict, dict]]:
    a, b = f"a{secrets.token_hex(3)}", f"b{secrets.token_hex(3)}"
    settings = api_settings.model_copy(update={
        "api_keys": f"{a}:{a}-secret,{b}:{b}-secret", "max_active_jobs_per_key": 3, "sse_max_streams_per_key": 1})
    with TestClient(create_app(settings)) as client:
        yield client, {"Authorization": f"Bearer {a}-secret"}, {"Authorization": f"Bearer {b}-secret"}


def test_a_key_past_its_active_job_cap_gets_429_and_others_do_not(capped, store: JobStore) -> None:
    client, greedy, other = capped
    ids = [client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=greedy).json()["id"] for _ in range(3)]
    refused = client.post("/v1/jobs/range-test", json=RANGE_TEST,
                          headers={**greedy, "Idempotency-Key": secrets.token_hex(4)})
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    assert "CLR_MAX_ACTIVE_JOBS_PER_KEY" in refused.json()["detail"]
    assert client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=other).status_code == 202
    store.records.transition(ids[0], JobState.CANCELLED)  # a final job makes room
    assert client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=greedy).status_code == 202


def test_a_key_may_hold_only_its_share_of_event_streams(capped) -> None:
    client, greedy, other = capped
    job = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=greedy).json()["id"]
    theirs = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=other).json()["id"]
    with client.stream("GET", f"/v1/jobs/{job}/events", headers=greedy) as first:
        assert first.status_code == 200
        second = client.get(f"/v1/jobs/{job}/events", headers=greedy)
        assert second.status_code == 429 and second.headers["retry-after"]
        client.post(f"/v1/jobs/{theirs}/cancel", headers=other)  # final, so its stream ends at once
        assert client.get(f"/v1/jobs/{theirs}/events", headers=other).status_code == 200
    client.post(f"/v1/jobs/{job}/cancel", headers=greedy)
    assert client.get(f"/v1/jobs/{job}/events", headers=greedy).status_code == 200  # the first one closed
