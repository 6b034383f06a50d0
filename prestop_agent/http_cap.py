"""One HTTP request capped as a whole.

httpx's timeouts bound each network operation, not the request: a server that sends one byte a
second never lets a read time out, and would hold the request (and the drain) indefinitely. A
``RequestCap`` learns the request's socket through httpx's ``trace`` extension and shuts it down
when the cap passes, so the blocked read returns at once and the request fails.

It can only cut a connection it saw being opened, so a capped request must not reuse a pooled
connection: ``HEADERS`` asks for a fresh one that closes after the response.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Mapping
from types import TracebackType
from typing import Any, Self

HEADERS: Mapping[str, str] = {"Connection": "close"}

_OPENED = ("connection.connect_tcp.complete",)


class RequestCap:
    """A timer that shuts the request's socket down when ``seconds`` have passed; ``fired`` says it did."""

    def __init__(self, seconds: float) -> None:
        self._lock = threading.Lock()
        # Duplicates of the request's sockets: a duplicate still reaches the connection after TLS
        # wraps (and detaches) the original socket object, and it is ours to close.
        self._sockets: list[socket.socket] = []
        self._fired = False
        self._timer = threading.Timer(max(0.0, seconds), self._fire)
        self._timer.daemon = True

    @property
    def fired(self) -> bool:
        with self._lock:
            return self._fired

    def trace(self, event: str, info: Mapping[str, Any]) -> None:
        """The ``trace`` extension's callback: remember each socket the request opens."""
        if event not in _OPENED:
            return
        stream = info.get("return_value")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if not isinstance(sock, socket.socket):
            return
        try:
            duplicate = sock.dup()
        except OSError:
            return
        with self._lock:
            self._sockets.append(duplicate)
            late = self._fired
        if late:  # the cap passed while the connection was being opened
            _shut(duplicate)

    def __enter__(self) -> Self:
        self._timer.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._timer.cancel()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            sock.close()

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # already closed by its owner: nothing left to cut
        sock.shutdown(socket.SHUT_RDWR)
