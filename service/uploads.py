"""Uploaded datasets: streaming intake of an image-folder archive, its validation, and its record in Redis.

A tenant's archive is untrusted input that a worker will later open, so nothing of it is kept until
every member has been checked: the body streams into a temp file (never into memory) and is refused
the moment it passes the size limit or the key's remaining quota; then each member goes through
`clrcore.archives` (no `..`, absolute paths, links or device files) and PIL (a known image format
that decodes fully); then the layout is checked the way the loader will read it (train plus test or
val, at least two classes, the same classes in both; mixed sizes are fine). Only then is the archive
renamed into place and recorded. A refusal is an `UploadRefused` naming the problem and the member.

The records (and where archives live) are `jobs.datasets`, which the workers read too. The image
limits are the loader's own (`clrcore.image_tree`), so an upload passes exactly when a job could read it.
Torch-free: PIL and the standard library only.

`upload_errors` is the submit-time check of a job spec that names an uploaded dataset.
"""

from __future__ import annotations

import errno
import io
import logging
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
from PIL import Image, UnidentifiedImageError

from clrcore.archives import MAX_RATIO, ArchiveError, iter_image_members
from clrcore.capped_reader import ReadStopped, over_ratio
from clrcore.dataset_paths import dataset_path_problem
from clrcore.image_stream import image_decoded_bytes, streams
from clrcore.image_tree import GRAY_MODES, KEEP_SHORTER_SIDE, MAX_DECODED_BYTES, MAX_IMAGE_PIXELS
from clrcore.specs import UPLOADED_DATASET, RangeTestSpec, TrainSpec
from clrcore.transforms import default_image_size, size_distribution, stored_size
from jobs.datasets import UPLOADS_DIR, ArchiveSummary, DatasetStore
from jobs.settings import Settings
from jobs.store import JobStore
from service.errors import field_error

log = logging.getLogger(__name__)

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
IMAGE_RATIO_FLOOR = 2**20  # images decoding to less than this are not judged by their compression ratio
SPLITS = ("train", "test", "val")


class UploadRefused(Exception):
    """Why an upload was refused: an HTTP status, a stable problem code and a message naming the cause."""

    def __init__(self, status: int, problem: str, message: str) -> None:
        super().__init__(message)
        self.status, self.problem, self.message = status, problem, message


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


RESERVE_STEP = 8 * 1024 * 1024  # a body of unknown length reserves quota this far ahead of what it wrote


def upload_limit(quota: int, used: int, max_upload_bytes: int, what: str) -> tuple[int, UploadRefused]:
    """The most bytes this upload may send and the refusal past it: the key's room left in its quota, or
    the per-upload cap, whichever is smaller (datasets and weights share both)."""
    left = quota - used
    if left < max_upload_bytes:
        return left, UploadRefused(413, "quota_exceeded", f"storage quota exceeded: this key has {max(left, 0)} "
                                   f"of its {quota} bytes left (delete a dataset or weights first)")
    return max_upload_bytes, UploadRefused(413, "too_large",
                                           f"the {what} is over the {max_upload_bytes}-byte upload limit")


class QuotaReservation:
    """An upload's claim on its key's quota while it streams: datasets and weights share one count.

    Reserved before the first byte is written, so parallel uploads cannot together pass the quota on
    disk: a declared length whole, a chunked body `RESERVE_STEP` ahead of what it wrote. The commit
    turns the reservation into the charge; `release` gives back what was not committed (a no-op after a
    commit; a reservation an API process could not release expires by itself).
    """

    def __init__(self, uploads: DatasetStore, owner: str, quota: int, what: str) -> None:
        self.uploads, self.owner, self.quota, self.what = uploads, owner, quota, what
        self.upload_id = uuid.uuid4().hex
        self.reserved = 0

    async def reserve(self, total: int) -> None:
        """Hold `total` bytes in all for this upload; `UploadRefused` (413) when the quota has no room."""
        granted, room = await anyio.to_thread.run_sync(self.uploads.reserve, self.owner, self.upload_id,
                                                       total, self.quota)
        if not granted:
            raise UploadRefused(413, "quota_exceeded", f"storage quota exceeded: this key's stored files and "
                                f"its uploads in progress leave {max(room, 0)} of its {self.quota} bytes for "
                                f"this {self.what}, which needs {total} (delete something or wait for an upload)")
        self.reserved = total

    async def release(self) -> None:
        try:
            await anyio.to_thread.run_sync(self.uploads.release, self.owner, self.upload_id)
        except Exception as exc:  # Redis away: the reservation expires by itself
            log.warning("upload reservation %s not released: %s", self.upload_id, exc)


