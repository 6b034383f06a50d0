"""The registry watcher: no configured Nacos server serves the instance, and consumers' caches have expired.

Consumers do not ask Nacos on every call: Spring Cloud LoadBalancer caches the instance list
for 35 s by default and Ribbon refreshes every 30 s. So "gone" needs both facts: every server
that answers has stopped serving this ip:port, and the consumer-cache allowance has passed
since the first poll that saw it so.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from prestop_agent.clock import Clock, Deadline
from prestop_agent.errors import AuthError, WatcherError
from prestop_agent.nacos.model import ServiceKey
from prestop_agent.nacos.registry import Registry
from prestop_agent.source import Resolved, Source
from prestop_agent.watchers.base import Observation, Verdict, WatchContext

NAME = "registry"
DEFAULT_CONSUMER_CACHE_SECONDS = 35.0


def default_consumer_cache(watched: Collection[str]) -> float:
    """The allowance when none is set: 0 with ``traffic`` watched, which sees the callers directly; else 35 s."""
    return 0.0 if "traffic" in watched else DEFAULT_CONSUMER_CACHE_SECONDS


def consumer_cache(src: Source, watched: Collection[str]) -> Resolved[float]:
    return src.seconds("PRESTOP_CONSUMER_CACHE_SECONDS", flag="consumer-cache", default=default_consumer_cache(watched))


@dataclass(frozen=True)
class RegistryConfig:
    consumer_cache_s: float

    def build(self, context: WatchContext) -> RegistryWatcher:
        return RegistryWatcher(context.registry, context.service, self.consumer_cache_s, context.clock)


def load_config(src: Source, watched: Collection[str]) -> RegistryConfig:
    return RegistryConfig(consumer_cache(src, watched).value)


@dataclass
class RegistryWatcher:
    registry: Registry
    key: ServiceKey
    consumer_cache_s: float
    clock: Clock
    name: str = NAME
    _unserved_since: float | None = None

    def close(self) -> None:
        """Nothing to release: the registry belongs to the run."""

    def poll(self, now: float, timeout: float) -> Observation:
        deadline = Deadline.after(self.clock, timeout)
        try:
            served = self.registry.served(self.key, deadline)
        except AuthError as exc:
            raise WatcherError(str(exc)) from exc
        if not served.answered:
            raise WatcherError("no Nacos server answered: " + "; ".join(served.failed))
        details: dict[str, object] = {"answered": len(served.answered), "unreachable": len(served.failed)}
        if served.skipped:
            details["skipped_unresponsive"] = served.skipped
        if served.serving:
            self._unserved_since = None
            return Observation(Verdict.PRESENT, "still_served", {**details, "serving": served.serving})
        if self._unserved_since is None:
            self._unserved_since = now
        left = self.consumer_cache_s - (now - self._unserved_since)
        if left > 0:
            return Observation(
                Verdict.PRESENT, "consumer_cache", {**details, "cache_left_s": round(left, 3), "next_poll_s": left}
            )
        return Observation(Verdict.GONE, "unserved", details)
