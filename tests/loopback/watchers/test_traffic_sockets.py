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

from prestop_agent.watchers.base import Observation, PodTarget, Verdict
from prestop_agent.watchers.traffic.closed import ClosedFeed
from prestop_agent.watchers.traffic.sockets import ESTABLISHED, Conn, ProcNetTable, SockDiagTable
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


_BUILT: list[TrafficWatcher] = []


@pytest.fixture(autouse=True)
def _close_watchers() -> Iterator[None]:
    """Every watcher a test built is closed after it (each holds a socket listening for ended connections)."""
    yield
    while _BUILT:
        _BUILT.pop().close()


def built(config: TrafficConfig, port: int) -> TrafficWatcher:
    watcher = config.build(watch_context(PodTarget(pod_ip="127.0.0.1", port=port, host_ip=None)))
    _BUILT.append(watcher)
    return watcher


def real_watcher(port: int, *, source: str = "sock_diag", ignore_loopback: bool = False) -> TrafficWatcher:
    config = TrafficConfig(quiet_seconds=QUIET, quiet_min_seconds=QUIET, source=source, ignore_loopback=ignore_loopback)
    return built(config, port)


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


# ------------------------------------------------------------------ the build and its first look


def test_build_picks_the_sources_and_takes_a_first_look(server: LoopbackServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        request(client)
        auto = built(TrafficConfig(ignore_loopback=False), server.port)
        assert auto.source == ("sock_diag" if sock_diag_works() else "proc")
        seen = auto.poll(time.monotonic(), 1.0)
        assert seen.details["new_connections"] == 0  # the first look, at build, saw it already
        assert seen.details["connections"] == 1
    elsewhere = built(TrafficConfig(proc_root="/proc/self"), server.port)
    forced = built(TrafficConfig(source="proc"), server.port)
    assert (elsewhere.source, forced.source) == ("proc", "proc")
    assert auto.name == "traffic"


# ------------------------------------------------------------------ callers at their own rate


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


@needs_sock_diag
def test_steady_fast_caller_that_stops_is_gone_after_the_floor(server: LoopbackServer) -> None:
    watcher = rate_watcher(server.port)
    try:
        caller = Caller(server.port, steady(50, 2.0))
        seen = watch(watcher, caller, after=8.0)
    finally:
        watcher.close()
    assert all(o.verdict is Verdict.PRESENT for calling, o in seen if calling)
    calling_polls = [o for calling, o in seen if calling]
    assert len(calling_polls) >= 3
    last = seen[-1][1]
    assert last.verdict is Verdict.GONE
    assert last.details["judged_by_rate"] is True
    heard = only_caller(last)
    gap = float(str(heard["longest_gap_s"]))
    assert gap < 1.0  # one poll's grain, however loaded the machine
    assert heard["quiet_time_s"] == round(max(2.0, 4 * gap), 3)  # the floor, or four gaps: not the 6 s ceiling
    assert int(str(heard["arrivals"])) >= 3


@needs_sock_diag
def test_caller_once_a_second_gets_a_longer_quiet_time(server: LoopbackServer) -> None:
    watcher = rate_watcher(server.port)
    try:
        caller = Caller(server.port, steady(1, 5.0))
        seen = watch(watcher, caller, after=8.0)
    finally:
        watcher.close()
    assert all(o.verdict is Verdict.PRESENT for calling, o in seen if calling)
    last = seen[-1][1]
    assert last.verdict is Verdict.GONE
    heard = only_caller(last)
    assert float(str(heard["longest_gap_s"])) >= 0.9
    assert float(str(heard["quiet_time_s"])) >= 3.6  # four of its gaps, well above the floor


def bursts(every: float, size: int, count: int) -> Iterator[float | None]:
    for burst in range(count):
        for index in range(size):
            yield (every if burst and not index else 0.0) + 0.002
    yield None


@needs_sock_diag
def test_caller_bursting_every_five_seconds_is_never_declared_gone_between_bursts(server: LoopbackServer) -> None:
    watcher = rate_watcher(server.port)
    try:
        caller = Caller(server.port, bursts(5.0, 5, 3))
        seen = watch(watcher, caller, after=0.0)
    finally:
        watcher.close()
    assert caller.sent == 15
    assert [o.verdict for calling, o in seen if calling] == [Verdict.PRESENT] * len([1 for c, _ in seen if c])
    heard = only_caller(seen[-1][1])
    assert heard["quiet_time_s"] == 6.0  # gaps of 5 s: the ceiling


@needs_sock_diag
def test_caller_that_pauses_longer_than_its_gap_and_resumes_is_not_declared_gone(server: LoopbackServer) -> None:
    def pausing() -> Iterator[float | None]:
        for _ in range(40):  # 20/s for 2 s: gaps of 50 ms, measured at the poll's grain
            yield 0.05
        yield 1.2  # 24 times its gap, and three times the poll's grain
        for _ in range(20):
            yield 0.05
        yield None

    watcher = rate_watcher(server.port, floor=3.0, ceiling=8.0)  # room for a loaded machine's own pauses
    try:
        caller = Caller(server.port, pausing())
        seen = watch(watcher, caller, after=0.0)
    finally:
        watcher.close()
    assert caller.sent == 61
    calling = [o for c, o in seen if c]
    assert len(calling) >= 8
    assert {o.verdict for o in calling} == {Verdict.PRESENT}


@needs_sock_diag
def test_idle_keepalive_connection_falls_back_to_the_full_quiet_time(server: LoopbackServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        request(client)
        time.sleep(0.3)
        watcher = rate_watcher(server.port, floor=0.5, ceiling=1.5)
        try:
            started = time.monotonic()
            verdicts, details = poll_until_gone(watcher, limit=10.0)
        finally:
            watcher.close()
        assert details["connections"] == 1  # open the whole time, and it did not hold the wait
        assert details["judged_by_rate"] is False  # nothing arrived during the watch: the fixed quiet time
        assert time.monotonic() - started >= 1.5
        assert verdicts[0] is Verdict.PRESENT


@needs_sock_diag
def test_callers_that_close_first_are_counted(server: LoopbackServer) -> None:
    # Five requests a second, each on its own connection, the client closing first: the pod's side never
    # reaches TIME_WAIT and lives about a millisecond, so the socket table alone almost never shows it.
    watcher = rate_watcher(server.port, floor=2.0, ceiling=2.0)
    try:
        caller = Caller(server.port, steady(5, 5.0), fresh=True)
        seen = watch(watcher, caller, after=5.0)
    finally:
        watcher.close()
    assert caller.sent == 25
    calling = [o for c, o in seen if c]
    assert len(calling) >= 8
    assert {o.verdict for o in calling} == {Verdict.PRESENT}
    closed = sum(int(str(o.details["closed_connections"])) for _, o in seen)
    assert closed >= 18  # counted however short-lived (a few may be caught open by a poll instead)
    assert seen[-1][1].verdict is Verdict.GONE


# ------------------------------------------------------------------ what the kernel is asked for


@needs_sock_diag
@pytest.mark.parametrize("watched", [1, 2, 3])
def test_the_dump_lists_only_the_watched_ports_of_both_families(watched: int) -> None:
    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(3)]
    listeners.append(socket.create_server(("::1", 0), family=socket.AF_INET6))
    try:
        ports = [s.getsockname()[1] for s in listeners]
        chosen = tuple(ports[-watched:])  # the IPv6 listener is always among them
        with socket.create_connection(("::1", ports[-1])), socket.create_connection(("127.0.0.1", ports[0])):
            found = SockDiagTable(ports=chosen).read(1.0)
        assert {c.local_port for c in found} == set(chosen)
        assert any(c.state == ESTABLISHED and c.local_port == ports[-1] and c.peer_ip == "::1" for c in found)
    finally:
        for listener in listeners:
            listener.close()


@needs_sock_diag
def test_the_feed_announces_ended_connections_of_the_watched_port_only(server: LoopbackServer) -> None:
    other = LoopbackServer()
    feed = ClosedFeed((server.port,))
    try:
        for port in (server.port, other.port, server.port):
            with socket.create_connection(("127.0.0.1", port)) as client:
                request(client)
        end = time.monotonic() + 5.0
        ended: list[Conn] = []
        while len(ended) < 2 and time.monotonic() < end:
            ended += feed.drain().conns
            time.sleep(0.05)
    finally:
        feed.close()
        other.close()
    assert len(ended) == 2
    assert {c.local_port for c in ended} == {server.port}
    assert [c.data_segs_in for c in ended] == [1, 1]  # one request each (the byte count has the FIN too)


def test_tcp_info_offsets_match_this_kernel(server: LoopbackServer) -> None:
    # the dump's data segment count is the kernel's own, read back through getsockopt(TCP_INFO)
    with socket.create_connection(("127.0.0.1", server.port)) as client:
        for _ in range(3):
            request(client)
        own = client.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
        if sock_diag_works():
            inode = os.fstat(client.fileno()).st_ino
            [mine] = [c for c in SockDiagTable().read(1.0) if c.inode == inode]
            assert mine.data_segs_in == struct.unpack_from("=I", own, 152)[0] == 3
