"""`POST /v1/jobs/{id}/suggest`: a job's stored range test re-read with other settings, in the API process.

The run folder is written by clrcore itself (`clr range-test`, in a subprocess so this process stays
free of torch, as the API's is); the job record is alice's, finished the way a worker finishes it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clrcore.curve_file import resuggest
from clrcore.suggest import CLIFF_MARGIN, cliff_margin_for
from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from tests.helpers import ALICE, BOB, RANGE_TEST, mark_running

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def swept_job(client: TestClient, store: JobStore, api_settings: Settings, tmp_path_factory) -> str:
    """Alice's succeeded range-test job whose run folder holds a real sweep's range_test_log.csv."""
    job_id = client.post("/v1/jobs/range-test", json=RANGE_TEST, headers=ALICE).json()["id"]
    run = Path(api_settings.artifact_dir) / job_id
    done = subprocess.run(
        [sys.executable, "-m", "clrcore.cli", "range-test", "--quiet", "--out", str(run),
         "--data-dir", str(tmp_path_factory.mktemp("data")), "--dataset", "digits", "--model", "tiny_cnn",
         "--device", "cpu", "--batch-size", "32", "--num-iter", "80", "--end-lr", "3"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    mark_running(store, job_id)
    store.records.transition(job_id, JobState.SUCCEEDED, result={"kind": "range_test"})
    return job_id


def test_the_stored_sweep_is_reread_with_the_given_settings(client: TestClient, swept_job: str,
                                                           api_settings: Settings) -> None:
    log = Path(api_settings.artifact_dir) / swept_job / "range_test_log.csv"
    body = {"rule": "valley", "skip_start": 3, "skip_end": 2, "diverge_factor": 5, "policy": "one_cycle"}
    response = client.post(f"/v1/jobs/{swept_job}/suggest", json=body, headers=ALICE)
    assert response.status_code == 200, response.text
    data = response.json()
    expected = resuggest(log, rule="valley", skip_start=3, skip_end=2, diverge_factor=5, policy="one_cycle",
                         cliff_margin=CLIFF_MARGIN)  # tiny_cnn's margin, the one every family but resnet_fast has
    assert data["suggestions"] == expected["suggestions"] and data["settings"] == expected["settings"]
    assert data["recommendation"] == expected["recommendation"]
    if data["recommendation"] is not None:
        assert data["recommendation"]["rule"] == "valley" and data["recommendation"]["policy"] == "one_cycle"
    else:
        assert data["no_suggestion"]["reason"]

    ours = client.post(f"/v1/jobs/{swept_job}/suggest", json={"cliff_margin": 3}, headers=ALICE).json()
    assert ours["settings"]["rule"] == "ours" and ours["settings"]["cliff_margin"] == 3
    assert ours == resuggest(log, cliff_margin=3)


@pytest.mark.parametrize(("fields", "margin"), [
    ({"optimizer": {"name": "adamw"}}, 11.2),
    ({}, 2.38),  # the optimizer left to its default, SGD: the record holds only what the caller set
])
def test_by_default_a_job_is_reread_with_its_nets_margin(client: TestClient, store: JobStore, api_settings: Settings,
                                                          swept_job: str, fields: dict, margin: float) -> None:
    spec = {**RANGE_TEST, "model": "resnet_fast", **fields}
    optimizer = fields.get("optimizer", {}).get("name", "sgd")
    job_id = client.post("/v1/jobs/range-test", json=spec, headers=ALICE).json()["id"]
    log = Path(api_settings.artifact_dir) / swept_job / "range_test_log.csv"
    (Path(api_settings.artifact_dir) / job_id).mkdir(parents=True)
    (Path(api_settings.artifact_dir) / job_id / "range_test_log.csv").write_bytes(log.read_bytes())
    mark_running(store, job_id)
    store.records.transition(job_id, JobState.SUCCEEDED, result={"kind": "range_test"})
    data = client.post(f"/v1/jobs/{job_id}/suggest", json={}, headers=ALICE).json()
    assert data["settings"]["cliff_margin"] == margin == cliff_margin_for("resnet_fast", optimizer)
    assert data == resuggest(log, cliff_margin=margin)
    assert data["recommendation"]["rule"] == f"ours (the zero-lag curve's cliff / {margin:g})"


@pytest.mark.parametrize(("body", "field"), [
    ({"rule": "magic"}, "rule"),
    ({"skip_start": -1}, "skip_start"),
    ({"diverge_factor": 1}, "diverge_factor"),
    ({"cliff_margin": 0.5}, "cliff_margin"),
    ({"policy": "sawtooth"}, "policy"),
    ({"rulez": "ours"}, "rulez"),
])
def test_a_bad_setting_is_a_422_naming_its_field(client: TestClient, swept_job: str, body: dict,
                                                 field: str) -> None:
    response = client.post(f"/v1/jobs/{swept_job}/suggest", json=body, headers=ALICE)
    assert response.status_code == 422, response.text
    assert field in {str(part) for error in response.json()["detail"] for part in error["loc"]}


def test_a_job_without_a_stored_sweep_is_404_and_another_tenants_job_is_404(
        client: TestClient, job_id: str, swept_job: str) -> None:
    missing = client.post(f"/v1/jobs/{job_id}/suggest", json={}, headers=ALICE)  # queued: no log yet
    assert missing.status_code == 404 and "range_test_log.csv" in missing.json()["detail"]
    other = client.post(f"/v1/jobs/{swept_job}/suggest", json={}, headers=BOB)
    assert other.status_code == 404 and other.json() == {"detail": "job not found"}
