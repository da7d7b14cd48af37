"""A read-only stream that counts every byte it hands out and refuses past a byte cap or a ratio cap.

Archive members that a reader skips (hidden files, other depths) and headers that tarfile consumes
on its own are decompressed all the same; counting at the member level misses them. Putting this
reader between the decompressor and whoever parses the bytes counts them all, so a bomb stops after
at most `max_bytes`, or as soon as it has produced more than `max_ratio` times the compressed bytes
read so far. A `stop` callable (e.g. "the client hung up") is asked before every read.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Protocol

# Below this many output bytes the ratio is not judged: headers and padding of a small archive
# compress far better than its contents, and a few MiB cost nothing.
RATIO_FLOOR_BYTES = 4 * 2**20


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...

    def close(self) -> None: ...


class ReadCapExceeded(ValueError):
    """More bytes, or more bytes per compressed byte, than the caps allow; the message says which."""


class ReadStopped(Exception):
    """The `stop` callable said the work is no longer wanted (the client disconnected)."""


def over_ratio(produced: int, consumed: int, max_ratio: float, floor: int = RATIO_FLOOR_BYTES) -> bool:
    """True when `produced` bytes from `consumed` input bytes is a ratio above `max_ratio`.

    Output below `floor` never counts as over: a ratio only matters once the output is large.
    """
    return produced > floor and produced > max_ratio * max(consumed, 1)


class CappedReader(io.RawIOBase):
    """Wraps a decompressed stream; `source_bytes()` says how many compressed bytes lie behind it."""

    def __init__(self, inner: Readable, *, what: str, max_bytes: int, max_ratio: float,
                 source_bytes: Callable[[], int], stop: Callable[[], bool] | None = None) -> None:
        super().__init__()
        self.inner, self.what, self.max_bytes, self.max_ratio = inner, what, max_bytes, max_ratio
        self.source_bytes, self.stop = source_bytes, stop
        self.produced = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int | None = -1) -> bytes:
        if self.stop is not None and self.stop():
            raise ReadStopped(f"{self.what}: reading stopped")
        room = self.max_bytes - self.produced + 1  # one byte over the cap is enough to know
        want = room if size is None or size < 0 else min(size, room)
        data = self.inner.read(want)
        self.produced += len(data)
        if self.produced > self.max_bytes:
            raise ReadCapExceeded(f"{self.what}: more than {self.max_bytes} bytes once decompressed")
        if over_ratio(self.produced, self.source_bytes(), self.max_ratio):
            raise ReadCapExceeded(f"{self.what}: decompresses to more than {self.max_ratio:g} times its "
                                  "compressed size (a compression bomb?)")
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)
