"""The wait loop: ends on complete evidence, runs to the deadline on incomplete evidence."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from structlog.testing import capture_logs

from prestop_agent.clock import Deadline
from prestop_agent.errors import WatcherError
from prestop_agent.wait import MAX_INTERVAL, MIN_INTERVAL, interval_for, wait_until_gone
from prestop_agent.watchers.base import Observation, Verdict
from tests.fakes import FakeClock


class Scripted:
    """Says what its script says at each poll; the last entry repeats."""

    def __init__(self, name: str, script: Sequence[Verdict | Exception]) -> None:
        self.name = name
        self.script = list(script)
        self.polls: list[float] = []

    def poll(self, now: float, timeout: float) -> Observation:
        self.polls.append(now)
        step = self.script[min(len(self.polls) - 1, len(self.script) - 1)]
        if isinstance(step, Exception):
            raise step
        return Observation(step, step.value)

    def restart(self, at: float) -> None:
        """Nothing judged over time."""

    def close(self) -> None:
        """Nothing to release."""


G, P = Verdict.GONE, Verdict.PRESENT


@pytest.mark.parametrize(("remaining", "expected"), [(1.0, MIN_INTERVAL), (30.0, 2.0), (600.0, MAX_INTERVAL)])
def test_interval_adapts_to_time_left(remaining: float, expected: float) -> None:
    assert interval_for(remaining) == expected


def test_ends_as_soon_as_every_watcher_says_gone() -> None:
    clock = FakeClock()
    a, b = Scripted("a", [P, P, G]), Scripted("b", [G])
    done, results = wait_until_gone([a, b], Deadline.after(clock, 60), request_timeout=5)
    assert done
    assert [r.verdict for r in results] == [G, G]
    assert clock.now - 1000 < 15  # three polls of a, not the minute
    assert results[0].at_ms is not None
    assert results[0].at_ms > 0


def test_one_watcher_erring_throughout_runs_to_the_deadline_as_unknown() -> None:
    clock = FakeClock()
    broken = Scripted("aws-alb", [WatcherError("AccessDenied: elasticloadbalancing:DescribeTargetHealth")])
    with capture_logs() as logs:
        done, results = wait_until_gone(
            [Scripted("registry", [G]), broken], Deadline.after(clock, 20), request_timeout=5
        )
    assert not done
    assert results[1].verdict is Verdict.UNKNOWN
    assert results[1].errors == len(broken.polls) > 3
    assert "AccessDenied" in (results[1].last_error or "")
    assert clock.now - 1000 == pytest.approx(20)
    assert any(e["event"] == "watcher_error" and e["watcher"] == "aws-alb" for e in logs)


def test_a_crashing_watcher_never_ends_the_wait_early() -> None:
    clock = FakeClock()
    crashing = Scripted("traffic", [RuntimeError("bug")])
    with capture_logs() as logs:
        done, results = wait_until_gone([crashing], Deadline.after(clock, 10), request_timeout=5)
    assert any(e["event"] == "watcher_crashed" for e in logs)
    assert not done
    assert results[0].verdict is Verdict.UNKNOWN
    assert "RuntimeError" in (results[0].last_error or "")


def test_gone_then_present_again_is_not_done() -> None:
    clock = FakeClock()
    flapping = Scripted("traffic", [G, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P, P])
    slow = Scripted("endpoints", [P, G])
    done, results = wait_until_gone([flapping, slow], Deadline.after(clock, 10), request_timeout=5)
    assert not done
    assert results[0].verdict is Verdict.PRESENT


def test_next_poll_hint_shortens_the_interval() -> None:
    class Hinting:
        name = "registry"

        def __init__(self) -> None:
            self.polls = 0

        def poll(self, now: float, timeout: float) -> Observation:
            self.polls += 1
            if self.polls == 1:
                return Observation(P, "consumer_cache", {"next_poll_s": 0.2})
            return Observation(G, "unserved")

        def restart(self, at: float) -> None:
            """Nothing judged over time."""

        def close(self) -> None:
            """Nothing to release."""

    clock = FakeClock()
    done, _ = wait_until_gone([Hinting()], Deadline.after(clock, 300), request_timeout=5)
    assert done
    assert clock.now - 1000 == pytest.approx(0.2)


def test_poll_timeout_is_capped_by_the_deadline() -> None:
    seen: list[float] = []

    class Slow:
        name = "registry"

        def poll(self, now: float, timeout: float) -> Observation:
            seen.append(timeout)
            return Observation(P, "x")

        def restart(self, at: float) -> None:
            """Nothing judged over time."""

        def close(self) -> None:
            """Nothing to release."""

    clock = FakeClock()
    wait_until_gone([Slow()], Deadline.after(clock, 3), request_timeout=30)
    assert max(seen) <= 3


def test_observers_are_polled_but_do_not_decide() -> None:
    clock = FakeClock()
    decider, observer = Scripted("registry", [P, P, G]), Scripted("traffic", [P])
    done, results = wait_until_gone([decider], Deadline.after(clock, 60), request_timeout=5, observers=[observer])
    assert done  # the observer still says present
    assert [r.name for r in results] == ["registry"]
    assert len(observer.polls) >= 3
