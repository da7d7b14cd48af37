"""What the API shows and keeps without being asked properly (issue 14 item 13): probes show no worker
host or job id, /metrics needs a key, the settings keep no plaintext key, the access log cannot be
forged through an encoded newline."""

from __future__ import annotations

import logging
import secrets

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from service.main import create_app
from tests.helpers import ALICE


def test_readyz_names_no_worker_host_pid_or_job(client: TestClient, store: JobStore) -> None:
    worker = f"secret-host.internal:4242:{secrets.token_hex(3)}"
    job_id = "job_" + secrets.token_hex(8)
    WorkerRegistry(store.redis, store.prefix).record_heartbeat(worker, "parked", job_id=job_id, took_task=True)
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert "secret-host" not in response.text and "4242" not in response.text and "job_" not in response.text
    assert {"queue": "parked"} in response.json()["workers"]


def test_metrics_needs_an_api_key_unless_open(api_settings: Settings) -> None:
    with TestClient(create_app(api_settings)) as keyed:
        refused = keyed.get("/metrics")
        assert refused.status_code == 401 and "clr_" not in refused.text
        assert keyed.get("/metrics", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert keyed.get("/metrics", headers=ALICE).status_code == 200
    with TestClient(create_app(api_settings.model_copy(update={"metrics_open": True}))) as scraped:
        assert scraped.get("/metrics").status_code == 200


def test_the_settings_object_keeps_only_hashes_of_keys_and_tokens() -> None:
    settings = Settings(api_keys="alice:alice-plain-secret,bob:bob-plain-secret", metrics_token="scrape-plain")
    dumped = repr(settings) + settings.model_dump_json()
    for secret in ("alice-plain-secret", "bob-plain-secret", "scrape-plain"):
        assert secret not in dumped
    assert settings.api_keys.startswith("alice:sha256:")
    with TestClient(create_app(settings.model_copy(update={"key_prefix": f"test-{secrets.token_hex(3)}"}))) as c:
        assert c.get("/v1/jobs", headers={"Authorization": "Bearer alice-plain-secret"}).status_code in (200, 503)
        assert c.get("/v1/jobs", headers={"Authorization": f"Bearer {settings.api_keys.split(':', 1)[1]}"}
                     ).status_code == 401  # the stored hash is not itself a key


def test_an_encoded_newline_in_the_path_cannot_forge_an_access_log_line(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="service.access"):
        client.get("/v1/jobs/x%0a2026-01-01 INFO service.access: GET /admin 200", headers=ALICE)
    lines = [r.getMessage() for r in caplog.records if r.name == "service.access"]
    assert lines and all("\n" not in line for line in lines)
    assert any("%0a" in line for line in lines), lines
