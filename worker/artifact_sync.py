"""A job's run folder when the artifacts live in an object store (`CLR_STORAGE_URL`).

The worker trains into a private scratch folder (`CLR_WORKER_DIR/runs/<job>`), never a shared disk:

- before training, whatever the store holds for the job (a redelivery's checkpoint, range test,
  history) is downloaded into an emptied scratch folder, so clrcore resumes from the last epoch any
  worker finished, on any machine;
- while training, a background thread uploads every file that changed, about twice a second: the
  epoch checkpoint (`checkpoints/last.pt`, always the same key, so only the latest is kept) reaches
  the store without the training loop waiting for it. With `CLR_CHECKPOINT_UPLOAD=epoch` there is no
  thread: the first progress report after a new checkpoint uploads every changed file before training
  goes on (the store then always holds the last finished epoch; the loop waits for the upload);
- at the end, what is left is uploaded before the job's final state is written.

Uploads happen only while the job's lease is ours (the same fence clrcore asks before each checkpoint
write), so a frozen worker that lost its job cannot overwrite the new owner's checkpoint. An
unreachable store is retried for `storage_retry_seconds`, then the job fails with the reason.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from jobs.settings import Settings
from jobs.storage import ObjectStore, StorageUnavailable, run_key

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/last.pt"
SYNC_INTERVAL_S = 0.5
T = TypeVar("T")


def with_retry(fn: Callable[[], T], patience_s: float, what: str) -> T:
    """Call `fn`, retrying `StorageUnavailable` with doubling waits (0.5 s .. 8 s) for `patience_s`."""
    deadline, wait = time.monotonic() + patience_s, 0.5
    while True:
        try:
            return fn()
        except StorageUnavailable as exc:
            if time.monotonic() + wait > deadline:
                raise StorageUnavailable(f"{exc} (gave up after {patience_s:g} s: {what})") from exc
            log.warning("%s: %s; retrying in %.1f s", what, exc, wait)
            time.sleep(wait)
            wait = min(wait * 2, 8.0)


class RunSync:
    """Mirror of one job's scratch run folder in the store."""

    def __init__(self, objects: ObjectStore, job_id: str, local_dir: Path, *, patience_s: float,
                 may_write: Callable[[], bool] = lambda: True, interval: float = SYNC_INTERVAL_S,
                 blocking: bool = False) -> None:
        self.objects, self.job_id, self.local_dir = objects, job_id, local_dir
        self.patience_s, self.may_write, self.interval = patience_s, may_write, interval
        self.blocking = blocking  # upload in the training thread at each new checkpoint, no background thread
        self.waited_s = 0.0  # blocking mode: how long training waited for uploads
        self._sent: dict[str, tuple[int, int]] = {}  # relative path -> (mtime_ns, size) last uploaded
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.checkpoint_uploads: list[dict[str, float]] = []  # per upload: seconds, bytes
        self.restored: list[str] = []

    @classmethod
    def for_job(cls, objects: ObjectStore, settings: Settings, job_id: str,
                may_write: Callable[[], bool]) -> RunSync:
        return cls(objects, job_id, Path(settings.worker_dir) / "runs" / job_id,
                   patience_s=settings.storage_retry_seconds, may_write=may_write,
                   blocking=settings.checkpoint_upload == "epoch")

    def restore(self) -> list[str]:
        """Empty the scratch folder and fill it with the job's stored files (a redelivery resumes)."""
        shutil.rmtree(self.local_dir, ignore_errors=True)
        self.local_dir.mkdir(parents=True, exist_ok=True)
        base = run_key(self.job_id)
        keys = with_retry(lambda: self.objects.list(base), self.patience_s, f"job {self.job_id}: list stored files")
        for key in keys:
            relative = key[len(base):]
            path = self.local_dir / relative
            with_retry(lambda k=key, p=path: self.objects.download_file(k, p), self.patience_s,  # type: ignore[misc]
                       f"job {self.job_id}: download {relative}")
            stat = path.stat()
            self._sent[relative] = (stat.st_mtime_ns, stat.st_size)
        self.restored = [k[len(base):] for k in keys]
        if keys:
            log.info("job %s: restored %d stored files (%s)", self.job_id, len(keys), ", ".join(self.restored))
        return self.restored

    def start(self) -> None:
        if self.blocking:
            return
        self._thread = threading.Thread(target=self._loop, name=f"sync-{self.job_id}", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.upload_changed()
            except StorageUnavailable as exc:
                log.warning("job %s: upload deferred: %s", self.job_id, exc)
            except Exception:  # never let the mirror kill training; finish() tries again
                log.exception("job %s: upload failed", self.job_id)

    def upload_changed(self) -> int:
        """Upload every file changed since its last upload; returns how many went."""
        sent = 0
        with self._lock:
            for path in sorted(self.local_dir.rglob("*")):
                if not path.is_file() or path.name.endswith((".tmp", ".part")):
                    continue
                relative = path.relative_to(self.local_dir).as_posix()
                try:
                    stat = path.stat()
                except FileNotFoundError:
                    continue
                version = (stat.st_mtime_ns, stat.st_size)
                if self._sent.get(relative) == version:
                    continue
                if not self.may_write():
                    return sent  # the job may be another worker's now: its files are not ours to write
                started = time.perf_counter()
                self.objects.put_file(path, run_key(self.job_id, relative))
                self._sent[relative] = version
                sent += 1
                if relative == CHECKPOINT:
                    self.checkpoint_uploads.append({"seconds": time.perf_counter() - started,
                                                    "bytes": stat.st_size})
        return sent

    def after_progress(self) -> None:
        """Blocking mode, called by the training thread at every progress report: once the epoch
        checkpoint changed, upload every changed file before training goes on (retried for the patience;
        then `StorageUnavailable` fails the job)."""
        if not self.blocking:
            return
        try:
            stat = (self.local_dir / CHECKPOINT).stat()
        except FileNotFoundError:
            return
        if self._sent.get(CHECKPOINT) == (stat.st_mtime_ns, stat.st_size):
            return
        started = time.perf_counter()
        with_retry(self.upload_changed, self.patience_s, f"job {self.job_id}: upload the epoch checkpoint")
        self.waited_s += time.perf_counter() - started

    def finish(self, *, strict: bool = True) -> None:
        """Stop the background thread and upload what is left; `strict`: raise `StorageUnavailable`
        once the store stayed unreachable for the patience (the job then fails), else only log."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)
        try:
            with_retry(self.upload_changed, self.patience_s if strict else 0.0, f"job {self.job_id}: upload")
        except StorageUnavailable as exc:
            if strict:
                raise
            log.warning("job %s: files not uploaded: %s", self.job_id, exc)

    def stats(self) -> dict[str, Any]:
        """For the job's result: what was restored, and the checkpoint uploads (time and bytes)."""
        uploads = self.checkpoint_uploads
        return {
            "checkpoint_upload": "epoch" if self.blocking else "background",
            "upload_wait_s": round(self.waited_s, 4),
            "restored_files": len(self.restored),
            "checkpoint_uploads": len(uploads),
            "checkpoint_upload_s": [round(u["seconds"], 4) for u in uploads],
            "checkpoint_bytes": int(uploads[-1]["bytes"]) if uploads else 0,
        }


class JobFiles:
    """Where one job's run folder is and what its spec's dataset resolves to: the shared folders as
    before (local mode), or a private scratch folder mirrored to the object store (store mode)."""

    def __init__(self, settings: Settings, objects: ObjectStore, job_id: str, may_write: Callable[[], bool],
                 cache: Any = None) -> None:
        self.settings, self.objects, self.job_id = settings, objects, job_id
        self.remote = objects.remote
        self.sync = RunSync.for_job(objects, settings, job_id, may_write) if self.remote else None
        self.run_dir = self.sync.local_dir if self.sync else Path(settings.artifact_dir) / job_id
        self.cache = cache
        self.fetched: Any = None
        self.weights_file: Path | None = None  # uploaded weights the spec names, once `prepare` found them
        self.fetched_weights: Any = None

    def prepare(self, spec: dict, owner: str, store: Any) -> dict:
        """Restore the stored run folder and start mirroring it; return the spec with its dataset resolved
        (and find the uploaded weights it names: `weights_file`)."""
        from worker.datasets import resolve_from_store, resolve_uploaded
        from worker.weights import resolve_weights

        data_dir = Path(self.settings.data_dir)
        if self.sync is None:
            self.weights_file, _ = resolve_weights(spec, owner, store, data_dir)
            return resolve_uploaded(spec, owner, store, data_dir)
        self.sync.restore()
        self.weights_file, self.fetched_weights = resolve_weights(spec, owner, store, data_dir, self.cache)
        keep = (self.weights_file,) if self.weights_file is not None else ()
        resolved, self.fetched = resolve_from_store(spec, owner, store, self.cache, keep)
        self.sync.start()
        return resolved

    def progress_hook(self, inner: Callable[[Any], None]) -> Callable[[Any], None]:
        """`inner` as the `on_progress` hook, followed in blocking upload mode by the checkpoint upload."""
        if self.sync is None or not self.sync.blocking:
            return inner
        sync = self.sync

        def report(progress: Any) -> None:
            inner(progress)
            sync.after_progress()
        return report

    def finish(self, *, strict: bool = True) -> None:
        """Upload what is left (store mode); `strict` raises if the store stays unreachable."""
        if self.sync is not None:
            self.sync.finish(strict=strict)

    def stats(self) -> dict[str, Any]:
        if self.sync is None:
            return {}
        stats = self.sync.stats()
        if self.fetched is not None:
            stats["dataset_cache"] = {"hit": self.fetched.hit, "downloaded_bytes": self.fetched.downloaded_bytes}
        if self.fetched_weights is not None:
            stats["weights_cache"] = {"hit": self.fetched_weights.hit,
                                      "downloaded_bytes": self.fetched_weights.downloaded_bytes}
        return stats


_cache: Any = None
_previous_scratch: Path | None = None


def job_files(job_id: str, may_write: Callable[[], bool]) -> JobFiles:
    """This worker's `JobFiles` for a job, sharing one dataset cache across jobs.

    The previous job's scratch folder goes now: its files are in the store and its record written (a
    worker runs one job at a time), so a worker's disk holds at most one run folder besides the cache.
    """
    global _cache, _previous_scratch
    from jobs.settings import get_settings
    from jobs.storage import store_for
    from worker.dataset_cache import DatasetCache

    settings = get_settings()
    objects = store_for(settings)
    if objects.remote and _cache is None:
        _cache = DatasetCache(objects, Path(settings.data_dir), settings.cache_max_bytes)
    files = JobFiles(settings, objects, job_id, may_write, cache=_cache)
    if _previous_scratch is not None and _previous_scratch != files.run_dir:
        shutil.rmtree(_previous_scratch, ignore_errors=True)
    _previous_scratch = files.run_dir if files.remote else None
    return files


def start_delete_sweeper(client: Any, settings: Settings) -> threading.Thread | None:
    """Store mode: a daemon thread retrying the object deletes that failed while the store was down."""
    from jobs.pending_deletes import PendingDeletes
    from jobs.storage import store_for

    objects = store_for(settings)
    if not objects.remote:
        return None
    pending = PendingDeletes(client, settings.key_prefix)

    def sweep() -> None:
        while True:
            time.sleep(settings.sweep_interval)
            try:
                pending.retry_due(objects)
            except Exception as exc:  # Redis down: next round
                log.warning("pending object deletes not retried: %s", exc)

    thread = threading.Thread(target=sweep, name="delete-sweeper", daemon=True)
    thread.start()
    return thread
