"""The traffic watcher against real TCP sockets on this machine, as /proc and NETLINK_SOCK_DIAG show them."""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from collections.abc import Iterator

import pytest

from prestop_agent.watchers.base import PodTarget, Verdict
from prestop_agent.watchers.traffic.sockets import ESTABLISHED, ProcNetTable, SockDiagTable
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


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    try:
        yield srv
    finally:
        srv.close()


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


def real_watcher(port: int, *, source: str = "sock_diag", ignore_loopback: bool = False) -> TrafficWatcher:
    config = TrafficConfig(quiet_seconds=QUIET, source=source, ignore_loopback=ignore_loopback)
    watcher = config.build(watch_context(PodTarget(pod_ip="127.0.0.1", port=port, host_ip=None)))
    assert isinstance(watcher, TrafficWatcher)
    return watcher


def test_real_tables_see_this_process_sockets(server: LoopbackServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        request(client)
        request(client)
        inode = os.fstat(client.fileno()).st_ino
        from_proc = [c for c in ProcNetTable("/proc").read(1.0) if c.inode == inode]
        assert len(from_proc) == 1
        assert from_proc[0].state == ESTABLISHED
        assert (from_proc[0].peer_ip, from_proc[0].peer_port) == ("127.0.0.1", server.port)
        if sock_diag_works():
            mine = [c for c in SockDiagTable().read(1.0) if c.inode == inode]
            assert len(mine) == 1
            assert mine[0].local_port == from_proc[0].local_port
            assert mine[0].bytes_received == 4  # two answers of b"ok"
            own = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
            assert struct.unpack_from("=Q", own, 128)[0] == 4  # the same field, read by the kernel's other door
            assert mine[0].last_data_recv_ms is not None


@needs_sock_diag
def test_real_new_connection_makes_it_present(server: LoopbackServer) -> None:
    watcher = real_watcher(server.port)
    poll_until_gone(watcher)
    with socket.create_connection(("127.0.0.1", server.port)):
        time.sleep(0.02)
        seen = watcher.poll(time.monotonic(), 1.0)
    assert (seen.verdict, seen.reason) == (Verdict.PRESENT, "recent_activity")
    assert seen.details["new_connections"] == 1
    assert seen.details["peers"] == ["127.0.0.1"]


@needs_sock_diag
def test_real_idle_keepalive_connection_lets_it_go_quiet(server: LoopbackServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        request(client)
        watcher = real_watcher(server.port)
        verdicts, details = poll_until_gone(watcher)
        assert verdicts[0] is Verdict.PRESENT
        assert details["connections"] == 1  # the idle connection is still open
        request(client)  # and a request on it wakes the watcher again
        assert watcher.poll(time.monotonic(), 1.0).reason == "recent_activity"


@needs_sock_diag
def test_real_busy_keepalive_connection_keeps_it_present(server: LoopbackServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        watcher = real_watcher(server.port)
        end = time.monotonic() + 3 * QUIET
        verdicts: list[Verdict] = []
        # At least six polls, however slowly a loaded machine runs them, over at least 3 quiet times.
        while time.monotonic() < end or len(verdicts) < 6:
            request(client)
            verdicts.append(watcher.poll(time.monotonic(), 1.0).verdict)
            time.sleep(0.02)
    assert len(verdicts) > 5
    assert set(verdicts) == {Verdict.PRESENT}


@needs_sock_diag
def test_real_loopback_traffic_is_ignored_by_default(server: LoopbackServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        watcher = real_watcher(server.port, ignore_loopback=True)
        end = time.monotonic() + 2.0
        verdict = Verdict.PRESENT
        details: dict[str, object] = {}
        while verdict is not Verdict.GONE and time.monotonic() < end:
            request(client)
            seen = watcher.poll(time.monotonic(), 1.0)
            verdict, details = seen.verdict, dict(seen.details)
            time.sleep(0.02)
        assert verdict is Verdict.GONE
        assert details["ignored_connections"] == 1
        request(client)
        assert watcher.poll(time.monotonic(), 1.0).verdict is Verdict.GONE


def test_real_proc_fallback_sees_connections_and_their_end(server: LoopbackServer) -> None:
    watcher = real_watcher(server.port, source="proc")
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        request(client)
        seen = watcher.poll(time.monotonic(), 1.0)
        assert seen.verdict is Verdict.PRESENT
        assert seen.details["connections"] == 1
        assert seen.details["source"] == "proc"
    _, details = poll_until_gone(watcher)
    assert details["connections"] == 0
