"""A TCP proxy in front of Redis that holds back the first command containing a byte pattern.

A worker pointed at it (`CLR_REDIS_URL`) runs normally until it sends that command: the proxy keeps
the command (the worker waits for its reply), sets `caught`, and forwards it only on `release()`.
That stops a real worker process at an exact step of its own code, e.g. its first artifact
registration after model.pt is written, where a SIGSTOP timed from outside would race a few
milliseconds of work; the command held is then the write that was in flight when the worker froze.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from urllib.parse import urlsplit, urlunsplit

from tests.reliability.redis_server import free_port


class HoldingProxy:
    """127.0.0.1:`port` -> `target`, one thread pair per connection; holds the first `pattern` match."""

    def __init__(self, target: tuple[str, int], pattern: bytes) -> None:
        self.target, self.pattern = target, pattern
        self.port = free_port()
        self.caught, self._released = threading.Event(), threading.Event()
        self._first = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets: list[socket.socket] = [self._listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, redis_url: str) -> str:
        """`redis_url` (same database) through this proxy."""
        parsed = urlsplit(redis_url)
        return urlunsplit((parsed.scheme, f"127.0.0.1:{self.port}", parsed.path, parsed.query, ""))

    def release(self) -> None:
        self._released.set()

    def close(self) -> None:
        self._released.set()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            self._sockets += [client, server]
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _hold_first(self) -> bool:
        with self._first:
            if self.caught.is_set():
                return False
            self.caught.set()
            return True

    def _pump(self, source: socket.socket, sink: socket.socket, watch: bool) -> None:
        tail = b""
        try:
            while data := source.recv(65536):
                if watch and self.pattern in tail + data and self._hold_first():
                    self._released.wait()
                tail = data[-len(self.pattern):]
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
