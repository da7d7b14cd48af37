"""Access: every endpoint refuses a missing or wrong key (401) and another tenant's job (404), never data."""

from __future__ import annotations

import json
import logging
import secrets
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from service.main import create_app
from tests.helpers import (
    ALICE,
    BOB,
    JOB_ENDPOINTS,
    JOB_PART_ENDPOINTS,
    OTHER_ENDPOINTS,
    RANGE_TEST,
    REMOVING_JOB_ENDPOINTS,
    TRAIN,
    WRONG,
    body_for,
    mark_running,
    write_range_test_log,
)


@pytest.fixture(scope="module")
def finished_job(client: TestClient, store: JobStore, api_settings: Settings) -> str:
    """Alice's succeeded job with every file on disk, so a refusal is never just a missing file."""
    job_id = client.post("/v1/jobs/train", json=TRAIN, headers=ALICE).json()["id"]
    run = Path(api_settings.artifact_dir) / job_id
    (run / "checkpoints").mkdir(parents=True)
    for name in ("history.png", "report.json", "report.txt", "spec.json", "checkpoints/last.pt"):
        (run / name).write_bytes(b'{"secret": "alice data"}')
    write_range_test_log(run)
    mark_running(store, job_id)
    store.records.transition(job_id, JobState.SUCCEEDED, result={"secret": "alice data"})
    return job_id


def _call(client: TestClient, method: str, path: str, headers: dict):
    body = body_for(path)
    return client.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize("method, path", JOB_ENDPOINTS + JOB_PART_ENDPOINTS + OTHER_ENDPOINTS + REMOVING_JOB_ENDPOINTS)
@pytest.mark.parametrize("who", ["no key", "wrong key", "basic auth", "empty bearer"])
def test_missing_or_wrong_key_is_401(client: TestClient, finished_job: str, method: str, path: str,
                                     who: str) -> None:
    headers = {"no key": {}, "wrong key": WRONG, "basic auth": {"Authorization": "Basic YWxpY2U6eA=="},
               "empty bearer": {"Authorization": "Bearer "}}[who]
    response = _call(client, method, path.format(id=finished_job), headers)
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    assert "alice data" not in response.text and finished_job not in response.text


@pytest.mark.parametrize("method, path", JOB_ENDPOINTS)
def test_another_tenants_job_is_404(client: TestClient, finished_job: str, method: str, path: str) -> None:
    owner = _call(client, method, path.format(id=finished_job), ALICE)
    assert owner.status_code in (200, 409), owner.text  # the owner does get it (cancel: already finished)
    response = _call(client, method, path.format(id=finished_job), BOB)
    assert response.status_code == 404
    assert response.json() == {"detail": "job not found"}


@pytest.mark.parametrize("method, path", JOB_PART_ENDPOINTS)
def test_another_tenants_job_part_is_404_naming_the_job(client: TestClient, finished_job: str, method: str,
                                                        path: str) -> None:
    response = _call(client, method, path.format(id=finished_job), BOB)
    assert response.status_code == 404 and response.json() == {"detail": "job not found"}


@pytest.mark.parametrize("method, path", REMOVING_JOB_ENDPOINTS)
def test_another_tenant_cannot_remove_a_job(client: TestClient, finished_job: str, method: str, path: str) -> None:
    response = _call(client, method, path.format(id=finished_job), BOB)
    assert response.status_code == 404 and response.json() == {"detail": "job not found"}
    assert client.get(f"/v1/jobs/{finished_job}", headers=ALICE).json()["state"] == "succeeded"


def test_another_tenants_jobs_are_not_listed(client: TestClient, finished_job: str) -> None:
    listed = client.get("/v1/jobs", params={"limit": 100}, headers=BOB).text
    assert finished_job not in listed and "alice data" not in listed


def test_bearer_scheme_is_case_insensitive(client: TestClient) -> None:
    assert client.get("/v1/models", headers={"Authorization": "bearer alice-secret"}).status_code == 200


