"""The traffic watcher against real TCP sockets on this machine, as /proc and NETLINK_SOCK_DIAG show them."""

from __future__ import annotations

import os
import socket
import struct
import time

import pytest

from prestop_agent.watchers.base import Verdict
from prestop_agent.watchers.traffic.closed import ClosedFeed
from prestop_agent.watchers.traffic.sockets import ESTABLISHED, Conn, ProcNetTable, SockDiagTable
from prestop_agent.watchers.traffic.watcher import TrafficConfig
from tests.loopback.watchers.traffic_peers import (
    QUIET,
    LoopbackServer,
    built,
    needs_sock_diag,
    poll_until_gone,
    real_watcher,
    request,
    sock_diag_works,
)


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
