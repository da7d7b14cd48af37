"""An uploaded dataset trained on by a real worker, and the resolver that points a job at its archive."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from clrcore.datasets import DatasetError
from jobs.settings import Settings
from jobs.store import JobStore
from service.main import create_app
from tests.objectstore import SHAPES, shapes_archive
from worker.datasets import resolve_uploaded

CLASSES = SHAPES


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The API on the session settings (open mode: every request is owner 'local'), sharing the worker's data dir."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def dataset_id(client: TestClient) -> Iterator[str]:
    response = client.post("/v1/datasets", params={"name": "shapes"}, content=shapes_archive(),
                           headers={"Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    yield response.json()["id"]
    client.delete(f"/v1/datasets/{response.json()['id']}")


@pytest.mark.slow
def test_train_job_on_an_uploaded_dataset_succeeds(client: TestClient, dataset_id: str, worker) -> None:
    spec = {"dataset": dataset_id, "model": "tiny_cnn", "device": "cpu", "epochs": 1, "batch_size": 4,
            "policy": "triangular", "base_lr": 0.01, "max_lr": 0.05, "step_size": 1,
            "augment": {"translate": 0, "flip": False}}
    submitted = client.post("/v1/jobs/train", json=spec)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    deadline = time.monotonic() + 90
    while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, f"job still {job['state']}:\n{worker.log_tail()}"
        time.sleep(0.2)
    assert job["state"] == "succeeded", f"{job['error']}\n{worker.log_tail()}"
    assert job["spec"]["dataset"] == dataset_id and job["spec"].get("dataset_path") is None
    assert job["result"]["classes"] == list(CLASSES)
    report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert report["classes"] == list(CLASSES) and set(CLASSES) <= set(report)  # per-class rows by name


def test_resolver_points_at_the_archive_and_checks_the_owner(client: TestClient, dataset_id: str,
                                                             store: JobStore, settings: Settings) -> None:
    data_dir = Path(settings.data_dir)
    digits = {"dataset": "digits", "model": "tiny_cnn"}
    assert resolve_uploaded(digits, "local", store, data_dir) is digits
    resolved = resolve_uploaded({**digits, "dataset": dataset_id}, "local", store, data_dir)
    assert resolved["dataset"] == "imagefolder" and resolved["dataset_path"].endswith(f"/{dataset_id}.zip")
    assert (data_dir / resolved["dataset_path"]).is_file()
    with pytest.raises(DatasetError, match="no such uploaded dataset"):
        resolve_uploaded({**digits, "dataset": dataset_id}, "someone-else", store, data_dir)
    with pytest.raises(DatasetError, match="no such uploaded dataset"):
        resolve_uploaded({**digits, "dataset": "ds_gone0000"}, "local", store, data_dir)


@pytest.mark.slow
def test_a_decode_cache_at_another_size_is_charged_once_and_given_back_on_delete(
        client: TestClient, settings: Settings, worker) -> None:
    uploads = client.app.state.uploads
    before = uploads.bytes_used("local")
    response = client.post("/v1/datasets", params={"name": "shapes"}, content=shapes_archive(),
                           headers={"Content-Type": "application/zip"})
    dataset_id = response.json()["id"]
    uploaded = uploads.bytes_used("local")
    spec = {"dataset": dataset_id, "model": "tiny_cnn", "device": "cpu", "epochs": 1, "batch_size": 4,
            "image_size": 16, "base_lr": 0.01, "max_lr": 0.05, "step_size": 1}
    for _ in range(2):  # the second job reads the same cache: charged once
        job_id = client.post("/v1/jobs/train", json=spec).json()["id"]
        deadline = time.monotonic() + 90
        while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in ("succeeded", "failed"):
            assert time.monotonic() < deadline, worker.log_tail()
            time.sleep(0.2)
        assert job["state"] == "succeeded", job["error"]
        sized = sorted((Path(settings.data_dir) / ".cache").glob("imagefolder-*-16px-*.npz"))
        record = uploads.get(dataset_id)
        assert len(sized) == 1 and record["extra_caches"] == {"16px": sized[0].stat().st_size}
        assert uploads.bytes_used("local") - uploaded == sized[0].stat().st_size
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert not sized[0].exists() and uploads.bytes_used("local") == before


def test_a_streamed_decode_cache_is_charged_in_full_and_deleted_with_the_dataset(
        client: TestClient, settings: Settings, store: JobStore) -> None:
    """A memmapped cache is three files (.npz and two .npy): all are charged at the size and all go."""
    from clrcore.cache_names import CACHE_DIR_NAME
    from clrcore.image_tree import load_image_tree
    from worker.datasets import charge_decode_caches

    uploads = client.app.state.uploads
    before = uploads.bytes_used("local")
    dataset_id = client.post("/v1/datasets", params={"name": "shapes"}, content=shapes_archive(),
                             headers={"Content-Type": "application/zip"}).json()["id"]
    data_dir = Path(settings.data_dir)
    archive = data_dir / uploads.get(dataset_id)["path"]
    load_image_tree(archive, cache_dir=data_dir / CACHE_DIR_NAME, image_size=16, memmap_min_bytes=0)
    files = [f for f in (data_dir / CACHE_DIR_NAME).glob("imagefolder-*-16px-*") if f.suffix in (".npz", ".npy")]
    assert sorted(f.suffix for f in files) == [".npy", ".npy", ".npz"]
    total = sum(f.stat().st_size for f in files)
    uploaded = uploads.bytes_used("local")
    assert charge_decode_caches({"dataset": dataset_id}, "local", store, data_dir) == total
    assert uploads.get(dataset_id)["extra_caches"] == {"16px": total}
    assert uploads.bytes_used("local") - uploaded == total
    assert client.delete(f"/v1/datasets/{dataset_id}").status_code == 204
    assert not any(f.exists() for f in files) and uploads.bytes_used("local") == before
