"""Atomic file writes: the API serves run-folder files while a job is still writing them.

A reader must see the old file or the new one, never a torn one, so every artifact is written to a
unique temporary name in the same folder and renamed over the target.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


class WriteRefused(Exception):
    """The `may_write` fence said no just before the rename: `path` was left as it was."""


@contextmanager
def atomic_write(path: str | Path, *, may_write: Callable[[], bool] | None = None) -> Iterator[BinaryIO]:
    """Yield a binary handle; on success the bytes replace `path` in one rename, on error nothing changes.

    `may_write` is asked once more after the bytes are on disk and right before the rename, because
    serialising a checkpoint takes long enough for the caller to lose its right to write meanwhile
    (a worker frozen mid-save whose job another worker took over); False raises `WriteRefused`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if may_write is not None and not may_write():
            raise WriteRefused(f"{path}: write refused by its fence; the old file is kept")
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path) as handle:
        handle.write(text.encode())
    return Path(path)
