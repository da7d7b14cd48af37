"""Uploaded datasets: streaming intake of an image-folder archive, its validation, and its record in Redis.

A tenant's archive is untrusted input that a worker will later open, so nothing of it is kept until
every member has been checked: the body streams into a temp file (never into memory) and is refused
the moment it passes the size limit or the key's remaining quota; then each member goes through
`clrcore.archives` (no `..`, absolute paths, links or device files) and PIL (a known image format
that decodes fully); then the layout is checked the way the loader will read it (train plus test or
val, at least two classes, the same classes in both, one image size). Only then is the archive
renamed into place and recorded. A refusal is an `UploadRefused` naming the problem and the member.

FastAPI-free on purpose (like `service/store.py`): the worker imports `DatasetStore` to turn a
dataset id into a path. Torch-free: PIL and the standard library only.

Key layout (under the configured prefix):

    {p}:dataset:{id}                 string: the JSON record
    {p}:datasets:{owner-hash}        set: the owner's dataset ids
    {p}:datasets:{owner-hash}:bytes  integer: bytes of the owner's archives (the quota's measure)

Files: `{data_dir}/uploads/{owner-hash}/{id}.{ext}`; temp files in `{data_dir}/uploads/.incoming/`
(the same file system, so the final move is an atomic rename).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import secrets
import string
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import redis
from PIL import Image, UnidentifiedImageError

from clrcore.archives import ArchiveError, iter_image_members
from clrcore.transforms import default_image_size, size_distribution

log = logging.getLogger(__name__)

DATASET_ID = re.compile(r"^ds_[a-z0-9]{8,32}$")  # the same shape clrcore.specs accepts
_ID_ALPHABET = string.ascii_lowercase + string.digits
ID_LENGTH = 16

UPLOADS_DIR = "uploads"
INCOMING_DIR = ".incoming"

# Content-Type -> file extension. The extension is what the loader (clrcore.archives) reads by.
ARCHIVE_TYPES: dict[str, str] = {
    "application/zip": "zip",
    "application/x-zip-compressed": "zip",
    "application/x-tar": "tar",
    "application/gzip": "tar.gz",
    "application/x-gzip": "tar.gz",
}
# Only plain raster formats: PIL's EPS plugin would run Ghostscript on a tenant's bytes.
IMAGE_FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")
MAX_IMAGE_PIXELS = 4096 * 4096  # the loader's per-image limit (clrcore.image_tree)
MAX_DECODED_BYTES = 32 * 2**30  # the loader's limit on a whole dataset once decoded (clrcore.image_tree)
GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}  # decoded as one channel by the loader
SPLITS = ("train", "test", "val")


class UploadRefused(Exception):
    """Why an upload was refused: an HTTP status, a stable problem code and a message naming the cause."""

    def __init__(self, status: int, problem: str, message: str) -> None:
        super().__init__(message)
        self.status, self.problem, self.message = status, problem, message


def owner_hash(owner: str) -> str:
    """A key name as a safe, fixed-length path component (names may hold any character)."""
    return hashlib.sha256(owner.encode()).hexdigest()[:16]


def new_dataset_id() -> str:
    return "ds_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))


def archive_ext(content_type: str | None) -> str:
    """The archive extension for a request's Content-Type (parameters ignored), or 415."""
    base = (content_type or "").split(";", 1)[0].strip().lower()
    ext = ARCHIVE_TYPES.get(base)
    if ext is None:
        raise UploadRefused(415, "unsupported_type",
                            f"Content-Type {base or '(none)'!r} is not an archive; send the archive as the body "
                            "with application/zip, application/x-tar or application/gzip (.tar.gz)")
    return ext


# ------------------------------------------------------------------------------------------ intake


async def write_stream(chunks: AsyncIterator[bytes], path: Path, limit: int, refusal: UploadRefused) -> int:
    """Copy the body to `path` chunk by chunk and return its size; raise `refusal` (the limit it names)
    the moment the byte count passes `limit`, without reading further. Memory holds one chunk at a time.

    Writes are synchronous: each chunk (about 64 KiB) lands in the page cache in microseconds, far less
    than a thread hop would cost.
    """
    written = 0
    with path.open("xb") as out:
        async for chunk in chunks:
            written += len(chunk)
            if written > limit:
                raise refusal
            out.write(chunk)
    if written == 0:
        raise UploadRefused(422, "empty", "the request body is empty; send the archive as the body")
    return written


_MAGIC = {"zip": (b"PK\x03\x04", b"PK\x05\x06"), "tar.gz": (b"\x1f\x8b",)}


