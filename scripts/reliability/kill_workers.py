"""SIGKILL workers in mid-training, many times, and prove no job is lost, redone, or run twice at once.

    .venv/bin/python scripts/reliability/kill_workers.py --kills 20 --jobs 5 --epochs 40

Two real Celery workers (solo pool) share the CPU queue of a private key prefix on the local Redis.
At random moments a worker that holds a job's lease is killed with SIGKILL and a fresh one started in
its place. Checked at the end, for every job:

- it ended `succeeded`;
- it trained in exactly kills+1 deliveries ("started" events), and delivery k+1 started only after
  the worker of delivery k was dead: per job, the (worker, start, end) intervals never overlap in time;
- each restart resumed from the checkpoint on disk at the kill: the first epoch it trained was the
  checkpoint's epoch + 1, so no finished epoch was trained again.

How "never twice at once" is enforced: `JobStore.leases.claim` takes the job's lease with SET NX PX
(one holder); the holder renews it every heartbeat; a second delivery finds the lease held and
returns without training ("duplicate"); a dead worker's lease lapses and a sweeper hands the job back.
A frozen-then-woken worker stops on its own lapsed lease (tests/reliability/test_worker_faults.py).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from clrcore.specs import parse_spec  # noqa: E402
from jobs.queues import RUN_JOB  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from tests.helpers import WorkerProcess  # noqa: E402
from worker.celery_app import create_app  # noqa: E402

FINAL = {"succeeded", "failed", "cancelled"}


@dataclass
class Kill:
    job_id: str
    pid: int
    at: float  # Unix time once the process was reaped: it can do nothing after this
    checkpoint_epoch: int  # epochs in checkpoints/last.pt at that moment


def spec(epochs: int, seed: int) -> dict:
    return parse_spec({"kind": "train", "dataset": "digits", "model": "tiny_cnn", "device": "cpu",
                       "epochs": epochs, "train_subset": 1000, "batch_size": 64, "policy": "triangular",
                       "base_lr": 0.01, "max_lr": 0.1, "step_size": 2, "seed": seed,
                       "augment": {"translate": 0, "flip": False}}).model_dump(mode="json")


def checkpoint_epoch(run_dir: Path) -> int:
    path = run_dir / "checkpoints" / "last.pt"
    if not path.exists():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])


def busy_workers(store: JobStore, workers: list[WorkerProcess]) -> list[tuple[WorkerProcess, str]]:
    """(worker, job) for each live worker process that holds a running job's lease."""
    by_pid = {w.pid: w for w in workers if w.proc.poll() is None}
    busy = []
    for job_id in store.leases.running_jobs():
        holder = store.leases.holder(job_id)
        pid = int(holder.split(":")[1]) if holder else None
        if pid in by_pid:
            busy.append((by_pid[pid], job_id))
    return busy


def last_checkpoint(kills: list[Kill], job_id: str) -> int:
    return max((k.checkpoint_epoch for k in kills if k.job_id == job_id), default=0)


def stream_ms(event_id: str) -> float:
    return int(event_id.split("-")[0]) / 1000


