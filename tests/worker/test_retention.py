"""Retention (issue 14 item 11): a job that finished longer ago than the retention period loses its
record, event log, index entries and run folder at the next sweep; newer and unfinished jobs stay."""

from __future__ import annotations

from pathlib import Path

from jobs.datasets import ArchiveSummary, DatasetStore
from jobs.run_removal import remove_run_files
from jobs.settings import Settings
from jobs.states import JobState
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from tests.helpers import train_spec
from worker.lease import WorkerMonitor


def finished_job(store: JobStore, artifacts: Path, age_seconds: float) -> str:
    job_id = store.records.create("train", train_spec(), "keeper", queue="parked")["id"]
    store.records.transition(job_id, JobState.FAILED, error="for the test")
    store.redis.zincrby(store.keys.finished(), -age_seconds, job_id)  # as if it ended that long ago
    (artifacts / job_id).mkdir(parents=True)
    (artifacts / job_id / "report.json").write_text("{}")
    return job_id


def test_finished_jobs_past_retention_are_removed_with_their_files(
    store: JobStore, workers: WorkerRegistry, tmp_path: Path, settings: Settings
) -> None:
    day = 86400.0
    local = settings.model_copy(update={"artifact_dir": tmp_path})
    old = finished_job(store, tmp_path, age_seconds=31 * day)
    recent = finished_job(store, tmp_path, age_seconds=1 * day)
    queued = store.records.create("train", train_spec(), "keeper", queue="parked")["id"]
    monitor = WorkerMonitor(store, workers, queue="parked", heartbeat_seconds=1, sweep_interval=1,
                            resend=lambda *_: None, current_job=lambda: None, retention_seconds=30 * day,
                            remove_files=lambda job_id: remove_run_files(local, job_id))

    assert old in monitor.expire_finished()
    assert store.records.get(old) is None and not (tmp_path / old).exists()
    assert store.events.read(old) == [] and old not in store.records.finished_before(float("inf"), 10_000)
    assert old not in {j["id"] for j in store.records.list("keeper", limit=100)[0]}
    assert store.records.get(recent) is not None and (tmp_path / recent / "report.json").exists()
    assert store.records.get(queued)["state"] == JobState.QUEUED
    assert old not in monitor.expire_finished()  # a second sweeper finds nothing left to do


def stored_dataset(uploads: DatasetStore, owner: str, data_dir: Path, age_seconds: float) -> dict:
    temp = uploads.incoming_path("zip")
    temp.write_bytes(b"PK\x05\x06" + bytes(18))
    summary = ArchiveSummary(classes=["a", "b"], held_out="test", counts={"train": {"a": 1, "b": 1},
                             "test": {"a": 1, "b": 1}}, width=8, height=8, channels=3)
    record = uploads.commit(owner, "old", temp, "zip", 22, summary, quota=10**9)
    uploads.redis.zincrby(f"{uploads.prefix}:datasets:last_used", -age_seconds, record["id"])  # as if that old
    return record


def test_uploaded_datasets_unused_past_retention_are_removed_unless_a_job_still_needs_them(
    store: JobStore, workers: WorkerRegistry, tmp_path: Path,
) -> None:
    """Issue 14 item 11: an upload neither made nor named by a submitted job for the retention period
    goes with its archive and quota charge; one that a job not yet finished names stays, its clock reset."""
    day = 86400.0
    owner = "keeper-datasets"
    uploads = DatasetStore(store.redis, store.prefix, tmp_path)
    old, recent, needed, touched = (stored_dataset(uploads, owner, tmp_path, age)
                                    for age in (31 * day, 1 * day, 31 * day, 31 * day))
    uploads.touch(touched["id"])  # a job was just submitted naming it
    job = store.records.create("train", train_spec(dataset=needed["id"]), owner, queue="parked")["id"]
    used_before = uploads.bytes_used(owner)
    monitor = WorkerMonitor(store, workers, queue="parked", heartbeat_seconds=1, sweep_interval=1,
                            resend=lambda *_: None, current_job=lambda: None,
                            expire_datasets=lambda: uploads.expire_unused(store, 30 * day))

    monitor.sweep()
    assert uploads.get(old["id"]) is None and not (tmp_path / old["path"]).exists()
    assert uploads.bytes_used(owner) == used_before - old["bytes"]
    assert {d["id"] for d in uploads.list(owner)} == {recent["id"], needed["id"], touched["id"]}
    assert uploads.expire_unused(store, 30 * day) == []  # the needed one's clock was reset
    store.records.transition(job, JobState.CANCELLED)
    uploads.redis.zincrby(f"{uploads.prefix}:datasets:last_used", -31 * day, needed["id"])
    assert uploads.expire_unused(store, 30 * day) == [needed["id"]]  # no job needs it any more