async def write_stream(chunks: AsyncIterator[bytes], path: Path, limit: int, refusal: UploadRefused,
                       reservation: QuotaReservation | None = None) -> int:
    """Copy the body to `path` chunk by chunk and return its size; raise `refusal` (the limit it names)
    the moment the byte count passes `limit`, without reading further. Memory holds one chunk at a time.

    With a `reservation`, more quota is reserved before a chunk would pass what it holds, for up to
    `RESERVE_STEP` more (it raises when the key's quota, counting the other uploads in progress, has no
    room left).

    Writes are synchronous: each chunk (about 64 KiB) lands in the page cache in microseconds, far less
    than a thread hop would cost. Each is flushed at once: a small tail of a chunk otherwise waits in
    the file object's buffer, so the file on disk lagged the bytes received (and counted) by up to 8 KiB.
    """
    written = 0
    try:
        with path.open("xb") as out:
            async for chunk in chunks:
                written += len(chunk)
                if written > limit:
                    raise refusal
                if reservation is not None and written > reservation.reserved:
                    await reservation.reserve(min(limit, written + RESERVE_STEP))
                out.write(chunk)
                out.flush()
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise UploadRefused(507, "disk_full", "the server's dataset disk is full; try again later") from None
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


def _inspect_image(where: str, data: bytes, max_ratio: float = MAX_RATIO) -> tuple[tuple[int, int], bool, str]:
    """((width, height), grayscale?, format) of one member, after decoding it fully; refused otherwise."""
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
            width, height = image.size  # from the header: refuse a decompression bomb before decoding
            if width * height > MAX_IMAGE_PIXELS:
                raise UploadRefused(422, "image_too_large", f"{where}: {width}x{height} is over the "
                                    f"{MAX_IMAGE_PIXELS}-pixel limit for one image")
            decoded = width * height * (1 if image.mode in GRAY_MODES else 3)
            if over_ratio(decoded, len(data), max_ratio, floor=IMAGE_RATIO_FLOOR):
                raise UploadRefused(422, "image_too_compressed", f"{where}: {width}x{height} decodes to "
                                    f"{decoded} bytes from {len(data)}, over the {max_ratio:g}:1 limit "
                                    "(CLR_MAX_COMPRESSION_RATIO)")
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


def inspect_archive(path: Path, *, max_files: int, max_decoded_bytes: int = MAX_DECODED_BYTES,
                    max_ratio: float = MAX_RATIO, stop: Callable[[], bool] | None = None,
                    memmap_min_bytes: int | None = None) -> ArchiveSummary:
    """Read every member once (no extraction) and check it the way the loader will read it.

    Runs in a worker thread: it decodes every image, which is CPU work. `stop` (the client hung up)
    ends it with `ReadStopped` at the next read.

    `max_decoded_bytes` refuses (422 too_large_decoded) a set a worker would decode into memory:
    every set when `memmap_min_bytes` is None (streaming off), checked as images are read. With
    streaming on, a worker decodes a set it could not hold to disk (`image_stream.streams`, the same
    estimate and rule), so nothing is refused for its decoded size here: the quota and the disk bound
    it (`decode_cache_room`, and the commit's quota check, which counts the decode cache).
    """
    counts: dict[str, dict[str, int]] = {}
    sizes: list[tuple[int, int]] = []
    gray_count = 0
    decoded = 0
    estimate = 0  # as a worker estimates it (image_stream.decoded_bytes), for streams()
    pixels = 0
    formats: set[str] = set()
    try:
        for split, cls, file_name, data in iter_image_members(path, max_members=max_files, max_ratio=max_ratio,
                                                              stop=stop):
            where = f"{split}/{cls}/{file_name}"
            image_size, is_gray, fmt = _inspect_image(where, data, max_ratio)
            sizes.append(image_size)  # mixed sizes are fine: the loader resizes (clrcore/transforms.py)
            gray_count += is_gray
            pixels += image_size[0] * image_size[1]
            decoded += image_size[0] * image_size[1] * (1 if is_gray else 3)
            estimate += image_decoded_bytes(*image_size, KEEP_SHORTER_SIDE)
            if memmap_min_bytes is None and decoded > max_decoded_bytes:
                raise UploadRefused(422, "too_large_decoded", f"more than {max_decoded_bytes} bytes of pixels "
                                    "once decoded (CLR_MAX_DECODED_BYTES, sized to the workers' memory)")
            formats.add(fmt)
            by_class = counts.setdefault(split, {})
            by_class[cls] = by_class.get(cls, 0) + 1
    except (UploadRefused, ReadStopped):
        raise
    except ArchiveError as err:
        raise _archive_refusal(err, max_files) from None
    except Exception as err:  # zipfile and zlib raise NotImplementedError, RuntimeError, zlib.error, ...
        log.info("unreadable archive %s: %r", path.name, err)
        raise UploadRefused(422, "bad_archive", f"unreadable archive ({type(err).__name__}: {err})") from None
    classes, held_out = _check_layout(counts)  # refuses an archive without images
    gray = gray_count == len(sizes)
    channels = 1 if gray else 3
    images = len(sizes)
    if len(set(sizes)) == 1:
        width, height = sizes[0]
        # a uniform set is cached at its own size, or shrunk to a square while decoding (image_tree._shrink)
        cached_pixels = pixels if min(width, height) <= KEEP_SHORTER_SIDE else images * KEEP_SHORTER_SIDE**2
    else:  # the size jobs train at unless their spec sets image_size; cached as stored squares
        width = height = default_image_size(sizes)
        cached_pixels = images * stored_size(width) ** 2
    cache_bytes = cached_pixels * channels + 8 * images  # uint8 pixels plus int64 labels, as cached
    return ArchiveSummary(classes=classes, held_out=held_out, counts=counts, width=width, height=height,
                          channels=channels, formats=formats, cache_bytes=cache_bytes,
                          sizes=size_distribution(sizes), grayscale_converted=0 if gray else gray_count,
                          streamed=streams(estimate, memmap_min_bytes, max_decoded_bytes))


