"""API fixtures: apps built on the session's Settings (real Redis, own key prefix), with two keys.

Jobs submitted here go to a queue no worker consumes ("parked"), so they stay queued and tests can
drive their states through the store; end-to-end tests pass `device: "cpu"` to reach the real worker.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import NamedTuple

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from service.main import create_app
from tests.helpers import ALICE, RANGE_TEST


@pytest.fixture(scope="session")
def api_settings(settings: Settings) -> Settings:
    """The session settings with API keys on and auto-device jobs parked on an unconsumed queue."""
    return settings.model_copy(update={
        "open_mode": False,
        "api_keys": "alice:alice-secret,bob:bob-secret",
        "default_queue": "parked",
        "rate_limit_per_minute": 100_000,
    })


@pytest.fixture(scope="session")
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(api_settings)) as test_client:
        yield test_client


@pytest.fixture
def tenant(api_settings: Settings) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """A client of a new app that also knows a fresh key, so list assertions see only this test's jobs."""
    name, secret = f"t{secrets.token_hex(3)}", secrets.token_hex(8)
    settings = api_settings.model_copy(update={"api_keys": f"{api_settings.api_keys},{name}:{secret}"})
    with TestClient(create_app(settings)) as test_client:
        yield test_client, {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def job_id(client: TestClient) -> str:
    """A fresh queued range-test job of alice's."""
    response = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=ALICE)
    assert response.status_code == 202, response.text
    return response.json()["id"]


class KeyedApp(NamedTuple):
    """An app of its own (own data dir) with two fresh keys: the owner's and another's."""

    client: TestClient
    me: dict[str, str]
    other: dict[str, str]
    owner: str
    settings: Settings


@pytest.fixture
def keyed_app(api_settings: Settings, tmp_path: Path) -> Iterator[Callable[..., KeyedApp]]:
    """Factory: `keyed_app(max_upload_files=5)` builds an app with those settings and two new keys;
    every app built is closed at the end of the test."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> KeyedApp:
        owner, mine, theirs = f"k{secrets.token_hex(4)}", secrets.token_hex(8), secrets.token_hex(8)
        settings = api_settings.model_copy(update={
            "api_keys": f"{owner}:{mine},o{owner}:{theirs}", "data_dir": tmp_path / f"data{len(clients)}",
            **overrides,
        })
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        return KeyedApp(client, {"Authorization": f"Bearer {mine}"}, {"Authorization": f"Bearer {theirs}"}, owner,
                        settings)

    yield make
    for client in clients:
        client.__exit__(None, None, None)
