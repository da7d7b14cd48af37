"""Uploaded datasets' records in Redis, and where their archives live under the data directory.

The API writes them once an upload passed validation (`service/uploads.py`); a worker reads them to
turn a spec's `dataset: ds_...` into the archive's path (`worker/datasets.py`). Torch-free and
FastAPI-free, like the rest of `jobs`.

Key layout (under the configured prefix):

    {p}:dataset:{id}                 string: the JSON record
    {p}:datasets:{owner-hash}        set: the owner's dataset ids
    {p}:datasets:{owner-hash}:bytes  integer: bytes of the owner's archives and their decode caches,
                                     and of its uploaded weights (`jobs.weights`): the quota's measure
    {p}:datasets:{owner-hash}:reserved  hash: upload id -> "bytes:expires_at", uploads in progress
    {p}:datasets:last_used           sorted set: dataset ids by upload or last submitted job naming them
                                     (retention removes those unused for CLR_RETENTION_DAYS)

Files: `{data_dir}/uploads/{owner-hash}/{id}.{ext}`; temp files in `{data_dir}/uploads/.incoming/`
(the same file system, so the final move is an atomic rename). With an object store
(`CLR_STORAGE_URL`), the validated archive is uploaded to `datasets/{owner-hash}/{id}.{ext}` before
the record exists, and the record keeps that `key` and the archive's `sha256` (the workers' cache key).
"""

from __future__ import annotations

import builtins
import hashlib
import json
import logging
import os
import secrets
import string
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis

from clrcore.cache_names import CACHE_DIR_NAME, cache_files
from clrcore.specs import UPLOADED_DATASET
from jobs.pending_deletes import PendingDeletes, delete_or_defer
from jobs.states import JobState
from jobs.storage import DATASETS, ObjectStore
from jobs.store import JobStore

log = logging.getLogger(__name__)

_ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 16

UPLOADS_DIR = "uploads"
DEFAULT_CACHE = "default"  # charge_cache's tag for the decode cache at the default training size
INCOMING_DIR = ".incoming"


class QuotaExceeded(Exception):
    """The owner's stored archives plus this one would pass the quota (API: 413 `quota_exceeded`)."""

    def __init__(self, used: int, quota: int, size: int, cache_bytes: int = 0) -> None:
        super().__init__(f"storage quota exceeded: this key already stores {used} of {quota} bytes and the "
                         f"archive is {size} bytes (plus {cache_bytes} once decoded and cached)")
        self.used, self.quota, self.size = used, quota, size


def owner_hash(owner: str) -> str:
    """A key name as a safe, fixed-length path component (names may hold any character)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def bytes_key(prefix: str, owner: str) -> str:
    """The owner's stored bytes (the upload quota's measure), shared by datasets and weights."""
    return f"{prefix}:datasets:{owner_hash(owner)}:bytes"


def new_dataset_id() -> str:
    return "ds_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


@dataclass
class ArchiveSummary:
    """What validation learnt about an archive: enough for the record and for GET."""

    classes: list[str]
    held_out: str  # "test" or "val": the split the loader evaluates on
    counts: dict[str, dict[str, int]]  # split -> class -> images
    width: int
    height: int
    channels: int
    formats: set[str] = field(default_factory=set)
    cache_bytes: int = 0  # the worker's decode cache of this archive (uncompressed arrays): quota counts it
    sizes: dict = field(default_factory=dict)  # transforms.size_distribution of the files
    grayscale_converted: int = 0  # grayscale files the loader will make RGB (a set of both modes)
    streamed: bool = False  # a worker decodes it to memmapped files on disk (CLR_MEMMAP_MIN_BYTES), not memory


# Uploads in progress reserve their bytes (`reserve`), so parallel uploads cannot together write more
# than the quota to disk (or the store) before their commits. Each reservation is `bytes:expires_at`
# under the upload's id in the owner's `reserved` hash; an expired one (an API that died mid-upload) is
# dropped by the next script that sums them.
_OTHERS_RESERVED = """
local function reserved_by_others(hash, me, now)
  local sum, flat = 0, redis.call('HGETALL', hash)
  for i = 1, #flat, 2 do
    if flat[i] ~= me then
      local bytes, expires = string.match(flat[i + 1], '^(%d+):([%d.]+)$')
      if not bytes or tonumber(expires) < now then redis.call('HDEL', hash, flat[i])
      else sum = sum + tonumber(bytes) end
    end
  end
  return sum
