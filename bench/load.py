"""Load on loopback: many clients polling job status and holding event streams while a job trains.

    .venv/bin/python bench/load.py --seconds 60 --pollers 200 --streams 50

Starts the API (one uvicorn process, API keys on) and one real worker on a private key prefix of the
local Redis, keeps a training job running (a new one is sent whenever the last ended) and parks a few
queued jobs. Then `--pollers` clients each GET a job's status every `--poll-interval` seconds, and
`--streams` clients each hold `GET /v1/jobs/{id}/events` open (half on the training jobs, half on
parked ones, which stream pings only), reconnecting with `Last-Event-ID` when a stream ends.

Prints one JSON line: requests, errors (anything but 200, or a broken connection), p50/p99 status
latency in ms, SSE events and reconnects, and the API's RSS before the load, after `--warmup`
seconds of it, and at the end, with the growth from warm to end. Every loop is bounded by the clock.
Client and server share the machine's cores, so latencies include the client's own cost.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import secrets
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jobs.settings import Settings  # noqa: E402
from jobs.store import JobStore  # noqa: E402
from tests.helpers import WorkerProcess  # noqa: E402
from tests.reliability.api_server import ApiServer  # noqa: E402

MAX_SECONDS = 3600
KEEPALIVE_EXPIRY_S = 3.0  # below CLR_HTTP_KEEP_ALIVE_SECONDS (5)
KEY = "load-secret"
HEADERS = {"Authorization": f"Bearer {KEY}"}
TRAIN = {"dataset": "digits", "model": "tiny_cnn", "device": "cpu", "epochs": 200, "train_subset": 1000,
         "batch_size": 64, "policy": "triangular", "base_lr": 0.01, "max_lr": 0.1, "step_size": 2,
         "augment": {"translate": 0, "flip": False}}
PARKED = {"dataset": "digits", "model": "tiny_cnn", "num_iter": 10}


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    events: int = 0
    reconnects: int = 0
    jobs_run: int = 0

    def error(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


async def poller(client: httpx.AsyncClient, jobs: list[str], interval: float, until: float, tally: Tally) -> None:
    await asyncio.sleep(random.uniform(0, interval))  # spread the first requests
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            response = await client.get(f"/v1/jobs/{random.choice(jobs)}", headers=HEADERS)
            if response.status_code == 200:
                tally.latencies.append(time.perf_counter() - started)
            else:
                tally.error(f"status {response.status_code}")
        except httpx.HTTPError as exc:
            tally.error(type(exc).__name__)
        await asyncio.sleep(max(0.0, interval - (time.perf_counter() - started)))


async def streamer(client: httpx.AsyncClient, pick_job, until: float, tally: Tally) -> None:
    """Hold one event stream until `until`; a stream that ends (job final) is followed by the next job's."""
    last_id: dict[str, str] = {}
    while time.monotonic() < until:
        job_id = pick_job()
        headers = {**HEADERS, **({"Last-Event-ID": last_id[job_id]} if job_id in last_id else {})}
        try:
            async with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=headers,
                                     timeout=httpx.Timeout(10, read=30)) as response:
                if response.status_code != 200:
                    tally.error(f"sse status {response.status_code}")
                    await asyncio.sleep(1)
                    continue
                async for line in response.aiter_lines():
                    if line.startswith("id:"):
                        last_id[job_id] = line[3:].strip()
                        tally.events += 1
                    if time.monotonic() >= until:
                        return
            tally.reconnects += 1
            await asyncio.sleep(1)  # as an EventSource waits `retry` before reconnecting
        except httpx.HTTPError as exc:
            tally.error(f"sse {type(exc).__name__}")
            await asyncio.sleep(1)


async def loop_lag(until: float, lags: list[float]) -> None:
    """How late this client's own event loop wakes up: the part of measured latency that is the client's."""
    while time.monotonic() < until:
        asked = time.perf_counter()
        await asyncio.sleep(0.05)
        lags.append(time.perf_counter() - asked - 0.05)


