"""Event streams at scale and through a Redis outage, against a real uvicorn API and a private Redis.

- Waiting streams cost the API no threads: each waits in a blocking XREAD awaited on the event loop.
- A client that goes away gives its Redis connection back at once (the blocked read is cancelled).
- Redis going away mid-stream ends the stream with an `error` event and a retry hint; once Redis is back,
  the stream resumed with Last-Event-ID gets what was logged meanwhile, up to the final state.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import redis

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from tests.helpers import mark_running
from tests.reliability.api_server import ApiServer, sse_events
from tests.reliability.redis_server import RedisServer

pytestmark = pytest.mark.slow

STREAMS = 40
SPEC = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "num_iter": 10}


@pytest.fixture
def stack(settings: Settings, own_redis: RedisServer, tmp_path: Path) -> Iterator[tuple[ApiServer, JobStore]]:
    """An API process and a store on the private Redis; no worker, so jobs move only when a test says."""
    ours = settings.model_copy(update={"redis_url": own_redis.url})
    api, store = ApiServer(ours, tmp_path / "api.log"), JobStore.from_settings(ours)
    api.start()
    try:
        yield api, store
    finally:
        api.stop()
        store.redis.close()


def api_threads(api: ApiServer) -> int:
    status = Path(f"/proc/{api.proc.pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))


def blocked_reads(client: redis.Redis) -> int:
    """Connections waiting in a blocking XREAD right now (CLIENT LIST flag `b`)."""
    return sum(1 for c in client.client_list() if c["cmd"] == "xread" and "b" in c["flags"])


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


class Follower(threading.Thread):
    """One SSE client in a thread: records its events; `leave` makes it hang up after the next ping."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.events: list[tuple[str | None, str, dict]] = []
        self.connected = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with httpx.stream("GET", self.url, timeout=30) as response:
                for event_id, name, data in sse_events(response):
                    self.events.append((event_id, name, json.loads(data)))
                    self.connected.set()
        except BaseException as exc:  # noqa: BLE001  (reported by the test)
            self.error = exc
            self.connected.set()


def test_waiting_streams_cost_no_threads_and_a_client_leaving_frees_its_connection(stack) -> None:
    api, store = stack
    job_id = store.records.create("range_test", SPEC, "local", queue="parked")["id"]
    url = f"{api.url}/v1/jobs/{job_id}/events"
    idle_threads = api_threads(api)

    followers = [Follower(url) for _ in range(STREAMS)]
    for follower in followers:  # one at a time: the auth dependency's threadpool hop never needs a second thread
        follower.start()
        assert follower.connected.wait(10) and follower.error is None, follower.error
    wait_for(lambda: blocked_reads(store.redis) >= STREAMS, 10, "streams waiting in XREAD")
    assert api_threads(api) <= idle_threads + 2, (idle_threads, api_threads(api))

    # Clients that hang up: their reads are cancelled and their connections closed, not left blocked.
    connections = len(store.redis.client_list())
    leavers = [httpx.Client(timeout=10) for _ in range(10)]
    for client in leavers:
        with client.stream("GET", url) as response:
            next(sse_events(response))
    for client in leavers:
        client.close()
    wait_for(lambda: len(store.redis.client_list()) <= connections + 1, 5,
             "connections of departed clients still open")

    mark_running(store, job_id)
    store.records.transition(job_id, JobState.SUCCEEDED, result={"accuracy": 0.5})
    for follower in followers:
        follower.join(10)
        assert not follower.is_alive() and follower.error is None, follower.error
        names = [(name, data.get("state")) for _, name, data in follower.events]
        assert names == [("state", "queued"), ("state", "running"), ("state", "succeeded")]
    wait_for(lambda: blocked_reads(store.redis) == 0, 5, "finished streams still reading")


def test_sse_max_streams_bounds_the_reads_at_once_and_the_rest_wait_their_turn(
    settings: Settings, own_redis: RedisServer, tmp_path: Path
) -> None:
    ours = settings.model_copy(update={"redis_url": own_redis.url})
    api, store = ApiServer(ours, tmp_path / "api.log", CLR_SSE_MAX_STREAMS="2"), JobStore.from_settings(ours)
    api.start()
    try:
        job_id = store.records.create("range_test", SPEC, "local", queue="parked")["id"]
        followers = [Follower(f"{api.url}/v1/jobs/{job_id}/events") for _ in range(4)]
        for follower in followers:
            follower.start()
        most = 0
        deadline = time.monotonic() + 6  # three 2 s read cycles: every stream gets a turn
        while time.monotonic() < deadline:
            most = max(most, blocked_reads(store.redis))
            time.sleep(0.02)
        assert most == 2  # the pool's two connections were in use, never more
        assert all(f.connected.is_set() and f.error is None for f in followers)  # the others waited, then read

        mark_running(store, job_id)
        store.records.transition(job_id, JobState.SUCCEEDED, result={"accuracy": 0.5})
        for follower in followers:
            follower.join(15)
            assert not follower.is_alive() and follower.error is None, follower.error
            assert follower.events[-1][2]["state"] == "succeeded"
    finally:
        api.stop()
        store.redis.close()


def test_redis_outage_mid_stream_ends_it_with_an_error_event_and_resume_loses_nothing(
    stack, own_redis: RedisServer
) -> None:
    api, store = stack
    job_id = store.records.create("range_test", SPEC, "local", queue="parked")["id"]
    url = f"{api.url}/v1/jobs/{job_id}/events"
    follower = Follower(url)
    follower.start()
    assert follower.connected.wait(10) and follower.error is None
    wait_for(lambda: blocked_reads(store.redis) >= 1, 10, "stream waiting in XREAD")

    own_redis.stop()
    follower.join(15)
    assert not follower.is_alive() and follower.error is None, follower.error
    _, name, data = follower.events[-1]
    assert name == "error" and "unavailable" in data["detail"], follower.events
    own_redis.start()  # the append-only file brings the job and its log back

    mark_running(store, job_id)
    store.records.transition(job_id, JobState.SUCCEEDED, result={"accuracy": 0.5})
    seen_id = follower.events[0][0]
    with httpx.stream("GET", url, headers={"Last-Event-ID": seen_id}, timeout=30) as response:
        assert response.status_code == 200
        resumed = [(name, json.loads(data)["state"]) for _, name, data in sse_events(response)]
    assert resumed == [("state", "running"), ("state", "succeeded")]
