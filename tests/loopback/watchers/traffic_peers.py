"""Real peers for the traffic watcher's loopback tests: a server, callers at a given pace, and a poll loop.

The watchers these tests build hold a socket each (the announcements of ended connections);
``built`` registers them, and this folder's conftest closes them after every test.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from prestop_agent.watchers.base import Observation, PodTarget, Verdict
from prestop_agent.watchers.traffic.sockets import SockDiagTable
from prestop_agent.watchers.traffic.watcher import TrafficConfig, TrafficWatcher
from tests.fakes import watch_context


class LoopbackServer:
    """A request/response server on 127.0.0.1: answers every chunk it reads with b"ok"."""

    def __init__(self) -> None:
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        self._conns: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    @staticmethod
    def _serve(conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                try:
                    conn.sendall(b"ok")
                except OSError:
                    return

    def close(self) -> None:
        self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self._accepting.join(2)
        for conn in self._conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        for thread in self._threads:
            thread.join(2)


def sock_diag_works() -> bool:
    try:
        SockDiagTable().read(1.0)
    except OSError:
        return False
    return True


needs_sock_diag = pytest.mark.skipif(not sock_diag_works(), reason="NETLINK_SOCK_DIAG is not available here")
QUIET = 0.2


def request(client: socket.socket) -> None:
    client.sendall(b"GET / HTTP/1.1\r\n\r\n")
    assert client.recv(16) == b"ok"


def poll_until_gone(watcher: TrafficWatcher, limit: float = 3.0) -> tuple[list[Verdict], dict[str, object]]:
    verdicts: list[Verdict] = []
    end = time.monotonic() + limit
    while time.monotonic() < end:
        seen = watcher.poll(time.monotonic(), 1.0)
        verdicts.append(seen.verdict)
        if seen.verdict is Verdict.GONE:
            return verdicts, dict(seen.details)
        time.sleep(0.03)
    raise AssertionError(f"never gone: {verdicts}")


BUILT: list[TrafficWatcher] = []


def built(config: TrafficConfig, port: int) -> TrafficWatcher:
    watcher = config.build(watch_context(PodTarget(pod_ip="127.0.0.1", port=port, host_ip=None)))
    BUILT.append(watcher)
    return watcher


def real_watcher(port: int, *, source: str = "sock_diag", ignore_loopback: bool = False) -> TrafficWatcher:
    config = TrafficConfig(quiet_seconds=QUIET, quiet_min_seconds=QUIET, source=source, ignore_loopback=ignore_loopback)
    return built(config, port)


class Caller:
    """A client thread calling the server: ``pattern`` yields the pause before each request, None to stop.

    ``fresh``: each request on a new connection that the client closes first (curl, keep-alive off);
    otherwise one keep-alive connection for all.
    """

    def __init__(self, port: int, pattern: Iterator[float | None], *, fresh: bool = False) -> None:
        self.port = port
        self.pattern = pattern
        self.fresh = fresh
        self.sent = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        keep: socket.socket | None = None
        try:
            for pause in self.pattern:
                if pause is None:
                    break
                time.sleep(pause)
                if self.fresh:
                    with socket.create_connection(("127.0.0.1", self.port)) as client:
                        request(client)
                else:
                    keep = keep or socket.create_connection(("127.0.0.1", self.port))
                    request(keep)
                self.sent += 1
        finally:
            self.done.set()
            if keep is not None:
                keep.close()


def steady(rate: float, seconds: float) -> Iterator[float | None]:
    for _ in range(int(rate * seconds)):
        yield 1.0 / rate
    yield None


def watch(watcher: TrafficWatcher, caller: Caller, after: float) -> list[tuple[bool, Observation]]:
    """Poll as the wait loop does (at the watcher's own pace) until ``after`` seconds past the caller's end or GONE.

    Each entry: whether the caller was still calling at that poll, and the observation.
    """
    seen: list[tuple[bool, Observation]] = []
    end: float | None = None
    while end is None or time.monotonic() < end:
        calling = not caller.done.is_set()
        observation = watcher.poll(time.monotonic(), 1.0)
        seen.append((calling, observation))
        if observation.verdict is Verdict.GONE and not calling:
            break
        if end is None and caller.done.is_set():
            end = time.monotonic() + after
        hint = observation.details.get("next_poll_s", 0.4)
        time.sleep(min(float(hint), 0.4) if isinstance(hint, int | float) else 0.4)
    return seen


def rate_watcher(port: int, *, floor: float = 2.0, ceiling: float = 6.0) -> TrafficWatcher:
    return built(TrafficConfig(quiet_seconds=ceiling, quiet_min_seconds=floor, ignore_loopback=False), port)


def only_caller(observation: Observation) -> dict[str, object]:
    callers = observation.details["callers"]
    assert isinstance(callers, list)
    assert len(callers) == 1
    return dict(callers[0])


def bursts(every: float, size: int, count: int) -> Iterator[float | None]:
    for burst in range(count):
        for index in range(size):
            yield (every if burst and not index else 0.0) + 0.002
    yield None