def load_average() -> float:
    return round(os.getloadavg()[0], 2)


def flatness(samples: list[float], every: float, window: float) -> dict:
    """RSS over the last `window` seconds of 10 s samples: first, last, min, max, and the spread (max - min)
    and growth (last - first) as percentages of the first: "flat within 5 %" reads off these."""
    tail = samples[-max(1, int(window / every)):]
    if not tail:
        return {}
    first = tail[0]
    return {"window_s": round(len(tail) * every), "first_mb": first, "last_mb": tail[-1], "min_mb": min(tail),
            "max_mb": max(tail), "spread_pct": round(100 * (max(tail) - min(tail)) / first, 1),
            "growth_pct": round(100 * (tail[-1] - first) / first, 1)}


async def rss_timeline(pid: int, until: float, samples: list[float], loads: list[float], tally: Tally) -> None:
    """The API's RSS (MB) and the machine's load average every 10 s: a leak climbs steadily, caches and
    arenas level off. A progress line a minute goes to stderr, so a run cut short still says what it saw."""
    start = time.monotonic()
    while time.monotonic() < until:
        samples.append(round(rss_bytes(pid) / 2**20, 1))
        loads.append(load_average())
        if len(samples) % 6 == 0:
            print(json.dumps({"at_s": round(time.monotonic() - start), "rss_mb": samples[-1], "load1": loads[-1],
                              "status_ok": len(tally.latencies), "errors": sum(tally.errors.values())}),
                  file=sys.stderr, flush=True)
        await asyncio.sleep(min(10.0, max(0.0, until - time.monotonic())))


async def keep_training(client: httpx.AsyncClient, running: list[str], until: float, tally: Tally) -> None:
    """A training job always in flight: when the current one is final, send the next. A dropped
    connection (a saturated machine) is counted and tried again, never the end of the whole run."""
    while time.monotonic() < until:
        try:
            state = (await client.get(f"/v1/jobs/{running[-1]}", headers=HEADERS)).json()["state"]
            if state in ("succeeded", "failed", "cancelled"):
                tally.jobs_run += 1
                response = await client.post("/v1/jobs/train", json=TRAIN, headers=HEADERS)
                running.append(response.json()["id"])
        except (httpx.HTTPError, ValueError, KeyError) as exc:  # counted like any other client's; the run goes on
            tally.error(f"trainer {type(exc).__name__}")
        await asyncio.sleep(1)