end
"""

# KEYS: record, owner's set, owner's bytes, owner's reservations, last-used index. ARGV: id, record JSON,
# bytes charged, quota, upload id (its reservation is replaced by the charge), now.
COMMIT_LUA = _OTHERS_RESERVED + """
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
local others = reserved_by_others(KEYS[4], ARGV[5], tonumber(ARGV[6]))
local size = tonumber(ARGV[3])
if used + others + size > tonumber(ARGV[4]) then return {0, used + others} end
redis.call('HDEL', KEYS[4], ARGV[5])
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('ZADD', KEYS[5], ARGV[6], ARGV[1])
return {1, redis.call('INCRBY', KEYS[3], size)}
"""

# KEYS: owner's bytes, owner's reservations. ARGV: upload id, bytes wanted in all, quota, now, ttl.
# Returns {1, bytes left} when the upload may hold that many bytes, {0, bytes left} otherwise.
_RESERVE_LUA = _OTHERS_RESERVED + """
local now = tonumber(ARGV[4])
local taken = tonumber(redis.call('GET', KEYS[1]) or '0') + reserved_by_others(KEYS[2], ARGV[1], now)
local want = tonumber(ARGV[2])
if taken + want > tonumber(ARGV[3]) then return {0, tonumber(ARGV[3]) - taken} end
redis.call('HSET', KEYS[2], ARGV[1], string.format('%d:%.3f', want, now + tonumber(ARGV[5])))
return {1, tonumber(ARGV[3]) - taken - want}
"""

RESERVATION_TTL_S = 3600  # as long as an abandoned temp file lives (`sweep_incoming`); renewed by each step


# KEYS: record, owner's set, owner's bytes, last-used index. ARGV: id. The charge given back is what the
# record says, read here: a decode cache charged since the caller read the record is included.
DELETE_LUA = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local record = cjson.decode(raw)
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('DECRBY', KEYS[3], (tonumber(record['bytes']) or 0) + (tonumber(record['cache_bytes']) or 0))
return 1
"""


