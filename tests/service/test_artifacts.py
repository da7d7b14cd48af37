"""Plots, report and artifacts: right content types, 404 until a file exists, no way out of the run folder."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from tests.helpers import ALICE, mark_running

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 16


def _run_dir(settings: Settings, job_id: str) -> Path:
    path = Path(settings.artifact_dir) / job_id
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.mark.parametrize("name", ["range_test", "history", "lr_schedule", "lr_schedule_preview",
                                  "confusion_matrix"])
def test_plot_is_404_until_it_exists_then_png(client: TestClient, api_settings: Settings, job_id: str,
                                              name: str) -> None:
    url = f"/v1/jobs/{job_id}/plots/{name}.png"
    assert client.get(url, headers=ALICE).status_code == 404
    assert name not in client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["links"]["plots"]
    (_run_dir(api_settings, job_id) / f"{name}.png").write_bytes(PNG)
    response = client.get(url, headers=ALICE)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    assert response.content == PNG
    links = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["links"]
    assert links["plots"][name] == url


def test_unknown_plot_name_is_404(client: TestClient, job_id: str) -> None:
    assert client.get(f"/v1/jobs/{job_id}/plots/weights.png", headers=ALICE).status_code == 404


def test_report_json_and_text(client: TestClient, api_settings: Settings, job_id: str) -> None:
    assert client.get(f"/v1/jobs/{job_id}/report", headers=ALICE).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/report?format=text", headers=ALICE).status_code == 404
    run = _run_dir(api_settings, job_id)
    (run / "report.json").write_text(json.dumps({"accuracy": 0.97}))
    (run / "report.txt").write_text("              precision    recall\n")
    as_json = client.get(f"/v1/jobs/{job_id}/report", headers=ALICE)
    assert as_json.headers["content-type"] == "application/json" and as_json.json() == {"accuracy": 0.97}
    as_text = client.get(f"/v1/jobs/{job_id}/report", params={"format": "text"}, headers=ALICE)
    assert as_text.headers["content-type"] == "text/plain; charset=utf-8" and "precision" in as_text.text
    assert client.get(f"/v1/jobs/{job_id}/report?format=xml", headers=ALICE).status_code == 422
    links = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["links"]
    assert links["report"] == f"/v1/jobs/{job_id}/report"
    assert links["report_text"] == f"/v1/jobs/{job_id}/report?format=text"


@pytest.mark.parametrize("name, file, content_type", [
    ("history.json", "history.json", "application/json"),
    ("range_test.json", "range_test.json", "application/json"),
    ("range_test_log.csv", "range_test_log.csv", "text/csv; charset=utf-8"),
    ("spec.json", "spec.json", "application/json"),
    ("model.pt", "model.pt", "application/octet-stream"),
    ("checkpoint", "checkpoints/last.pt", "application/octet-stream"),
])
def test_artifacts_with_content_types(client: TestClient, api_settings: Settings, job_id: str, name: str,
                                      file: str, content_type: str) -> None:
    url = f"/v1/jobs/{job_id}/artifacts/{name}"
    assert client.get(url, headers=ALICE).status_code == 404
    path = _run_dir(api_settings, job_id) / file
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(b"{}")
    response = client.get(url, headers=ALICE)
    assert response.status_code == 200 and response.headers["content-type"] == content_type
    assert response.content == b"{}"
    if content_type == "application/octet-stream":
        assert response.headers["content-disposition"].startswith("attachment")
    assert client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["links"]["artifacts"][name] == url


def test_finished_job_links_come_from_the_workers_list(client: TestClient, store: JobStore,
                                                       job_id: str) -> None:
    store.records.add_artifact(job_id, "history.png", "history.png", "image/png", 10)
    store.records.add_artifact(job_id, "checkpoints/last.pt", "checkpoints/last.pt", "application/octet-stream", 10)
    mark_running(store, job_id)
    store.records.transition(job_id, JobState.SUCCEEDED)
    links = client.get(f"/v1/jobs/{job_id}", headers=ALICE).json()["links"]
    assert set(links["plots"]) == {"history"} and set(links["artifacts"]) == {"checkpoint"}


TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd", "..%2f" * 8 + "etc/passwd", "%2e%2e%2fspec.json", "%2e%2e", "...",
    "%2Fetc%2Fpasswd", "checkpoints%2Flast.pt", "checkpoints/last.pt", "spec.json%00.png",
    "..%5C..%5Csecret", "%252e%252e%252fsecret", "SPEC.JSON", "~root", "secret.json",
]


@pytest.mark.parametrize("name", TRAVERSALS)
def test_artifact_traversal_is_404(client: TestClient, api_settings: Settings, job_id: str, name: str) -> None:
    root = Path(api_settings.artifact_dir)
    (root / "secret.json").write_text('{"key": "top secret"}')
    (_run_dir(api_settings, job_id) / "spec.json").write_text("{}")
    for url in (f"/v1/jobs/{job_id}/artifacts/{name}", f"/v1/jobs/{job_id}/plots/{name}.png",
                f"/v1/jobs/{job_id}/report?format={name}"):
        response = client.get(url, headers=ALICE)
        assert response.status_code in (404, 422), (url, response.status_code)
        assert "top secret" not in response.text and "root:" not in response.text


def test_job_id_traversal_is_404(client: TestClient, job_id: str) -> None:
    for bad in ("..%2F" + job_id, "%2e%2e", job_id + "%2F..%2F..", ".."):
        response = client.get(f"/v1/jobs/{bad}/artifacts/spec.json", headers=ALICE)
        assert response.status_code == 404, bad


def test_symlink_out_of_the_run_folder_is_not_followed(client: TestClient, api_settings: Settings,
                                                       job_id: str, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_text('{"key": "top secret"}')
    os.symlink(outside, _run_dir(api_settings, job_id) / "history.json")
    response = client.get(f"/v1/jobs/{job_id}/artifacts/history.json", headers=ALICE)
    assert response.status_code == 404 and "top secret" not in response.text