def verify(store: JobStore, job_ids: list[str], kills: list[Kill]) -> dict:
    """The checks of the module docstring; returns figures, raises AssertionError on a violation."""
    figures = {"jobs": len(job_ids), "succeeded": 0, "deliveries_started": 0, "duplicates_refused": 0,
               "resumes_checked": 0, "overlaps": 0}
    for job_id in job_ids:
        record = store.records.get(job_id)
        assert record["state"] == "succeeded", (job_id, record["state"], record["error"])
        figures["succeeded"] += 1
        events = store.events.read(job_id, count=100_000)
        starts = [(stream_ms(i), d) for i, e, d in events if e == "delivery" and d["outcome"] == "started"]
        figures["duplicates_refused"] += sum(1 for _, e, d in events if e == "delivery" and d["outcome"] == "duplicate")
        mine = sorted((k for k in kills if k.job_id == job_id), key=lambda k: k.at)
        assert len(starts) == len(mine) + 1, (job_id, len(starts), len(mine))
        assert record["deliveries"] == len(starts), (job_id, record["deliveries"])
        figures["deliveries_started"] += len(starts)
        for n, kill in enumerate(mine):
            started_at, delivery = starts[n]
            assert delivery["worker"].split(":")[1] == str(kill.pid), (job_id, n, delivery, kill)
            next_start = starts[n + 1][0]
            if not started_at <= kill.at <= next_start:
                figures["overlaps"] += 1
                raise AssertionError(f"{job_id}: delivery {n + 2} started at {next_start} before the "
                                     f"worker of delivery {n + 1} died at {kill.at}")
            # The first progress of the next delivery names the epoch it trains first.
            first = next((d["progress"] for i, e, d in events
                          if e == "progress" and stream_ms(i) >= next_start and d["progress"]["phase"] == "train"),
                         None)
            if first is None:  # killed after the last epoch's checkpoint: nothing was left to train
                assert kill.checkpoint_epoch == record["spec"]["epochs"], (job_id, n, kill)
            else:
                assert first["epoch"] == kill.checkpoint_epoch + 1, (job_id, n, first, kill)
            figures["resumes_checked"] += 1
        if mine:
            assert record["result"]["resumed_from"] == (mine[-1].checkpoint_epoch or None)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--max-seconds", type=float, default=900, help="bound on the whole run")
    parser.add_argument("--seed", type=int, default=20261129)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    tmp = Path(tempfile.mkdtemp(prefix="kill-workers-"))
    settings = Settings(redis_url=os.environ.get("CLR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        key_prefix=f"kill-{secrets.token_hex(4)}", artifact_dir=tmp / "artifacts",
                        data_dir=tmp / "data", download=False, open_mode=True, lease_seconds=2.0,
                        heartbeat_seconds=0.3, sweep_interval=0.5, progress_interval=0.2,
                        max_deliveries=args.kills + 2)
    store = JobStore.from_settings(settings)
    sender = create_app(settings)
    workers: list[WorkerProcess] = []
    kills: list[Kill] = []
    started = time.monotonic()
    deadline = started + args.max_seconds

    def new_worker() -> WorkerProcess:
        worker = WorkerProcess(settings, tmp / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    try:
        for worker in (new_worker(), new_worker()):
            worker.wait_ready(store)
        job_ids = []
        for n in range(args.jobs):
            job_id = store.records.create("train", spec(args.epochs, n), "kill-test", queue="cpu")["id"]
            sender.send_task(RUN_JOB, args=[job_id], queue="cpu")
            job_ids.append(job_id)
        per_job_cap = max(1, (args.kills + args.jobs - 1) // args.jobs + 2)
        while len(kills) < args.kills and time.monotonic() < deadline:
            time.sleep(rng.uniform(1.0, 4.0))  # a random moment: early or late in an epoch, or in eval
            # Only a delivery that got past a checkpoint of its own, so every resume has something to prove.
            candidates = [(w, j) for w, j in busy_workers(store, workers)
                          if sum(k.job_id == j for k in kills) < per_job_cap
                          and checkpoint_epoch(Path(settings.artifact_dir) / j) > last_checkpoint(kills, j)]
            if not candidates:
                if all(store.records.get(j)["state"] in FINAL for j in job_ids):
                    break
                continue
            victim, job_id = rng.choice(candidates)
            victim.proc.send_signal(signal.SIGKILL)
            victim.proc.wait(timeout=10)
            kills.append(Kill(job_id, victim.pid, time.time(), checkpoint_epoch(Path(settings.artifact_dir) / job_id)))
            print(f"[{time.monotonic() - started:6.1f}s] kill {len(kills)}: worker {victim.pid} in {job_id} "
                  f"(checkpoint epoch {kills[-1].checkpoint_epoch})", flush=True)
            new_worker()
        while time.monotonic() < deadline and not all(store.records.get(j)["state"] in FINAL for j in job_ids):
            time.sleep(0.5)
        figures = verify(store, job_ids, kills)
        figures.update(kills=len(kills), workers_started=len(workers),
                       seconds=round(time.monotonic() - started, 1))
        print(json.dumps(figures))
        return 0 if figures["kills"] >= args.kills else 1
    finally:
        for worker in workers:
            worker.stop(timeout=5)
        store.delete_all()


if __name__ == "__main__":
    sys.exit(main())
