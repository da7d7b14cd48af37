"""A private `redis-server` (append-only file on) that a test or script may stop and restart at will.

The shared Redis on 6379 is never touched: faults are played on a server of our own, on a free port,
with its data in a temporary folder, as docker-compose runs it (AOF on, noeviction).
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """`start()`, `stop()` (SHUTDOWN, as a restart does: the AOF is flushed) and `restart()` on one port."""

    def __init__(self, data_dir: Path, port: int | None = None, binary: str = "redis-server",
                 host: str = "127.0.0.1") -> None:
        if shutil.which(binary) is None:
            raise RuntimeError(f"{binary} is not installed")
        self.binary = binary
        self.data_dir = data_dir
        self.host, self.port = host, port or free_port()
        self.url = f"redis://{host}:{self.port}/0"
        self.proc: subprocess.Popen | None = None
        data_dir.mkdir(parents=True, exist_ok=True)

    def start(self) -> None:
        command = [self.binary, "--port", str(self.port), "--bind", self.host, "--appendonly", "yes",
                   "--appendfsync", "everysec", "--save", "", "--dir", str(self.data_dir),
                   "--maxmemory-policy", "noeviction", "--daemonize", "no",
                   # bound to one non-loopback address (a veth pair's host end): no password, so say so
                   "--protected-mode", "yes" if self.host == "127.0.0.1" else "no"]
        self.proc = subprocess.Popen(command, stdout=(self.data_dir / "redis.log").open("ab"),
                                     stderr=subprocess.STDOUT)
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                if client.ping():
                    return
            except redis.RedisError:  # refused, or BusyLoadingError while it replays the AOF
                time.sleep(0.05)
        raise TimeoutError(f"redis-server on {self.port} did not answer")

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(redis.RedisError):  # SHUTDOWN closes the connection: that is its answer
            redis.Redis(host=self.host, port=self.port, socket_connect_timeout=1).shutdown()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        time.sleep(down_for)
        self.start()
