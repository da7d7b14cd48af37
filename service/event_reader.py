"""A job's event log read for Server-Sent Events, on the event loop with redis.asyncio.

An SSE stream spends nearly all its life in a blocking XREAD. Awaited on the event loop, that wait holds
one Redis connection and nothing else: no thread (a thread per waiting stream capped the streams at the
pool's size and gave each its own stack and malloc arena), and a client that goes away cancels the read
at once instead of leaving it blocked until its timeout. At most `CLR_SSE_MAX_STREAMS` reads run at
once (one pooled connection each). Streams beyond that queue for a turn first come, first served, and
send keep-alive pings meanwhile: a pool alone would let a stream that just finished a read take its
connection straight back, and a waiting stream could starve.
The sync `JobStore` stays the one writer; this reads the same keys, and maps Redis trouble to the same
`StoreUnavailable`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff

from jobs.events import parse_event_reply, xread_options
from jobs.redis_errors import redis_errors_as_unavailable
from jobs.store import JobStore

if TYPE_CHECKING:
    from jobs.settings import Settings


class EventReader:
    """Reads job event logs and job states for SSE without a thread per waiting stream."""

    def __init__(self, client: aioredis.Redis, store: JobStore, max_reads: int) -> None:
        self.redis = client
        self.store = store  # for the key layout, which JobStore owns
        self.turns = anyio.CapacityLimiter(max_reads)  # FIFO: a freed slot goes to the longest waiter

    @classmethod
    def from_settings(cls, settings: Settings, store: JobStore) -> EventReader:
        """A reader on its own pool, as large as the reads it allows; connections open on first use."""
        pool = aioredis.BlockingConnectionPool.from_url(
            settings.redis_url,
            max_connections=settings.sse_max_streams,
            timeout=None,  # never waited on: `turns` lets no more reads through than there are connections
            decode_responses=True,
            socket_timeout=10,  # above store.MAX_BLOCK_MS: a blocked read never looks like a dead Redis
            socket_connect_timeout=2,
            health_check_interval=15,
            retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
        )
        return cls(aioredis.Redis(connection_pool=pool), store, settings.sse_max_streams)

    async def read(self, job_id: str, after: str = "0", block_ms: int = 0,
                   count: int = 100) -> list[tuple[str, str, dict]]:
        """Events after the id `after`, as (id, event, data); like `JobStore.events.read`, awaited."""
        async with self.turns:
            with redis_errors_as_unavailable():
                stream = {self.store.keys.events(job_id): after}
                reply = await self.redis.xread(stream, **xread_options(block_ms, count))
        return parse_event_reply(reply)

    async def state(self, job_id: str) -> tuple[str, str | None] | None:
        """(state, error or None) of the job, or None if it no longer exists."""
        async with self.turns:
            with redis_errors_as_unavailable():
                state, error = await self.redis.hmget(self.store.keys.job(job_id), ["state", "error"])
        return None if state is None else (state, error or None)

    async def aclose(self) -> None:
        """Close the pool's connections (at shutdown; the next read would open new ones)."""
        await self.redis.aclose()
        await self.redis.connection_pool.disconnect()
