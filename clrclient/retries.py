"""When a request may be sent again, and how long to wait first.

A request is *replayable* when sending it twice does no harm: GET and DELETE, and a POST that carries
an Idempotency-Key (the API answers a repeat with the first job). Replayable requests are retried on
any transport error and on 429/502/503/504 (and on the 409 the API sends while the first request with
the same key is still being handled). Others are retried only where the server surely never saw them:
a failed connect, or a 429. Waits grow exponentially with jitter (stamina); a Retry-After header wins.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx

RETRY_STATUSES = frozenset({429, 502, 503, 504})
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})
# The request never left: retrying cannot do anything twice, whatever the method.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """How hard to try: at most `attempts` sends within `timeout` seconds in all."""

    attempts: int = 6
    timeout: float = 90.0
    wait_initial: float = 0.2
    wait_max: float = 10.0
    wait_jitter: float = 0.5
    max_retry_after: float = 60.0  # a server asking for longer is waited on this long, then asked again


class RetryableResponse(Exception):
    """Raised inside an attempt for an answer that may be worth asking again; the caller turns the
    last one into an ApiError when the retries are spent (or not allowed)."""

    def __init__(self, response: httpx.Response) -> None:
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


def is_retryable(response: httpx.Response, replayable: bool) -> bool:
    if response.status_code in RETRY_STATUSES:
        return True
    # "a request with this Idempotency-Key is still being handled": ask again, get the first answer.
    return replayable and response.status_code == 409 and "retry-after" in response.headers


def retry_after(response: httpx.Response, cap: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date), or None."""
    value = response.headers.get("retry-after", "").strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), cap)


def retry_hook(replayable: bool, policy: RetryPolicy) -> Callable[[Exception], bool | float]:
    """stamina's `on=` hook: False to give up, True for the exponential wait, a float to wait that long."""

    def hook(exc: Exception) -> bool | float:
        if isinstance(exc, RetryableResponse):
            if not (replayable or exc.response.status_code == 429):
                return False
            wait = retry_after(exc.response, policy.max_retry_after)
            return True if wait is None else wait + random.uniform(0, policy.wait_jitter)
        if isinstance(exc, NOT_SENT):
            return True
        return replayable and isinstance(exc, httpx.TransportError)

    return hook
