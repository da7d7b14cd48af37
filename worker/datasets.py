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
from jobs.datasets import UPLOADS_DIR, DatasetStore
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


# image_tree's cache of a job's image_size: one .npz, plus two .npy files when streamed (image_stream)
SIZED_CACHE = re.compile(r"-(\d+px)-[0-9a-f]+(?:\.npz|\.\w+\.npy)$")


def charge_decode_caches(spec: dict, owner: str, store: JobStore, data_dir: Path) -> int:
    """Local mode: charge the owner's quota for decode caches of the uploaded dataset at training sizes
    a spec's `image_size` asked for (the upload charged the default size's); returns the bytes added.

    They live next to the archive in the shared data directory and go when the dataset is deleted,
    so they are the key's storage like the archive. (Store mode: a worker's caches are on its own
    disk, bounded by CLR_CACHE_MAX_BYTES, and not the key's.)
    """
    dataset = spec.get("dataset")
    if not isinstance(dataset, str) or not UPLOADED_DATASET.match(dataset):
        return 0
    uploads = DatasetStore(store.redis, store.prefix, data_dir)
    record = uploads.owned(owner, dataset)
    if record is None or "path" not in record or "key" in record:
        return 0
    sizes: dict[str, int] = {}  # size tag -> bytes of its files (a streamed cache has three)
    for file in cache_files(Path(data_dir) / CACHE_DIR_NAME, "imagefolder", Path(data_dir) / record["path"]):
        match = SIZED_CACHE.search(file.name)
        if match is not None:
            try:
                sizes[match.group(1)] = sizes.get(match.group(1), 0) + file.stat().st_size
            except FileNotFoundError:  # pruned meanwhile by a job at the same size
                continue
    added = sum(uploads.charge_cache(dataset, tag, nbytes) for tag, nbytes in sizes.items())
    if added:
        log.info("dataset %s: %d bytes of decode caches charged to its key", dataset, added)
    return added
