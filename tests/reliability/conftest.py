"""Fault and access tests reuse the API fixtures (apps with two keys on the session's Redis prefix)."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.redis_server import RedisServer
from tests.service.conftest import api_settings, client  # noqa: F401  (fixtures, by name)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server with an append-only file, which the test may stop and start."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
