"""Access, across the whole API: no /v1 endpoint escapes the auth matrix, and no key ever reaches a log.

`tests/service/test_auth.py` holds the matrix for jobs and the catalog; this file checks that the
matrix (plus the dataset endpoints below, when the app has them) covers every `/v1` route the app
serves, so a new endpoint without an access test fails here.
"""

from __future__ import annotations

import io
import logging
import re
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jobs.settings import Settings
from service.main import create_app
from tests.helpers import (
    ALICE,
    BOB,
    JOB_ENDPOINTS,
    JOB_PART_ENDPOINTS,
    OTHER_ENDPOINTS,
    RANGE_TEST,
    REMOVING_JOB_ENDPOINTS,
    WRONG,
    body_for,
)
from tests.weight_files import architecture_file

DATASET_ENDPOINTS = [
    ("GET", "/v1/datasets/{dataset_id}"),
    ("DELETE", "/v1/datasets/{dataset_id}"),
]
WEIGHTS_ENDPOINTS = [
    ("GET", "/v1/weights/{weights_id}"),
    ("DELETE", "/v1/weights/{weights_id}"),
]
ARCHIVE = {"Content-Type": "application/zip"}
SAFETENSORS = {"Content-Type": "application/octet-stream"}
SECRETS = ("alice-secret", "bob-secret", "not-a-key")


def v1_operations(client: TestClient) -> list[tuple[str, str]]:
    """(METHOD, path template) of every /v1 operation, read from the OpenAPI document (included routers
    are not flattened into `app.routes`, and a route hidden from the schema has no clients to protect)."""
    paths = client.app.openapi()["paths"]
    return [(method.upper(), path) for path, item in paths.items() if path.startswith("/v1")
            for method in item if method in {"get", "post", "put", "patch", "delete"}]


def template_regex(template: str) -> re.Pattern[str]:
    return re.compile("^" + re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(template)) + "$")


def image_zip() -> bytes:
    """The smallest valid upload: two classes, one 8x8 PNG each, in train/ and test/."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for split in ("train", "test"):
            for shade, name in ((0, "dark"), (255, "light")):
                png = io.BytesIO()
                Image.new("RGB", (8, 8), (shade, shade, shade)).save(png, format="PNG")
                archive.writestr(f"{split}/{name}/0.png", png.getvalue())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def alice_dataset(client: TestClient) -> str:
    response = client.post("/v1/datasets", content=image_zip(), headers={**ALICE, **ARCHIVE})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_every_v1_route_is_in_an_access_matrix(client: TestClient) -> None:
    concrete = [(m, p.format(id="job_0123456789abcdef", dataset_id="ds_x", weights_id="wt_x").split("?")[0])
                for m, p in JOB_ENDPOINTS + JOB_PART_ENDPOINTS + OTHER_ENDPOINTS + REMOVING_JOB_ENDPOINTS
                + DATASET_ENDPOINTS + WEIGHTS_ENDPOINTS
                + [("POST", "/v1/datasets"), ("GET", "/v1/weights"), ("POST", "/v1/weights")]]
    operations = v1_operations(client)
    assert len(operations) >= len(OTHER_ENDPOINTS)
    uncovered = [f"{method} {path}" for method, path in operations
                 if not any(m == method and template_regex(path).match(p) for m, p in concrete)]
    assert uncovered == [], f"add these to an access matrix: {uncovered}"


@pytest.mark.parametrize("method, path", [*DATASET_ENDPOINTS, ("POST", "/v1/datasets")])
@pytest.mark.parametrize("who", ["no key", "wrong key"])
def test_dataset_endpoints_refuse_a_missing_or_wrong_key(client: TestClient, alice_dataset: str,
                                                         method: str, path: str, who: str) -> None:
    headers = {**({} if who == "no key" else WRONG), **ARCHIVE}
    body = image_zip() if method == "POST" else None
    response = client.request(method, path.format(dataset_id=alice_dataset), content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert alice_dataset not in response.text and "dark" not in response.text


@pytest.mark.parametrize("method, path", DATASET_ENDPOINTS)
def test_another_tenants_dataset_is_404(client: TestClient, alice_dataset: str, method: str,
                                        path: str) -> None:
    response = client.request(method, path.format(dataset_id=alice_dataset), headers=BOB)
    assert response.status_code == 404, response.text
    assert client.get(f"/v1/datasets/{alice_dataset}", headers=ALICE).status_code == 200  # still there


@pytest.fixture(scope="module")
def alice_weights(client: TestClient) -> str:
    response = client.post("/v1/weights?architecture=tiny_cnn", content=architecture_file("tiny_cnn"),
                           headers={**ALICE, **SAFETENSORS})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.mark.parametrize("method, path", [*WEIGHTS_ENDPOINTS, ("GET", "/v1/weights"),
                                          ("POST", "/v1/weights?architecture=tiny_cnn")])
@pytest.mark.parametrize("who", ["no key", "wrong key"])
def test_weights_endpoints_refuse_a_missing_or_wrong_key(client: TestClient, alice_weights: str,
                                                         method: str, path: str, who: str) -> None:
    headers = {**({} if who == "no key" else WRONG), **SAFETENSORS}
    body = architecture_file("tiny_cnn") if method == "POST" else None
    response = client.request(method, path.format(weights_id=alice_weights), content=body, headers=headers)
    assert response.status_code == 401, response.text
    assert alice_weights not in response.text


@pytest.mark.parametrize("method, path", WEIGHTS_ENDPOINTS)
def test_another_tenants_weights_are_404(client: TestClient, alice_weights: str, method: str, path: str) -> None:
    response = client.request(method, path.format(weights_id=alice_weights), headers=BOB)
    assert response.status_code == 404, response.text
    assert alice_weights not in client.get("/v1/weights", headers=BOB).text
    assert client.get(f"/v1/weights/{alice_weights}", headers=ALICE).status_code == 200  # still there


def test_no_log_line_anywhere_carries_a_key_and_each_request_line_has_an_id(
    api_settings: Settings, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    endpoints = [*JOB_ENDPOINTS, *JOB_PART_ENDPOINTS, *OTHER_ENDPOINTS, ("GET", "/healthz"), ("GET", "/metrics"),
                 *REMOVING_JOB_ENDPOINTS]  # last: alice's call removes the job
    with caplog.at_level(logging.DEBUG), TestClient(create_app(api_settings)) as client:
        job_id = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=ALICE).json()["id"]
        client.post(f"/v1/jobs/{job_id}/cancel", headers=ALICE)  # final, so its event stream ends
        sent = 0
        for headers in (ALICE, BOB, WRONG, {}):
            for method, path in endpoints:
                client.request(method, path.format(id=job_id), json=body_for(path.format(id=job_id)),
                               headers={**headers, "X-Request-ID": f"req-{sent}"})
                sent += 1
    records = caplog.records
    text = "\n".join(f"{r.name} {r.getMessage()} {r.exc_text or ''}" for r in records)
    for secret in SECRETS:
        assert secret not in text
    assert "Bearer" not in text and "authorization" not in text.lower()
    access = [r.getMessage() for r in records if r.name == "service.access"]
    assert len(access) >= sent
    assert all("request_id=" in line for line in access)
    assert {f"request_id=req-{n}" for n in range(sent)} <= {line.rsplit(" ", 1)[-1] for line in access}
