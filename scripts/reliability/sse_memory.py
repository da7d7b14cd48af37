"""Does the API's memory grow with the number of event streams it has served? Rounds of complete streams.

    .venv/bin/python scripts/reliability/sse_memory.py --rounds 6 --streams 1000

One uvicorn API process (open mode, a private key prefix on the local Redis, removed at the end) and
one finished job with 200 progress events. Each round opens `--streams` event streams (50 at a time)
that each read the whole log and end; the API's RSS is printed after every round, then after rounds
of plain status GETs for comparison. Steady growth per round points at memory kept per stream;
a level line at caches. Bounded: rounds x streams requests, each with a 60 s timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.load import rss_bytes  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from tests.reliability.api_server import ApiServer  # noqa: E402

CONCURRENCY = 50
EVENTS = 200


async def streams(url: str, job_id: str, count: int) -> None:
    # A fresh connection per stream, as a browser EventSource opens one (see docs/reliability.md on reuse).
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        gate = asyncio.Semaphore(CONCURRENCY)

        async def one() -> None:
            async with gate:
                response = await client.get(f"/v1/jobs/{job_id}/events")
                assert response.status_code == 200 and response.text.count("event: progress") == EVENTS

        await asyncio.gather(*(one() for _ in range(count)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--streams", type=int, default=1000, help="per round")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="sse-memory-"))
    settings = Settings(key_prefix=f"ssemem-{secrets.token_hex(3)}", artifact_dir=tmp / "artifacts",
                        data_dir=tmp / "data", open_mode=True, default_queue="parked",
                        rate_limit_per_minute=10_000_000)
    store = JobStore.from_settings(settings)
    api = ApiServer(settings, tmp / "api.log")
    api.start()
    try:
        with httpx.Client(base_url=api.url, timeout=30) as client:
            job_id = client.post("/v1/jobs/range-test", json={"num_iter": 10}).json()["id"]
            for n in range(EVENTS):
                store.events.update_progress(job_id, {"phase": "train", "epoch": n}, {})
            client.post(f"/v1/jobs/{job_id}/cancel")  # final: every stream reads the log and ends
            print(f"start: {rss_bytes(api.proc.pid) / 2**20:.1f} MB", flush=True)
            for n in range(args.rounds):
                asyncio.run(streams(api.url, job_id, args.streams))
                print(f"after {(n + 1) * args.streams} streams: {rss_bytes(api.proc.pid) / 2**20:.1f} MB", flush=True)
            for n in range(3):
                for _ in range(args.streams):
                    assert client.get(f"/v1/jobs/{job_id}").status_code == 200
                print(f"after {(n + 1) * args.streams} status GETs more: {rss_bytes(api.proc.pid) / 2**20:.1f} MB",
                      flush=True)
    finally:
        api.stop()
        store.delete_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
