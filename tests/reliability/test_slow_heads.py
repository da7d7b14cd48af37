"""Slowloris against the real entry point (issue 14 item 13): `python -m service.main` closes a connection
whose request head is not complete within CLR_HTTP_HEADER_TIMEOUT_SECONDS, whether it trickles the
head a byte at a time or sends nothing; a slow body after a complete head, and keep-alive, still work.

Before `service.http_protocol`: uvicorn's only timer was the idle keep-alive one, disarmed by every
byte received and never armed for a fresh connection, so both connections here stayed open.
"""

from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from jobs.settings import Settings
from tests.helpers import ROOT, settings_env
from tests.reliability.redis_server import free_port

HEAD_TIMEOUT_S = 2.0
HOLD_S = 15.0  # before the fix the connections were still open after this long
START_S = 60.0


@pytest.fixture(scope="module")
def api_url(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    port = free_port()
    log = tmp_path_factory.mktemp("slow-heads") / "api.log"
    env = settings_env(settings, CLR_HTTP_PORT=str(port), CLR_HTTP_HEADER_TIMEOUT_SECONDS=str(HEAD_TIMEOUT_S),
                       CLR_API_KEYS="alice:alice-secret", CLR_OPEN_MODE="false", CLR_DEFAULT_QUEUE="parked")
    proc = subprocess.Popen([sys.executable, "-m", "service.main"], cwd=ROOT, env=env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, "the API did not start"
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url, port
    finally:
        proc.terminate()
        proc.wait(timeout=15)


def closed(conn: socket.socket, wait: float) -> bool:
    """True once the server closed the connection (EOF or reset), waiting up to `wait` seconds."""
    readable, _, _ = select.select([conn], [], [], wait)
    if not readable:
        return False
    try:
        return conn.recv(4096) == b""
    except ConnectionResetError:
        return True


def held_for(conn: socket.socket, trickle: bytes) -> float:
    """Send `trickle` a byte every 0.25 s (nothing if empty) until the server closes; seconds it took."""
    start = time.monotonic()
    sent = 0
    while time.monotonic() - start < HOLD_S:
        if sent < len(trickle):
            try:
                conn.sendall(trickle[sent:sent + 1])
            except (BrokenPipeError, ConnectionResetError):
                return time.monotonic() - start
            sent += 1
        if closed(conn, 0.25):
            return time.monotonic() - start
    return HOLD_S


def test_a_header_trickled_a_byte_at_a_time_is_cut_off(api_url: tuple[str, int]) -> None:
    _, port = api_url
    with socket.create_connection(("127.0.0.1", port)) as conn:
        conn.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        took = held_for(conn, b"X-Slow: " + b"a" * 200)
    assert HEAD_TIMEOUT_S * 0.9 <= took < HOLD_S, f"held {took:.1f} s"


def test_a_connection_that_sends_nothing_is_cut_off(api_url: tuple[str, int]) -> None:
    _, port = api_url
    with socket.create_connection(("127.0.0.1", port)) as conn:
        took = held_for(conn, b"")
    assert HEAD_TIMEOUT_S * 0.9 <= took < HOLD_S, f"held {took:.1f} s"


def test_a_slow_body_after_a_complete_head_and_keep_alive_still_work(api_url: tuple[str, int]) -> None:
    url, port = api_url
    body = json.dumps({"dataset": "digits", "model": "tiny_cnn", "num_iter": 10}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(f"POST /v1/jobs/range-test HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer alice-secret\r\n"
                     f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), max(1, len(body) // 6)):  # the body over about 3 s: past the head deadline
            conn.sendall(body[i:i + max(1, len(body) // 6)])
            time.sleep(0.5)
        assert conn.recv(4096).startswith(b"HTTP/1.1 202")
    with httpx.Client(base_url=url, timeout=30) as client:  # one connection, two requests
        assert client.get("/healthz").status_code == 200
        time.sleep(HEAD_TIMEOUT_S * 1.5)  # idle between requests: keep-alive (5 s) governs, not the head deadline
        assert client.get("/healthz").status_code == 200
