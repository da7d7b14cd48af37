"""Liveness, readiness, Prometheus metrics, and 503 (never 500) while Redis is unreachable."""

from __future__ import annotations

import re
import secrets

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from service.main import create_app
from tests.helpers import ALICE, RANGE_TEST, TRAIN, mark_running


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_is_503_without_workers(api_settings: Settings) -> None:
    lonely = api_settings.model_copy(update={"key_prefix": f"test-lonely-{secrets.token_hex(4)}"})
    with TestClient(create_app(lonely)) as lonely_client:
        response = lonely_client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("not ready: no worker heartbeat")


def test_readyz_is_503_for_a_worker_that_lives_but_takes_no_work(api_settings: Settings) -> None:
    prefix = f"test-stuck-{secrets.token_hex(4)}"
    settings = api_settings.model_copy(update={"key_prefix": prefix})
    with TestClient(create_app(settings)) as stuck_client:
        store: JobStore = stuck_client.app.state.store
        workers: WorkerRegistry = stuck_client.app.state.workers
        workers.record_heartbeat("stuck@host", "nobody-consumes-this")  # alive, never took a task
        try:
            response = stuck_client.get("/readyz")
        finally:
            store.delete_all()
    assert response.status_code == 503
    assert "none took a canary task" in response.json()["detail"]


def test_metrics_has_jobs_by_state_queue_depth_and_durations(client: TestClient, store: JobStore,
                                                             job_id: str) -> None:
    gpu = client.post("/v1/jobs/range-test", json={**RANGE_TEST, "device": "cuda"}, headers=ALICE)  # no consumer
    mark_running(store, job_id)
    store.records.transition(job_id, JobState.SUCCEEDED)
    # No request reads the job: the duration comes from Redis, recorded by the final transition.
    response = client.get("/metrics", headers=ALICE)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "clr_store_up 1.0" in text
    counts = store.records.counts_by_state()
    for state in ("queued", "running", "succeeded", "cancelled"):
        assert f'clr_jobs{{state="{state}"}} {float(counts[state])}' in text
    assert re.search(r'clr_queue_depth\{queue="gpu"\} [1-9]\d*\.0', text)
    assert re.search(r'clr_queue_depth\{queue="cpu"\} \d+\.0', text)
    assert re.search(r'clr_job_duration_seconds_count\{kind="range_test",state="succeeded"\} [1-9]', text)
    assert 'clr_http_requests_total{method="POST",route="/v1/jobs/range-test",status="202"}' in text
    client.post(f"/v1/jobs/{gpu.json()['id']}/cancel", headers=ALICE)


def test_metrics_token_when_set_is_required_and_an_api_key_is_not_enough(api_settings: Settings) -> None:
    settings = api_settings.model_copy(update={"metrics_token": "scrape-secret"})
    with TestClient(create_app(settings)) as scraped:
        for headers in ({}, {"Authorization": "Bearer alice-secret"}, {"Authorization": "Bearer scrape-secre"}):
            refused = scraped.get("/metrics", headers=headers)
            assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
            assert "clr_" not in refused.text
        allowed = scraped.get("/metrics", headers={"Authorization": "Bearer scrape-secret"})
        assert allowed.status_code == 200 and "clr_store_up 1.0" in allowed.text
        assert scraped.get("/healthz").status_code == 200  # probes stay open


@pytest.fixture(scope="module")
def redis_down(api_settings: Settings):
    """An app whose Redis is a closed port."""
    settings = api_settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings), raise_server_exceptions=False) as down:
        yield down


@pytest.mark.parametrize("method, path, body", [
    ("GET", "/v1/jobs", None),
    ("GET", "/v1/jobs/job_0123456789abcdef", None),
    ("GET", "/v1/jobs/job_0123456789abcdef/events", None),
    ("POST", "/v1/jobs/job_0123456789abcdef/cancel", None),
    ("POST", "/v1/jobs/train", TRAIN),
    ("POST", "/v1/jobs/range-test", RANGE_TEST),
    ("GET", "/v1/models", None),
])
def test_redis_unreachable_is_503_with_a_reason(redis_down: TestClient, method: str, path: str,
                                                body: dict | None) -> None:
    response = redis_down.request(method, path, json=body, headers=ALICE)
    assert response.status_code == 503, response.text
    assert response.json()["detail"].startswith("job store unavailable: ")


def test_redis_unreachable_probes(redis_down: TestClient) -> None:
    assert redis_down.get("/healthz").status_code == 200
    ready = redis_down.get("/readyz")
    assert ready.status_code == 503 and ready.json() == {"detail": "not ready: redis unreachable"}
    metrics = redis_down.get("/metrics", headers=ALICE)
    assert metrics.status_code == 200 and "clr_store_up 0.0" in metrics.text


def test_openapi_has_examples_on_every_request_body(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    bodies = [(path, op) for path, item in schema["paths"].items() for op in item.values()
              if isinstance(op, dict) and "requestBody" in op]
    assert {p for p, _ in bodies} == {"/v1/jobs/range-test", "/v1/jobs/train", "/v1/datasets",
                                      "/v1/jobs/{job_id}/suggest", "/v1/weights"}
    for path, op in bodies:
        content = op["requestBody"]["content"]
        if path == "/v1/datasets":  # the raw archive, not JSON
            assert {"application/zip", "application/x-tar", "application/gzip"} <= set(content)
        for media, body in content.items():
            assert body.get("examples") or "example" in body, f"{path} {media} has no example"
    assert client.get("/docs").status_code == 200


def test_openapi_examples_are_valid_specs(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/v1/jobs/range-test", "/v1/jobs/train"):
        examples = schema["paths"][path]["post"]["requestBody"]["content"]["application/json"]["examples"]
        for example in examples.values():
            body = {**example["value"], "device": "cpu"} if example["value"].get("device") == "cuda" else \
                example["value"]
            response = client.post(path, json=body, headers=ALICE)
            assert response.status_code == 202, (path, response.text)
            client.post(f"/v1/jobs/{response.json()['id']}/cancel", headers=ALICE)