def check_magic(path: Path, ext: str) -> None:
    """The bytes must be the declared kind: a zip named .tar.gz would be stored and later misread."""
    with path.open("rb") as handle:
        head = handle.read(512)
    ok = head[257:262] == b"ustar" if ext == "tar" else head.startswith(_MAGIC[ext])
    if not ok:
        raise UploadRefused(422, "bad_archive", f"the body is not a {ext} archive (its first bytes say otherwise)")


# ------------------------------------------------------------------------------------------ validation


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
    sizes: dict = field(default_factory=dict)  # transforms.size_distribution of the files
    grayscale_converted: int = 0  # grayscale files the loader will make RGB (a set of both modes)


def _inspect_image(where: str, data: bytes) -> tuple[tuple[int, int], bool, str]:
    """((width, height), grayscale?, format) of one member, after decoding it fully; refused otherwise."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size  # from the header: refuse a decompression bomb before decoding
            if width * height > MAX_IMAGE_PIXELS:
                raise UploadRefused(422, "image_too_large", f"{where}: {width}x{height} is over the "
                                    f"{MAX_IMAGE_PIXELS}-pixel limit for one image")
            image.load()
            return (width, height), image.mode in GRAY_MODES, image.format or "?"
    except UnidentifiedImageError:
        raise UploadRefused(422, "not_an_image", f"{where}: not an image (allowed formats: "
                            f"{', '.join(IMAGE_FORMATS)})") from None
    except Image.DecompressionBombError:
        raise UploadRefused(422, "image_too_large", f"{where}: too many pixels for one image") from None
    except UploadRefused:
        raise
    except Exception as err:  # decoders raise many types on corrupt data (OSError, struct.error, ...)
        raise UploadRefused(422, "unreadable_image", f"{where}: not a readable image ({err})") from None


def _archive_refusal(err: ArchiveError, max_files: int) -> UploadRefused:
    message = str(err)
    if message.startswith(f"more than {max_files} members"):
        return UploadRefused(422, "too_many_files", f"more than {max_files} files and folders in the archive "
                             "(the server's limit)")
    if "unreadable" in message:
        return UploadRefused(422, "bad_archive", message)
    return UploadRefused(422, "unsafe_member", message)


def inspect_archive(path: Path, *, max_files: int) -> ArchiveSummary:
    """Read every member once (no extraction) and check it the way the loader will read it.

    Runs in a worker thread: it decodes every image, which is CPU work.
    """
    counts: dict[str, dict[str, int]] = {}
    sizes: list[tuple[int, int]] = []
    gray_count = 0
    decoded = 0
    formats: set[str] = set()
    try:
        for split, cls, file_name, data in iter_image_members(path, max_members=max_files):
            where = f"{split}/{cls}/{file_name}"
            image_size, is_gray, fmt = _inspect_image(where, data)
            sizes.append(image_size)  # mixed sizes are fine: the loader resizes (clrcore/transforms.py)
            gray_count += is_gray
            decoded += image_size[0] * image_size[1] * (1 if is_gray else 3)
            if decoded > MAX_DECODED_BYTES:
                raise UploadRefused(422, "too_large_decoded", f"more than {MAX_DECODED_BYTES >> 30} GiB of "
                                    "pixels once decoded (the loader's limit)")
            formats.add(fmt)
            by_class = counts.setdefault(split, {})
            by_class[cls] = by_class.get(cls, 0) + 1
    except UploadRefused:
        raise
    except ArchiveError as err:
        raise _archive_refusal(err, max_files) from None
    except Exception as err:  # zipfile and zlib raise NotImplementedError, RuntimeError, zlib.error, ...
        log.info("unreadable archive %s: %r", path.name, err)
        raise UploadRefused(422, "bad_archive", f"unreadable archive ({type(err).__name__}: {err})") from None
    classes, held_out = _check_layout(counts)  # refuses an archive without images
    gray = gray_count == len(sizes)
    if len(set(sizes)) == 1:
        width, height = sizes[0]
    else:  # the size jobs train at unless their spec sets image_size
        width = height = default_image_size(sizes)
    return ArchiveSummary(classes=classes, held_out=held_out, counts=counts, width=width, height=height,
                          channels=1 if gray else 3, formats=formats, sizes=size_distribution(sizes),
                          grayscale_converted=0 if gray else gray_count)


def _check_layout(counts: dict[str, dict[str, int]]) -> tuple[list[str], str]:
    """(classes, held-out split name) if the splits are what the loader needs; refused otherwise."""
    if not counts:
        raise UploadRefused(422, "no_images", "no images laid out split/class/image (e.g. train/cat/1.png)")
    if "train" not in counts:
        raise UploadRefused(422, "no_train_split", f"no 'train' split (found: {', '.join(sorted(counts))})")
    held_out = "test" if "test" in counts else "val" if "val" in counts else None
    if held_out is None:
        raise UploadRefused(422, "no_test_split", "no 'test' or 'val' split next to 'train'")
    classes = sorted(counts["train"])
    if len(classes) < 2:
        raise UploadRefused(422, "too_few_classes", f"needs at least 2 classes in train, found {len(classes)}"
                            + (f" ({classes[0]!r})" if classes else ""))
    missing = [c for c in classes if c not in counts[held_out]]
    if missing:
        raise UploadRefused(422, "class_missing_from_test",
                            f"class {missing[0]!r} is in train but not in the {held_out} split")
    extra = sorted(c for c in counts[held_out] if c not in classes)
    if extra:
        raise UploadRefused(422, "class_missing_from_train",
                            f"class {extra[0]!r} is in the {held_out} split but not in train")
    return classes, held_out


# ------------------------------------------------------------------------------------------ records

_COMMIT_LUA = """
local used = tonumber(redis.call('GET', KEYS[3]) or '0')
local size = tonumber(ARGV[3])
if used + size > tonumber(ARGV[4]) then return {0, used} end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[1])
return {1, redis.call('INCRBY', KEYS[3], size)}
"""

_DELETE_LUA = """
if redis.call('DEL', KEYS[1]) == 0 then return 0 end
redis.call('SREM', KEYS[2], ARGV[1])
redis.call('DECRBY', KEYS[3], ARGV[2])
return 1
"""


class DatasetStore:
    """Dataset records and per-owner byte counts; commit and delete are atomic Lua scripts, so two
    uploads racing for the last of a quota cannot both win."""

    def __init__(self, client: redis.Redis, prefix: str, data_dir: Path) -> None:
        self.redis, self.prefix, self.data_dir = client, prefix, Path(data_dir)
        self._commit = client.register_script(_COMMIT_LUA)
        self._delete = client.register_script(_DELETE_LUA)

    def _keys(self, owner: str, dataset_id: str) -> list[str]:
        owned = f"{self.prefix}:datasets:{owner_hash(owner)}"
        return [f"{self.prefix}:dataset:{dataset_id}", owned, f"{owned}:bytes"]

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
        if not DATASET_ID.match(dataset_id):
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

    def commit(self, owner: str, name: str, temp: Path, ext: str, size: int, summary: ArchiveSummary,
               quota: int) -> dict:
        """Move the validated archive into place and record it, or refuse (413) if the quota was spent
        meanwhile by a concurrent upload; in that case the file is removed again."""
        dataset_id = new_dataset_id()
        relative = Path(UPLOADS_DIR) / owner_hash(owner) / f"{dataset_id}.{ext}"
        final = self.data_dir / relative
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(temp, final)
        record = {
            "id": dataset_id, "owner": owner, "name": name or dataset_id, "path": relative.as_posix(),
            "format": ext, "bytes": size, "created_at": time.time(), "validation": "ok",
            "classes": summary.classes, "held_out_split": summary.held_out, "counts": summary.counts,
            "width": summary.width, "height": summary.height, "channels": summary.channels,
            "image_formats": sorted(summary.formats), "sizes": summary.sizes,
            "grayscale_converted_to_rgb": summary.grayscale_converted,
        }
        try:
            ok, used = self._commit(keys=self._keys(owner, dataset_id),
                                    args=[dataset_id, json.dumps(record), size, quota])
        except BaseException:
            final.unlink(missing_ok=True)
            raise
        if not ok:
            final.unlink(missing_ok=True)
            raise UploadRefused(413, "quota_exceeded", f"storage quota exceeded: this key already stores "
                                f"{used} of {quota} bytes and the archive is {size} bytes")
        log.info("dataset %s stored for %s: %d bytes, %d classes", dataset_id, owner, size,
                 len(summary.classes))
        return record

    def delete(self, record: dict) -> None:
        """Remove the record (atomically with the byte count), then the file."""
        if self._delete(keys=self._keys(record["owner"], record["id"]), args=[record["id"], record["bytes"]]):
            path = self.data_dir / record["path"]
            try:
                path.unlink(missing_ok=True)
            except OSError as exc:  # the record is gone, so nothing points at the file any more
                log.warning("dataset %s: file %s not removed: %s", record["id"], path, exc)
            log.info("dataset %s deleted", record["id"])
