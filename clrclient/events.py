"""Following a job's event stream across drops: where we are (the last event id), and how long to
wait before reconnecting. The API keeps the events in a Redis Stream, so a reconnect with
`Last-Event-ID` gets every event after that one exactly once, even from a restarted API process."""

from __future__ import annotations

import json
import random
import time

import httpx
from httpx_sse import ServerSentEvent

from clrclient import calls
from clrclient.errors import WaitTimeout
from clrclient.models import JobEvent
from clrclient.retries import RetryPolicy

JOB_EVENTS = frozenset({"state", "progress", "metrics"})
STREAM_READ_TIMEOUT_S = 60.0  # the API pings every 15 s, so a silent minute means the connection is gone


class StreamOutage(Exception):
    """The stream could not be reopened within the retry policy's time; wraps the last failure."""


class EventFollower:
    """The state of one `wait()`: the last event seen, the failures in a row, the deadline."""

    def __init__(self, job_id: str, *, last_event_id: str | None, policy: RetryPolicy,
                 timeout: float | None) -> None:
        self.job_id, self.last_id, self.policy = job_id, last_event_id, policy
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.failures = 0
        self.failing_since: float | None = None
        self.server_retry: float | None = None
        self.reconnects = 0

    def call(self) -> calls.Call:
        return calls.events(self.job_id, self.last_id)

    def http_timeout(self) -> httpx.Timeout:
        return httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_S)

    def take(self, sse: ServerSentEvent) -> JobEvent | None:
        """Note the event's id; a job event comes back, anything else (an `error` notice) is None."""
        self.failures, self.failing_since = 0, None
        if sse.retry is not None:
            self.server_retry = sse.retry / 1000
        if sse.id:
            self.last_id = sse.id
        if sse.event not in JOB_EVENTS:
            return None
        try:
            data = json.loads(sse.data) if sse.data else {}
        except ValueError:
            data = {"raw": sse.data}
        return JobEvent(sse.id or None, sse.event, data if isinstance(data, dict) else {"value": data})

    def dropped(self, cause: Exception | None) -> float:
        """Seconds to wait before reconnecting after the stream broke (or ended before the final state).

        Raises StreamOutage once the server has been unreachable longer than the retry policy allows,
        and WaitTimeout when the caller's deadline would pass.
        """
        now = time.monotonic()
        if self.failing_since is None:
            self.failing_since = now
        elif now - self.failing_since > self.policy.timeout:
            raise StreamOutage(f"job {self.job_id}: event stream down for {now - self.failing_since:.0f} s: "
                               f"{cause!r}") from cause
        self.failures += 1
        self.reconnects += 1
        exponential = min(self.policy.wait_max, self.policy.wait_initial * 2 ** (self.failures - 1))
        delay = (self.server_retry or exponential) + random.uniform(0, self.policy.wait_jitter)
        self.check_deadline(delay)
        return delay

    def check_deadline(self, ahead: float = 0.0) -> None:
        if self.deadline is not None and time.monotonic() + ahead > self.deadline:
            raise WaitTimeout(f"job {self.job_id} not finished in time (last event {self.last_id})")
