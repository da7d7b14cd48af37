"""The two checkpoint upload modes of a store-mode worker, against a real store: the background thread
(default) and `CLR_CHECKPOINT_UPLOAD=epoch`, where the training thread uploads each new checkpoint
before it goes on."""

from __future__ import annotations

import secrets
import time
from pathlib import Path

import pytest

from jobs.settings import Settings
from jobs.storage import open_store, run_key
from tests.objectstore import StoreEndpoint
from worker.artifact_sync import CHECKPOINT, JobFiles, RunSync


def _settings(server: StoreEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, mode: str) -> Settings:
    for name, value in server.env().items():
        monkeypatch.setenv(name, value)
    return Settings(storage_url=f"s3://{server.bucket}/up-{secrets.token_hex(4)}", checkpoint_upload=mode,
                    worker_dir=tmp_path / "scratch", data_dir=tmp_path / "data", storage_retry_seconds=5)


def _write_checkpoint(sync: RunSync, payload: bytes) -> None:
    path = sync.local_dir / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(payload)


def test_epoch_mode_uploads_each_new_checkpoint_in_the_training_thread(
        object_store_server: StoreEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _settings(object_store_server, monkeypatch, tmp_path, "epoch")
    objects = open_store(settings)
    files = JobFiles(settings, objects, "job_epoch", lambda: True)
    sync = files.sync
    assert sync is not None and sync.blocking
    sync.restore()
    sync.start()
    assert sync._thread is None  # no background thread in this mode
    seen: list[int] = []
    report = files.progress_hook(seen.append)

    report(1)  # no checkpoint yet: nothing to wait for
    assert sync.checkpoint_uploads == [] and objects.size(run_key("job_epoch", CHECKPOINT)) is None
    _write_checkpoint(sync, b"epoch-1" * 1000)
    (sync.local_dir / "history.json").write_text("{}")
    report(2)  # the first report after a new checkpoint returns only once it is stored, with the rest
    assert objects.size(run_key("job_epoch", CHECKPOINT)) == 7000
    assert objects.size(run_key("job_epoch", "history.json")) == 2
    report(3)  # unchanged: no second upload
    assert len(sync.checkpoint_uploads) == 1 and seen == [1, 2, 3]
    time.sleep(0.01)
    _write_checkpoint(sync, b"epoch-2" * 2000)
    report(4)
    assert objects.size(run_key("job_epoch", CHECKPOINT)) == 14000
    stats = files.stats()
    assert stats["checkpoint_upload"] == "epoch" and stats["checkpoint_uploads"] == 2
    assert stats["checkpoint_bytes"] == 14000 and stats["upload_wait_s"] > 0
    files.finish()


def test_background_mode_leaves_the_hook_alone_and_uploads_from_its_thread(
        object_store_server: StoreEndpoint, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = _settings(object_store_server, monkeypatch, tmp_path, "background")
    objects = open_store(settings)
    files = JobFiles(settings, objects, "job_bg", lambda: True)
    sync = files.sync
    assert sync is not None and not sync.blocking
    sync.restore()
    sync.interval = 0.05
    sync.start()
    report = files.progress_hook(print)
    assert report is print  # the training thread never waits for the store
    _write_checkpoint(sync, b"x" * 5000)
    deadline = time.monotonic() + 20
    while objects.size(run_key("job_bg", CHECKPOINT)) != 5000:
        assert time.monotonic() < deadline, "the background thread did not upload the checkpoint"
        time.sleep(0.05)
    files.finish()
    stats = files.stats()
    assert stats["checkpoint_upload"] == "background" and stats["upload_wait_s"] == 0
    assert stats["checkpoint_uploads"] == 1 and stats["checkpoint_bytes"] == 5000
