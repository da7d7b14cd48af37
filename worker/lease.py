"""Background threads of a worker: the running job's lease keeper, and the heartbeat-and-sweeper.

Why a lease of our own: with `acks_late` on Redis, a killed worker's message comes back only when the
visibility timeout runs out, and a short timeout hands a still-running job to a second worker. So a
job is run only by the holder of its lease (`JobStore.leases.claim`), the holder renews it every
`heartbeat_seconds`, and any worker's sweeper hands a job whose lease lapsed back to the queue at once,
where the next worker resumes it from its checkpoint.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import threading
import time
from collections.abc import Callable

from jobs.redis_errors import StoreUnavailable
from jobs.states import InvalidTransition, JobNotFound, JobState
from jobs.store import JobStore
from jobs.workers import WorkerRegistry

log = logging.getLogger(__name__)

_worker_id: tuple[int, str] | None = None
_worker_id_lock = threading.Lock()


def worker_id() -> str:
    """This process's identity in leases and heartbeats: unique even for two workers on one host."""
    global _worker_id
    with _worker_id_lock:  # threads ask for it first at the same moment (ready handler, monitor)
        if _worker_id is None or _worker_id[0] != os.getpid():
            _worker_id = (os.getpid(), f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}")
        return _worker_id[1]


class LeaseKeeper(threading.Thread):
    """Renews one job's lease while it trains; sets `lost` when the lease is gone (then stop training).

    A Redis outage is not a lost lease: renewals are retried, and the lease (with AOF on) survives a
    restart shorter than `lease_seconds`. A hung but alive worker does not keep the job forever: the
    lease is renewed only while the job reported progress within `stall_seconds` (`progressed`), and
    once the job is past its deadline (`time_left`, what its earlier deliveries left of the time limit)
    by a lease period, this thread fails the job itself, whatever the training thread is stuck in.
    """

    def __init__(
        self, store: JobStore, workers: WorkerRegistry, job_id: str, *, queue: str, lease_seconds: float,
        interval: float, stall_seconds: float | None = None, time_left: float | None = None,
        time_limit_error: str = "time limit exceeded",
    ) -> None:
        super().__init__(name=f"lease-{job_id}", daemon=True)
        self.store, self.workers, self.job_id, self.queue = store, workers, job_id, queue
        self.lease_seconds, self.interval = lease_seconds, interval
        self.stall_seconds, self.time_limit_error = stall_seconds, time_limit_error
        self.lost = threading.Event()
        self.renewed_at = time.monotonic()  # the claim was just made
        self.progressed_at = self.renewed_at
        self.deadline = None if time_left is None else self.renewed_at + time_left
        self.stalled = False
        self._stop_event = threading.Event()

    def progressed(self) -> None:
        """The job made progress (a batch, a phase): its lease may be renewed for another stall bound."""
        self.progressed_at = time.monotonic()

    def past_deadline(self, grace: float = 0.0) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline + grace

    def lapsed(self) -> bool:
        """True once no renewal succeeded for `lease_seconds`: Redis has let the lease go by now.

        Known without asking Redis, so a worker that was frozen (SIGSTOP, a VM pause) and wakes up stops
        at its next batch, before this thread gets round to a renewal; meanwhile another worker may
        hold the job, and anything written now would overwrite its work.
        """
        return time.monotonic() - self.renewed_at > self.lease_seconds

    def may_write(self) -> bool:
        """clrcore's write fence (`Hooks.may_write`): the lease is neither known lost nor lapsed.

        Asked right before every checkpoint write and its rename, so a worker woken after its lease
        lapsed does not overwrite the checkpoint of the worker that now owns the job.
        """
        return not self.lost.is_set() and not self.lapsed()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            asked = time.monotonic()  # the lease runs from when we asked, not from when the answer came
            if self.past_deadline(grace=self.lease_seconds):
                self._fail_at_deadline()
                return
            if self.stall_seconds is not None and asked - self.progressed_at > self.stall_seconds:
                log.error("job %s: no progress for %g s (hung?); lease no longer renewed, another worker "
                          "takes the job over", self.job_id, asked - self.progressed_at)
                self.stalled = True
                self.lost.set()
                return
            try:
                if not self.store.leases.renew(self.job_id, worker_id(), self.lease_seconds,
                                               ran_seconds=asked - self.renewed_at):
                    log.error("job %s: lease lost; stopping its training", self.job_id)
                    self.lost.set()
                    return
                self.renewed_at = asked
                self.workers.record_heartbeat(worker_id(), self.queue, job_id=self.job_id)
            except StoreUnavailable as exc:
                log.warning("job %s: cannot renew lease: %s", self.job_id, exc)

    def _fail_at_deadline(self) -> None:
        """The training thread did not stop at the deadline (hung in a call): end the job from here,
        fenced by the lease, and mark the lease lost so nothing the training thread does later is written."""
        self.lost.set()
        try:
            self.store.records.transition(self.job_id, JobState.FAILED, error=self.time_limit_error,
                                          holder=worker_id())
            log.error("job %s: failed by its lease keeper at the deadline (training thread hung)", self.job_id)
        except (InvalidTransition, StoreUnavailable) as exc:
            log.warning("job %s: not failed at its deadline: %s", self.job_id, exc)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)


