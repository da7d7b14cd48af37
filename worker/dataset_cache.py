"""A worker's bounded cache of uploaded datasets, keyed by content hash (object-store mode).

An archive is downloaded once per worker into `{data_dir}/cache/<sha256>.<ext>` (inside the worker's
own data directory, where clrcore resolves `dataset_path`), and reused by every later job on it. The
cache holds at most `CLR_CACHE_MAX_BYTES`; when a download would pass it, the least recently used
archives (by modification time, touched on every hit) are removed first. The archive a job is about to read
is never evicted for itself.

An archive's decode caches (`{data_dir}/.cache/imagefolder-...`: the .npz, and a streamed set's .npy
files, which can be larger than memory) count in its footprint and are evicted with it, so a worker's
disk holds at most the budget whatever its jobs decoded; `trim` applies the budget after a job wrote them.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from clrcore.cache_names import CACHE_DIR_NAME, cache_files
from jobs.storage import ObjectStore

log = logging.getLogger(__name__)

CACHE_DIR = "cache"


@dataclass
class Fetched:
    """Where the archive is (relative to the data directory) and what fetching it cost."""

    relative: str
    hit: bool
    downloaded_bytes: int


class DatasetCache:
    def __init__(self, objects: ObjectStore, data_dir: Path, max_bytes: int) -> None:
        self.objects, self.data_dir, self.max_bytes = objects, Path(data_dir), max_bytes
        self.root = self.data_dir / CACHE_DIR

    def fetch(self, key: str, sha256: str, ext: str, keep: tuple[Path, ...] = ()) -> Fetched:
        """The cached file for `sha256`, downloaded from `key` on a miss; `keep`: files of this cache
        the same job reads (its uploaded weights), never evicted to make room."""
        name = f"{sha256}.{ext}"
        path = self.root / name
        relative = f"{CACHE_DIR}/{name}"
        if path.is_file():
            os.utime(path)  # most recently used now
            log.info("dataset cache hit: %s", name)
            return Fetched(relative, hit=True, downloaded_bytes=0)
        self.root.mkdir(parents=True, exist_ok=True)
        partial = self.root / f".{uuid.uuid4().hex}.part"
        try:
            self.objects.download_file(key, partial)
            size = partial.stat().st_size
            self._make_room(size, keep={name, *(p.name for p in keep)})
            partial.replace(path)
        finally:
            partial.unlink(missing_ok=True)
        log.info("dataset cache miss: %s downloaded (%d bytes)", name, size)
        return Fetched(relative, hit=False, downloaded_bytes=size)

    def entries(self) -> list[Path]:
        """Cached archives, least recently used first."""
        if not self.root.is_dir():
            return []
        files = [p for p in self.root.iterdir() if p.is_file() and not p.name.startswith(".")]
        return sorted(files, key=lambda p: p.stat().st_mtime)

    def decode_caches(self, path: Path) -> list[Path]:
        """The decode caches clrcore wrote for the cached archive `path` (loaded as `imagefolder`)."""
        return cache_files(self.data_dir / CACHE_DIR_NAME, "imagefolder", path)

    def footprint(self, path: Path) -> int:
        """Bytes on this disk because `path` is cached: the file and its decode caches."""
        total = 0
        for file in (path, *self.decode_caches(path)):
            try:
                total += file.stat().st_size
            except FileNotFoundError:
                continue
        return total

    def trim(self, keep: tuple[Path, ...] = ()) -> None:
        """Evict least recently used entries until the cache, decode caches included, fits its budget
        (after a job decoded one); `keep`: the job's own files."""
        self._make_room(0, keep={p.name for p in keep})

    def _make_room(self, incoming: int, keep: set[str]) -> None:
        """Evict the least recently used entries (never those named in `keep`, which still count)."""
        entries = self.entries()
        used = sum(self.footprint(p) for p in entries)
        for path in (p for p in entries if p.name not in keep):
            if used + incoming <= self.max_bytes:
                break
            used -= self.footprint(path)
            for file in (*self.decode_caches(path), path):
                file.unlink(missing_ok=True)
            log.info("dataset cache: evicted %s and its decode caches (least recently used)", path.name)
