"""The registry watcher: no configured Nacos server serves any registration, and consumers' caches have expired.

Consumers do not ask Nacos on every call: Spring Cloud LoadBalancer caches the instance list
for 35 s by default and Ribbon refreshes every 30 s. So "gone" needs both facts: every server
that answers has stopped serving every registration of the pod, and the consumer-cache allowance
has passed since the first poll that saw them so.

In a drain, the watcher also holds the registrations out (``DrainSet.hold``): one that is served
again gets ``enabled=false`` once more, and the observation asks every watcher to start its
evidence over from that moment (``Observation.restarts_at``).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from prestop_agent.clock import Clock, Deadline
from prestop_agent.drain import Check, DrainSet
from prestop_agent.errors import AuthError, WatcherError
from prestop_agent.nacos.model import Registration
from prestop_agent.source import Resolved, Source
from prestop_agent.watchers.base import Observation, Verdict, WatchContext

NAME = "registry"
DEFAULT_CONSUMER_CACHE_SECONDS = 35.0
_MAX_SHOWN = 10
# A write usually shows in the served list within a second: look again soon, then less and less often.
FIRST_RECHECK_S = 0.25


def default_consumer_cache(watched: Collection[str]) -> float:
    """The allowance when none is set: 0 with ``traffic`` watched, which sees the callers directly; else 35 s."""
    return 0.0 if "traffic" in watched else DEFAULT_CONSUMER_CACHE_SECONDS


def consumer_cache(src: Source, watched: Collection[str]) -> Resolved[float]:
    return src.seconds("PRESTOP_CONSUMER_CACHE_SECONDS", flag="consumer-cache", default=default_consumer_cache(watched))


@dataclass(frozen=True)
class RegistryConfig:
    consumer_cache_s: float

    def build(self, context: WatchContext) -> RegistryWatcher:
        return RegistryWatcher(context.registrations, self.consumer_cache_s, context.clock)


def load_config(src: Source, watched: Collection[str]) -> RegistryConfig:
    return RegistryConfig(consumer_cache(src, watched).value)


@dataclass
class RegistryWatcher:
    registrations: DrainSet
    consumer_cache_s: float
    clock: Clock
    name: str = NAME
    last: Observation | None = None  # the latest observation, for messages about it
    _unserved_since: float | None = None
    _served_polls: int = 0

    def close(self) -> None:
        """Nothing to release: the registry belongs to the run."""

    def restart(self, at: float) -> None:
        """The consumer-cache allowance counts again from the next poll that sees every registration unserved."""
        self._unserved_since = None

    def poll(self, now: float, timeout: float) -> Observation:
        if not self.registrations.registrations:
            return Observation(Verdict.UNKNOWN, "nothing_registered")
        deadline = Deadline.after(self.clock, timeout)
        try:
            check = self.registrations.check(deadline)
            restarted = self.registrations.hold(check, deadline)
        except AuthError as exc:
            raise WatcherError(str(exc)) from exc
        self.last = self._judge(now, check, restarted)
        return self.last

    def _judge(self, now: float, check: Check, restarted: list[Registration]) -> Observation:
        serving = check.serving
        if not any(serving.answered.values()):
            raise WatcherError("no Nacos server answered: " + "; ".join(serving.failed))
        answered = {server for servers in serving.answered.values() for server in servers}
        details: dict[str, object] = {"answered": len(answered), "unreachable": len(serving.failed)}
        if serving.skipped:
            details["skipped_unresponsive"] = serving.skipped
        if restarted:
            self._unserved_since = None
            came_back = [str(r) for r in restarted][:_MAX_SHOWN]
            details.update(registrations=came_back, reasserted=self.registrations.reasserted)
            return Observation(Verdict.PRESENT, "served_again", details, restarts_at=now)
        kept = self.registrations.kept
        if kept:
            self._unserved_since = None
            return Observation(Verdict.PRESENT, "kept_last_instance", {**details, "kept": [str(r) for r in kept]})
        if check.served:
            self._unserved_since = None
            serving_them = {str(r): serving.servers(r) for r in check.served[:_MAX_SHOWN]}
            recheck = FIRST_RECHECK_S * 2**self._served_polls
            self._served_polls += 1
            return Observation(
                Verdict.PRESENT, "still_served", {**details, "serving": serving_them, "next_poll_s": recheck}
            )
        self._served_polls = 0
        if check.unanswered:
            unanswered = [str(r) for r in check.unanswered][:_MAX_SHOWN]
            return Observation(Verdict.UNKNOWN, "unanswered", {**details, "unanswered": unanswered})
        if self._unserved_since is None:
            self._unserved_since = now
        left = self.consumer_cache_s - (now - self._unserved_since)
        if left > 0:
            return Observation(
                Verdict.PRESENT, "consumer_cache", {**details, "cache_left_s": round(left, 3), "next_poll_s": left}
            )
        return Observation(Verdict.GONE, "unserved", details)
