"""Uploaded weights used by a real worker: a job fine-tunes from them, its frozen body still holds exactly
the uploaded tensors at the end, and the resolver checks owner and architecture again."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from clrcore.models import build_model
from clrcore.safetensors_header import WeightsError
from clrcore.weights import save_weights
from jobs.queues import RUN_JOB
from jobs.settings import Settings
from jobs.store import JobStore
from service.main import create_app
from tests.helpers import train_spec
from worker.weights import resolve_weights

OCTETS = {"Content-Type": "application/octet-stream"}


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The API on the session settings (open mode: owner 'local'), sharing the worker's data dir."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


def upload(client: TestClient, model: torch.nn.Module, tmp_path: Path, architecture: str = "tiny_cnn") -> dict:
    path = tmp_path / "weights.safetensors"
    save_weights(model, path)
    response = client.post("/v1/weights", params={"architecture": architecture}, content=path.read_bytes(),
                           headers=OCTETS)
    assert response.status_code == 201, response.text
    return response.json()


def wait_done(client: TestClient, job_id: str, worker, seconds: float = 120) -> dict:
    deadline = time.monotonic() + seconds
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job['state']}:\n{worker.log_tail()}"
        time.sleep(0.2)
    return job


@pytest.mark.slow
@pytest.mark.parametrize("source_classes", [10, 4], ids=["same-head", "head-of-4-classes"])
def test_a_job_fine_tunes_from_uploaded_weights_and_its_frozen_body_is_exactly_them(
        client: TestClient, worker, tmp_path: Path, source_classes: int) -> None:
    torch.manual_seed(1234)  # not the job's seed: a body equal to these tensors was loaded, not initialised
    source = build_model("tiny_cnn", 1, source_classes, 16)
    with torch.no_grad():
        for p in source.parameters():
            p.add_(torch.randn_like(p))  # far from any fresh initialisation
    uploaded = upload(client, source, tmp_path)
    assert uploaded["replaced"] == (["0.weight"] if source_classes == 10 else ["0.weight", "9.bias", "9.weight"])
    spec = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "epochs": 1, "batch_size": 128,
            "train_subset": 256, "policy": "triangular", "base_lr": 0.01, "max_lr": 0.05, "step_size": 1,
            "finetune": {"weights": uploaded["id"], "freeze_epochs": 1, "groups": 2}}
    submitted = client.post("/v1/jobs/train", json=spec)
    assert submitted.status_code == 202, submitted.text
    job = wait_done(client, submitted.json()["id"], worker)
    assert job["state"] == "succeeded", f"{job['error']}\n{worker.log_tail()}"
    final = torch.load(io.BytesIO(client.get(f"/v1/jobs/{job['id']}/artifacts/model.pt").content),
                       weights_only=True)
    body = [n for n, _ in source.named_parameters() if not n.startswith("9.")]
    assert body == ["0.weight", "1.weight", "1.bias", "4.weight", "5.weight", "5.bias"]
    for name in body:  # frozen through the one epoch: still the uploaded tensors, bit for bit
        assert torch.equal(final[name], source.state_dict()[name]), name
    assert final["9.weight"].shape == (10, 64)  # a fresh head for digits' 10 classes, trained
    if source_classes == 10:  # the uploaded head had the right shape and was still replaced
        assert not torch.equal(final["9.weight"], source.state_dict()["9.weight"])


@pytest.mark.slow
def test_weights_deleted_after_submit_fail_the_job_with_the_reason(client: TestClient, worker, store: JobStore,
                                                                   celery_sender, tmp_path: Path) -> None:
    uploaded = upload(client, build_model("tiny_cnn", 1, 10, 16), tmp_path)
    weights = client.app.state.weights
    weights.delete(weights.owned("local", uploaded["id"]))  # gone behind the API's back: the worker checks again
    spec = train_spec(epochs=1, finetune={"weights": uploaded["id"]})
    job_id = store.records.create("train", spec, "local", queue="cpu")["id"]  # the uploader's job
    celery_sender.send_task(RUN_JOB, args=[job_id], queue="cpu")
    job = wait_done(client, job_id, worker)
    assert job["state"] == "failed"
    assert job["error"] == f"finetune.weights {uploaded['id']}: no such uploaded weights for this key (deleted?)"


def test_resolver_checks_owner_and_architecture(client: TestClient, store: JobStore, settings: Settings,
                                                tmp_path: Path) -> None:
    uploaded = upload(client, build_model("tiny_cnn", 1, 10, 16), tmp_path)
    data_dir = Path(settings.data_dir)
    spec = {"model": "tiny_cnn", "finetune": {"weights": uploaded["id"]}}
    path, fetched = resolve_weights(spec, "local", store, data_dir)
    assert path is not None and path.is_file() and fetched is None
    assert path.read_bytes() == (tmp_path / "weights.safetensors").read_bytes()
    assert resolve_weights({"model": "tiny_cnn"}, "local", store, data_dir) == (None, None)
    with pytest.raises(WeightsError, match="no such uploaded weights"):
        resolve_weights(spec, "someone-else", store, data_dir)
    with pytest.raises(WeightsError, match="not the job's model 'small_cnn'"):
        resolve_weights({**spec, "model": "small_cnn"}, "local", store, data_dir)
    client.delete(f"/v1/weights/{uploaded['id']}")
