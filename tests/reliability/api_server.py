"""A real uvicorn API subprocess on a free port, and a small SSE reader, for restart and load runs."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from jobs.settings import Settings
from tests.helpers import ROOT, settings_env
from tests.reliability.redis_server import free_port

START_TIMEOUT_S = 30.0


class ApiServer:
    """`python -m uvicorn service.main:app` with the given settings (as environment variables)."""

    def __init__(self, settings: Settings, log_path: Path, port: int | None = None, *, entry_point: bool = False,
                 **env: str) -> None:
        """`entry_point`: run `python -m service.main` instead (the image's command: the settings' HTTP
        limits and head deadline, our access log at INFO)."""
        self.settings, self.log_path, self.env, self.entry_point = settings, log_path, env, entry_point
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1",
                   "--port", str(self.port), "--no-access-log", "--log-level", "warning"]
        if self.entry_point:
            command = [sys.executable, "-m", "service.main"]
        env = settings_env(self.settings, CLR_API_KEYS=self.settings.api_keys, CLR_HTTP_PORT=str(self.port),
                           CLR_DEFAULT_QUEUE=self.settings.default_queue,
                           CLR_RATE_LIMIT_PER_MINUTE=str(self.settings.rate_limit_per_minute), **self.env)
        with self.log_path.open("ab") as log:  # the server keeps its own copy of the descriptor
            self.proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"API exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise TimeoutError("API did not start")

    def kill(self) -> None:
        """SIGKILL: no graceful shutdown; open streams break mid-way."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def sse_events(response: httpx.Response) -> Iterator[tuple[str | None, str, str]]:
    """(id, event, data) of each event in a streaming response; comments (pings) are skipped."""
    event_id, name, data = None, "message", []
    for line in response.iter_lines():
        if line == "":
            if data:
                yield event_id, name, "\n".join(data)
            event_id, name, data = None, "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "id":
                event_id = value
            elif field == "event":
                name = value
            elif field == "data":
                data.append(value)