def test_keys_are_kept_only_as_hashes(client: TestClient) -> None:
    ring = client.app.state.keys
    assert "alice-secret" not in repr(vars(ring)) and b"alice-secret" not in repr(vars(ring)).encode()


def test_open_mode_needs_no_key_and_warns(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="service.auth"):
        app = create_app(settings.model_copy(update={"open_mode": True, "default_queue": "parked"}))
    assert any("open mode" in r.getMessage() for r in caplog.records)
    with TestClient(app) as open_client:
        response = open_client.post("/v1/jobs/range-test", json=RANGE_TEST)
        assert response.status_code == 202
        assert open_client.get(response.headers["location"]).json()["id"] == response.json()["id"]


def test_rate_limit_is_429_with_retry_after_per_key(api_settings: Settings) -> None:
    name = f"r{secrets.token_hex(3)}"
    settings = api_settings.model_copy(update={"rate_limit_per_minute": 3,
                                               "api_keys": f"{name}:{name}-secret,other:{name}-other"})
    with TestClient(create_app(settings)) as limited:
        mine = {"Authorization": f"Bearer {name}-secret"}
        codes = [limited.get("/v1/models", headers=mine).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = limited.get("/v1/models", headers=mine)
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert limited.get("/v1/models", headers={"Authorization": f"Bearer {name}-other"}).status_code == 200


def test_logs_carry_request_id_never_the_key(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG):
        response = client.get("/v1/jobs", headers={**ALICE, "X-Request-ID": "req-123"})
        client.get("/v1/jobs", headers=WRONG)
    assert response.headers["x-request-id"] == "req-123"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "alice-secret" not in text and "not-a-key" not in text
    assert any("request_id=req-123" in r.getMessage() for r in caplog.records if r.name == "service.access")


def test_request_id_is_generated_when_absent(client: TestClient) -> None:
    first, second = client.get("/healthz"), client.get("/healthz")
    assert len(first.headers["x-request-id"]) == 32
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_cors_closed_by_default(client: TestClient) -> None:
    response = client.options("/v1/jobs", headers={"Origin": "https://evil.example",
                                                   "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in response.headers


def test_cors_opens_for_configured_origins_only(api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"cors_origins": "https://ui.example"})
    with TestClient(create_app(settings)) as cors_client:
        allowed = cors_client.options("/v1/jobs", headers={"Origin": "https://ui.example",
                                                           "Access-Control-Request-Method": "GET"})
        assert allowed.headers["access-control-allow-origin"] == "https://ui.example"
        for method in ("POST", "DELETE"):  # a browser UI may also submit, cancel and delete
            preflight = cors_client.options("/v1/jobs/job_0123456789abcdef", headers={
                "Origin": "https://ui.example", "Access-Control-Request-Method": method})
            assert preflight.status_code == 200 and method in preflight.headers["access-control-allow-methods"]
        other = cors_client.get("/v1/models", headers={**ALICE, "Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in other.headers


def test_a_record_never_shows_its_owner(client: TestClient, finished_job: str) -> None:
    job = client.get(f"/v1/jobs/{finished_job}", headers=ALICE).json()
    assert "owner" not in job and "alice" not in json.dumps(job["links"])


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}], ids=["no key", "wrong key"])
@pytest.mark.parametrize("body", [b'{"dataset": ', b'{"epochs": "many"}', b'{"bogus": 1}'],
                         ids=["bad json", "wrong type", "unknown field"])
def test_invalid_body_without_a_valid_key_is_401_not_422(client: TestClient, headers: dict, body: bytes) -> None:
    """Validation must not answer a stranger first: no key, no 422 details."""
    response = client.post("/v1/jobs/train", content=body, headers={**headers, "Content-Type": "application/json"})
    assert response.status_code == 401 and response.headers["www-authenticate"] == "Bearer"
    assert "detail" in response.json() and "loc" not in response.text
    with_key = client.post("/v1/jobs/train", content=body, headers={**ALICE, "Content-Type": "application/json"})
    assert with_key.status_code == 422
