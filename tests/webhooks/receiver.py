"""A real webhook receiver for the tests: `http.server` on loopback, in a thread.

It answers each request with the next status of its script (then 200), or never answers at all
(`hang=True`), and keeps every request it got (headers, body, arrival time).
"""

from __future__ import annotations

import base64
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

OLD_SECRET = "whsec_" + base64.b64encode(b"alice-old-webhook-secret-32bytes").decode()
NEW_SECRET = "whsec_" + base64.b64encode(b"alice-new-webhook-secret-32bytes").decode()
WEBHOOK_ENV = {  # the webhooks worker's settings (the API's are the same, in `hook_settings`)
    "CLR_WEBHOOK_SECRETS": f"alice:{OLD_SECRET},alice:{NEW_SECRET}",
    "CLR_WEBHOOK_ALLOW_NETWORKS": "127.0.0.0/8",
    "CLR_WEBHOOK_RETRY_BASE": "0.3",
    "CLR_WEBHOOK_TIMEOUT": "1",
    "CLR_WEBHOOK_MAX_ATTEMPTS": "8",
    "CLR_WEBHOOK_RESEND_AFTER": "1",
}


class Receiver:
    def __init__(self, statuses: list[int] | None = None, *, hang: bool = False, port: int = 0) -> None:
        self.statuses = list(statuses or [])
        self.hang = hang
        self.requests: list[dict] = []
        self._release = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.requests.append({"headers": dict(self.headers.items()), "body": body,
                                          "at": time.time(), "path": self.path})
                if receiver.hang:
                    receiver._release.wait(30)
                    return
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/hook"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def events(self) -> list[str]:
        import json

        return [json.loads(r["body"])["type"] for r in self.requests]

    def wait_for(self, count: int, timeout: float = 30.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.requests) >= count, f"got {len(self.requests)} of {count}: {self.events()}"
        return self.requests

    def wait_for_event(self, event: str, timeout: float = 30.0) -> list[dict]:
        """Wait until an event of type `event` arrived (deliveries run in parallel: the final one can
        come after any number of progress events)."""
        deadline = time.monotonic() + timeout
        while event not in self.events() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert event in self.events(), f"no {event} within {timeout} s: {self.events()}"
        return self.requests

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()
