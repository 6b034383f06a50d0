"""When the watched ports have been quiet long enough: a quiet time per caller, from its own rate.

The rule. A caller is a peer address. Each poll dates the latest thing each caller sent
and counts its requests where the kernel counts them (data segments, ended connections;
``activity``). The gap between two dated arrivals of a caller is at least as long as any
real gap between its requests in that span, so the caller's longest gap ``G`` never
understates how long it can go silent. A caller heard at least ``MIN_ARRIVALS`` (3) times
over at least ``MIN_SPAN_S`` (0.3 s) is judged by its own rate: it counts as gone after
``FACTOR * G`` (4 G) of silence, but never less than the floor
(``PRESTOP_QUIET_MIN_SECONDS``, default 2 s) nor more than the ceiling
(``PRESTOP_QUIET_SECONDS``, default 10 s). A caller heard less, and anything that cannot
be attributed to a caller (a non-empty accept queue, an unmeasured connection,
announcements the kernel dropped), gets the ceiling. The ports are quiet when every caller
has been silent for its own quiet time and the watcher itself has observed for the floor;
when no caller could be judged by its rate, for the ceiling, which is the fixed rule of
earlier versions.

So a consumer calling 50 times a second, polled every 0.4 s, shows gaps of about 0.4 s and
is gone after the floor; a caller every second after about 4 s; a caller bursting every
5 s, once two bursts were seen, after the ceiling; a caller seen once or twice, after the
ceiling.

False positives, and why they are rare. Declaring a caller gone while it still calls
needs a silence longer than ``FACTOR`` times the longest gap seen in at least
``MIN_ARRIVALS`` arrivals. For gaps that are independent and alike, the chance that the
next gap is longer than the longest of n earlier ones is at most 1/(n + 1) whatever
their distribution, and the chance it is ``FACTOR`` (4) times longer is far smaller: for
requests arriving at random (Poisson), below 1 in 10,000 after ten arrivals. The floor
covers pauses of the caller itself (a garbage-collection pause of a JVM caller stops all
its calls; they last well under 2 s). What the rule cannot see is a pattern longer than
the watch: a caller whose burst of 0.3 s or more happened to end just as the
watch began, and whose next burst comes later than the floor, looks like a steady
caller that stopped. Shorter bursts, and callers heard once or twice, get the ceiling.
Services with callers that burst (batch jobs) set ``PRESTOP_QUIET_MIN_SECONDS`` to the
burst period, or equal to ``PRESTOP_QUIET_SECONDS`` for the fixed rule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

FACTOR = 4.0
MIN_ARRIVALS = 3
MIN_SPAN_S = 0.3


@dataclass
class Caller:
    first: float
    last: float
    arrivals: int = 1
    longest_gap: float = 0.0

    def heard(self, when: float, count: int = 1) -> None:
        if when <= self.last:
            return  # already counted: the same arrival seen again
        self.longest_gap = max(self.longest_gap, when - self.last)
        self.last = when
        self.arrivals += count


@dataclass(frozen=True)
class QuietRule:
    floor: float
    ceiling: float
    factor: float = FACTOR
    min_arrivals: int = MIN_ARRIVALS
    min_span: float = MIN_SPAN_S

    def judged(self, caller: Caller) -> bool:
        """Seen often enough, over long enough, for its own rate to say something."""
        return caller.arrivals >= self.min_arrivals and caller.last - caller.first >= self.min_span

    def quiet_time(self, caller: Caller) -> float:
        """How long ``caller`` must be silent to count as gone."""
        if not self.judged(caller):
            return self.ceiling
        return min(self.ceiling, max(self.floor, self.factor * caller.longest_gap))


@dataclass(frozen=True)
class Judgement:
    quiet: bool
    until: float  # when the ports count as quiet if nothing more arrives
    judged_by_rate: bool  # at least one caller was seen often enough to be judged by its rate
    pending: str | None  # the caller (or "unattributed") that holds the wait longest, when not quiet


@dataclass
class Callers:
    """What the watcher has heard from each caller since ``started``."""

    rule: QuietRule
    started: float
    callers: dict[str, Caller] = field(default_factory=dict)
    unattributed: float | None = None

    def heard(self, peer: str, when: float, count: int = 1) -> None:
        """``peer`` sent ``count`` requests, the latest at ``when`` (call once per poll and caller)."""
        caller = self.callers.get(peer)
        if caller is None:
            self.callers[peer] = Caller(when, when, count)
        else:
            caller.heard(when, count)

    def heard_unattributed(self, when: float) -> None:
        self.unattributed = when if self.unattributed is None else max(self.unattributed, when)

    def restart(self, at: float) -> None:
        """Evidence starts over at ``at``: nothing heard before counts, and the observation begins again."""
        self.started, self.callers, self.unattributed = at, {}, None

    def quiet_time(self, peer: str) -> float:
        return self.rule.quiet_time(self.callers[peer])

    def last(self) -> float | None:
        times = [c.last for c in self.callers.values()]
        if self.unattributed is not None:
            times.append(self.unattributed)
        return max(times, default=None)

    def judge(self, now: float) -> Judgement:
        by_rate = any(self.rule.judged(c) for c in self.callers.values())
        holds: list[tuple[float, str]] = [
            (self.started + (self.rule.floor if by_rate else self.rule.ceiling), "observing")
        ]
        holds += [(c.last + self.quiet_time(peer), peer) for peer, c in self.callers.items()]
        if self.unattributed is not None:
            holds.append((self.unattributed + self.rule.ceiling, "unattributed"))
        until, pending = max(holds)
        quiet = now >= until
        return Judgement(quiet, until, by_rate, None if quiet else pending)
