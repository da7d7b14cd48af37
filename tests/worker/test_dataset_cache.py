"""The worker's dataset cache against a real store: fetched once per content hash, bounded, LRU."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import pytest

from jobs.settings import Settings
from jobs.storage import open_store
from tests.objectstore import StoreEndpoint
from worker.dataset_cache import DatasetCache


def test_fetch_once_then_hit_and_evict_least_recently_used(
        object_store_server: StoreEndpoint, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in object_store_server.env().items():
        monkeypatch.setenv(name, value)
    objects = open_store(Settings(storage_url=f"s3://{object_store_server.bucket}/dc-{secrets.token_hex(4)}"))
    for name in ("a", "b", "c"):
        (tmp_path / name).write_bytes(name.encode() * 400)
        objects.put_file(tmp_path / name, f"datasets/o/{name}.zip")
    cache = DatasetCache(objects, tmp_path / "data", max_bytes=1000)  # room for two archives of 400 bytes

    first = cache.fetch("datasets/o/a.zip", "sha-a", "zip")
    assert not first.hit and first.downloaded_bytes == 400
    assert (tmp_path / "data" / first.relative).read_bytes() == b"a" * 400
    again = cache.fetch("datasets/o/a.zip", "sha-a", "zip")
    assert again.hit and again.downloaded_bytes == 0

    cache.fetch("datasets/o/b.zip", "sha-b", "zip")
    old = time.time() - 100
    os.utime(tmp_path / "data" / "cache" / "sha-b.zip", (old, old))  # b is now the least recently used
    cache.fetch("datasets/o/a.zip", "sha-a", "zip")  # a hit touches a
    cache.fetch("datasets/o/c.zip", "sha-c", "zip")  # needs room: b goes, a stays
    assert sorted(p.name for p in cache.entries()) == ["sha-a.zip", "sha-c.zip"]
    assert sum(p.stat().st_size for p in cache.entries()) <= 1000