def decode_cache_room(summary: ArchiveSummary, size: int, uploads: DatasetStore, settings: Settings) -> None:
    """A set a worker will decode to disk (`summary.streamed`) must fit where its decode cache goes; the
    key's quota (which counts it) is checked by the commit. Local mode: the shared data disk (507
    disk_full). Store mode: each worker's dataset cache holds the archive and its decode caches (422
    too_large_decoded past CLR_CACHE_MAX_BYTES). Sets decoded into memory are bounded by max_decoded_bytes."""
    if not summary.streamed:
        return
    need = summary.cache_bytes
    if uploads.objects is not None:
        if size + need > settings.cache_max_bytes:
            raise UploadRefused(422, "too_large_decoded", f"this set decodes to about {need} bytes on a worker's "
                                f"disk, which with the {size}-byte archive is more than a worker's dataset cache "
                                f"holds ({settings.cache_max_bytes} bytes, CLR_CACHE_MAX_BYTES)")
        return
    free = shutil.disk_usage(uploads.data_dir).free
    if need > free:
        raise UploadRefused(507, "disk_full", f"this set decodes to about {need} bytes on the server's dataset "
                            f"disk, which has {free} free; try again later")


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


# ------------------------------------------------------------------------------------------ job specs


def sized_cache_bytes(record: dict, image_size: int) -> int:
    """About what a decode cache of the dataset at `image_size` takes: stored squares plus labels."""
    images = sum(sum(by_class.values()) for by_class in record["counts"].values())
    return images * (stored_size(image_size) ** 2 * record["channels"] + 8)


def _cache_over_quota(record: dict, image_size: int, uploads: DatasetStore, settings: Settings) -> str | None:
    """A job at a new `image_size` writes a decode cache the key is charged for (in both modes, see
    `worker.datasets.charge_decode_caches`); refuse it up front when that would pass the quota (the
    worker charges the real size afterwards)."""
    if f"{image_size}px" in record.get("extra_caches", {}):
        return None
    needed, quota = sized_cache_bytes(record, image_size), settings.upload_quota_bytes
    left = quota - uploads.bytes_used(record["owner"])
    if needed <= left:
        return None
    return (f"a decode cache of {record['id']} at {image_size}px takes about {needed} bytes, and this key has "
            f"{max(left, 0)} of its {quota}-byte storage quota left (delete a dataset or weights first)")


def touch_uploaded(spec: RangeTestSpec | TrainSpec, store: JobStore, settings: Settings) -> None:
    """A submitted job names an uploaded dataset: its retention period starts again."""
    if UPLOADED_DATASET.match(spec.dataset):
        DatasetStore(store.redis, store.prefix, settings.data_dir).touch(spec.dataset)


def upload_errors(spec: RangeTestSpec | TrainSpec, owner: str, store: JobStore, settings: Settings) -> list[dict]:
    """Submit-time check: an uploaded dataset a spec names must exist and be the caller's (422 otherwise).

    `dataset_path` may not be the data directory itself, nor reach into the uploads folder or hidden
    folders (caches, incoming uploads): another key's archive is reachable only through its id, and
    the id is checked for ownership.
    """
    if spec.dataset_path is not None and not UPLOADED_DATASET.match(spec.dataset):
        problem = dataset_path_problem(spec.dataset_path, reserved=(UPLOADS_DIR,))
        if problem is not None:
            return [field_error("dataset_path", problem, spec.dataset_path)]
    if not UPLOADED_DATASET.match(spec.dataset):
        return []
    errors = []
    uploads = DatasetStore(store.redis, store.prefix, settings.data_dir)
    record = uploads.owned(owner, spec.dataset)
    if record is None:
        errors.append(field_error("dataset", f"no uploaded dataset {spec.dataset!r} for this key "
                                  "(see GET /v1/datasets)", spec.dataset))
    elif spec.image_size is not None and (problem := _cache_over_quota(record, spec.image_size, uploads, settings)):
        errors.append(field_error("image_size", problem, spec.image_size))
    if spec.dataset_path is not None:
        errors.append(field_error("dataset_path", "only for dataset 'imagefolder'; an uploaded dataset "
                                  "knows its own file", spec.dataset_path))
    return errors
