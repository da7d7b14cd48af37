"""Streaming on (the default, issue 17): a set past CLR_MAX_DECODED_BYTES is uploaded, decoded by a real
worker into memmapped files and trained; its decode cache is charged at the bytes on disk and goes with
the dataset. Tiny numbers (a 1000-byte in-memory cap) keep it to seconds."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from fastapi.testclient import TestClient

from clrcore import image_tree
from clrcore.cache_names import CACHE_DIR_NAME, cache_files
from clrcore.image_tree import load_image_tree
from jobs.datasets import ArchiveSummary, DatasetStore
from jobs.settings import Settings
from jobs.store import JobStore
from service.main import create_app
from service.uploads import UploadRefused, decode_cache_room
from tests.clrcore.test_mixed_sizes import mixed_archive
from tests.helpers import WorkerProcess
from tests.objectstore import shapes_archive
from worker.dataset_cache import DatasetCache
from worker.datasets import charge_decode_caches

CAP = 1000  # bytes decoded in memory; the shapes archive's 18 8x8 RGB images decode to 3,456


@pytest.fixture(scope="module")
def queue() -> str:
    return f"streamed-{secrets.token_hex(3)}"


@pytest.fixture(scope="module")
def streaming_worker(start_worker: Callable[..., WorkerProcess], queue: str) -> WorkerProcess:
    """A worker whose memory cap the shapes set passes: with streaming on it decodes it to disk."""
    return start_worker(CLR_QUEUE=queue, CLR_MAX_DECODED_BYTES=str(CAP))


@pytest.fixture
def app(settings: Settings, queue: str) -> Iterator[tuple[TestClient, dict[str, str], str]]:
    """The API on the worker's data dir and queue, with the same cap, and a key of its own (a clean quota)."""
    owner, secret = f"s{secrets.token_hex(3)}", secrets.token_hex(8)
    app_settings = settings.model_copy(update={"open_mode": False, "api_keys": f"{owner}:{secret}",
                                               "default_queue": queue, "max_decoded_bytes": CAP})
    with TestClient(create_app(app_settings)) as client:
        yield client, {"Authorization": f"Bearer {secret}"}, owner


def _cache_of(settings: Settings, record: dict) -> list[Path]:
    archive = Path(settings.data_dir) / record["path"]
    return [f for f in cache_files(Path(settings.data_dir) / CACHE_DIR_NAME, "imagefolder", archive)
            if f.suffix in (".npz", ".npy")]


@pytest.mark.slow  # its own worker (about 8 s to start) and a job: about 14 s here
def test_a_set_past_the_memory_cap_is_streamed_trained_and_charged_at_its_size(
        app, settings: Settings, streaming_worker: WorkerProcess) -> None:
    client, auth, owner = app
    uploads: DatasetStore = client.app.state.uploads
    response = client.post("/v1/datasets", content=shapes_archive(),
                           headers={**auth, "Content-Type": "application/zip"})
    assert response.status_code == 201, response.text
    dataset_id, archive_bytes = response.json()["id"], response.json()["bytes"]
    estimate = uploads.get(dataset_id)["cache_bytes"]
    assert uploads.bytes_used(owner) == archive_bytes + estimate  # the upload charges an estimate

    spec = {"dataset": dataset_id, "model": "tiny_cnn", "epochs": 1, "batch_size": 4, "base_lr": 0.01,
            "max_lr": 0.05, "step_size": 1, "augment": {"translate": 0, "flip": False}}
    job_id = client.post("/v1/jobs/train", json=spec, headers=auth).json()["id"]
    deadline = time.monotonic() + 60
    while (job := client.get(f"/v1/jobs/{job_id}", headers=auth).json())["state"] not in ("succeeded", "failed"):
        assert time.monotonic() < deadline, streaming_worker.log_tail()
        time.sleep(0.1)
    assert job["state"] == "succeeded", f"{job['error']}\n{streaming_worker.log_tail()}"

    record = uploads.get(dataset_id)
    files = _cache_of(settings, record)
    assert sorted(f.suffix for f in files) == [".npy", ".npy", ".npz"]  # decoded to disk, not memory
    assert np.load(next(f for f in files if "train_images" in f.name), mmap_mode="r").shape == (12, 3, 8, 8)
    on_disk = sum(f.stat().st_size for f in files)
    assert record["default_cache_bytes"] == on_disk and record["cache_bytes"] == on_disk
    assert uploads.bytes_used(owner) == archive_bytes + on_disk  # the estimate replaced by the real bytes

    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 204
    assert not any(f.exists() for f in files) and uploads.bytes_used(owner) == 0


def test_streaming_off_refuses_the_same_upload(app, settings: Settings) -> None:
    client, auth, owner = app
    off = settings.model_copy(update={"api_keys": client.app.state.settings.api_keys, "open_mode": False,
                                      "max_decoded_bytes": CAP, "memmap_min_bytes": 0})
    with TestClient(create_app(off)) as off_client:
        response = off_client.post("/v1/datasets", content=shapes_archive(),
                                   headers={**auth, "Content-Type": "application/zip"})
    assert (response.status_code, response.json()["problem"]) == (422, "too_large_decoded"), response.text
    assert client.app.state.uploads.bytes_used(owner) == 0


