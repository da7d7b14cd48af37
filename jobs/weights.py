"""Uploaded pretrained weights' records in Redis, and where their safetensors files live.

The API writes a record once an upload passed validation (`service/weight_uploads.py`); a worker reads it
to turn a spec's `finetune.weights: wt_...` into a local file (`worker/weights.py`). The bytes count in
the same per-key quota as uploaded datasets (one counter, `jobs.datasets.bytes_key`), and commit and
delete are the same atomic scripts, so a weights upload and a dataset upload racing for the last of a
quota cannot both win. Torch-free and FastAPI-free.

Key layout (under the configured prefix):

    {p}:weights:{id}                  string: the JSON record
    {p}:weights-of:{owner-hash}       set: the owner's weights ids
    {p}:datasets:{owner-hash}:bytes   integer: the owner's stored bytes (datasets and weights)

Files: `{data_dir}/uploads/{owner-hash}/{id}.safetensors` (next to the owner's archives, so the
folder `dataset_path` may never reach covers them too); with an object store, the object
`weights/{owner-hash}/{id}.safetensors`, and the record keeps that `key` and the file's `sha256`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import string
import time
from dataclasses import dataclass, field
from pathlib import Path

import redis

from clrcore.specs import UPLOADED_WEIGHTS
from jobs.datasets import (
    COMMIT_LUA,
    DELETE_LUA,
    ID_LENGTH,
    UPLOADS_DIR,
    QuotaExceeded,
    bytes_key,
    file_sha256,
    owner_hash,
)
from jobs.pending_deletes import PendingDeletes, delete_or_defer
from jobs.storage import ObjectStore

log = logging.getLogger(__name__)

WEIGHTS = "weights"  # the object store's key prefix
EXT = "safetensors"


def new_weights_id() -> str:
    return "wt_" + "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(ID_LENGTH))


@dataclass
class WeightsSummary:
    """What validation learnt about a file: enough for the record and for GET."""

    architecture: str
    tensors: int
    parameters: int  # elements over all tensors
    dtypes: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # tensors of another shape the loader will not load


class WeightStore:
    """Weights records and the owner's byte count (shared with datasets)."""

    def __init__(self, client: redis.Redis, prefix: str, data_dir: Path, objects: ObjectStore | None = None) -> None:
        self.redis, self.prefix, self.data_dir = client, prefix, Path(data_dir)
        self.objects = objects if objects is not None and objects.remote else None  # None: local folder
        self.pending_deletes = PendingDeletes(client, prefix)
        self._commit = client.register_script(COMMIT_LUA)
        self._delete = client.register_script(DELETE_LUA)

    def _keys(self, owner: str, weights_id: str) -> list[str]:
        """The datasets' scripts' keys: record, owner's set, the shared byte count, the shared
        reservations of uploads in progress, and the weights' own upload-time index."""
        return [f"{self.prefix}:weights:{weights_id}", f"{self.prefix}:weights-of:{owner_hash(owner)}",
                bytes_key(self.prefix, owner), f"{self.prefix}:datasets:{owner_hash(owner)}:reserved",
                f"{self.prefix}:weights:uploaded"]

    def get(self, weights_id: str) -> dict | None:
        if not UPLOADED_WEIGHTS.match(weights_id):
            return None
        raw = self.redis.get(f"{self.prefix}:weights:{weights_id}")
        return json.loads(raw) if raw else None

    def owned(self, owner: str, weights_id: str) -> dict | None:
        """The record if it exists and belongs to `owner`; None otherwise (another key's included)."""
        record = self.get(weights_id)
        return record if record is not None and record["owner"] == owner else None

    def list(self, owner: str) -> list[dict]:
        """The owner's weights, newest first."""
        ids = sorted(self.redis.smembers(self._keys(owner, "")[1]))
        raws = self.redis.mget([f"{self.prefix}:weights:{i}" for i in ids]) if ids else []
        return sorted((json.loads(r) for r in raws if r), key=lambda r: r["created_at"], reverse=True)

    def commit(self, owner: str, name: str, temp: Path, size: int, summary: WeightsSummary, quota: int,
               upload_id: str = "") -> dict:
        """Move the validated file into place (or the store) and record it; `QuotaExceeded` (the file
        removed again) when a concurrent upload spent the quota meanwhile."""
        weights_id = new_weights_id()
        record = {
            "id": weights_id, "owner": owner, "name": name or weights_id, "architecture": summary.architecture,
            "format": EXT, "bytes": size, "created_at": time.time(), "validation": "ok",
            "tensors": summary.tensors, "parameters": summary.parameters, "dtypes": summary.dtypes,
            "replaced": summary.replaced,
        }
        if self.objects is not None:
            key = f"{WEIGHTS}/{owner_hash(owner)}/{weights_id}.{EXT}"
            record["key"], record["sha256"] = key, file_sha256(temp)
            self.objects.put_file(temp, key)

            def undo() -> None:
                assert self.objects is not None
                delete_or_defer(self.objects, self.pending_deletes, key)
        else:
            relative = Path(UPLOADS_DIR) / owner_hash(owner) / f"{weights_id}.{EXT}"
            final = self.data_dir / relative
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(temp, final)
            record["path"] = relative.as_posix()

            def undo() -> None:
                final.unlink(missing_ok=True)
        try:
            ok, used = self._commit(keys=self._keys(owner, weights_id),
                                    args=[weights_id, json.dumps(record), size, quota, upload_id,
                                          repr(time.time())])
        except BaseException:
            undo()
            raise
        if not ok:
            undo()
            raise QuotaExceeded(used, quota, size)
        log.info("weights %s (%s) stored for %s: %d bytes", weights_id, summary.architecture, owner, size)
        return record

    def delete(self, record: dict) -> None:
        """Remove the record (atomically with the byte count), then the file or the object; an object
        the store cannot delete now is left to the sweeper (nothing lists it any more)."""
        keys = self._keys(record["owner"], record["id"])
        if not self._delete(keys=[*keys[:3], keys[4]], args=[record["id"]]):
            return
        if "key" in record:
            if self.objects is None:
                log.warning("weights %s: object %s stays: no object store configured", record["id"], record["key"])
            else:
                delete_or_defer(self.objects, self.pending_deletes, record["key"])
        else:
            try:
                (self.data_dir / record["path"]).unlink(missing_ok=True)
            except OSError as exc:
                log.warning("weights %s: file not removed: %s", record["id"], exc)
        log.info("weights %s deleted", record["id"])
