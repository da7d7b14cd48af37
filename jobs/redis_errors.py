"""One outage rule for every Redis reader of the job layer: connection trouble is `StoreUnavailable`
(the API answers 503 with the reason; a worker waits it out)."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import ParamSpec, TypeVar

import redis

P = ParamSpec("P")
R = TypeVar("R")


class StoreUnavailable(Exception):
    """Redis cannot be reached or is still loading its data (API: 503 with this reason)."""


@contextlib.contextmanager
def redis_errors_as_unavailable() -> Iterator[None]:
    """Turn connection trouble into one exception type the API maps to 503 (sync and asyncio clients alike)."""
    try:
        yield
    except (redis.ConnectionError, redis.TimeoutError) as exc:  # BusyLoadingError is a ConnectionError
        raise StoreUnavailable(f"redis unavailable: {type(exc).__name__}: {exc}") from exc


def unavailable_on_redis_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """`redis_errors_as_unavailable` around a whole method."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with redis_errors_as_unavailable():
            return fn(*args, **kwargs)

    return wrapper


def require_text_client(client: redis.Redis, user: str) -> None:
    """Every reader of the store's keys expects str values: refuse a bytes client at construction."""
    if not client.get_connection_kwargs().get("decode_responses"):
        raise ValueError(f"{user} needs a Redis client with decode_responses=True")
