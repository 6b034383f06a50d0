"""The traffic watcher's quiet rule against real callers on loopback: each caller judged by its own rate."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

from prestop_agent.watchers.base import Verdict
from tests.loopback.watchers.traffic_peers import (
    Caller,
    LoopbackServer,
    bursts,
    needs_sock_diag,
    only_caller,
    poll_until_gone,
    rate_watcher,
    request,
    steady,
    watch,
)


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
