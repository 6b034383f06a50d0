"""Callers in the cluster: the benchmark's Spring Cloud consumer as pods, and what they recorded.

The consumer (``bench/consumer``, unchanged) finds the service through Nacos and Spring Cloud
LoadBalancer with its defaults (round robin, instance lists cached 35 s), calls it at a steady
rate without retries, and prints one JSON line per call: start time, duration, status or error,
and the instance it chose. ``kubectl logs`` of the pod is the full record.

Two consumers are started half a cache period apart. A cached list is refreshed 35 s after it was
fetched, so their refreshes are then about 17 s apart: whenever an instance leaves Nacos, at
least one of them keeps calling it for more than 10 s. A drain that does not wait for the callers
fails requests on that one; a test that proves "zero failures" is therefore able to fail.
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from localkube import HarnessError, Kube, poll, workloads

#: Spring Cloud LoadBalancer's default time-to-live of a cached instance list.
CACHE_TTL_S = 35.0
#: The wanted distance between two consumers' refreshes, and how far off it may be: a drain that
#: ends within the 10 s after a refresh must still meet a consumer holding the old list.
STAGGER_S = CACHE_TTL_S / 2
STAGGER_TOLERANCE_S = 5.0
RATE = 20  # calls per second per consumer


@dataclass(frozen=True)
class Call:
    seq: int
    t_ms: int  # when the call started, epoch milliseconds
    ms: int
    status: int | None
    error: str | None
    host: str | None

    @property
    def ok(self) -> bool:
        return self.status == 200 and self.error is None

    @property
    def ended_s(self) -> float:
        return (self.t_ms + self.ms) / 1000


def calls(kube: Kube, pod: str, namespace: str) -> list[Call]:
    """Every call the consumer recorded so far, in order."""
    found = []
    for line in kube.logs(pod, namespace=namespace).splitlines():
        if not line.startswith('{"seq"'):
            continue
        raw: dict[str, Any] = json.loads(line)
        found.append(Call(raw["seq"], raw["t"], raw["ms"], raw["status"], raw["error"], raw["host"]))
    return found


class Consumers:
    """Two consumers of one service, their refreshes half a cache period apart."""

    def __init__(self, kube: Kube, namespace: str, image: str, *, nacos_namespace: str, url: str) -> None:
        self.kube, self.namespace, self.image = kube, namespace, image
        self.nacos_namespace, self.url = nacos_namespace, url
        self.names = ("consumer-a", "consumer-b")
        self.phases: dict[str, float] = {}

    def _start(self, name: str) -> float:
        """Create the pod; how long it took from then to its first answered call."""
        self.kube.delete("pod", name, namespace=self.namespace)
        created = time.time()
        self.kube.apply(
            workloads.consumer(
                name, self.namespace, self.image, nacos_namespace=self.nacos_namespace, url=self.url, rate=RATE
            )
        )
        first: Call = poll(
            lambda: next(iter(calls(self.kube, name, self.namespace)), None),
            timeout=240,
            interval=1.0,
            what=f"{self.namespace}/{name}'s first call",
        )
        # The load balancer's cache holds the list fetched for the first call from when it ended.
        self.phases[name] = first.ended_s
        return first.ended_s - created

    def start(self, hosts: set[str]) -> None:
        """Start both, the second one half a period after the first; wait until each calls every host."""
        a, b = self.names
        startup = self._start(a)
        for _attempt in range(4):
            # Created so that its first call lands half a period after the first consumer's, mod 35 s.
            target = self.phases[a] + STAGGER_S - startup
            while target < time.time():
                target += CACHE_TTL_S
            time.sleep(target - time.time())
            startup = self._start(b)
            if abs(self.stagger() - STAGGER_S) <= STAGGER_TOLERANCE_S:
                break
        else:
            raise HarnessError(f"{self.namespace}: consumers' refreshes stayed {self.stagger():.1f} s apart")
        for name in self.names:
            poll(
                functools.partial(self._calling, name, hosts),
                timeout=120,
                interval=1.0,
                what=f"{self.namespace}/{name} calling {sorted(hosts)}",
            )

    def _calling(self, name: str, hosts: set[str]) -> bool:
        """Whether the last 5 s of calls reached every host."""
        return hosts <= {c.host for c in calls(self.kube, name, self.namespace)[-RATE * 5 :]}

    def stagger(self) -> float:
        a, b = self.names
        return (self.phases[b] - self.phases[a]) % CACHE_TTL_S

    def record(self) -> dict[str, list[Call]]:
        return {name: calls(self.kube, name, self.namespace) for name in self.names}


def summary(record: list[Call], since_s: float, until_s: float) -> dict[str, Any]:
    """Calls started in a window: how many, the longest pause between two, how many failed and how,
    and the numbers missing from the consumer's sequence."""
    window = [c for c in record if since_s <= c.t_ms / 1000 <= until_s]
    failed = [c for c in window if not c.ok]
    seqs = [c.seq for c in record]
    starts = sorted(c.t_ms / 1000 for c in window)
    return {
        "calls": len(window),
        "longest_pause_s": max((b - a for a, b in itertools.pairwise(starts)), default=0.0),
        "failed": len(failed),
        "failures": dict(Counter(f"{c.host} {c.status or c.error}" for c in failed)),
        "hosts": dict(Counter(c.host for c in window if c.ok)),
        "lost": sorted(set(range(1, max(seqs, default=0) + 1)) - set(seqs)),
    }
