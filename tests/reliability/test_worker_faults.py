"""Faults inside a worker: memory exhausted, time limit passed, the worker frozen (no heartbeat).

Each test starts its own real Celery worker on a queue of its own and stops it at the end, so no
other test's worker takes its jobs. (Diverging loss and SIGKILL are in tests/worker/test_tasks.py.)
"""

from __future__ import annotations

import resource
import secrets
import signal
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from jobs.settings import Settings
from jobs.store import JobStore
from jobs.workers import WorkerRegistry
from tests.helpers import WorkerProcess, range_test_spec, submit, train_spec, wait_for
from tests.reliability.holding_proxy import HoldingProxy

pytestmark = pytest.mark.slow

# Generous on a loaded 2-core machine: a worker may take a minute to start, a job several to run. The
# frozen-worker tests run their workers with a 6 s lease (the session's is 2 s), so a worker starved of
# CPU for a couple of seconds keeps its job and the delivery counts stay exact.
SLOW_S = 240.0
ROOMY_LEASE = {"CLR_LEASE_SECONDS": "6", "CLR_HEARTBEAT_SECONDS": "1"}
OOM_HEADROOM = 1 << 30  # address space left to a ready worker: plenty for tiny_cnn, far too little for the OOM job


def vm_size(pid: int) -> int:
    """The process's current virtual size in bytes (what RLIMIT_AS caps)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmSize for {pid}")


def test_oom_and_time_limit_fail_the_job_with_reason_and_the_worker_takes_the_next(
    store: JobStore, celery_sender, start_worker: Callable[..., WorkerProcess]
) -> None:
    queue = f"faults-{secrets.token_hex(3)}"
    # glibc's per-thread malloc arenas would use up the address-space cap on their own.
    # 20 s: under load, building minigooglenet and loading data alone took over 6 s, so the time limit
    # ended the out-of-memory job before its allocation failed.
    worker = start_worker(CLR_QUEUE=queue, CLR_JOB_TIME_LIMIT="20", MALLOC_ARENA_MAX="2")
    try:
        limit = vm_size(worker.pid) + OOM_HEADROOM
        resource.prlimit(worker.pid, resource.RLIMIT_AS, (limit, limit))
        # minigooglenet on a 4096 batch needs several GB of activations: a genuine allocation failure.
        oom = submit(store, celery_sender, range_test_spec(model="minigooglenet", batch_size=4096,
                                                            train_subset=None, num_iter=5), queue=queue)
        slow = submit(store, celery_sender, train_spec(epochs=5000), queue=queue)  # minutes: far past the limit
        after = submit(store, celery_sender, range_test_spec(num_iter=10), queue=queue)

        record = wait_for(store, oom, timeout=SLOW_S)
        assert record["state"] == "failed", record
        assert record["error"].startswith("out of memory"), record["error"]
        record = wait_for(store, slow, timeout=SLOW_S)
        assert record["state"] == "failed" and record["error"] == "time limit of 20 s exceeded", record
        assert "checkpoints/last.pt" in record["artifacts"]  # what it made so far is kept
        assert wait_for(store, after, timeout=SLOW_S)["state"] == "succeeded"
        assert worker.proc.poll() is None  # the same worker process served all three
    finally:
        worker.stop()


def test_frozen_worker_loses_its_job_to_another_and_cannot_touch_it_after_waking(
    store: JobStore, celery_sender, start_worker: Callable[..., WorkerProcess], settings: Settings
) -> None:
    queue = f"hang-{secrets.token_hex(3)}"
    frozen = start_worker(CLR_QUEUE=queue, **ROOMY_LEASE)
    job_id = submit(store, celery_sender, train_spec(epochs=12, train_subset=1000), queue=queue)
    spare = None
    try:
        wait_for(store, job_id, lambda r: (r["progress"] or {}).get("epoch", 0) >= 2, timeout=SLOW_S)
        assert store.leases.holder(job_id).split(":")[1] == str(frozen.pid)
        frozen.proc.send_signal(signal.SIGSTOP)  # hangs: no heartbeat, no renewal, no progress
        spare = start_worker(CLR_QUEUE=queue, **ROOMY_LEASE)  # its sweeper re-sends the job once the lease lapses
        record = wait_for(store, job_id, lambda r: r["deliveries"] >= 2, timeout=SLOW_S)
        assert store.leases.holder(job_id) is None or str(frozen.pid) not in store.leases.holder(job_id)

        record = wait_for(store, job_id, timeout=SLOW_S)
        assert record["state"] == "succeeded", record["error"]
        events = store.events.read(job_id, count=10_000)
        assert "recovered" in {e for _, e, _ in events}
        final_event = events[-1][0]
        checkpoint = Path(settings.artifact_dir) / job_id / "checkpoints" / "last.pt"
        before = (checkpoint.stat().st_mtime_ns, record["finished_at"], record["progress"], record["metrics"])

        frozen.proc.send_signal(signal.SIGCONT)  # wakes with a lapsed lease: must stop without writing
        time.sleep(3 * float(ROOMY_LEASE["CLR_HEARTBEAT_SECONDS"]) + 3.0)
        after = store.records.get(job_id)
        assert after["state"] == "succeeded" and after["deliveries"] == 2
        late = store.events.read(job_id, after=final_event)
        assert late == [], (late, frozen.log_tail(3000))  # nothing appended after the end
        assert (checkpoint.stat().st_mtime_ns, after["finished_at"], after["progress"], after["metrics"]) == before, (
            frozen.log_tail(3000))
        assert frozen.proc.poll() is None  # it lives on, ready for the next job
        assert "lease_lost" in frozen.log_tail(20_000)
    finally:
        if frozen.proc.poll() is None:
            frozen.proc.send_signal(signal.SIGCONT)
        frozen.stop()
        if spare is not None:
            spare.stop()


def test_a_worker_frozen_with_model_pt_written_cannot_end_the_job_or_register_files_after_waking(
    store: JobStore, celery_sender, start_worker: Callable[..., WorkerProcess], settings: Settings
) -> None:
    """Issue 14 item 7 with real workers: worker A finishes training, writes model.pt and sends its first
    artifact registration; it freezes there (the command held by a proxy, then SIGSTOP: the write in
    flight at the freeze). Worker B recovers the job; A wakes while B holds it. A's registration and
    its `succeeded` are refused in Redis, and the job ends with B's result."""
    queue = f"fence-{secrets.token_hex(3)}"
    redis_at = urlsplit(settings.redis_url)
    proxy = HoldingProxy((redis_at.hostname or "127.0.0.1", redis_at.port or 6379), b"artifact:")
    frozen = start_worker(CLR_QUEUE=queue, CLR_REDIS_URL=proxy.url(settings.redis_url), **ROOMY_LEASE)
    job_id = submit(store, celery_sender, train_spec(epochs=3), queue=queue)
    spare = None
    try:
        assert proxy.caught.wait(SLOW_S), frozen.log_tail()  # trained, wrote model.pt, registers its files
        frozen.proc.send_signal(signal.SIGSTOP)
        assert (Path(settings.artifact_dir) / job_id / "model.pt").is_file()
        record = store.records.get(job_id)
        assert (record["state"], record["artifacts"], record["result"]) == ("running", {}, None), record

        spare = start_worker(CLR_QUEUE=queue, **ROOMY_LEASE)  # recovers the job once A's lease lapses
        wait_for(store, job_id, lambda r: r["deliveries"] >= 2, timeout=SLOW_S)  # B holds it now
        b_was_running = store.records.get(job_id)["state"] == "running"
        proxy.release()  # A's registration reaches Redis now, as after a freeze mid-write
        frozen.proc.send_signal(signal.SIGCONT)

        outcome = _delivery_outcome(frozen, job_id)
        final = wait_for(store, job_id, timeout=SLOW_S)
        log = frozen.log_tail(20_000)
        assert outcome == "superseded", log  # its `succeeded` was refused: the lease names B
        assert "artifacts not registered: the lease is no longer ours" in log
        assert final["state"] == "succeeded" and final["deliveries"] == 2, final
        assert final["result"]["resumed_from"] == 3, (b_was_running, final["result"])  # B's run, not A's
        assert frozen.proc.poll() is None
    finally:
        proxy.close()
        if frozen.proc.poll() is None:
            frozen.proc.send_signal(signal.SIGCONT)
        frozen.stop()
        if spare is not None:
            spare.stop()


