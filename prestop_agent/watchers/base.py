"""What every watcher is: a repeated, cheap answer to "is anything still sending this pod traffic?"."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol


class Verdict(enum.Enum):
    GONE = "gone"  # the evidence says traffic has left
    PRESENT = "present"  # the evidence says traffic may still arrive
    UNKNOWN = "unknown"  # no answer yet (never counts as gone)


@dataclass(frozen=True)
class Observation:
    """One poll's answer. ``reason`` is a short snake_case word; ``details`` are log fields."""

    verdict: Verdict
    reason: str
    details: Mapping[str, object] = field(default_factory=dict)


@dataclass(frozen=True)
class PodTarget:
    """The pod as the watchers see it: where its traffic arrives, and where the node is."""

    pod_ip: str
    port: int
    host_ip: str | None = None


class Watcher(Protocol):
    """A source of evidence.

    ``poll`` is called repeatedly by the wait loop with the monotonic time ``now`` and the
    longest it may block (already capped by the deadline). It returns an ``Observation``,
    or raises ``WatcherError`` for a failed poll (the loop logs it and keeps polling).
    Watchers that judge over time (quiet for N seconds) keep their state between polls.
    """

    @property
    def name(self) -> str: ...

    def poll(self, now: float, timeout: float) -> Observation: ...
