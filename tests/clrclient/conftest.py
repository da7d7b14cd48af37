"""A real API (uvicorn subprocess) on the session's Redis prefix for the client to talk to, keys for a
few tenants, and a small fault-injecting HTTP proxy in front of it.

Jobs with `device: "auto"` land on a queue no worker reads ("parked") and stay queued; jobs with
`device: "cpu"` reach the session's real Celery worker.
"""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from jobs.settings import Settings
from tests.reliability.api_server import ApiServer

# One key per test that counts jobs (the pages of a list, the jobs an idempotent retry made).
KEYS = {"alice": "alice-secret", "pager": "pager-secret", "idem": "idem-secret", "cli": "cli-secret"}


@pytest.fixture(scope="session")
def client_api_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={
        "open_mode": False,
        "api_keys": ",".join(f"{name}:{secret}" for name, secret in KEYS.items()),
        "default_queue": "parked",
        "rate_limit_per_minute": 100_000,
    })


@pytest.fixture(scope="session")
def api(client_api_settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiServer]:
    """One live API for the session's client tests."""
    server = ApiServer(client_api_settings, tmp_path_factory.mktemp("client-api") / "api.log")
    server.start()
    yield server
    server.stop()


@dataclass
class Seen:
    method: str
    path: str
    idempotency_key: str | None


@dataclass
class FaultProxy:
    """An HTTP proxy on loopback in front of `upstream`. Each request takes the next fault from
    `faults` ("pass" when none is left): "drop-after" forwards it and then hangs up without answering
    (the server did the work, the client never heard), "503" answers 503 with Retry-After, "drop-before"
    hangs up without forwarding."""

    upstream: str
    faults: list[str] = field(default_factory=list)
    seen: list[Seen] = field(default_factory=list)
    url: str = ""


@pytest.fixture
def proxy(api: ApiServer) -> Iterator[FaultProxy]:
    state = FaultProxy(api.url)
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def _relay(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with lock:
                state.seen.append(Seen(self.command, self.path, self.headers.get("Idempotency-Key")))
                fault = state.faults.pop(0) if state.faults else "pass"
            if fault == "drop-before":
                self.close_connection = True
                return
            if fault == "503":
                self.send_response(503)
                self.send_header("Retry-After", "1")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
            answer = httpx.request(self.command, state.upstream + self.path, headers=headers, content=body,
                                   timeout=30)
            if fault == "drop-after":
                self.close_connection = True
                return
            self.send_response(answer.status_code)
            for name, value in answer.headers.items():
                if name.lower() not in ("content-length", "transfer-encoding", "connection", "content-encoding"):
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer.content)))
            self.end_headers()
            self.wfile.write(answer.content)

        do_GET = do_POST = do_DELETE = _relay

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()
    server.server_close()
