"""Uploaded datasets inside a worker: a spec's `dataset: ds_...` becomes the imagefolder archive it names.

The API stored the spec as the client sent it (so a job shows what was asked); only the copy handed
to `clrcore.runs` is rewritten, to `dataset: imagefolder` with `dataset_path` pointing at the archive
under the data directory. The record is read again here, not trusted from submit time: the dataset
could have been deleted since, and then the job fails with that reason instead of a missing file.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from clrcore.cache_names import CACHE_DIR_NAME, cache_files
from clrcore.dataset_paths import resolve_dataset_path
from clrcore.datasets import DatasetError
from clrcore.specs import UPLOADED_DATASET
from jobs.datasets import DEFAULT_CACHE, UPLOADS_DIR, DatasetStore
from jobs.store import JobStore
from worker.dataset_cache import DatasetCache, Fetched

log = logging.getLogger(__name__)


def resolve_uploaded(spec: dict, owner: str, store: JobStore, data_dir: Path) -> dict:
    """`spec` itself when it names no uploaded dataset; otherwise a copy naming the archive.

    Raises `DatasetError` when the dataset is gone or is not the job owner's, or when a `dataset_path`
    leads to the data directory itself, into uploads/ or into a hidden folder (the job then fails with it).
    """
    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or not UPLOADED_DATASET.match(dataset):
        if isinstance(spec.get("dataset_path"), str):  # checked at submit; again here, links resolved
            resolve_dataset_path(Path(data_dir), spec["dataset_path"], reserved=(UPLOADS_DIR,))
        return spec
    record = DatasetStore(store.redis, store.prefix, data_dir).owned(owner, dataset)
    if record is None:
        raise DatasetError(dataset, "no such uploaded dataset for this key (deleted?)")
    if not (Path(data_dir) / record["path"]).is_file():
        raise DatasetError(dataset, "the uploaded archive is missing from the data directory")
    log.info("dataset %s resolved to %s", dataset, record["path"])
    return {**spec, "dataset": "imagefolder", "dataset_path": record["path"]}


def resolve_from_store(spec: dict, owner: str, store: JobStore, cache: DatasetCache,
                       keep: tuple[Path, ...] = ()) -> tuple[dict, Fetched | None]:
    """Object-store mode: like `resolve_uploaded`, with the archive fetched into the worker's cache
    (once per content hash; `keep` the job's other cached files); also returns what the fetch cost
    (None for a catalog dataset)."""
    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or not UPLOADED_DATASET.match(dataset):
        return spec, None
    record = DatasetStore(store.redis, store.prefix, cache.data_dir).owned(owner, dataset)
    if record is None:
        raise DatasetError(dataset, "no such uploaded dataset for this key (deleted?)")
    if "key" not in record or "sha256" not in record:
        raise DatasetError(dataset, "the uploaded archive is in a local data directory, not the object store")
    try:
        fetched = cache.fetch(record["key"], record["sha256"], record["format"], keep)
    except FileNotFoundError:
        raise DatasetError(dataset, "the uploaded archive is missing from the object store") from None
    return {**spec, "dataset": "imagefolder", "dataset_path": fetched.relative}, fetched


# image_tree's caches of a source: one .npz, plus two .npy files when streamed (image_stream); a job's
# image_size adds "-{size}px" to the name, the default training size does not.
SIZED_CACHE = re.compile(r"-(\d+px)-[0-9a-f]+(?:\.npz|\.\w+\.npy)$")
DEFAULT_SIZE_CACHE = re.compile(r"^imagefolder-[0-9a-f]+-[0-9a-f]+(?:\.npz|\.\w+\.npy)$")


def decode_cache_sizes(cache_dir: Path, archive: Path) -> dict[str, int]:
    """Size tag ("128px", or `DEFAULT_CACHE`) -> bytes on disk of the finished decode caches of `archive`
    (every file: a streamed cache's .npz and both .npy); files being written (.tmp) are not counted."""
    sizes: dict[str, int] = {}
    for file in cache_files(cache_dir, "imagefolder", archive):
        match = SIZED_CACHE.search(file.name)
        tag = match.group(1) if match else DEFAULT_CACHE if DEFAULT_SIZE_CACHE.match(file.name) else None
        if tag is None:
            continue
        try:
            sizes[tag] = sizes.get(tag, 0) + file.stat().st_size
        except FileNotFoundError:  # pruned meanwhile by a job at the same size
            continue
    return sizes


def charge_decode_caches(spec: dict, owner: str, store: JobStore, data_dir: Path,
                         archive: Path | None = None) -> int:
    """Charge the owner's quota for the real bytes of the uploaded dataset's decode caches, every file
    of them (a streamed cache's .npy too): at each `image_size` a job asked for, and at the default
    size (the upload charged an estimate of that one; this replaces it). Returns the bytes added.

    Local mode: the caches live next to the archive in the shared data directory and go when the
    dataset is deleted, so they are the key's storage like the archive. Store mode (`archive`: this
    worker's fetched copy): each worker decodes into its own disk; the key is charged once per size for
    what a worker wrote (every worker's copy is the same bytes), so the quota counts the decoded data
    the key asked the service to hold, not how many workers hold it. Delete gives the charge back; the
    copies go with their archive from the worker's bounded cache (`DatasetCache`, CLR_CACHE_MAX_BYTES).
    """
    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or not UPLOADED_DATASET.match(dataset):
        return 0
    uploads = DatasetStore(store.redis, store.prefix, data_dir)
    record = uploads.owned(owner, dataset)
    if record is None:
        return 0
    if archive is None:
        if "key" in record:  # store mode, but no fetched copy named: nothing of it on this disk
            return 0
        archive = Path(data_dir) / record["path"]
    sizes = decode_cache_sizes(Path(data_dir) / CACHE_DIR_NAME, archive)
    added = sum(uploads.charge_cache(dataset, tag, nbytes) for tag, nbytes in sizes.items())
    if added:
        log.info("dataset %s: %d bytes of decode caches charged to its key", dataset, added)
    return added
