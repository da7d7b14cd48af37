"""The main job, end to end on one machine: Redis, the API, one worker, a range test and an auto-LR run.

`make demo` calls this. It starts Redis if none answers, starts the API (uvicorn) and one CPU worker
in the background (open mode, loopback only), submits a range test and a training job with
`max_lr: "auto"` on the embedded digits dataset, follows them to the end and prints the job URLs,
the classification report and the plot URLs. The API and worker keep running afterwards so the URLs
work; `make stop` (this script with --stop) ends them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RUN_DIR = ROOT / "runs" / "demo"
PID_FILE = RUN_DIR / "pids"
HOST, PORT = "127.0.0.1", int(os.environ.get("CLR_DEMO_PORT", "8000"))
BASE = f"http://{HOST}:{PORT}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("CLR_OPEN_MODE", "true")
    env.setdefault("CLR_ARTIFACT_DIR", str(RUN_DIR / "artifacts"))
    env.setdefault("CLR_DATA_DIR", str(RUN_DIR / "data"))
    env.setdefault("CLR_KEY_PREFIX", "clr-demo")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def _start(name: str, args: list[str]) -> int:
    log = open(RUN_DIR / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child process
    proc = subprocess.Popen(args, cwd=ROOT, env=_env(), stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc.pid


def stop() -> None:
    if not PID_FILE.exists():
        return
    for pid in PID_FILE.read_text().split():
        with contextlib.suppress(ProcessLookupError):
            os.killpg(int(pid), signal.SIGTERM)
    PID_FILE.unlink()
    print("stopped the demo API and worker")


def _wait_ready(client: httpx.Client, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if client.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    sys.exit(f"the API or worker did not become ready in {timeout:.0f} s; see {RUN_DIR}/*.log")


def _follow(client: httpx.Client, job: dict) -> dict:
    """Poll until the job ends, printing a line whenever its state, phase or progress decile changes."""
    shown = None
    while True:
        job = client.get(f"/v1/jobs/{job['id']}").raise_for_status().json()
        p = job.get("progress") or {}
        fraction = p.get("fraction") or 0
        line = (job["state"], p.get("phase", ""), int(10 * fraction))
        if line != shown:
            shown = line
            print(f"  {job['kind']:<10} {job['state']:<10} {p.get('phase', ''):<10} {100 * fraction:5.1f} %")
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stop", action="store_true", help="stop the API and worker a demo started")
    if parser.parse_args().stop:
        stop()
        return
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    stop()
    subprocess.run([str(ROOT / "scripts" / "redis.sh")], check=True)
    py = sys.executable
    pids = [
        _start("api", [py, "-m", "uvicorn", "service.main:app", "--host", HOST, "--port", str(PORT)]),
        _start("worker", [py, "-m", "worker"]),
    ]
    PID_FILE.write_text(" ".join(map(str, pids)))
    with httpx.Client(base_url=BASE, timeout=30) as client:
        _wait_ready(client)
        print(f"API at {BASE} (docs at {BASE}/docs); logs in {RUN_DIR}")
        # the digits-demo preset's own sweep (60 steps a decade from 1e-3), as the training job below runs it
        rt = client.post("/v1/jobs/range-test", json={"dataset": "digits", "model": "small_cnn", "batch_size": 64,
                                                      "start_lr": 1e-3, "augment": {"translate": 1, "flip": False}})
        rt = _follow(client, rt.raise_for_status().json())
        print(f"range test {BASE}/v1/jobs/{rt['id']}: {rt['state']}")
        if rt["state"] == "succeeded":
            rec = rt["result"].get("recommendation", {})
            print(f"  recommended base_lr {rec.get('base_lr')}, max_lr {rec.get('max_lr')} ({rec.get('rule')})")
            for warning in rt["result"].get("warnings", []):
                print(f"  warning: {warning}")
        train = client.post("/v1/jobs/train", json={"preset": "digits-demo"})
        train = _follow(client, train.raise_for_status().json())
        print(f"training {BASE}/v1/jobs/{train['id']}: {train['state']}")
        if train["state"] != "succeeded":
            sys.exit(f"training job {train['state']}: {train.get('error')}")
        print(client.get(f"/v1/jobs/{train['id']}/report", params={"format": "text"}).text)
        for job in (rt, train):
            for link in (job.get("links") or {}).get("plots", {}).values():
                print(f"  plot: {BASE}{link}")
        print(f"dashboard: {BASE}/ui/#/jobs/{train['id']}")
    print("the API and worker keep running; `make stop` ends them")


if __name__ == "__main__":
    main()
