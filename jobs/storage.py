"""Where artifacts, checkpoints and uploaded datasets live: a local folder, or an S3-compatible store.

One small interface, `ObjectStore`, with two implementations chosen by `CLR_STORAGE_URL`:

- unset: `LocalStore` over the folders used until now (`artifact_dir` for run folders, `data_dir` for
  uploads), so a single machine (and `make demo`) works exactly as before, with no server to run;
- `s3://bucket/prefix`: `S3Store` through boto3 (AWS S3, MinIO, SeaweedFS, Ceph), so the API and
  workers on other machines share nothing but Redis and the store.

Keys are relative, `/`-separated: `runs/<job_id>/<path in the run folder>` and
`datasets/<owner-hash>/<dataset_id>.<ext>`. Every failure to reach the store becomes
`StorageUnavailable` (API: 503 with the reason; worker: retry, then fail the job with it). Torch-free
and FastAPI-free.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlparse

from jobs.settings import Settings

log = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
RUNS = "runs"
DATASETS = "datasets"


class StorageUnavailable(Exception):
    """The object store could not be reached or answered with a server error; the message says which."""


def run_key(job_id: str, relative: str = "") -> str:
    """The key of a file in a job's run folder (or the folder's prefix when `relative` is empty)."""
    return f"{RUNS}/{job_id}/{relative}"


def _safe_key(key: str) -> str:
    """Refuse keys that could leave their prefix (`..`, absolute, empty parts)."""
    parts = key.split("/")
    if not key or any(p in ("..", ".", "") for p in parts) or "\\" in key:
        raise ValueError(f"bad object key {key!r}")
    return key


class ObjectStore(Protocol):
    """What the API and the worker ask of a store. `key`s are relative and `/`-separated."""

    remote: bool  # False for the local folder: callers may then keep writing in place

    def put_file(self, path: Path, key: str) -> None: ...
    def download_file(self, key: str, path: Path) -> None: ...
    def iter_chunks(self, key: str) -> Iterator[bytes]: ...
    def size(self, key: str) -> int | None: ...
    def list(self, prefix: str) -> list[str]: ...
    def delete_prefix(self, prefix: str) -> int: ...
    def delete(self, key: str) -> None: ...
    def presign(self, key: str, seconds: int) -> str | None: ...
    def check(self) -> None: ...


class LocalStore:
    """Keys as files under folders on this machine: `runs/...` under the artifact dir, the rest under
    the data dir (uploads keep their old place, `uploads/...`). The default; nothing changes for it."""

    remote = False

    def __init__(self, artifact_dir: Path, data_dir: Path) -> None:
        self.artifact_dir, self.data_dir = Path(artifact_dir), Path(data_dir)

    def path(self, key: str) -> Path:
        """The file a key names; never outside its root, even through a symlink."""
        head, _, rest = _safe_key(key).partition("/")
        root = (self.artifact_dir if head == RUNS else self.data_dir).resolve()
        path = (root / rest if head == RUNS else root / key).resolve()
        if not path.is_relative_to(root):
            raise ValueError(f"bad object key {key!r}")
        return path

    def put_file(self, path: Path, key: str) -> None:
        target = self.path(key)
        if target == Path(path).resolve():
            return
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, target)

    def download_file(self, key: str, path: Path) -> None:
        source = self.path(key)
        if not source.is_file():
            raise FileNotFoundError(key)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, path)

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        with self.path(key).open("rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                yield chunk

    def size(self, key: str) -> int | None:
        try:
            path = self.path(key)
            return path.stat().st_size if path.is_file() else None
        except (OSError, ValueError):
            return None

    def list(self, prefix: str) -> list[str]:
        root = self.path(prefix.rstrip("/"))
        if not root.is_dir():
            return []
        base = prefix.rstrip("/")
        return sorted(f"{base}/{p.relative_to(root).as_posix()}" for p in root.rglob("*") if p.is_file())

    def delete_prefix(self, prefix: str) -> int:
        root = self.path(prefix.rstrip("/"))
        if root.is_symlink() or not root.is_dir():
            return 0
        count = sum(1 for p in root.rglob("*") if p.is_file())
        shutil.rmtree(root)
        return count

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def presign(self, key: str, seconds: int) -> str | None:
        return None  # a local file has no URL of its own; the API serves it

    def check(self) -> None:
        return None


class S3Store:
    """An S3-compatible bucket under a key prefix, through boto3 (multipart uploads above 8 MiB)."""

    remote = True

    def __init__(self, client: Any, bucket: str, prefix: str = "") -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.exceptions import BotoCoreError, ClientError

        self.client, self.bucket, self.prefix = client, bucket, prefix.strip("/")
        self._transfer = TransferConfig(multipart_threshold=8 * 1024 * 1024, multipart_chunksize=8 * 1024 * 1024,
                                        max_concurrency=4)
        self._boto_errors: tuple[type[Exception], ...] = (BotoCoreError, ClientError)

    @classmethod
    def from_settings(cls, settings: Settings) -> S3Store:
        import boto3
        from botocore.config import Config

        url = urlparse(settings.storage_url)
        config = Config(connect_timeout=settings.storage_timeout, read_timeout=settings.storage_timeout,
                        retries={"mode": "standard", "max_attempts": 3},
                        s3={"addressing_style": "path"}, signature_version="s3v4")
        # A session of its own: boto3's default session resolves the AWS_* credentials once per process
        # and keeps them, so a second store (other credentials) would sign with the first one's.
        client = boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url or None, config=config)
        return cls(client, url.netloc, url.path)

    def _key(self, key: str) -> str:
        _safe_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def _unavailable(self, exc: Exception, what: str) -> StorageUnavailable:
        return StorageUnavailable(f"object store unavailable ({what}): {str(exc).splitlines()[0][:300]}")

    def _missing(self, exc: Exception) -> bool:
        code = str(getattr(exc, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("404", "NoSuchKey", "NotFound")

    def put_file(self, path: Path, key: str) -> None:
        try:
            self.client.upload_file(str(path), self.bucket, self._key(key), Config=self._transfer)
        except FileNotFoundError:
            raise
        except (self._boto_errors + (OSError,)) as exc:
            raise self._unavailable(exc, f"upload {key}") from exc

    def download_file(self, key: str, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        partial = Path(f"{path}.part")
        try:
            self.client.download_file(self.bucket, self._key(key), str(partial), Config=self._transfer)
        except self._boto_errors as exc:
            partial.unlink(missing_ok=True)
            if self._missing(exc):
                raise FileNotFoundError(key) from exc
            raise self._unavailable(exc, f"download {key}") from exc
        partial.replace(path)

    def iter_chunks(self, key: str) -> Iterator[bytes]:
        """Stream an object; the first chunk is fetched at once, so an unreachable store raises here
        (before a response has started), not halfway through a body."""
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
        except self._boto_errors as exc:
            if self._missing(exc):
                raise FileNotFoundError(key) from exc
            raise self._unavailable(exc, f"read {key}") from exc
        return self._chunks(body)

    def _chunks(self, body: Any) -> Iterator[bytes]:
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def size(self, key: str) -> int | None:
        try:
            return int(self.client.head_object(Bucket=self.bucket, Key=self._key(key))["ContentLength"])
        except self._boto_errors as exc:
            if self._missing(exc):
                return None
            raise self._unavailable(exc, f"head {key}") from exc

    def list(self, prefix: str) -> list[str]:
        full = self._key(prefix.rstrip("/")) + "/"
        cut = len(self.prefix) + 1 if self.prefix else 0
        try:
            pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full)
            return sorted(obj["Key"][cut:] for page in pages for obj in page.get("Contents", []))
        except self._boto_errors as exc:
            raise self._unavailable(exc, f"list {prefix}") from exc

    def delete_prefix(self, prefix: str) -> int:
        keys = self.list(prefix)
        try:
            for start in range(0, len(keys), 1000):
                batch = [{"Key": self._key(k)} for k in keys[start:start + 1000]]
                self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        except self._boto_errors as exc:
            raise self._unavailable(exc, f"delete {prefix}") from exc
        return len(keys)

    def delete(self, key: str) -> None:
        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except self._boto_errors as exc:
            raise self._unavailable(exc, f"delete {key}") from exc

    def presign(self, key: str, seconds: int) -> str | None:
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=seconds))

    def check(self) -> None:
        """Raise `StorageUnavailable` unless the bucket answers."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except self._boto_errors as exc:
            raise self._unavailable(exc, "bucket check") from exc


_opened: dict[int, tuple[Settings, ObjectStore]] = {}


def store_for(settings: Settings) -> ObjectStore:
    """`open_store(settings)`, built once per settings object (boto3 clients are thread-safe)."""
    entry = _opened.get(id(settings))
    if entry is None or entry[0] is not settings:
        entry = _opened[id(settings)] = (settings, open_store(settings))
    return entry[1]


def open_store(settings: Settings) -> ObjectStore:
    """The store `settings` name: S3 when `storage_url` is set, else the local folders."""
    if settings.storage_url:
        return S3Store.from_settings(settings)
    return LocalStore(settings.artifact_dir, settings.data_dir)
