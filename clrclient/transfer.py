"""Files in and out: an upload body read in chunks with a progress callback, and downloads written to
a temporary name first, so a broken transfer never leaves a half file under the real name."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import anyio

CHUNK_BYTES = 1 << 20
Progress = Callable[[int, int], None]  # (bytes sent so far, total bytes)


def iter_file(path: Path, total: int, progress: Progress | None) -> Iterator[bytes]:
    sent = 0
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, total)


async def aiter_file(path: Path, total: int, progress: Progress | None) -> AsyncIterator[bytes]:
    sent = 0
    async with await anyio.open_file(path, "rb") as file:
        while chunk := await file.read(CHUNK_BYTES):
            yield chunk
            sent += len(chunk)
            if progress is not None:
                progress(sent, total)


def partial_path(dest: Path) -> Path:
    """Where a download is written until it is complete."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    return dest.with_name(dest.name + ".part")
