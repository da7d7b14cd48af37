"""Where a source's decode cache lives, in a module light enough for the API to import.

The worker writes the cache (`clrcore.image_tree`); the API deletes it with the uploaded dataset it
belongs to, so both must name it the same way.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

CACHE_DIR_NAME = ".cache"  # under the data directory, unless the caller names another folder


def cache_stem(name: str, path: Path) -> str:
    """Names the source (not its version), so older caches of the same file can be found and removed."""
    return f"{name}-{hashlib.sha256(str(Path(path).resolve()).encode()).hexdigest()[:12]}"


def cache_files(cache_dir: Path, name: str, path: Path) -> list[Path]:
    """Every decode cache of the source `path` loaded as dataset `name`, finished or being written."""
    stem = cache_stem(name, path)
    # .npz: a cache (for a streamed one, its small arrays); .npy: a streamed cache's images; .tmp: being written
    return [file for pattern in ("npz", "npy", "tmp") for file in sorted(Path(cache_dir).glob(f"{stem}-*.{pattern}"))]
