"""The last-resort handler: an unexpected error is a logged 500 with the request id, nothing internal."""

from __future__ import annotations

import logging

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from service.main import create_app


def test_unexpected_error_is_500_with_request_id_only(api_settings: Settings,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    app = create_app(api_settings)

    @app.get("/boom")
    def boom() -> None:
        raise RuntimeError("internal detail: /secret/path")

    with TestClient(app, raise_server_exceptions=False) as boom_client, caplog.at_level(logging.ERROR):
        response = boom_client.get("/boom", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error", "request_id": "boom-1"}
    assert response.headers["x-request-id"] == "boom-1"
    assert any("boom-1" in r.getMessage() and r.exc_info for r in caplog.records)
