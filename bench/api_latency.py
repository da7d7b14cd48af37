"""Status GET latency at N concurrent clients, beside a bare FastAPI endpoint in the same server and run.

    .venv/bin/python bench/api_latency.py --seconds 10 --clients 50

Starts uvicorn (one process, loopback) on the real app plus two bare routes (`/bare` async and
`/bare-sync` threadpool, each returning a constant dict), creates one job in Redis under a fresh key
prefix, then runs `--clients` httpx clients in a closed loop against each target for `--seconds` in
all (in `--rounds` turns, so load drift hits every target alike) and prints one JSON line per target:
p50/p90/p99/mean in milliseconds, requests per second, errors, the mean time inside the server (its own
histogram) and the server process's CPU time per request (/proc; the clients' own CPU is not in it,
and unlike the times it does not grow with queueing). The keys it made are removed at the end.
Client and server share this machine's cores, so absolute figures include the client's own cost;
compare the lines with each other.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench.api_latency")


def bench_app():  # noqa: ANN201 (uvicorn --factory target; imports stay inside the server process)
    """The service app with two bare endpoints added, for a floor measured in the same process."""
    from service.main import create_app

    app = create_app()

    @app.get("/bare", include_in_schema=False)
    async def bare() -> dict:
        return {"status": "ok", "value": 42}

    @app.get("/bare-sync", include_in_schema=False)
    def bare_sync() -> dict:
        return {"status": "ok", "value": 42}

    return app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _closed_loop(url: str, headers: dict, clients: int, seconds: float, warmup: float) -> tuple[list, int, int]:
    """`clients` tasks each sending one request after another; (latencies after the warm-up, errors,
    requests sent in all, warm-up included)."""
    latencies: list[float] = []
    errors = sent = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as http:
        start = time.perf_counter()
        measure_from, stop_at = start + warmup, start + warmup + seconds

        async def one_client() -> None:
            nonlocal errors, sent
            while (now := time.perf_counter()) < stop_at:
                sent += 1
                try:
                    response = await http.get(url)
                    ok = response.status_code == 200
                except httpx.HTTPError:
                    ok = False
                done = time.perf_counter()
                if now >= measure_from:
                    latencies.append(done - now)
                    errors += not ok

        await asyncio.gather(*(one_client() for _ in range(clients)))
    return latencies, errors, sent


def _summary(latencies: list[float], errors: int, seconds: float) -> dict:
    latencies = sorted(latencies)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "requests": len(latencies), "errors": errors, "rps": round(len(latencies) / seconds, 1),
        "p50_ms": round(q[49] * 1000, 2), "p90_ms": round(q[89] * 1000, 2), "p99_ms": round(q[98] * 1000, 2),
        "mean_ms": round(statistics.fmean(latencies) * 1000, 2),
    }


def _server_means(metrics_text: str) -> dict[str, float]:
    """Mean time inside the server per route (request middleware to response), from its own histogram:
    the part of the latency the app is responsible for, without the client's and the queueing's share."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        for suffix, table in (("_sum", sums), ("_count", counts)):
            head = f"clr_http_request_duration_seconds{suffix}{{"
            if line.startswith(head) and 'method="GET"' in line:
                route = line.split('route="', 1)[1].split('"', 1)[0]
                table[route] = float(line.rsplit(" ", 1)[1])
    return {route: round(sums[route] / counts[route] * 1000, 3) for route in sums if counts.get(route)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds not counted, per round")
    parser.add_argument("--rounds", type=int, default=5, help="targets take turns this many times")
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--redis-url", default=os.environ.get("CLR_REDIS_URL", "redis://127.0.0.1:6379/0"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("httpx").setLevel(logging.WARNING)

    from jobs.settings import Settings
    from jobs.store import JobStore

    secret = secrets.token_hex(16)
    workdir = Path(tempfile.mkdtemp(prefix="clr-bench-"))
    env = {**os.environ, "CLR_REDIS_URL": args.redis_url, "CLR_KEY_PREFIX": f"bench-{secrets.token_hex(4)}",
           "CLR_API_KEYS": f"bench:{secret}", "CLR_RATE_LIMIT_PER_MINUTE": str(10**9),
           "CLR_ARTIFACT_DIR": str(workdir), "CLR_OPEN_MODE": "false", "PYTHONPATH": str(ROOT)}
    settings = Settings(redis_url=args.redis_url, key_prefix=env["CLR_KEY_PREFIX"], artifact_dir=workdir)
    store = JobStore.from_settings(settings)
    job = store.records.create("train", {"kind": "train", "dataset": "digits", "model": "tiny_cnn"}, "bench",
                       queue="parked")
    store.events.update_progress(job["id"], {"phase": "train", "epoch": 3, "epochs": 8, "step": 90, "steps": 240,
                                      "fraction": 0.375}, {"loss": 0.42, "accuracy": 0.91, "lr": 0.01})

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.api_latency:bench_app", "--factory", "--host", "127.0.0.1",
         "--port", str(port), "--no-access-log", "--log-level", "warning"], cwd=ROOT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError("server did not start")
            time.sleep(0.1)
        headers = {"Authorization": f"Bearer {secret}"}
        assert httpx.get(f"{base}/v1/jobs/{job['id']}", headers=headers).status_code == 200
        targets = {"bare_async": "/bare", "bare_sync": "/bare-sync", "job_status": f"/v1/jobs/{job['id']}"}
        # Targets take turns in short rounds, so a change in the machine's load hits all of them alike.
        samples: dict[str, tuple[list[float], int]] = {name: ([], 0) for name in targets}
        cpu = {name: [0.0, 0] for name in targets}  # server CPU seconds, requests (warm-up included)
        slice_s = args.seconds / args.rounds
        for _ in range(args.rounds):
            for name, path in targets.items():
                before = _cpu_seconds(server.pid)
                got, errors, sent = asyncio.run(
                    _closed_loop(base + path, headers, args.clients, slice_s, args.warmup))
                cpu[name][0] += _cpu_seconds(server.pid) - before
                cpu[name][1] += sent
                samples[name] = (samples[name][0] + got, samples[name][1] + errors)
        server_ms = _server_means(httpx.get(f"{base}/metrics", headers=headers).text)  # /metrics needs a key
        for name, path in targets.items():
            route = path.replace(job["id"], "{job_id}")
            print(json.dumps({"target": name, "path": path.replace(job["id"], "{id}"), "clients": args.clients,
                              "seconds": args.seconds, **_summary(*samples[name], args.seconds),
                              "server_mean_ms": server_ms.get(route),
                              "server_cpu_ms_per_request": round(1000 * cpu[name][0] / max(cpu[name][1], 1), 3)}),
                  flush=True)
    finally:
        server.terminate()
        server.wait(timeout=10)
        store.delete_all()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
