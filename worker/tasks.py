"""Celery tasks (thin, by name) and a job's life inside a worker.

`clr.run_job(job_id)` may be delivered more than once (late acks, redelivery after a crash, the
sweeper's re-send), so every delivery first asks the job record and the lease whether to train:
a final or cancelled job is skipped, a job whose lease another worker holds is a duplicate and is
skipped, a job whose deliveries already died `max_deliveries` times without releasing their lease
(killed, out of memory, hung) fails; clean hand-backs (warm shutdown) do not count. Otherwise the worker
trains, renewing the lease, and ends the job in exactly one final state with a one-line reason.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import mimetypes
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from celery import signals

from clrcore.json_safe import json_safe
from jobs.datasets import DatasetStore
from jobs.queues import DELIVER_WEBHOOK, PING, RUN_JOB, WEBHOOKS_QUEUE
from jobs.redis_errors import StoreUnavailable
from jobs.run_removal import remove_run_files
from jobs.settings import get_settings
from jobs.states import FINAL_STATES, InvalidTransition, JobState
from jobs.storage import store_for
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from worker.artifact_sync import job_files, start_delete_sweeper
from worker.celery_app import app
from worker.lease import LeaseKeeper, WorkerMonitor, worker_id

log = logging.getLogger(__name__)

settings = get_settings()
_store: JobStore | None = None
_workers: WorkerRegistry | None = None
_monitor: WorkerMonitor | None = None
_current_job: str | None = None
_shutting_down = threading.Event()

STORE_PATIENCE_S = 120.0  # how long a worker waits out a Redis outage before giving a step up
CANCEL_POLL_S = 0.2  # should_stop runs every batch; the record is read at most this often

T = TypeVar("T")
_TIME_LIMIT = f"time limit of {settings.job_time_limit:g} s exceeded"
FINAL = {s.value for s in FINAL_STATES}
HANDED_BACK = "its worker shut down; the next one resumes it from its last checkpoint"  # the webhook's reason

CONTENT_TYPES = {
    ".png": "image/png",
    ".json": "application/json",
    ".csv": "text/csv",
    ".txt": "text/plain; charset=utf-8",
    ".pt": "application/octet-stream",
}


def store() -> JobStore:
    global _store
    if _store is None:
        _store = JobStore.from_settings(settings, send_webhook=_send_webhook)  # transitions announce themselves
    return _store


def workers() -> WorkerRegistry:
    """This worker's heartbeats and canary replies, on the store's connection pool."""
    global _workers
    if _workers is None:
        _workers = WorkerRegistry(store().redis, settings.key_prefix)
    return _workers


def _send_webhook(delivery_id: str) -> None:
    """The store's webhook sender: `clr.deliver_webhook` by name to the webhooks workers, never waited on.

    Every transition made through `store()` (this task, the lease keeper, the sweeper) announces itself
    with it (`jobs.webhooks.JobNotices`); `progress` and a train job's `range_test_done` are announced
    below with `store().records.notify`."""
    app.send_task(DELIVER_WEBHOOK, args=[delivery_id], queue=WEBHOOKS_QUEUE)


# ---------------------------------------------------------------- tasks


@app.task(name=RUN_JOB)
def run_job_task(job_id: str) -> str:
    """Run one job; returns what this delivery did (for the worker log only; no result backend)."""
    outcome = execute(job_id)
    log.info("job %s: delivery outcome %s", job_id, outcome)
    return outcome


@app.task(name=PING, acks_late=False)
def ping(token: str) -> None:
    """Readiness canary: proves this worker's consumer takes messages, not only that it lives."""
    workers().record_canary(token, worker_id(), settings.queue)


def resend(job_id: str, queue: str) -> None:
    """Put a job back on a queue by task name (sweeper recovery, stale re-send, shutdown hand-off);
    `sent_at` is stamped so the stale-queued sweep knows a message is on its way."""
    app.send_task(RUN_JOB, args=[job_id], queue=queue)
    store().sends.mark_sent(job_id)


def dispatch_turns() -> list[str]:
    """Send this queue's next turns (`jobs.turns`): one job per key in turn, while the queue is short."""
    sent = store().turns.dispatch_by(settings, settings.queue)
    for job_id in sent:
        resend(job_id, settings.queue)
    return sent