class DatasetStore:
    """Dataset records and per-owner byte counts; commit and delete are atomic Lua scripts, so two
    uploads racing for the last of a quota cannot both win."""

    def __init__(self, client: redis.Redis, prefix: str, data_dir: Path, objects: ObjectStore | None = None) -> None:
        self.redis, self.prefix, self.data_dir = client, prefix, Path(data_dir)
        self.objects = objects if objects is not None and objects.remote else None  # None: local folder
        self.pending_deletes = PendingDeletes(client, prefix)
        self._commit = client.register_script(COMMIT_LUA)
        self._reserve = client.register_script(_RESERVE_LUA)
        self._delete = client.register_script(DELETE_LUA)

    def _keys(self, owner: str, dataset_id: str) -> list[str]:
        owned = f"{self.prefix}:datasets:{owner_hash(owner)}"
        return [f"{self.prefix}:dataset:{dataset_id}", owned, bytes_key(self.prefix, owner), f"{owned}:reserved",
                self._last_used]

    @property
    def _last_used(self) -> str:
        """Sorted set: every uploaded dataset by when it was uploaded or last named by a submitted job."""
        return f"{self.prefix}:datasets:last_used"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / UPLOADS_DIR

    def incoming_path(self, ext: str) -> Path:
        """A fresh temp file name next to the final folders (same file system: the move is a rename)."""
        incoming = self.uploads_dir / INCOMING_DIR
        incoming.mkdir(parents=True, exist_ok=True)
        return incoming / f"{uuid.uuid4().hex}.{ext}"

    def sweep_incoming(self, older_than: float = 3600.0) -> int:
        """Remove temp files an API process left behind when it died mid-upload; returns how many.

        Only files untouched for `older_than` seconds go: a live upload (this or another API process)
        writes its temp file continuously, so it is always younger than that.
        """
        incoming = self.uploads_dir / INCOMING_DIR
        cutoff = time.time() - older_than
        removed = 0
        for path in incoming.glob("*") if incoming.is_dir() else ():
            try:
                if path.is_file() and path.stat().st_mtime < cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        if removed:
            log.info("removed %d abandoned upload temp files from %s", removed, incoming)
        return removed

    def get(self, dataset_id: str) -> dict | None:
        if not UPLOADED_DATASET.match(dataset_id):
            return None
        raw = self.redis.get(f"{self.prefix}:dataset:{dataset_id}")
        return json.loads(raw) if raw else None

    def owned(self, owner: str, dataset_id: str) -> dict | None:
        """The record if it exists and belongs to `owner`; None otherwise (another key's included)."""
        record = self.get(dataset_id)
        return record if record is not None and record["owner"] == owner else None

    def list(self, owner: str) -> list[dict]:
        """The owner's datasets, newest first."""
        ids = sorted(self.redis.smembers(self._keys(owner, "")[1]))
        raws = self.redis.mget([f"{self.prefix}:dataset:{i}" for i in ids]) if ids else []
        records = [json.loads(r) for r in raws if r]
        return sorted(records, key=lambda r: r["created_at"], reverse=True)

    def bytes_used(self, owner: str) -> int:
        return int(self.redis.get(self._keys(owner, "")[2]) or 0)

    def reserve(self, owner: str, upload_id: str, total: int, quota: int) -> tuple[bool, int]:
        """Let upload `upload_id` hold `total` bytes in all (its earlier reservation is replaced), if the
        owner's stored bytes plus every other upload's reservation leave room; returns (granted, bytes
        left for this upload beyond `total`, or short of it when refused). Atomic, so N uploads started
        at once cannot together write more than the quota before their commits."""
        ok, left = self._reserve(keys=self._keys(owner, "")[2:4], args=[upload_id, total, quota, repr(time.time()),
                                                                      RESERVATION_TTL_S])
        return bool(ok), int(left)

    def release(self, owner: str, upload_id: str) -> None:
        """Give an upload's reservation back (it failed, or its commit already turned it into a charge)."""
        self.redis.hdel(self._keys(owner, "")[3], upload_id)

    def touch(self, dataset_id: str) -> None:
        """A job was submitted naming the dataset: its retention period starts again."""
        self.redis.zadd(self._last_used, {dataset_id: time.time()}, xx=True)

    def expire_unused(self, jobs: JobStore, older_than: float, limit: int = 100) -> builtins.list[str]:
        """Delete datasets neither uploaded nor named by a submitted job for `older_than` seconds (the
        retention period), archive and caches with them; one a job not yet finished names is kept (its
        clock starts again). Several sweepers may race: a dataset already gone is skipped."""
        removed = []
        cutoff = time.time() - older_than
        for dataset_id in self.redis.zrangebyscore(self._last_used, "-inf", f"({cutoff}", start=0, num=limit):
            record = self.get(dataset_id)
            if record is None:
                self.redis.zrem(self._last_used, dataset_id)
            elif job_naming(jobs, record["owner"], dataset_id) is not None:
                self.touch(dataset_id)
            else:
                self.delete(record)
                removed.append(dataset_id)
        return removed

    def commit(self, owner: str, name: str, temp: Path, ext: str, size: int, summary: ArchiveSummary,
               quota: int, upload_id: str = "") -> dict:
        """Move the validated archive into place and record it, or refuse (413) if the quota was spent
        meanwhile by a concurrent upload (`QuotaExceeded`); in that case the file is removed again.
        The upload's reservation (`upload_id`) becomes the charge in the same atomic step."""
        dataset_id = new_dataset_id()
        if self.objects is not None:
            return self._commit_to_store(owner, name, dataset_id, temp, ext, size, summary, quota, upload_id)
        relative = Path(UPLOADS_DIR) / owner_hash(owner) / f"{dataset_id}.{ext}"
        final = self.data_dir / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        record = _record(dataset_id, owner, name, relative.as_posix(), ext, size, summary)
        charged = size + summary.cache_bytes
        try:
            ok, used = self._commit(keys=self._keys(owner, dataset_id),
                                    args=[dataset_id, json.dumps(record), charged, quota, upload_id, repr(time.time())])
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        if not ok:
            final.unlink(missing_ok=True)
            raise QuotaExceeded(used, quota, size, summary.cache_bytes)
        log.info("dataset %s stored for %s: %d bytes, %d classes", dataset_id, owner, size,
                 len(summary.classes))
        return record

    def _commit_to_store(self, owner: str, name: str, dataset_id: str, temp: Path, ext: str, size: int,
                         summary: ArchiveSummary, quota: int, upload_id: str) -> dict:
        """Upload the validated archive (multipart), then record it: the dataset is listed only once
        its object exists. `StorageUnavailable` leaves no record (API: 503)."""
        assert self.objects is not None
        key = f"{DATASETS}/{owner_hash(owner)}/{dataset_id}.{ext}"
        record = _record(dataset_id, owner, name, key, ext, size, summary)
        record["key"], record["sha256"] = key, file_sha256(temp)
        self.objects.put_file(temp, key)
        try:
            ok, used = self._commit(keys=self._keys(owner, dataset_id),
                                    args=[dataset_id, json.dumps(record), size + summary.cache_bytes, quota,
                                          upload_id, repr(time.time())])
        except BaseException:
            delete_or_defer(self.objects, self.pending_deletes, key)
            raise
        if not ok:
            delete_or_defer(self.objects, self.pending_deletes, key)
            raise QuotaExceeded(used, quota, size, summary.cache_bytes)
        log.info("dataset %s stored for %s in the object store: %d bytes", dataset_id, owner, size)
        return record

    def charge_cache(self, dataset_id: str, size_tag: str, nbytes: int) -> int:
        """Charge the owner's quota for the real bytes of a decode cache a worker wrote: at a job's
        `image_size` (`size_tag`, "128px") or at the default size (`DEFAULT_CACHE`, which the upload
        charged as an estimate, now replaced by what was written). Returns the bytes added (0 when
        already charged at that much; negative when the estimate was high). The record's `cache_bytes`
        moves with it, so delete gives it back. Optimistic: WATCH the record, retry if another charge
        or a delete changed it meanwhile."""

        def charge(pipe: redis.client.Pipeline) -> int:
            raw = pipe.get(f"{self.prefix}:dataset:{dataset_id}")
            if not raw:
                return 0  # deleted meanwhile: its caches went with it
            record = json.loads(raw)
            extra = record.setdefault("extra_caches", {})
            if size_tag == DEFAULT_CACHE:
                charged = record.get("default_cache_bytes")
                if charged is None:  # still the upload's estimate: what is not a sized cache's
                    charged = int(record.get("cache_bytes", 0)) - sum(int(v) for v in extra.values())
                delta = nbytes - int(charged)
                record["default_cache_bytes"] = nbytes
            else:
                delta = nbytes - int(extra.get(size_tag, 0))
                extra[size_tag] = nbytes
            if delta == 0:
                return 0
            record["cache_bytes"] = record.get("cache_bytes", 0) + delta
            pipe.multi()
            pipe.set(f"{self.prefix}:dataset:{dataset_id}", json.dumps(record))
            pipe.incrby(bytes_key(self.prefix, record["owner"]), delta)
            return delta

        return int(self.redis.transaction(charge, f"{self.prefix}:dataset:{dataset_id}", value_from_callable=True))

    def delete(self, record: dict) -> None:
        """Remove the record (atomically with the byte count), then the file and its decode caches, or
        the object; an object the store cannot delete now is left to the sweeper (nothing lists it)."""
        keys = self._keys(record["owner"], record["id"])
        if not self._delete(keys=[*keys[:3], self._last_used], args=[record["id"]]):
            return
        if "key" in record:
            if self.objects is None:
                log.warning("dataset %s: its object %s stays: no object store configured", record["id"],
                            record["key"])
            else:
                delete_or_defer(self.objects, self.pending_deletes, record["key"])
        else:
            path = self.data_dir / record["path"]
            # The worker loads an upload as `imagefolder` from this path, caching under data_dir/.cache.
            for file in [path, *cache_files(self.data_dir / CACHE_DIR_NAME, "imagefolder", path)]:
                try:
                    file.unlink(missing_ok=True)
                except OSError as exc:  # the record is gone, so nothing points at the file any more
                    log.warning("dataset %s: file %s not removed: %s", record["id"], file.name, exc)
        log.info("dataset %s deleted", record["id"])