class WorkerMonitor(threading.Thread):
    """Every `heartbeat_seconds` records this worker as alive and sends the queue's next turns
    (`dispatch`); every `sweep_interval` recovers lapsed jobs.

    `resend(job_id, queue)` puts a recovered job back on its queue (by task name). Several workers
    sweep at once safely: `JobStore.records.recover_lapsed` is atomic, and only its winner re-sends.
    """

    def __init__(
        self,
        store: JobStore,
        workers: WorkerRegistry,
        *,
        queue: str,
        heartbeat_seconds: float,
        sweep_interval: float,
        resend: Callable[[str, str], None],
        current_job: Callable[[], str | None],
        requeue_after: float = 60.0,
        retention_seconds: float | None = None,
        remove_files: Callable[[str], None] | None = None,
        dispatch: Callable[[], object] | None = None,
        expire_datasets: Callable[[], list[str]] | None = None,
    ) -> None:
        super().__init__(name="worker-monitor", daemon=True)
        self.store, self.workers, self.queue = store, workers, queue
        self.heartbeat_seconds, self.sweep_interval = heartbeat_seconds, sweep_interval
        self.resend, self.current_job = resend, current_job
        self.requeue_after = requeue_after
        self.retention_seconds, self.remove_files = retention_seconds, remove_files
        self.dispatch, self.expire_datasets = dispatch, expire_datasets
        self._stop_event = threading.Event()

    def run(self) -> None:
        tick = min(self.heartbeat_seconds, self.sweep_interval)
        since_sweep = self.sweep_interval  # sweep at once: a restarted worker recovers its own dead job
        while True:
            try:
                self.workers.record_heartbeat(worker_id(), self.queue, job_id=self.current_job())
                if self.dispatch is not None:  # the queue's next turns, as it drains (`jobs.turns`)
                    self.dispatch()
                if since_sweep >= self.sweep_interval:
                    since_sweep = 0.0
                    self.sweep()
            except StoreUnavailable as exc:
                log.warning("worker monitor: %s", exc)
            except Exception:  # the monitor must outlive any surprise; the next tick tries again
                log.exception("worker monitor failed a round")
            if self._stop_event.wait(tick):
                return
            since_sweep += tick

    def sweep(self) -> list[str]:
        """Recover running jobs whose lease lapsed; returns the ids handed back to a queue."""
        requeued = []
        for job_id in self.store.leases.running_jobs():
            if self.store.leases.holder(job_id) is not None:
                continue
            new_state = self.store.records.recover_lapsed(job_id)
            if new_state == JobState.QUEUED:
                record = self.store.records.get(job_id) or {}
                queue = record.get("queue") or self.queue
                log.warning("job %s: lease lapsed (worker gone); re-sent to queue %s", job_id, queue)
                self.store.events.append(job_id, "recovered", {"by": worker_id(), "queue": queue})
                self.resend(job_id, queue)
                requeued.append(job_id)
            elif new_state is not None:
                log.warning("job %s: lease lapsed while cancelling; now %s", job_id, new_state)
        self.expire_finished()
        if self.expire_datasets is not None:
            removed = self.expire_datasets()
            if removed:
                log.info("retention: removed %d unused uploaded dataset(s)", len(removed))
        return requeued + self.resend_stale()

    def expire_finished(self, batch: int = 100) -> list[str]:
        """Remove jobs that finished more than `retention_seconds` ago: record, event log, indexes (one
        atomic delete), then the run folder. Several sweepers may race: a job already gone is skipped."""
        if self.retention_seconds is None:
            return []
        removed = []
        for job_id in self.store.records.finished_before(time.time() - self.retention_seconds, batch):
            record = self.store.records.get(job_id)
            if record is not None:
                try:
                    self.store.records.delete(record)
                except (JobNotFound, InvalidTransition):  # another sweeper was first, or still leased
                    continue
            else:
                self.store.records.forget_finished(job_id)
            if self.remove_files is not None:
                self.remove_files(job_id)
            removed.append(job_id)
        if removed:
            log.info("retention: removed %d finished job(s)", len(removed))
        return removed

    def resend_stale(self) -> list[str]:
        """Send again this queue's jobs left `queued` for `requeue_after` seconds with no message anywhere.

        Covers an API that died between storing a job and sending its task, and a message lost by the
        broker. Only this worker's own queue: a queue nobody consumes gains nothing from re-sends.
        """
        resent = []
        for job_id in self.store.sends.stale_queued(self.queue, self.requeue_after):
            if self.store.sends.restamp_stale(job_id, self.requeue_after):
                log.warning("job %s: queued for over %g s with no message; sent again", job_id,
                            self.requeue_after)
                self.resend(job_id, self.queue)
                resent.append(job_id)
        return resent

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)