# ---------------------------------------------------------------- worker signals


@signals.worker_ready.connect
def _on_worker_ready(**_: Any) -> None:
    """Load torch and the core now, so the first job does not pay for it; start heartbeat and sweeper."""
    global _monitor
    import clrcore.runs  # noqa: F401  (preload torch and the core; the API process never imports them)
    import clrcore.trainer  # noqa: F401

    retention = settings.retention_days * 86400
    uploads = DatasetStore(store().redis, settings.key_prefix, settings.data_dir, store_for(settings))
    _monitor = WorkerMonitor(
        store(),
        workers(),
        queue=settings.queue,
        heartbeat_seconds=settings.heartbeat_seconds,
        sweep_interval=settings.sweep_interval,
        resend=resend,
        current_job=lambda: _current_job,
        # a job just sent may take a moment to show in the queue; never race a claim about to happen
        requeue_after=max(settings.requeue_after_seconds, 2 * settings.lease_seconds),
        retention_seconds=retention,
        remove_files=lambda job_id: remove_run_files(settings, job_id, store().redis),
        dispatch=dispatch_turns,
        expire_datasets=lambda: uploads.expire_unused(store(), retention),
    )
    _monitor.start()
    start_delete_sweeper(store().redis, settings)  # store mode: object deletes that failed, retried
    log.info("worker %s ready on queue %s", worker_id(), settings.queue)


@signals.worker_shutting_down.connect
def _on_shutting_down(**_: Any) -> None:
    """Warm shutdown: a running job stops at its next batch and is handed back to the queue."""
    _shutting_down.set()


@signals.worker_shutdown.connect
def _on_shutdown(**_: Any) -> None:
    if _monitor is not None:
        _monitor.stop()


@signals.task_prerun.connect
def _on_task_taken(**_: Any) -> None:
    try:
        workers().record_heartbeat(worker_id(), settings.queue, job_id=_current_job, took_task=True)
        dispatch_turns()  # this message left the queue: the next turn takes its place at once
    except StoreUnavailable as exc:
        log.warning("cannot record heartbeat or dispatch: %s", exc)


# ---------------------------------------------------------------- one delivery