async def run_load(api: ApiServer, args: argparse.Namespace) -> dict:
    # Idle connections are dropped here before the server's keep-alive timeout (5 s) drops them: with equal
    # timeouts a request sent on a connection the server is just closing fails ("Server disconnected"),
    # a client-side race that a starved client (the first soak) hits dozens of times.
    limits = httpx.Limits(max_connections=args.pollers + args.streams + 20, max_keepalive_connections=None,
                          keepalive_expiry=KEEPALIVE_EXPIRY_S)
    async with httpx.AsyncClient(base_url=api.url, limits=limits, timeout=30) as client:
        running = [(await client.post("/v1/jobs/train", json=TRAIN, headers=HEADERS)).json()["id"]]
        parked = [(await client.post("/v1/jobs/range-test", json={**PARKED, "device": "auto"}, headers=HEADERS)
                   ).json()["id"] for _ in range(5)]
        jobs = running + parked
        tally = Tally()
        rss_before = rss_bytes(api.proc.pid)
        until = time.monotonic() + args.seconds

        def pick(n: int):
            return (lambda: running[-1]) if n % 2 == 0 else (lambda: random.choice(parked))

        tasks = [asyncio.create_task(poller(client, jobs, args.poll_interval, until, tally))
                 for _ in range(args.pollers)]
        tasks += [asyncio.create_task(streamer(client, pick(n), until, tally)) for n in range(args.streams)]
        tasks.append(asyncio.create_task(keep_training(client, running, until, tally)))
        lags: list[float] = []
        tasks.append(asyncio.create_task(loop_lag(until, lags)))
        timeline: list[float] = []
        loads: list[float] = []
        tasks.append(asyncio.create_task(rss_timeline(api.proc.pid, until, timeline, loads, tally)))
        await asyncio.sleep(args.warmup)
        rss_warm = rss_bytes(api.proc.pid)
        await asyncio.wait_for(asyncio.gather(*tasks), timeout=args.seconds + 60)
        rss_end = rss_bytes(api.proc.pid)
    lat = sorted(tally.latencies)
    ms = 1000.0
    return {
        "seconds": args.seconds, "pollers": args.pollers, "streams": args.streams,
        "status_requests": len(lat) + sum(v for k, v in tally.errors.items() if not k.startswith("sse")),
        "errors": sum(tally.errors.values()), "error_kinds": tally.errors,
        "p50_ms": round(statistics.median(lat) * ms, 1) if lat else None,
        "p99_ms": round(lat[int(0.99 * (len(lat) - 1))] * ms, 1) if lat else None,
        "max_ms": round(lat[-1] * ms, 1) if lat else None,
        "client_loop_lag_p99_ms": round(sorted(lags)[int(0.99 * (len(lags) - 1))] * ms, 1) if lags else None,
        "offered_status_rps": round(args.pollers / args.poll_interval, 1),
        "achieved_status_rps": round(len(lat) / args.seconds, 1),
        "sse_events": tally.events, "sse_reconnects": tally.reconnects, "training_jobs_finished": tally.jobs_run,
        "rss_mb_before": round(rss_before / 2**20, 1), "rss_mb_warm": round(rss_warm / 2**20, 1),
        "rss_mb_end": round(rss_end / 2**20, 1),
        "rss_growth_pct_from_warm": round(100 * (rss_end - rss_warm) / rss_warm, 1),
        "rss_mb_every_10s": timeline,
        "rss_last_20_min": flatness(timeline, 10.0, 1200.0) if args.seconds >= 1500 else None,
        "load1_every_10s": loads,
        "load1_min_median_max": [min(loads), statistics.median(loads), max(loads)] if loads else None,
        "entry_point": "python -m service.main" if args.entry_point else "python -m uvicorn service.main:app",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--pollers", type=int, default=200)
    parser.add_argument("--streams", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between one client's GETs")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds of load before the 'warm' RSS")
    parser.add_argument("--entry-point", action="store_true",
                        help="run the API as `python -m service.main` (the image's command: HTTP limits, head "
                             "deadline, access log) instead of bare uvicorn")
    parser.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE",
                        help="extra environment for the API process, e.g. MALLOC_ARENA_MAX=2")
    args = parser.parse_args()
    args.seconds = min(args.seconds, MAX_SECONDS)
    tmp = Path(tempfile.mkdtemp(prefix="load-"))
    settings = Settings(redis_url=os.environ.get("CLR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"),
                        key_prefix=f"load-{secrets.token_hex(4)}", artifact_dir=tmp / "artifacts",
                        data_dir=tmp / "data", download=False, open_mode=False, api_keys=f"load:{KEY}",
                        default_queue="parked", rate_limit_per_minute=10_000_000, progress_interval=0.25)
    store = JobStore.from_settings(settings)
    worker = WorkerProcess(settings, tmp / "worker.log")
    api_env = {"CLR_SSE_MAX_STREAMS_PER_KEY": str(args.streams + 10),  # one key holds every stream here
               **dict(item.split("=", 1) for item in args.api_env)}
    api = ApiServer(settings, tmp / "api.log", entry_point=args.entry_point, **api_env)
    try:
        worker.wait_ready(store)
        api.start()
        result = asyncio.run(run_load(api, args))
    finally:
        api.stop()
        worker.stop(timeout=10)
        store.delete_all()
    print(json.dumps(result))
    return 0 if result["errors"] == 0 and result["rss_growth_pct_from_warm"] < 10 else 1


if __name__ == "__main__":
    sys.exit(main())