def test_a_sized_and_a_default_cache_are_each_charged_once_at_their_bytes(app, settings: Settings,
                                                                          store: JobStore) -> None:
    """In-process (the worker's own calls): both caches counted file by file, a second charge adds nothing."""
    client, auth, owner = app
    uploads: DatasetStore = client.app.state.uploads
    dataset_id = client.post("/v1/datasets", content=shapes_archive(),
                             headers={**auth, "Content-Type": "application/zip"}).json()["id"]
    data_dir = Path(settings.data_dir)
    archive = data_dir / uploads.get(dataset_id)["path"]
    load_image_tree(archive, cache_dir=data_dir / CACHE_DIR_NAME, max_decoded_bytes=CAP, memmap_min_bytes=2**30)
    load_image_tree(archive, cache_dir=data_dir / CACHE_DIR_NAME, image_size=16, max_decoded_bytes=CAP,
                    memmap_min_bytes=2**30)
    files = _cache_of(settings, uploads.get(dataset_id))
    assert sorted(f.suffix for f in files) == [".npy"] * 4 + [".npz"] * 2  # both streamed (over the cap)
    sized = sum(f.stat().st_size for f in files if "-16px-" in f.name)
    default = sum(f.stat().st_size for f in files) - sized
    charge_decode_caches({"dataset": dataset_id}, owner, store, data_dir)
    assert charge_decode_caches({"dataset": dataset_id}, owner, store, data_dir) == 0
    record = uploads.get(dataset_id)
    assert record["extra_caches"] == {"16px": sized} and record["default_cache_bytes"] == default
    assert uploads.bytes_used(owner) == record["bytes"] + sized + default
    assert client.delete(f"/v1/datasets/{dataset_id}", headers=auth).status_code == 204
    assert not any(f.exists() for f in files) and uploads.bytes_used(owner) == 0


def test_the_parallel_decode_pool_streams_the_same_arrays(tmp_path: Path, monkeypatch) -> None:
    archive = mixed_archive(tmp_path / "photos.tar.gz")
    pools: list[int] = []
    real_pool = image_tree._decode_pool

    def counted(workers: int):
        pool = real_pool(workers)
        pools.append(workers if pool is not None else 0)
        return pool

    monkeypatch.setattr(image_tree, "_decode_pool", counted)
    monkeypatch.setattr(image_tree, "PARALLEL_MIN_IMAGES", 1)  # a pool from the first chunk
    monkeypatch.setattr("clrcore.image_stream.STREAM_CHUNK", 4)  # 12 chunks for 48 images
    one = load_image_tree(archive, cache_dir=tmp_path / "one", image_size=24, workers=1, memmap_min_bytes=0)
    two = load_image_tree(archive, cache_dir=tmp_path / "two", image_size=24, workers=3, memmap_min_bytes=0)
    assert pools == [0, 3]  # workers=1 decodes in-process; workers=3 ran a pool of three
    assert isinstance(two.train.images, np.memmap)
    for a, b in ((one.train, two.train), (one.test, two.test)):
        assert np.array_equal(a.images, b.images) and np.array_equal(a.labels, b.labels)
    assert one.mean == two.mean and one.std == two.std and one.source_info == two.source_info


def _summary(cache_bytes: int, streamed: bool = True) -> ArchiveSummary:
    return ArchiveSummary(classes=["a", "b"], held_out="test", counts={}, width=8, height=8, channels=3,
                          cache_bytes=cache_bytes, streamed=streamed)


def test_a_streamed_set_must_fit_the_disk_or_a_workers_cache(tmp_path: Path, settings: Settings) -> None:
    local = SimpleNamespace(objects=None, data_dir=tmp_path)
    with pytest.raises(UploadRefused) as full:
        decode_cache_room(_summary(2**62), 100, local, settings)  # type: ignore[arg-type]
    assert (full.value.status, full.value.problem) == (507, "disk_full")
    decode_cache_room(_summary(2**62, streamed=False), 100, local, settings)  # type: ignore[arg-type]
    remote = SimpleNamespace(objects=object(), data_dir=tmp_path)
    small = settings.model_copy(update={"cache_max_bytes": 1000})
    decode_cache_room(_summary(900), 100, remote, small)  # type: ignore[arg-type]
    with pytest.raises(UploadRefused) as over:
        decode_cache_room(_summary(901), 100, remote, small)  # type: ignore[arg-type]
    assert over.value.problem == "too_large_decoded" and "CLR_CACHE_MAX_BYTES" in over.value.message


def test_a_workers_cache_counts_decode_caches_and_evicts_them_with_their_archive(tmp_path: Path) -> None:
    """Store mode: an archive's decode caches (a streamed one's .npy too) are in its footprint and go with it."""
    cache = DatasetCache(SimpleNamespace(), tmp_path, max_bytes=10_000)  # type: ignore[arg-type]
    cache.root.mkdir(parents=True)
    old, new = cache.root / "a.zip", cache.root / "b.zip"
    for archive in (old, new):
        archive.write_bytes(shapes_archive())
        load_image_tree(archive, cache_dir=tmp_path / CACHE_DIR_NAME, memmap_min_bytes=0)
        time.sleep(0.01)  # distinct modification times: a is the least recently used
    decoded = cache.decode_caches(old)
    assert sorted(f.suffix for f in decoded) == [".npy", ".npy", ".npz"]
    assert cache.footprint(old) == old.stat().st_size + sum(f.stat().st_size for f in decoded)
    cache.max_bytes = cache.footprint(new) + 1  # room for one archive with its caches
    cache.trim(keep=(new,))
    assert not old.exists() and not any(f.exists() for f in decoded)
    assert new.exists() and len(cache.decode_caches(new)) == 3