def _delivery_outcome(worker: WorkerProcess, job_id: str) -> str:
    """What the worker logged as its delivery's outcome for the job (waits for the line)."""
    marker = f"job {job_id}: delivery outcome "
    deadline = time.monotonic() + SLOW_S
    while time.monotonic() < deadline:
        log = worker.log_tail(200_000)
        if marker in log:
            return log.split(marker, 1)[1].split()[0]
        time.sleep(0.2)
    raise TimeoutError(f"no delivery outcome logged:\n{worker.log_tail()}")


def test_a_lapsed_lease_is_known_without_asking_redis(store: JobStore, workers: WorkerRegistry) -> None:
    from worker.lease import LeaseKeeper

    keeper = LeaseKeeper(store, workers, "job_0000000000000000", queue="cpu", lease_seconds=0.2, interval=10)
    assert not keeper.lapsed()
    time.sleep(0.3)
    assert keeper.lapsed()  # a frozen worker that wakes now stops at its next batch (no Redis call made)


def test_progress_is_written_only_by_the_lease_holder(store: JobStore) -> None:
    job_id = store.records.create("train", train_spec(), "faults")["id"]
    assert store.leases.claim(job_id, "worker-b", lease_seconds=60)
    assert store.events.update_progress(job_id, {"epoch": 3}, {"loss": 1.0}, holder="worker-b")
    events_before = store.events.read(job_id, count=1000)
    # A woken worker whose lease is gone: refused inside Redis, nothing written, nothing logged.
    assert not store.events.update_progress(job_id, {"epoch": 1}, {}, holder="worker-a")
    record = store.records.get(job_id)
    assert record["progress"] == {"epoch": 3} and record["metrics"] == {"loss": 1.0}
    assert store.events.read(job_id, count=1000) == events_before
