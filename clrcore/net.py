"""A timeout for network reads made by code that passes none (torchvision's dataset downloads).

Without one, a stalled download blocks the training thread forever while its worker stays alive; with
it, a connection silent for that long raises, and the job fails with a reason.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

DOWNLOAD_READ_TIMEOUT_S = 60.0  # seconds a download may receive nothing before it fails

_lock = threading.Lock()


@contextmanager
def read_timeout(seconds: float) -> Iterator[None]:
    """Sockets opened inside (without a timeout of their own) give up after `seconds` of silence.

    Python's default socket timeout is process-wide, so it is set and restored under a lock; sockets
    that set their own timeout (Redis clients) are not affected.
    """
    with _lock:
        previous = socket.getdefaulttimeout()
        socket.setdefaulttimeout(seconds)
        try:
            yield
        finally:
            socket.setdefaulttimeout(previous)
