"""The quiet rule, on an injected clock: each caller's quiet time from its own rate, the floor and the ceiling."""

from __future__ import annotations

import pytest

from prestop_agent.watchers.base import PodTarget, Verdict
from prestop_agent.watchers.traffic.closed import Closed
from prestop_agent.watchers.traffic.quiet import Caller, Callers, QuietRule
from prestop_agent.watchers.traffic.sockets import CLOSE, ESTABLISHED, LISTEN, Conn
from prestop_agent.watchers.traffic.watcher import TrafficConfig, TrafficWatcher

RULE = QuietRule(floor=2.0, ceiling=10.0)
A, B = "10.9.8.7", "10.9.8.8"


def hear(callers: Callers, peer: str, times: list[float]) -> None:
    for when in times:
        callers.heard(peer, when)


def test_nothing_heard_waits_the_ceiling_from_the_start() -> None:
    callers = Callers(RULE, started=100.0)
    assert not callers.judge(109.9).quiet
    judgement = callers.judge(110.0)
    assert judgement.quiet
    assert judgement.judged_by_rate is False


def test_fast_caller_that_stops_is_gone_after_the_floor() -> None:
    callers = Callers(RULE, started=100.0)
    hear(callers, A, [100.0 + 0.4 * i for i in range(10)])  # 50/s, seen at every 0.4 s poll
    last = 103.6
    assert callers.quiet_time(A) == 2.0
    assert not callers.judge(last + 1.9).quiet
    assert callers.judge(last + 2.0).quiet


def test_quiet_time_grows_with_the_longest_gap_up_to_the_ceiling() -> None:
    callers = Callers(RULE, started=100.0)
    hear(callers, A, [100.0, 101.0, 102.0, 103.0])
    assert callers.quiet_time(A) == 4.0
    hear(callers, B, [100.0, 105.0, 110.0])
    assert callers.quiet_time(B) == 10.0  # 4 x 5 s, capped by the ceiling
    assert callers.judge(113.9).pending == B
    assert callers.judge(120.0).quiet


def test_a_caller_seen_fewer_than_three_times_gets_the_ceiling() -> None:
    callers = Callers(RULE, started=100.0)
    hear(callers, A, [100.1, 100.6])  # a caller that stopped at once: its rate is unknown
    assert callers.quiet_time(A) == 10.0
    assert not callers.judge(110.5).quiet
    assert callers.judge(110.6).quiet


def test_a_short_burst_gets_the_ceiling_however_many_requests_it_held() -> None:
    callers = Callers(RULE, started=100.0)
    callers.heard(A, 100.1)
    callers.heard(A, 100.3, count=20)  # twenty requests within 0.2 s, then silence: maybe the next burst is due
    assert callers.callers[A].arrivals == 21
    assert callers.quiet_time(A) == 10.0
    callers.heard(A, 100.7, count=5)  # heard over 0.6 s: now its rate says something
    assert callers.quiet_time(A) == 2.0


def test_the_same_arrival_seen_again_is_not_a_new_one() -> None:
    callers = Callers(RULE, started=100.0)
    hear(callers, A, [100.0, 100.0, 99.0, 100.0])
    assert callers.callers[A].arrivals == 1


def test_one_judged_caller_shortens_the_observation_to_the_floor_but_not_the_others_wait() -> None:
    callers = Callers(RULE, started=100.0)
    hear(callers, A, [100.0, 100.4, 100.8])
    callers.heard(B, 90.0)  # an idle keep-alive connection's last request, before the watch
    judgement = callers.judge(102.8)
    assert judgement.quiet  # B was already silent for its full quiet time
    callers.heard(B, 102.0)
    assert callers.judge(102.8).pending == B


def test_unattributed_activity_holds_for_the_ceiling() -> None:
    callers = Callers(RULE, started=100.0)
    hear(callers, A, [100.0, 100.4, 100.8])
    callers.heard_unattributed(101.0)
    judgement = callers.judge(105.0)
    assert (judgement.quiet, judgement.pending, judgement.until) == (False, "unattributed", 111.0)


def test_restart_forgets_everything_heard_before() -> None:
    callers = Callers(RULE, started=100.0)
    hear(callers, A, [100.0, 100.4, 100.8])
    callers.restart(120.0)
    assert callers.callers == {}
    assert not callers.judge(129.9).quiet  # nothing heard since: the ceiling, from the restart
    assert callers.judge(130.0).quiet


@pytest.mark.parametrize(
    ("arrivals", "span", "gap", "expected"),
    [(2, 1.0, 0.1, 10.0), (3, 0.2, 0.1, 10.0), (3, 0.31, 0.1, 2.0), (3, 2.0, 1.0, 4.0), (9, 40.0, 9.0, 10.0)],
)
def test_quiet_time(arrivals: int, span: float, gap: float, expected: float) -> None:
    assert RULE.quiet_time(Caller(100.0, 100.0 + span, arrivals, gap)) == expected


# ------------------------------------------------------------ the watcher, on fake tables and announcements

POD, PORT = "10.1.2.3", 8080
TARGET = PodTarget(pod_ip=POD, port=PORT, host_ip="192.168.0.7")


