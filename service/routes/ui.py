"""The dashboard: static files under /ui, served by the API itself so the browser stays same-origin.

Same origin means the pages call /v1 with CORS closed. Every response under /ui carries a strict
Content-Security-Policy: scripts, styles and connections from this origin only, images also from
blob: URLs (plots are fetched with the API key and shown as blobs), no inline script, no framing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

UI_DIR = Path(__file__).resolve().parents[1] / "ui"

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' blob:",
    "connect-src 'self'",
    "object-src 'none'",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
])
UI_HEADERS = [
    (b"content-security-policy", CONTENT_SECURITY_POLICY.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),  # revalidate (ETag), so a new release is picked up at once
]


class WithHeaders:
    """Adds the dashboard's security headers to every response of the wrapped app."""

    def __init__(self, app: ASGIApp, headers: list[tuple[bytes, bytes]]) -> None:
        self.app, self.headers = app, headers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *self.headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def mount(app: FastAPI) -> None:
    """Serve service/ui at /ui (index.html at /ui/; /ui redirects there)."""
    static = StaticFiles(directory=UI_DIR, html=True)
    app.mount("/ui", WithHeaders(static, UI_HEADERS), name="ui")
