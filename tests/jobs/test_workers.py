"""WorkerRegistry against a real Redis: heartbeats, proven workers, canary replies, the stored format."""

from __future__ import annotations

import json
import secrets

import pytest
import redis

from jobs.redis_errors import StoreUnavailable
from jobs.workers import WORKER_RECORD_TTL, WorkerRegistry


def test_worker_heartbeats_and_canary(workers: WorkerRegistry) -> None:
    busy, idle, silent = (f"w-{secrets.token_hex(3)}" for _ in range(3))
    workers.record_heartbeat(busy, "gpu", job_id="job_x")
    workers.record_heartbeat(idle, "cpu", took_task=True)
    workers.record_heartbeat(silent, "cpu")
    live = {w["worker_id"] for w in workers.live_workers(10)}
    assert {busy, idle, silent} <= live
    proven = {w["worker_id"] for w in workers.proven_workers(10)}
    assert {busy, idle} <= proven and silent not in proven
    assert {w["worker_id"] for w in workers.proven_workers(10, queue="gpu")} >= {busy}
    token = secrets.token_hex(8)
    assert workers.canary(token) is None
    workers.record_canary(token, idle, "cpu")
    assert workers.canary(token)["worker_id"] == idle


def test_keys_and_formats_stay_what_running_deployments_hold(workers: WorkerRegistry) -> None:
    worker_id, token = f"w-{secrets.token_hex(3)}", secrets.token_hex(8)
    workers.record_heartbeat(worker_id, "cpu", job_id="job_y", took_task=True)
    workers.record_canary(token, worker_id, "cpu", ttl=60)
    r, p = workers.redis, workers.prefix
    record = r.hgetall(f"{p}:worker:{worker_id}")
    assert set(record) == {"worker_id", "queue", "last_seen", "job_id", "pid", "last_task_at"}
    assert record["job_id"] == "job_y" and float(record["last_seen"]) == float(record["last_task_at"])
    assert 0 < r.ttl(f"{p}:worker:{worker_id}") <= WORKER_RECORD_TTL
    assert r.zscore(f"{p}:workers", worker_id) == pytest.approx(float(record["last_seen"]))
    assert set(json.loads(r.get(f"{p}:canary:{token}"))) == {"worker_id", "queue", "at"}
    assert 0 < r.ttl(f"{p}:canary:{token}") <= 60


def test_unreachable_redis_raises_store_unavailable() -> None:
    client = redis.Redis(port=1, decode_responses=True, socket_connect_timeout=0.2, retry=None)
    dead = WorkerRegistry(client, "nowhere")
    with pytest.raises(StoreUnavailable):
        dead.record_heartbeat("w", "cpu")
    with pytest.raises(StoreUnavailable):
        dead.live_workers(10)
    with pytest.raises(StoreUnavailable):
        dead.proven_workers(10)
    with pytest.raises(StoreUnavailable):
        dead.canary("token")


def test_registry_refuses_a_client_without_decoded_responses() -> None:
    with pytest.raises(ValueError):
        WorkerRegistry(redis.Redis(), "x")
