"""Real loopback servers that misbehave the way broken cluster members and gateways do.

- ``silent``: accepts the connection, reads the request, never answers;
- ``drip``: answers one byte a second, so no single read ever times out;
- ``syn_drop``: a listener whose accept queue is full, so the kernel drops new SYNs;
- ``http_app``: a plain HTTP server around a function of ``httpx.Request`` (a Nacos look-alike,
  or a gateway in front of a real Nacos).
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

App = Callable[[httpx.Request], httpx.Response]


class _Acceptor:
    """Accept connections on a loopback listener and hand each to ``handle`` in its own thread."""

    def __init__(self, handle: Callable[[socket.socket, threading.Event], None]) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.settimeout(0.1)
        self.stop = threading.Event()
        self.connections: list[socket.socket] = []
        self._handle = handle
        self._threads: list[threading.Thread] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn = self.listener.accept()[0]
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections.append(conn)
            thread = threading.Thread(target=self._handle, args=(conn, self.stop), daemon=True)
            thread.start()
            self._threads.append(thread)

    def __enter__(self) -> str:
        self._thread.start()
        return self.address

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self._thread.join()
        for thread in self._threads:
            thread.join(timeout=5)
        for conn in self.connections:
            conn.close()
        self.listener.close()


def _read_request(conn: socket.socket, stop: threading.Event) -> bool:
    """Read up to the end of the request head (the agent's bodies are small and come with it)."""
    conn.settimeout(0.2)
    seen = b""
    while not stop.is_set() and b"\r\n\r\n" not in seen:
        try:
            chunk = conn.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return False
        if not chunk:
            return False
        seen += chunk
    return not stop.is_set()


@contextlib.contextmanager
def silent() -> Iterator[str]:
    """A member that accepts and reads, and never answers: its ``host:port``."""

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        _read_request(conn, stop)
        stop.wait()

    with _Acceptor(handle) as address:
        yield address


DRIP_BODY = b'{"hosts":[],"name":"DEFAULT_GROUP@@x"}'


@contextlib.contextmanager
def drip(*, head_first: bool = False, interval: float = 1.0) -> Iterator[str]:
    """A member that answers one byte every ``interval`` seconds (the body only, with ``head_first``)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(DRIP_BODY)

    def handle(conn: socket.socket, stop: threading.Event) -> None:
        if not _read_request(conn, stop):
            return
        payload = head + DRIP_BODY
        with contextlib.suppress(OSError):
            if head_first:
                conn.sendall(head)
                payload = DRIP_BODY
            for byte in payload:
                if stop.wait(interval):
                    return
                conn.sendall(bytes([byte]))

    with _Acceptor(handle) as address:
        yield address


@contextlib.contextmanager
def syn_drop() -> Iterator[str]:
    """A member whose accept queue is full: the kernel drops every new SYN, so connecting hangs."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port), timeout=5)  # fills the queue; never accepted
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.settimeout(0.5)
    try:
        probe.connect(("127.0.0.1", port))
    except TimeoutError:
        pass  # as intended: SYNs are dropped
    else:
        raise RuntimeError("a full accept queue did not drop SYNs on this machine")
    finally:
        probe.close()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        filler.close()
        listener.close()


@contextlib.contextmanager
def http_app(app: App) -> Iterator[str]:
    """A real HTTP server on loopback answering every request with ``app(request)``: its ``host:port``."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the agent's output
            return

        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            request = httpx.Request(
                self.command,
                f"http://{self.headers.get('Host', 'localhost')}{self.path}",
                headers=[(k, v) for k, v in self.headers.items() if k.lower() != "content-length"],
                content=body,
            )
            response = app(request)
            content = response.read()
            self.send_response(response.status_code)
            self.send_header("Content-Type", response.headers.get("Content-Type", "text/plain"))
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_PUT = do_POST = do_DELETE = _any

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def wait_for_line(read: Callable[[], str], needle: str, *, timeout: float) -> None:
    """Poll ``read()`` until it contains ``needle``; TimeoutError after ``timeout`` seconds."""
    end = time.monotonic() + timeout
    while needle not in read():
        if time.monotonic() > end:
            raise TimeoutError(f"{needle!r} not seen within {timeout:.0f} s")
        time.sleep(0.05)
