"""A TCP proxy on loopback that resets connections in the middle of uploads.

It forwards bytes between a client and a real server (an object-store emulator).
After the first ``after`` uploads (requests that start with an upload method), every
``every``-th one, up to ``resets`` of them, has its first bytes forwarded and then the
client's connection reset (RST, as a dropped route or a load balancer does);
``every=1`` breaks each upload until the budget is spent. What it broke is counted,
so a test can show that faults really happened.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from types import TracebackType

UPLOAD_METHODS = (b"PUT ", b"POST ", b"PATCH ")


class ResettingProxy:
    """Listen on a free loopback port; forward to ``target_port``; reset some uploads."""

    def __init__(self, target_port: int, *, resets: int, every: int = 1, after: int = 0) -> None:
        self.target_port = target_port
        self._after = after
        self._budget = resets
        self._every = every
        self._uploads = 0
        self.resets_done = 0
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self._closed = threading.Event()

    def __enter__(self) -> ResettingProxy:
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._closed.set()
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            threading.Thread(
                target=self._requests, args=(downstream, upstream), daemon=True
            ).start()
            threading.Thread(target=self._pipe, args=(upstream, downstream), daemon=True).start()

    def _take_reset(self) -> bool:
        with self._lock:
            self._uploads += 1
            counted = self._uploads - self._after
            if self._budget <= 0 or counted <= 0 or counted % self._every:
                return False
            self._budget -= 1
            self.resets_done += 1
            return True

    def _requests(self, downstream: socket.socket, upstream: socket.socket) -> None:
        """Client to server; an upload's first bytes go through, then the client is reset."""
        try:
            while chunk := downstream.recv(65536):
                if chunk.startswith(UPLOAD_METHODS) and self._take_reset():
                    upstream.sendall(chunk[: max(1, len(chunk) // 2)])
                    _reset(downstream)
                    _close(upstream)
                    return
                upstream.sendall(chunk)
        except OSError:
            pass
        _close(downstream, upstream)

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while chunk := source.recv(65536):
                sink.sendall(chunk)
        except OSError:
            pass
        _close(source, sink)


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a TCP reset, not an orderly end."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _close(*socks: socket.socket) -> None:
    """Shut down, then close: a bare close leaves the other direction's thread blocked
    in ``recv`` and the peer never told, so a pooled connection would hang."""
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()
