"""uvicorn's h11 protocol with a deadline for the request head: slowloris connections are closed.

uvicorn times out only idle keep-alive connections, and every byte received disarms that timer, so a
client trickling a header a byte at a time (or connecting and sending nothing) holds a connection
forever; ASGI middleware cannot help, since the app runs only once the head is parsed. This subclass
arms one timer per request head: from the connection's start, or from the first byte of a later
request's head, the whole head must arrive within `timeout` seconds, else the connection is closed.
A parsed head disarms it, so slow bodies and long responses (SSE) are not affected. uvicorn takes a
protocol class for `http`: `server_options` in `service.main` passes `header_timeout_protocol(...)`.
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

log = logging.getLogger(__name__)


class HeadDeadlineProtocol(H11Protocol):
    """H11Protocol that closes a connection whose request head is not complete within `head_timeout`."""

    head_timeout: float = 30.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._head_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is h11.IDLE:  # a head begun and not finished: its clock runs
            self._arm_head_timer()
        else:
            self._disarm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and not self.transport.is_closing():
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            client = f"{self.client[0]}:{self.client[1]}" if self.client else "?"
            log.warning("closed %s: request head not complete within %g s", client, self.head_timeout)
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeadDeadlineProtocol]:
    """The protocol class for uvicorn's `http` option, with this head deadline."""
    return type("HeadDeadlineProtocol", (HeadDeadlineProtocol,), {"head_timeout": seconds})