def in_flight_job(jobs: JobStore, owner: str, names: Callable[[dict], bool]) -> dict | None:
    """A not yet final job of `owner` whose spec `names` says yes to, if any (the in-flight sets are small)."""
    for state in (JobState.QUEUED, JobState.RUNNING, JobState.CANCELLING):
        for job_id in sorted(jobs.redis.smembers(jobs.keys.state(state.value))):
            record = jobs.records.get(job_id)
            if record and record["owner"] == owner and names(record["spec"] or {}):
                return record
    return None


def job_naming(jobs: JobStore, owner: str, dataset_id: str) -> dict | None:
    """A not yet final job of `owner` whose spec names the dataset, if any."""
    return in_flight_job(jobs, owner, lambda spec: spec.get("dataset") == dataset_id)


def file_sha256(path: Path) -> str:
    """The archive's content hash: a worker's cache key, so one archive is fetched once per worker."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1024 * 1024):
            digest.update(chunk)
    return digest.hexdigest()


def _record(dataset_id: str, owner: str, name: str, path: str, ext: str, size: int,
            summary: ArchiveSummary) -> dict:
    return {
        "id": dataset_id, "owner": owner, "name": name or dataset_id, "path": path,
        "format": ext, "bytes": size, "created_at": time.time(), "validation": "ok",
        "classes": summary.classes, "held_out_split": summary.held_out, "counts": summary.counts,
        "width": summary.width, "height": summary.height, "channels": summary.channels,
        "image_formats": sorted(summary.formats), "cache_bytes": summary.cache_bytes,
        "sizes": summary.sizes, "grayscale_converted_to_rgb": summary.grayscale_converted,
        "extra_caches": {},  # size tag ("128px") -> bytes of a decode cache a job's image_size added
    }
