"""Per-key fixed-window rate limit kept in Redis, so every API process shares one count."""

from __future__ import annotations

import logging
import time

import redis
from fastapi import HTTPException, status

from jobs.redis_errors import refusing_writes

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60


class RateLimiter:
    """Allow `per_minute` requests per owner in each clock-aligned minute."""

    def __init__(self, client: redis.Redis, key_prefix: str, per_minute: int) -> None:
        self._redis = client
        self._prefix = f"{key_prefix}:ratelimit"
        self.per_minute = per_minute

    def hit(self, owner: str, now: float | None = None) -> int | None:
        """Count one request; return None when allowed, else the seconds until the window resets."""
        now = time.time() if now is None else now
        window = int(now // WINDOW_SECONDS)
        key = f"{self._prefix}:{owner}:{window}"
        pipe = self._redis.pipeline(transaction=False)
        pipe.incr(key)
        pipe.expireat(key, (window + 1) * WINDOW_SECONDS + 1)  # the window's end; EXPIRE NX needs Redis 7
        try:
            count, _ = pipe.execute()
        except redis.ResponseError as exc:
            if refusing_writes(exc) is None:
                raise
            # Redis is full or cannot persist: reads still work, so let requests through uncounted
            # (writes fail on their own with a 503 naming the reason).
            logger.warning("rate limit not counted: %s", exc)
            return None
        if count <= self.per_minute:
            return None
        return max(1, int((window + 1) * WINDOW_SECONDS - now + 0.999))

    def check(self, owner: str) -> None:
        """Raise 429 with `Retry-After` once the owner is over the limit."""
        retry_after = self.hit(owner)
        if retry_after is not None:
            raise HTTPException(
                status.HTTP_429_TOO_MANY_REQUESTS,
                detail=f"rate limit of {self.per_minute} requests per minute exceeded",
                headers={"Retry-After": str(retry_after)},
            )
