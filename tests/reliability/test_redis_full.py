"""Redis out of memory (maxmemory, noeviction) or unable to persist (MISCONF): the API answers 503 with
the reason, not 500, and a worker's lease keeper lives through it (issue 14 item 11). On a private
redis-server, so the shared one is never filled."""

from __future__ import annotations

import time

import pytest
import redis
from fastapi.testclient import TestClient

from jobs.redis_errors import StoreUnavailable
from jobs.settings import Settings
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from service.main import create_app
from tests.helpers import ALICE, RANGE_TEST
from tests.reliability.redis_server import RedisServer
from worker.lease import LeaseKeeper, worker_id


@pytest.fixture
def full_redis(own_redis: RedisServer, api_settings: Settings):
    settings = api_settings.model_copy(update={"redis_url": own_redis.url})
    admin = redis.Redis.from_url(own_redis.url)
    return settings, admin


def test_out_of_memory_is_503_with_the_reason(full_redis) -> None:
    settings, admin = full_redis
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=ALICE).status_code in (202, 503)
        admin.config_set("maxmemory", 1)  # everything is over the limit now
        try:
            response = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=ALICE)
            assert response.status_code == 503, response.text
            assert "out of memory" in response.json()["detail"]
            assert client.get("/v1/jobs", headers=ALICE).status_code == 200  # reads still work
        finally:
            admin.config_set("maxmemory", 0)


def test_the_lease_keeper_lives_through_an_out_of_memory_redis(full_redis) -> None:
    settings, admin = full_redis
    store = JobStore.from_settings(settings)
    job_id = store.records.create("train", {}, "full", queue="parked")["id"]
    assert store.leases.claim(job_id, worker_id(), lease_seconds=30)
    store.records.transition(job_id, "running", holder=worker_id())
    keeper = LeaseKeeper(store, WorkerRegistry(store.redis, store.prefix), job_id, queue="parked",
                         lease_seconds=30, interval=0.1)
    admin.config_set("maxmemory", 1)
    keeper.start()
    try:
        with pytest.raises(StoreUnavailable, match="out of memory"):
            store.records.transition(job_id, "failed", error="refused while full")
        time.sleep(0.5)  # several refused renewals
        assert keeper.is_alive() and not keeper.lost.is_set()
        admin.config_set("maxmemory", 0)
        before = store.redis.pttl(store.keys.lease(job_id))
        time.sleep(0.4)
        assert store.redis.pttl(store.keys.lease(job_id)) > before - 200  # renewed again
    finally:
        admin.config_set("maxmemory", 0)
        keeper.stop()
