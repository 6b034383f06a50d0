"""What every watcher is: a repeated, cheap answer to "is anything still sending this pod traffic?"."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from prestop_agent.clock import Clock
from prestop_agent.drain import DrainSet
from prestop_agent.nacos.registry import Registry


class Verdict(enum.Enum):
    GONE = "gone"  # the evidence says traffic has left
    PRESENT = "present"  # the evidence says traffic may still arrive
    UNKNOWN = "unknown"  # no answer yet (never counts as gone)


@dataclass(frozen=True)
class Observation:
    """One poll's answer. ``reason`` is a short snake_case word; ``details`` are log fields.

    ``restarts_at`` (monotonic time) says that evidence gathered before it no longer counts, for
    every watcher: a registration was served again, so callers may have found the pod again. The
    wait loop passes it on to every watcher's ``restart``.
    """

    verdict: Verdict
    reason: str
    details: Mapping[str, object] = field(default_factory=dict)
    restarts_at: float | None = None


@dataclass(frozen=True)
class PodTarget:
    """The pod as the watchers see it: where its traffic arrives, and where the node is."""

    pod_ip: str
    port: int
    host_ip: str | None = None


@dataclass(frozen=True)
class WatchContext:
    """What every watcher is built with for one run: the pod, the run's clock, its Nacos cluster and registrations.

    ``registry`` is the run's own connection to the servers; ``registrations`` is every
    registration of the pod the run drains (or, for ``status``, would drain), and whether the
    run holds them out (writes enabled=false again when one comes back) or only looks.
    """

    target: PodTarget
    clock: Clock
    registry: Registry
    registrations: DrainSet


class Watcher(Protocol):
    """A source of evidence.

    ``poll`` is called repeatedly by the wait loop with the monotonic time ``now`` and the
    longest it may block (already capped by the deadline). It returns an ``Observation``,
    or raises ``WatcherError`` for a failed poll (the loop logs it and keeps polling).
    Watchers that judge over time (quiet for N seconds) keep their state between polls.
    ``restart(at)`` tells a watcher that evidence from before ``at`` no longer counts (a
    registration came back); one that judges over time starts judging again from ``at``, one
    that reads a current state on every poll has nothing to forget.
    ``close`` releases what the watcher opened (clients, connections); whoever built it calls it.
    """

    @property
    def name(self) -> str: ...

    def poll(self, now: float, timeout: float) -> Observation: ...

    def restart(self, at: float) -> None: ...

    def close(self) -> None: ...


class WatcherConfig(Protocol):
    """A watcher's settings, read and checked once at the edge; ``build`` makes the watcher for one run."""

    def build(self, context: WatchContext) -> Watcher: ...
