"""Time the stale-queued sweep (`Sends.stale_queued`) with many queued jobs and a long queue.

    nice -n 10 .venv/bin/python scripts/reliability/stale_sweep.py --jobs 20000

Stores N queued jobs (created long ago, so every one is a re-send candidate) under a private key
prefix of the local Redis, and puts one realistic Celery message per job in their queue (a real
message sent by the API's JobQueue, copied with each id). Then times one sweep as it is now (ids parsed
into a set once) and as it was (a substring search per candidate in the joined queue; timed on a sample
of candidates and scaled, because the whole run takes minutes). Removes its keys at the end.
"""

from __future__ import annotations

import argparse
import secrets
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from jobs.queues import broker_key_prefix  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from service.queue import JobQueue  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--old-sample", type=int, default=200, help="candidates timed the old way")
    args = parser.parse_args()
    settings = Settings(key_prefix=f"stale-{secrets.token_hex(4)}")
    store = JobStore.from_settings(settings)
    queue_name = "sweep"
    broker = broker_key_prefix(settings.key_prefix)
    try:
        sender = JobQueue(settings)
        sender.send("job_0000000000000000", queue_name)
        template = store.redis.lpop(broker + queue_name)
        sender.close()
        ids = []
        pipe = store.redis.pipeline(transaction=False)
        for _ in range(args.jobs):
            record = store.records.create("train", {"epochs": 1}, "sweeper", queue=queue_name)
            ids.append(record["id"])
            pipe.hset(store.keys.job(record["id"]), "created_at", "1.0")
            pipe.rpush(broker + queue_name, template.replace("job_0000000000000000", record["id"]))
        pipe.execute()
        queue_bytes = sum(len(m) for m in store.redis.lrange(broker + queue_name, 0, -1))
        print(f"{args.jobs} queued jobs, queue of {args.jobs} messages ({queue_bytes / 1e6:.1f} MB)")

        start, cpu = time.perf_counter(), time.process_time()
        stale = store.sends.stale_queued(queue_name, older_than=60)
        new_wall, new_cpu = time.perf_counter() - start, time.process_time() - cpu
        assert stale == [], stale[:3]  # every job has its message: nothing to re-send
        print(f"now (set of ids): {new_wall:.3f} s wall, {new_cpu:.3f} s CPU per sweep")

        waiting = "\n".join(store.redis.lrange(broker + queue_name, 0, -1))
        waiting += "\n".join(store.redis.hvals(broker + "unacked"))
        sample = ids[-args.old_sample:]  # the worst case: ids near the end of the queue
        cpu = time.process_time()
        assert all(job_id in waiting for job_id in sample)
        per_candidate = (time.process_time() - cpu) / len(sample)
        print(f"before (substring search): {per_candidate * 1e3:.2f} ms CPU per candidate x {args.jobs} "
              f"= {per_candidate * args.jobs:.1f} s CPU per sweep (scaled from {len(sample)})")
    finally:
        store.delete_all()
        for key in store.redis.scan_iter(match=f"{broker}*"):
            store.redis.delete(key)


if __name__ == "__main__":
    main()
