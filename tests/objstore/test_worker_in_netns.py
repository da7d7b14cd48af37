"""A worker in a network namespace of its own, as on another machine: it reaches Redis and the object
store over a veth pair's address only.

The namespace (`ip netns`) has its own loopback, so the host's 127.0.0.1 services (the session's Redis,
any store started there) are out of the worker's reach; this test's Redis and SeaweedFS listen on the
host end of the veth pair and nowhere else. A dataset uploaded to the API (in this process, on the
host) trains on that worker and the API serves its report and plots. Needs root and `ip netns`
(skipped with the reason elsewhere).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jobs.settings import Settings
from jobs.store import JobStore
from service.main import create_app
from tests.helpers import FINAL, WorkerProcess
from tests.objectstore import SHAPES, ObjectStoreServer, shapes_archive
from tests.reliability.redis_server import RedisServer

pytestmark = pytest.mark.slow


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)


class Netns:
    """A namespace `name` joined to the host by a veth pair: host end `host_ip`, namespace end `ns_ip`."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)
        self.name, self.host_if, self.ns_if = f"clr-{tag}", f"clrh{tag}", f"clrn{tag}"
        subnet = secrets.randbelow(250) + 1  # a /30 of 10.213.<n>.0 per run: parallel sessions rarely meet
        self.host_ip, self.ns_ip = f"10.213.{subnet}.1", f"10.213.{subnet}.2"

    def create(self) -> str | None:
        """Set it up; returns why it could not be (then nothing is left behind), or None."""
        steps = [
            ("netns", "add", self.name),
            ("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if),
            ("link", "set", self.ns_if, "netns", self.name),
            ("addr", "add", f"{self.host_ip}/30", "dev", self.host_if),
            ("link", "set", self.host_if, "up"),
            ("-n", self.name, "addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if),
            ("-n", self.name, "link", "set", self.ns_if, "up"),
            ("-n", self.name, "link", "set", "lo", "up"),
        ]
        for step in steps:
            done = _ip(*step)
            if done.returncode != 0:
                self.delete()
                return f"`ip {' '.join(step)}` failed: {done.stderr.strip()}"
        return None

    def delete(self) -> None:
        _ip("netns", "delete", self.name)  # takes the namespace end, and with it the pair
        _ip("link", "delete", self.host_if)

    def wrap(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def can_connect(self, host: str, port: int) -> bool:
        """Whether a TCP connection from inside the namespace to host:port succeeds."""
        probe = "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2)"
        done = subprocess.run([*self.wrap(), sys.executable, "-c", probe, host, str(port)],
                              capture_output=True, timeout=30)
        return done.returncode == 0


@pytest.fixture
def netns() -> Iterator[Netns]:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`")
    space = Netns()
    if (why := space.create()) is not None:
        pytest.skip(f"no network namespace here: {why}")
    yield space
    space.delete()


def test_worker_in_its_own_network_namespace_trains_over_the_veth_only(
        netns: Netns, settings: Settings, tmp_path: Path) -> None:
    redis_server = RedisServer(tmp_path / "redis", host=netns.host_ip)
    store = ObjectStoreServer(tmp_path / "weed", host=netns.host_ip)
    redis_server.start()
    worker: WorkerProcess | None = None
    saved = {k: os.environ.get(k) for k in store.env()}
    try:
        store.start()
        os.environ.update(store.env())  # the in-process API's store client reads them
        # the namespace has its own loopback: the session's Redis is not there; the veth address is
        assert not netns.can_connect("127.0.0.1", int(settings.redis_url.rsplit(":", 1)[1].split("/")[0]))
        assert netns.can_connect(netns.host_ip, redis_server.port)
        assert netns.can_connect(netns.host_ip, store.port)

        api_dir, host_dir = tmp_path / "api", tmp_path / "worker-host"
        s3 = settings.model_copy(update={
            "redis_url": redis_server.url, "key_prefix": f"netns-{secrets.token_hex(3)}",
            "storage_url": f"s3://{store.bucket}/netns", "s3_endpoint_url": store.endpoint,
            "storage_timeout": 3.0, "storage_retry_seconds": 60.0,
            "artifact_dir": api_dir / "artifacts", "data_dir": api_dir / "data", "worker_dir": api_dir / "worker",
        })
        worker = WorkerProcess(s3, tmp_path / "worker.log", wrap=netns.wrap(), **store.env(),
                               CLR_STORAGE_URL=s3.storage_url, CLR_STORAGE_TIMEOUT="3",
                               CLR_ARTIFACT_DIR=str(host_dir / "artifacts"), CLR_DATA_DIR=str(host_dir / "data"),
                               CLR_WORKER_DIR=str(host_dir / "scratch"))
        worker.wait_ready(JobStore.from_settings(s3))

        with TestClient(create_app(s3)) as client:
            upload = client.post("/v1/datasets", params={"name": "shapes"}, content=shapes_archive(),
                                 headers={"Content-Type": "application/zip"})
            assert upload.status_code == 201, upload.text
            spec = {"dataset": upload.json()["id"], "model": "tiny_cnn", "device": "cpu", "epochs": 2,
                    "batch_size": 4, "policy": "triangular", "base_lr": 0.01, "max_lr": 0.1, "step_size": 1,
                    "augment": {"translate": 0, "flip": False}}
            job_id = client.post("/v1/jobs/train", json=spec).json()["id"]
            deadline = time.monotonic() + 240
            while (job := client.get(f"/v1/jobs/{job_id}").json())["state"] not in FINAL:
                assert time.monotonic() < deadline, f"job still {job['state']}:\n{worker.log_tail()}"
                time.sleep(0.3)
            assert job["state"] == "succeeded", f"{job['error']}\n{worker.log_tail()}"
            # downloaded over the veth (a redelivery under load finds it cached, so the worker's log says it)
            assert f"downloaded ({upload.json()['bytes']} bytes)" in worker.log_path.read_text(errors="replace")
            report = client.get(f"/v1/jobs/{job_id}/report")
            assert report.status_code == 200 and report.json()["classes"] == list(SHAPES)
            plot = client.get(f"/v1/jobs/{job_id}/plots/history.png")
            assert plot.status_code == 200 and plot.content.startswith(b"\x89PNG")
            assert not (api_dir / "artifacts" / job_id).exists()  # the API's disk has no run folder
        JobStore.from_settings(s3).delete_all()
    finally:
        if worker is not None:
            worker.stop()
        store.stop()
        redis_server.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
