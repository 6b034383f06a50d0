"""The wait: poll every configured watcher under the one deadline until all say "gone".

When one watcher's observation says the evidence restarts (a registration was served again), every
watcher is told, and every "gone" reached before that moment stops counting until it is polled anew.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.errors import WatcherError
from prestop_agent.watchers.base import Observation, Verdict, Watcher

log = structlog.get_logger(__name__)

MIN_INTERVAL = 0.5
MAX_INTERVAL = 5.0


@dataclass(frozen=True)
class WatchResult:
    """A watcher's final word: its verdict, why, and when (ms into the run) it reached it."""

    name: str
    verdict: Verdict
    reason: str
    at_ms: int | None
    polls: int
    errors: int
    last_error: str | None

    def as_dict(self) -> dict[str, object]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "at_ms": self.at_ms,
            "polls": self.polls,
            "errors": self.errors,
            "last_error": self.last_error,
        }


@dataclass
class _State:
    watcher: Watcher
    latest: Observation
    since: float | None = None  # when the latest verdict was first reached
    next_due: float = 0.0
    polls: int = 0
    errors: int = 0
    last_error: str | None = None


def interval_for(remaining: float) -> float:
    """Poll often when little time is left, gently when much is: 1/15 of it, within 0.5-5 s."""
    return max(MIN_INTERVAL, min(MAX_INTERVAL, remaining / 15.0))


def wait_until_gone(
    watchers: Sequence[Watcher],
    deadline: Deadline,
    *,
    request_timeout: float,
    observers: Sequence[Watcher] = (),
) -> tuple[bool, list[WatchResult]]:
    """Poll until every watcher's latest observation is GONE (True) or the deadline passes (False).

    ``observers`` are polled on their own schedule too, but do not decide: a watcher that
    judges over time keeps its evidence current while another one decides.
    """
    clock = deadline.clock
    states = [_State(w, Observation(Verdict.UNKNOWN, "not_polled")) for w in watchers]
    watching = [*states, *(_State(w, Observation(Verdict.UNKNOWN, "not_polled")) for w in observers)]
    while True:
        now = clock.monotonic()
        for state in watching:
            if now >= state.next_due and not deadline.expired():
                _poll(state, deadline, request_timeout)
                now = clock.monotonic()
                state.next_due = now + _next_interval(state.latest, deadline.remaining())
                if state.latest.restarts_at is not None:
                    _restart(states, state, state.latest.restarts_at, deadline)
        done = all(s.latest.verdict is Verdict.GONE for s in states)
        if done or deadline.expired():
            return done, [_result(s, deadline) for s in states]
        next_due = min(s.next_due for s in watching)
        deadline.sleep(max(0.0, next_due - clock.monotonic()))


def _poll(state: _State, deadline: Deadline, request_timeout: float) -> None:
    clock = deadline.clock
    name = state.watcher.name
    state.polls += 1
    try:
        observation = state.watcher.poll(clock.monotonic(), deadline.cap(request_timeout))
    except WatcherError as exc:
        state.errors += 1
        state.last_error = str(exc)
        log.warning("watcher_error", watcher=name, error=str(exc))
        observation = Observation(Verdict.UNKNOWN, "error")
    except Exception as exc:  # a broken watcher must never end the wait early or crash the hook
        state.errors += 1
        state.last_error = f"{type(exc).__name__}: {exc}"
        log.exception("watcher_crashed", watcher=name)
        observation = Observation(Verdict.UNKNOWN, "error")
    if observation.verdict is not state.latest.verdict or state.since is None:
        state.since = clock.monotonic()
        log.info(
            "watcher_verdict",
            watcher=name,
            verdict=observation.verdict.value,
            reason=observation.reason,
            **dict(observation.details),
        )
    state.latest = observation


def _restart(states: Sequence[_State], by: _State, at: float, deadline: Deadline) -> None:
    """Evidence from before ``at`` no longer counts: every watcher forgets it, and no earlier "gone" stands."""
    now = deadline.clock.monotonic()
    log.warning(
        "evidence_restarted",
        by=by.watcher.name,
        reason=by.latest.reason,
        at_ms=round((at - deadline.started) * 1000),
    )
    for state in states:
        try:
            state.watcher.restart(at)
        except Exception:  # a broken watcher must never end the wait early or crash the hook
            log.exception("watcher_crashed", watcher=state.watcher.name)
        if state is not by and state.latest.verdict is Verdict.GONE:
            state.latest = Observation(Verdict.PRESENT, "evidence_restarted")
            state.since = now
            state.next_due = now


def _next_interval(observation: Observation, remaining: float) -> float:
    interval = interval_for(remaining)
    hint = observation.details.get("next_poll_s")
    if isinstance(hint, int | float) and hint > 0:
        interval = min(interval, max(0.05, float(hint)))
    return interval


def _result(state: _State, deadline: Deadline) -> WatchResult:
    at_ms = None if state.since is None else round((state.since - deadline.started) * 1000)
    return WatchResult(
        name=state.watcher.name,
        verdict=state.latest.verdict,
        reason=state.latest.reason,
        at_ms=at_ms,
        polls=state.polls,
        errors=state.errors,
        last_error=state.last_error,
    )
