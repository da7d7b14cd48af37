"""A delete the store could not do is remembered in Redis and retried with backoff until it succeeds."""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

import pytest

from jobs.pending_deletes import PendingDeletes, delete_or_defer
from jobs.settings import Settings
from jobs.storage import S3Store, open_store, run_key
from jobs.store import JobStore
from tests.objectstore import StoreEndpoint


def _store(server: StoreEndpoint, monkeypatch: pytest.MonkeyPatch, endpoint: str, prefix: str) -> S3Store:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    store = open_store(Settings(storage_url=f"s3://{server.bucket}/{prefix}", s3_endpoint_url=endpoint,
                                storage_timeout=1))
    assert isinstance(store, S3Store)
    return store


def test_failed_delete_is_retried_by_the_sweeper_until_done(
        object_store_server: StoreEndpoint, store: JobStore, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    prefix = f"pd-{secrets.token_hex(4)}"
    up = _store(object_store_server, monkeypatch, object_store_server.endpoint, prefix)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_port = s.getsockname()[1]
    down = _store(object_store_server, monkeypatch, f"http://127.0.0.1:{dead_port}", prefix)
    (tmp_path / "f").write_bytes(b"x" * 100)
    up.put_file(tmp_path / "f", run_key("job_a", "model.pt"))
    up.put_file(tmp_path / "f", run_key("job_a", "report.json"))
    pending = PendingDeletes(store.redis, f"{store.prefix}:pd-{secrets.token_hex(3)}")

    assert delete_or_defer(down, pending, run_key("job_a")) is False  # the store is "down"
    assert pending.pending() == [run_key("job_a")]
    assert pending.retry_due(up) == 0  # not due yet: the first wait has not passed
    pending.redis.zadd(pending.key, {run_key("job_a"): 0})  # make it due now
    assert pending.retry_due(down) == 0  # still down: rescheduled later, with a try counted
    assert int(pending.redis.hget(pending.tries_key, run_key("job_a"))) == 1
    assert float(pending.redis.zscore(pending.key, run_key("job_a"))) > time.time() + 5

    pending.redis.zadd(pending.key, {run_key("job_a"): 0})
    assert pending.retry_due(up) == 1  # back up: done and forgotten
    assert up.list(run_key("job_a")) == [] and pending.pending() == []
    pending.redis.delete(pending.key, pending.tries_key)
