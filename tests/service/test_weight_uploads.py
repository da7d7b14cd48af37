"""Uploaded weights through the API: stored and described, misfits refused with 422 naming the tensor and
nothing written, the quota datasets share, other keys kept out, and jobs naming the weights.

Real Redis under the session prefix; each test gets its own app, data directory and two fresh keys.
The files are written from the stored state shapes (tests/weight_files.py), so no torch is needed here.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.datasets import owner_hash
from jobs.settings import Settings
from jobs.weights import WeightStore
from tests.weight_files import architecture_file, architecture_tensors, safetensors_bytes

OCTETS = {"Content-Type": "application/octet-stream"}


@dataclass
class Env:
    client: TestClient
    me: dict[str, str]
    other: dict[str, str]
    owner: str
    settings: Settings

    @property
    def weights(self) -> WeightStore:
        return self.client.app.state.weights

    def upload(self, body: bytes, architecture: str = "tiny_cnn", headers: dict | None = None, **params: str):
        return self.client.post("/v1/weights", params={"architecture": architecture, **params}, content=body,
                                headers={**self.me, **OCTETS, **(headers or {})})

    def stored_files(self) -> list[Path]:
        root = Path(self.settings.data_dir) / "uploads"
        return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []

    def assert_nothing_written(self) -> None:
        assert self.stored_files() == []
        assert self.weights.list(self.owner) == [] and self.client.app.state.uploads.bytes_used(self.owner) == 0


@pytest.fixture
def make_env(keyed_app) -> Callable[..., Env]:
    return lambda **overrides: Env(*keyed_app(**overrides))


@pytest.fixture
def env(make_env) -> Env:
    return make_env()


def test_upload_is_checked_stored_described_listed_and_deleted(env: Env) -> None:
    body = architecture_file("resnet18")
    response = env.upload(body, "resnet18", name="mine")
    assert response.status_code == 201, response.text
    out = response.json()
    assert response.headers["location"] == f"/v1/weights/{out['id']}" and out["id"].startswith("wt_")
    assert (out["architecture"], out["name"], out["format"], out["validation"]) == ("resnet18", "mine",
                                                                                  "safetensors", "ok")
    assert out["bytes"] == len(body) and out["tensors"] == len(architecture_tensors("resnet18"))
    assert out["dtypes"] == ["F32", "I64"] and out["replaced"] == []
    stored = Path(env.settings.data_dir) / "uploads" / owner_hash(env.owner) / f"{out['id']}.safetensors"
    assert env.stored_files() == [stored] and stored.read_bytes() == body
    assert env.client.app.state.uploads.bytes_used(env.owner) == len(body)
    assert env.client.get(f"/v1/weights/{out['id']}", headers=env.me).json() == out
    assert [w["id"] for w in env.client.get("/v1/weights", headers=env.me).json()["items"]] == [out["id"]]
    # another key sees nothing and deletes nothing
    assert env.client.get(f"/v1/weights/{out['id']}", headers=env.other).status_code == 404
    assert env.client.delete(f"/v1/weights/{out['id']}", headers=env.other).status_code == 404
    assert env.client.get("/v1/weights", headers=env.other).json()["items"] == []
    assert env.client.delete(f"/v1/weights/{out['id']}", headers=env.me).status_code == 204
    env.assert_nothing_written()
    assert env.client.get(f"/v1/weights/{out['id']}", headers=env.me).status_code == 404


def test_a_head_for_another_class_count_is_accepted_and_reported(env: Env) -> None:
    tensors = architecture_tensors("resnet18")
    tensors.update({"fc.weight": ("F32", [4, 512]), "fc.bias": ("F32", [4])})
    response = env.upload(safetensors_bytes(tensors), "resnet18")
    assert response.status_code == 201, response.text
    assert response.json()["replaced"] == ["fc.bias", "fc.weight"]


def _changed(name: str, **changes: tuple[str, list[int]]) -> bytes:
    return safetensors_bytes({**architecture_tensors(name), **changes})


@pytest.mark.parametrize("body, problem, tensor", [
    (_changed("resnet18", **{"layer1.0.conv1.weight": ("F32", [64, 64, 1, 1])}), "wrong_shape",
     "layer1.0.conv1.weight"),
    (_changed("resnet18", **{"layer9.weight": ("F32", [3])}), "unknown_tensor", "layer9.weight"),
    (safetensors_bytes({k: v for k, v in architecture_tensors("resnet18").items() if not k.startswith("layer4")}),
     "missing_tensor", "layer4.0.bn1.bias"),
    (_changed("resnet18", **{"layer1.0.conv1.weight": ("I32", [64, 64, 3, 3])}), "wrong_dtype",
     "layer1.0.conv1.weight"),
    (b"\x80\x04\x95" + b"\x00" * 64, "not_safetensors", None),  # a pickle's opening bytes
    (architecture_file("resnet18")[:-4], "not_safetensors", None),  # truncated
], ids=["wrong-shape", "unknown-name", "missing", "integer-weights", "pickle", "truncated"])
def test_misfits_are_refused_naming_the_tensor_and_nothing_is_kept(env: Env, body: bytes, problem: str,
                                                                   tensor: str | None) -> None:
    response = env.upload(body, "resnet18")
    assert response.status_code == 422, response.text
    out = response.json()
    assert out["problem"] == problem and out["tensor"] == tensor
    if tensor is not None:
        assert repr(tensor) in out["detail"] and out["problems"][0]["tensor"] == tensor
    env.assert_nothing_written()


def test_unknown_architecture_and_wrong_content_type_are_refused(env: Env) -> None:
    response = env.upload(architecture_file("tiny_cnn"), "no_such_net")
    assert (response.status_code, response.json()["problem"]) == (422, "unknown_architecture")
    assert "architecture" in response.json()["detail"]
    response = env.upload(architecture_file("tiny_cnn"), headers={"Content-Type": "application/zip"})
    assert (response.status_code, response.json()["problem"]) == (415, "unsupported_type")
    env.assert_nothing_written()


def test_weights_and_datasets_share_the_key_quota(make_env) -> None:
    body = architecture_file("tiny_cnn")
    env = make_env(upload_quota_bytes=len(body) + 1000)
    first = env.upload(body)
    assert first.status_code == 201
    refused = env.upload(body)
    assert (refused.status_code, refused.json()["problem"]) == (413, "quota_exceeded"), refused.text
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as z:  # far over the 1,000 bytes left (the check is the size, first)
        z.writestr("train/a/0.png", bytes(2000))
    dataset = env.client.post("/v1/datasets", content=archive.getvalue(),
                              headers={**env.me, "Content-Type": "application/zip"})
    assert (dataset.status_code, dataset.json()["problem"]) == (413, "quota_exceeded"), dataset.text
    assert env.client.delete(f"/v1/weights/{first.json()['id']}", headers=env.me).status_code == 204
    assert env.upload(body).status_code == 201


def test_a_job_may_name_its_own_weights_for_their_architecture_only(env: Env) -> None:
    weights_id = env.upload(architecture_file("tiny_cnn")).json()["id"]
    spec = {"model": "tiny_cnn", "epochs": 1, "finetune": {"weights": weights_id}}
    other = env.client.post("/v1/jobs/train", json=spec, headers=env.other)
    assert other.status_code == 422, other.text
    assert other.json()["detail"][0]["loc"] == ["body", "finetune", "weights"]
    assert "no uploaded weights" in other.json()["detail"][0]["msg"]
    wrong = env.client.post("/v1/jobs/train", json={**spec, "model": "small_cnn"}, headers=env.me)
    assert wrong.status_code == 422 and wrong.json()["detail"][0]["loc"] == ["body", "finetune", "weights"]
    assert "are for 'tiny_cnn'" in wrong.json()["detail"][0]["msg"]
    accepted = env.client.post("/v1/jobs/train", json=spec, headers=env.me)
    assert accepted.status_code == 202, accepted.text  # parked: stays queued
    busy = env.client.delete(f"/v1/weights/{weights_id}", headers=env.me)
    assert busy.status_code == 409 and accepted.json()["id"] in busy.json()["detail"]