def _patiently(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call a store method, waiting out a Redis outage (restart, failover) for up to STORE_PATIENCE_S."""
    deadline = time.monotonic() + STORE_PATIENCE_S
    while True:
        try:
            return fn(*args, **kwargs)
        except StoreUnavailable as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("store unavailable, retrying: %s", exc)
            time.sleep(1.0)


def _finish(job_id: str, to: JobState, **kwargs: Any) -> bool:
    """Move the job to a final state; False (logged) if the state machine says it already moved on."""
    try:
        _patiently(store().records.transition, job_id, to, holder=worker_id(), **kwargs)
    except InvalidTransition as exc:
        log.warning("job %s: %s", job_id, exc)
        return False
    return True


def execute(job_id: str) -> str:
    """One delivery of `clr.run_job`; see the module docstring for the rules."""
    db = store()
    record = _patiently(db.records.get, job_id)
    if record is None:
        log.warning("job %s: no such job record (deleted after it ended, or another deployment's prefix)", job_id)
        return "missing"
    if record["state"] in FINAL:
        return "final"
    if not _patiently(db.leases.claim, job_id, worker_id(), settings.lease_seconds):
        holder = db.leases.holder(job_id)
        log.warning("job %s: duplicate delivery, lease held by %s; not training", job_id, holder)
        db.events.append(job_id, "delivery", {"worker": worker_id(), "outcome": "duplicate", "holder": holder})
        return "duplicate"
    keeper = LeaseKeeper(db, workers(), job_id, queue=settings.queue, lease_seconds=settings.lease_seconds,
                         interval=settings.heartbeat_seconds, stall_seconds=settings.stall_seconds,
                         time_left=settings.job_time_limit - record["run_seconds"], time_limit_error=_TIME_LIMIT)
    keeper.start()  # at once: anything slow before training (imports, data) must not let the lease lapse
    try:
        return _run_claimed(job_id, keeper)
    finally:
        keeper.stop()
        try:
            _patiently(db.leases.release, job_id, worker_id())
        except StoreUnavailable:
            log.error("job %s: could not release lease; it lapses by itself", job_id)


def _run_claimed(job_id: str, keeper: LeaseKeeper) -> str:
    """With the lease held: check the record once more, then train."""
    db = store()
    record = _patiently(db.records.get, job_id)
    assert record is not None, job_id  # a leased job cannot be deleted (JobNotFinished)
    state = record["state"]
    if state in FINAL:
        return "final"
    if record["cancel_requested"] or state == JobState.CANCELLING:
        _finish(job_id, JobState.CANCELLED)
        return "cancelled"
    if record["crashes"] >= settings.max_deliveries:  # that many deliveries died without a clean end
        crashes = record["crashes"]
        _finish(job_id, JobState.FAILED, error=f"job killed its worker {crashes} times (out of memory?)")
        return "delivery_cap"
    if record["run_seconds"] >= settings.job_time_limit:  # its earlier deliveries used the whole limit
        _finish(job_id, JobState.FAILED, error=_TIME_LIMIT)
        return "time_limit"
    if state == JobState.QUEUED:
        try:
            _patiently(db.records.transition, job_id, JobState.RUNNING, holder=worker_id())
        except InvalidTransition:  # cancelled between our reads
            return "final"
    # state running: a redelivery after its worker died; we hold the lease now, so we resume it
    db.events.append(job_id, "delivery", {"worker": worker_id(), "outcome": "started",
                                         "delivery": record["deliveries"]})
    return _train(job_id, record, keeper)


class StopCheck:
    """The `should_stop` hook: cancel asked, time limit reached, lease lost, or worker shutting down."""

    def __init__(self, job_id: str, keeper: LeaseKeeper) -> None:
        self.job_id, self.keeper = job_id, keeper
        self.deadline = keeper.deadline if keeper.deadline is not None else time.monotonic() + settings.job_time_limit
        self.reason: str | None = None
        self._next_poll = 0.0

    def __call__(self) -> bool:
        if self.reason is None:
            self.reason = self._reason()
        return self.reason is not None

    def _reason(self) -> str | None:
        if self.keeper.lost.is_set() or self.keeper.lapsed():
            return "lease_lost"
        if _shutting_down.is_set():
            return "shutdown"
        now = time.monotonic()
        if now > self.deadline:
            return "time_limit"
        if now >= self._next_poll:
            self._next_poll = now + CANCEL_POLL_S
            try:
                if store().records.cancel_requested(self.job_id):
                    return "cancel"
            except StoreUnavailable:
                pass  # keep training through a Redis blip; the lease keeper decides if it lasts too long
        return None


class ProgressWriter:
    """The `on_progress` hook: at most one progress write per `progress_interval`, whatever changed.

    The job record and its event log are read by every poller and SSE client, so a job whose epochs
    take milliseconds must not write on every phase or epoch change (16 writes/s were seen). Reports
    that arrive between writes are coalesced: the newest progress wins and metrics are merged (so an
    epoch's validation figures are not lost to the next training step), and `flush` writes what is
    left when the run ends, so the record always holds the final state.
    """

    def __init__(self, job_id: str, keeper: LeaseKeeper | None = None, interval: float | None = None,
                 run_dir: Path | None = None) -> None:
        self.job_id, self.keeper = job_id, keeper
        # where this delivery writes the run folder (the shared folder, or a private scratch in store mode)
        self.run_dir = Path(settings.artifact_dir) / job_id if run_dir is None else run_dir
        self.interval = settings.progress_interval if interval is None else interval
        self._last_write = -math.inf
        self._pending: Any = None
        self._pending_metrics: dict[str, Any] = {}
        self._phase: str | None = None

    def __call__(self, progress: Any) -> None:
        if self.keeper is not None:
            self.keeper.progressed()  # every report counts as progress, written or coalesced
        if self._phase == "range_test" and progress.phase != "range_test":
            self._range_test_done()  # a train job's own range test (max_lr "auto") chose its bounds
        self._phase = progress.phase
        self._pending = progress
        self._pending_metrics.update(progress.metrics)
        if time.monotonic() - self._last_write >= self.interval:
            self.flush()

    def _range_test_done(self) -> None:
        """The `range_test_done` webhook, with the sweep's recommendation as range_test.json has it."""
        path = self.run_dir / "range_test.json"
        try:
            recommendation = json.loads(path.read_text())["summary"]
            record = store().records.get(self.job_id)
        except (OSError, ValueError, KeyError, StoreUnavailable) as exc:
            log.warning("job %s: no range_test_done webhook: %s", self.job_id, exc)
            return
        if record is not None:
            store().records.notify(record, "range_test_done", recommendation)

    def flush(self) -> None:
        """Write the newest unwritten progress now (the caller ends the run, or the interval passed)."""
        progress, metrics = self._pending, self._pending_metrics
        if progress is None:
            return
        self._pending, self._pending_metrics = None, {}
        if self.keeper is not None and (self.keeper.lost.is_set() or self.keeper.lapsed()):
            return  # the job may be another worker's now: its progress is not ours to write
        self._last_write = time.monotonic()
        data = {
            "phase": progress.phase,
            "epoch": progress.epoch,
            "epochs": progress.epochs,
            "step": progress.step,
            "steps": progress.steps,
            "fraction": getattr(progress, "fraction", None),
        }
        try:
            if not store().events.update_progress(self.job_id, json_safe(data), json_safe(metrics),
                                           holder=worker_id()):
                log.warning("job %s: progress not written: the lease is no longer ours", self.job_id)
            elif (record := store().records.get(self.job_id)) is not None:
                store().records.notify(record, "progress")  # throttled per job (CLR_WEBHOOK_PROGRESS_INTERVAL)
        except StoreUnavailable as exc:
            log.warning("job %s: progress not written: %s", self.job_id, exc)


def failure_reason(exc: BaseException) -> str:
    """The one-line reason stored with a failed job; memory exhaustion always reads "out of memory"."""
    lines = str(exc).strip().splitlines()
    line = without_server_paths(lines[0])[:480] if lines else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"artifact disk full: {line}"
    if _out_of_memory(exc) and "out of memory" not in line.lower():
        return f"out of memory: {line}"
    return line


_ABSOLUTE_PATH = re.compile(r"(?<![\w.:/])/[^\s'\"`,;:()\[\]]+")


def without_server_paths(text: str) -> str:
    """The reason as a tenant may see it: the data and artifact folders named by their setting, any other
    absolute path by its last part, so an error never shows how the server's disks are laid out."""
    for folder, name in ((settings.data_dir, "data_dir"), (settings.artifact_dir, "artifact_dir")):
        for spelling in {str(Path(folder).resolve()), str(Path(folder).absolute())}:
            text = text.replace(spelling, name)
    return _ABSOLUTE_PATH.sub(lambda m: Path(m.group(0)).name or "/", text)


def _out_of_memory(exc: BaseException) -> bool:
    """CUDA raises torch.OutOfMemoryError; the CPU allocator a plain RuntimeError (e.g. under RLIMIT_AS)."""
    return (any(cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__)
            or isinstance(exc, MemoryError) or "DefaultCPUAllocator: can't allocate memory" in str(exc))


def _train(job_id: str, record: dict, keeper: LeaseKeeper) -> str:
    """Run the spec through clrcore into the job's run folder and record how it ended."""
    global _current_job
    from clrcore.hooks import Hooks, StopRequested
    from clrcore.runs import run_job
    from clrcore.specs import parse_spec

    files = job_files(job_id, keeper.may_write)  # shared folder, or private scratch mirrored to the store
    run_dir = files.run_dir
    stop = StopCheck(job_id, keeper)
    progress = ProgressWriter(job_id, keeper, run_dir=run_dir)
    _current_job = job_id
    try:
        try:
            spec = parse_spec(files.prepare(record["spec"], record["owner"], store()))
            summary = run_job(
                spec,
                run_dir,
                data_dir=Path(settings.data_dir),
                download=settings.download,
                max_decoded_bytes=settings.max_decoded_bytes,
                memmap_min_bytes=settings.memmap_min_bytes or None,
                hooks=Hooks(on_progress=files.progress_hook(progress), should_stop=stop, may_write=keeper.may_write),
                weights_file=files.weights_file,
            )
            files.finish()  # store mode: every file is in the store before the job reads succeeded
            if files.remote:
                summary = {**summary, "storage": files.stats()}
        finally:
            progress.flush()  # the last coalesced progress, before the final state is written
    except StopRequested:
        stop()  # a write fence (may_write) may have raised it: then this finds the reason, lease_lost
        files.finish(strict=False)  # uploads only while the lease is ours
        return _stopped(job_id, stop.reason, run_dir)
    except Exception as exc:  # any failure ends the job, never the worker
        log.warning("job %s failed: %s", job_id, exc, exc_info=not _expected_failure(exc))
        _release_cuda_memory()
        files.finish(strict=False)
        register_artifacts(job_id, run_dir)
        _finish(job_id, JobState.FAILED, error=failure_reason(exc))
        return "failed"
    finally:
        _current_job = None
        _charge_caches(record, files)
    register_artifacts(job_id, run_dir)
    if _finish(job_id, JobState.SUCCEEDED, result=json_safe(summary)):
        return "succeeded"
    return "superseded"


def _charge_caches(record: dict, files: Any) -> None:
    """Decode caches the job wrote count in the owner's quota at their real size, in both modes (see
    `charge_decode_caches`); store mode: then this worker's cache is trimmed to its budget, decode
    caches included, keeping the job's own archive."""
    from worker.datasets import charge_decode_caches

    data_dir = Path(settings.data_dir)
    archive = data_dir / files.fetched.relative if files.remote and files.fetched is not None else None
    try:
        if not files.remote or archive is not None:
            charge_decode_caches(record["spec"], record["owner"], store(), data_dir, archive)
    except Exception as exc:  # Redis down: the next job on the dataset charges them
        log.warning("decode caches not charged: %s", exc)
    if files.remote and files.cache is not None:
        try:
            files.cache.trim(keep=tuple(p for p in (archive, files.weights_file) if p is not None))
        except OSError as exc:
            log.warning("dataset cache not trimmed: %s", exc)


def _stopped(job_id: str, reason: str | None, run_dir: Path) -> str:
    """StopRequested: cancelled, timed out, lease lost (someone else owns it now) or handed back."""
    if reason == "lease_lost":
        return "lease_lost"  # another worker or the sweeper owns the job now; write nothing
    if reason == "shutdown":
        try:
            _patiently(store().records.transition, job_id, JobState.QUEUED, holder=worker_id(), why=HANDED_BACK)
            resend(job_id, (store().records.get(job_id) or {}).get("queue") or settings.queue)
            log.info("job %s: handed back to the queue at shutdown", job_id)
            return "handed_back"
        except InvalidTransition:
            pass  # cancel arrived meanwhile: fall through to cancelled
    register_artifacts(job_id, run_dir)
    if reason == "time_limit":
        _finish(job_id, JobState.FAILED, error=_TIME_LIMIT)
        return "failed"
    _finish(job_id, JobState.CANCELLED)
    return "cancelled"


def _expected_failure(exc: BaseException) -> bool:
    """Failures that are the job's, not a bug: logged without a traceback."""
    names = {"TrainingDiverged", "DatasetError", "OutOfMemoryError", "ValidationError"}
    return any(cls.__name__ in names for cls in type(exc).__mro__) or _out_of_memory(exc)


def _release_cuda_memory() -> None:
    """After an out-of-memory failure the next job should start with an empty cache."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def register_artifacts(job_id: str, run_dir: Path) -> None:
    """Record every file of the run folder with its content type, so the API can list and serve them."""
    if not run_dir.is_dir():
        return
    for path in sorted(p for p in run_dir.rglob("*") if p.is_file() and not p.name.endswith(".tmp")):
        name = path.relative_to(run_dir).as_posix()
        content_type = CONTENT_TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0]
        try:
            if not _patiently(store().records.add_artifact, job_id, name, name,
                              content_type or "application/octet-stream", path.stat().st_size,
                              holder=worker_id()):
                log.warning("job %s: artifacts not registered: the lease is no longer ours", job_id)
                return
        except FileNotFoundError:
            continue