class FakeTable:
    source = "sock_diag"

    def __init__(self) -> None:
        self.conns: list[Conn] = []

    def read(self, timeout: float) -> list[Conn]:
        return list(self.conns)


class FakeFeed:
    def __init__(self) -> None:
        self.pending = Closed()
        self.closed = False

    def drain(self) -> Closed:
        drained, self.pending = self.pending, Closed()
        return drained

    def close(self) -> None:
        self.closed = True


def ended(peer_port: int, received: int, peer: str = A, segments: int = 1) -> Conn:
    return Conn(CLOSE, POD, PORT, peer, peer_port, 0, 0, 0, 0, received, segments)


def feed_watcher() -> tuple[TrafficWatcher, FakeTable, FakeFeed]:
    table, feed = FakeTable(), FakeFeed()
    table.conns = [Conn(LISTEN, "0.0.0.0", PORT, "0.0.0.0", 0, 1, 0, 128)]
    config = TrafficConfig(quiet_seconds=10.0, quiet_min_seconds=2.0)
    watcher = TrafficWatcher(config, TARGET, tables=[table], feed=feed)  # type: ignore[arg-type]
    return watcher, table, feed


def test_connections_that_opened_and_ended_between_polls_are_callers_arriving() -> None:
    watcher, _table, feed = feed_watcher()
    watcher.poll(100.0, 1.0)
    for step in range(1, 5):
        feed.pending = Closed([ended(40000 + step, 80)])
        seen = watcher.poll(100.0 + 0.4 * step, 1.0)
        assert seen.verdict is Verdict.PRESENT
        assert seen.details["closed_connections"] == 1
    assert seen.details["judged_by_rate"] is True
    assert watcher.poll(101.6 + 1.9, 1.0).verdict is Verdict.PRESENT
    assert watcher.poll(101.6 + 2.0, 1.0).verdict is Verdict.GONE


def test_an_ended_connection_counts_only_for_what_the_table_did_not_show() -> None:
    watcher, table, feed = feed_watcher()
    open_conn = Conn(ESTABLISHED, POD, PORT, A, 40000, 7, 0, 0, 60_000, 500, 5)
    table.conns.append(open_conn)
    watcher.poll(100.0, 1.0)
    table.conns.pop()
    feed.pending = Closed([ended(40000, 501, segments=5)])  # the peer closed its idle connection (+1: its FIN)
    assert watcher.poll(101.0, 1.0).details["last_activity_kind"] == "data"  # the first look's
    assert watcher.poll(110.0, 1.0).verdict is Verdict.GONE
    watcher2, table2, feed2 = feed_watcher()
    table2.conns.append(open_conn)
    watcher2.poll(100.0, 1.0)
    table2.conns.pop()
    feed2.pending = Closed([ended(40000, 901, segments=6)])  # it carried one more request before it ended
    assert watcher2.poll(101.0, 1.0).details["last_activity_age_s"] == 0.0


def test_ignored_peers_other_ports_and_dropped_announcements() -> None:
    watcher, _table, feed = feed_watcher()
    watcher.poll(100.0, 1.0)
    node = Conn(CLOSE, POD, PORT, "192.168.0.7", 50000, 0, 0, 0, 0, 80, 1)
    other_port = Conn(CLOSE, POD, 9090, A, 50001, 0, 0, 0, 0, 80, 1)
    feed.pending = Closed([node, other_port])
    assert watcher.poll(101.0, 1.0).details["closed_connections"] == 0
    feed.pending = Closed(missed=True)
    seen = watcher.poll(102.0, 1.0)
    assert seen.details["last_activity_kind"] == "missed_closed"
    assert watcher.poll(111.9, 1.0).verdict is Verdict.PRESENT
    assert watcher.poll(112.0, 1.0).verdict is Verdict.GONE
    watcher.close()
    assert feed.closed


def test_restart_hook_times_the_quiet_from_the_restart() -> None:
    watcher, _table, feed = feed_watcher()
    watcher.poll(100.0, 1.0)
    for step in range(1, 5):
        feed.pending = Closed([ended(40000 + step, 80)])
        watcher.poll(100.0 + 0.4 * step, 1.0)
    watcher.restart(105.0)
    assert watcher.poll(106.0, 1.0).verdict is Verdict.PRESENT
    assert watcher.poll(114.9, 1.0).verdict is Verdict.PRESENT
    assert watcher.poll(115.0, 1.0).verdict is Verdict.GONE


def test_polls_often_while_a_caller_is_active_and_seldom_when_waiting() -> None:
    watcher, _table, feed = feed_watcher()
    first = watcher.poll(100.0, 1.0)
    assert first.details["next_poll_s"] == 10.0  # nothing heard: the next decision is the ceiling
    feed.pending = Closed([ended(40001, 80)])
    assert watcher.poll(100.4, 1.0).details["next_poll_s"] == 0.1  # a new caller: date it a few times quickly
    for step in range(2, 5):
        feed.pending = Closed([ended(40000 + step, 80)])
        seen = watcher.poll(100.4 * step, 1.0)
    assert seen.details["next_poll_s"] == 0.4
