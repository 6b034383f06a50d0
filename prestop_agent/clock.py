"""Time, injected: a monotonic clock with its sleep, and the one deadline of a run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float: ...

    def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def sleep(self, seconds: float) -> None:
        if seconds > 0:
            time.sleep(seconds)


@dataclass(frozen=True)
class Deadline:
    """The end of the budget, computed once at start and passed down."""

    clock: Clock
    started: float
    end: float

    @classmethod
    def after(cls, clock: Clock, seconds: float) -> Deadline:
        now = clock.monotonic()
        return cls(clock=clock, started=now, end=now + seconds)

    def remaining(self) -> float:
        return max(0.0, self.end - self.clock.monotonic())

    def elapsed(self) -> float:
        return self.clock.monotonic() - self.started

    def expired(self) -> bool:
        return self.remaining() <= 0.0

    def cap(self, timeout: float) -> float:
        """A request timeout no longer than the time left (never below a few ms)."""
        return max(0.001, min(timeout, self.remaining()))

    def sleep(self, seconds: float) -> None:
        """Sleep, but never past the deadline."""
        self.clock.sleep(min(seconds, self.remaining()))
