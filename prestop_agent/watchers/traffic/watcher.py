"""The traffic watcher's settings and its judgement: GONE once every caller has been quiet long enough.

Each poll reads the watched ports' sockets (``sockets``) and the connections that ended
since the previous poll (``closed``), turns them into dated evidence per caller
(``activity``), and asks the quiet rule (``quiet``) whether every caller has been silent
for its own quiet time. GONE is only given after the watcher itself has observed the
ports for at least the floor, so one quiet poll never suffices on its own. The watcher
takes its first look when it is built, which the agent does before it writes to the
registry: callers that follow the registry's pushes stop within a second of the write,
and their rate before it is what lets the rule end the wait early. It polls every 0.4 s
while a caller is active (0.1 s while a caller has been seen fewer than three times),
and otherwise only when the rule could next decide. Without socket diagnostics an open
connection may hold the wait until the peers close it or the budget ends; it never says
GONE early.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import structlog

from prestop_agent.errors import ConfigError, WatcherError
from prestop_agent.source import Source, parse_networks, parse_port
from prestop_agent.watchers.base import Observation, PodTarget, Verdict, WatchContext
from prestop_agent.watchers.traffic.activity import Activity, IPNetwork, Scanner, ignored_networks
from prestop_agent.watchers.traffic.closed import Closed, ClosedFeed
from prestop_agent.watchers.traffic.quiet import Callers, QuietRule
from prestop_agent.watchers.traffic.sockets import Conn, ProcNetTable, SockDiagTable, SocketTable, read_snmp_tcp

NAME = "traffic"

DEFAULT_QUIET_SECONDS = 10.0
DEFAULT_QUIET_MIN_SECONDS = 2.0
ACTIVE_POLL_S = 0.4  # a caller's gaps are measured no finer than this: 4 x 0.4 s stays under the 2 s floor
FIRST_POLLS_S = 0.1  # while an active caller has been seen fewer times than the rule needs
DEFAULT_PROC_ROOT = "/proc"
SOURCES = ("auto", "sock_diag", "proc")

log = structlog.get_logger("prestop_agent.watchers.traffic")
_MAX_PEERS_SHOWN = 10


@dataclass(frozen=True)
class TrafficConfig:
    quiet_seconds: float = DEFAULT_QUIET_SECONDS
    quiet_min_seconds: float = DEFAULT_QUIET_MIN_SECONDS
    proc_root: str = DEFAULT_PROC_ROOT
    extra_ports: tuple[int, ...] = ()
    ignore: tuple[IPNetwork, ...] = ()
    ignore_loopback: bool = True
    ignore_host: bool = True
    source: str = "auto"

    def build(self, context: WatchContext) -> TrafficWatcher:
        """The watcher, after its first look at the ports (the callers' rate before the write is evidence too)."""
        ports = tuple(sorted({context.target.port, *self.extra_ports}))
        tables: list[SocketTable] = []
        feed: ClosedFeed | None = None
        if self.source == "sock_diag" or (self.source == "auto" and self.proc_root == DEFAULT_PROC_ROOT):
            tables.append(SockDiagTable(ports=ports))
            feed = _open_feed(ports)
        if self.source != "sock_diag":
            tables.append(ProcNetTable(self.proc_root))
        watcher = TrafficWatcher(
            self, context.target, tables=tables, counters=lambda: read_snmp_tcp(self.proc_root), feed=feed
        )
        try:
            watcher.poll(context.clock.monotonic(), 1.0)
        except WatcherError as exc:  # the wait's own polls report it
            log.debug("traffic_first_look_failed", error=str(exc))
        return watcher


def _open_feed(ports: tuple[int, ...]) -> ClosedFeed | None:
    try:
        return ClosedFeed(ports)
    except OSError as exc:
        log.warning(
            "traffic_closed_feed_unavailable",
            error=str(exc),
            consequence="one-request connections that close between polls go uncounted",
        )
        return None


def load_config(src: Source, watched: Collection[str] = ()) -> TrafficConfig:
    quiet = src.seconds("PRESTOP_QUIET_SECONDS", flag="quiet-seconds", default=DEFAULT_QUIET_SECONDS, minimum=0.1)
    floor = src.optional_seconds("PRESTOP_QUIET_MIN_SECONDS", minimum=0.1)
    if floor is not None and floor.value > quiet.value:
        raise ConfigError(
            f"PRESTOP_QUIET_MIN_SECONDS={floor.value:g} is longer than the quiet time of {quiet.value:g}s "
            f"({quiet.name}); set it to at most {quiet.value:g}"
        )
    root = src.string("PRESTOP_PROC_ROOT", default=DEFAULT_PROC_ROOT)
    ports: list[int] = []
    found_ports = src.items("PRESTOP_TRAFFIC_PORTS")
    if found_ports is not None:
        for item in found_ports.value:
            ports.append(parse_port("PRESTOP_TRAFFIC_PORTS", item))
    found_ignore = src.items("PRESTOP_TRAFFIC_IGNORE")
    ignore = parse_networks(
        "PRESTOP_TRAFFIC_IGNORE",
        found_ignore.value if found_ignore else (),
        example="comma-separated entries such as 10.0.0.5,10.1.0.0/16",
    )
    mode = src.string("PRESTOP_TRAFFIC_SOURCE", default="auto")
    if mode.value.lower() not in SOURCES:
        raise ConfigError(
            f"PRESTOP_TRAFFIC_SOURCE={mode.value!r} is not known; set it to auto, sock_diag or proc (or unset it)"
        )
    return TrafficConfig(
        quiet_seconds=quiet.value,
        quiet_min_seconds=min(DEFAULT_QUIET_MIN_SECONDS, quiet.value) if floor is None else floor.value,
        proc_root=root.value,
        extra_ports=tuple(ports),
        ignore=tuple(ignore),
        ignore_loopback=src.boolean("PRESTOP_TRAFFIC_IGNORE_LOOPBACK", default=True).value,
        ignore_host=src.boolean("PRESTOP_TRAFFIC_IGNORE_HOST", default=True).value,
        source=mode.value.lower(),
    )


class TrafficWatcher:
    """Judges quiet over time; keeps what it saw in the previous poll and what it heard from each caller."""

    name = NAME

    def __init__(
        self,
        config: TrafficConfig,
        target: PodTarget,
        *,
        tables: Sequence[SocketTable],
        counters: Callable[[], Mapping[str, int]] | None = None,
        feed: ClosedFeed | None = None,
    ) -> None:
        if not tables:
            raise ValueError("the traffic watcher needs at least one socket table")
        self._config = config
        self._scanner = Scanner(
            frozenset({target.port, *config.extra_ports}),
            ignored_networks(target, config.ignore, loopback=config.ignore_loopback, host=config.ignore_host),
        )
        self._tables = list(tables)
        self._counters = counters
        self._feed = feed
        self._callers: Callers | None = None
        self._previous_poll: float | None = None
        self._previous_counters: Mapping[str, int] | None = None
        self._last: Activity | None = None

    @property
    def source(self) -> str:
        return self._tables[0].source

    def restart(self, at: float) -> None:
        """Evidence starts over at ``at``: a registration came back, so callers may have found the pod again."""
        if self._callers is not None:
            self._callers.restart(at)

    def close(self) -> None:
        """Stop listening for ended connections (each poll opens and closes its own dump socket)."""
        if self._feed is not None:
            self._feed.close()
            self._feed = None

    def _read(self, timeout: float) -> list[Conn]:
        while True:
            table = self._tables[0]
            try:
                return table.read(timeout)
            except (OSError, ValueError) as exc:
                if len(self._tables) > 1:
                    log.warning(
                        "traffic_source_unavailable",
                        source=table.source,
                        error=str(exc),
                        fallback=self._tables[1].source,
                    )
                    self._tables.pop(0)
                    self.close()  # the announcements pair with the dump's connections, not with /proc's
                    continue
                raise WatcherError(f"cannot read the pod's TCP sockets ({table.source}): {exc}") from exc

    def _drain(self) -> Closed | None:
        if self._feed is None:
            return None
        try:
            return self._feed.drain()
        except (OSError, ValueError) as exc:
            log.warning("traffic_closed_feed_failed", error=str(exc))
            self.close()
            return Closed(missed=True)

    def _read_counters(self) -> Mapping[str, int] | None:
        if self._counters is None:
            return None
        try:
            return self._counters()
        except (OSError, ValueError) as exc:
            log.debug("traffic_counters_unavailable", error=str(exc))
            return None

    def poll(self, now: float, timeout: float) -> Observation:
        closed = self._drain()  # before the table: a connection that ends in between is then in one or the other
        conns = self._read(timeout)
        counters = self._read_counters()
        first = self._callers is None
        if self._callers is None:
            self._callers = Callers(QuietRule(self._config.quiet_min_seconds, self._config.quiet_seconds), now)
        callers = self._callers
        since = now if self._previous_poll is None else self._previous_poll

        before = self._previous_counters
        # Without both readings we cannot prove that nothing arrived: assume it did.
        in_segs_moved = counters is None or before is None or counters.get("InSegs") != before.get("InSegs")
        passive_opens = (
            None
            if counters is None or before is None
            else counters.get("PassiveOpens", 0) - before.get("PassiveOpens", 0)
        )

        scan = self._scanner.scan(conns, now, since, first=first, in_segs_moved=in_segs_moved, closed=closed)
        latest: dict[str, tuple[float, int]] = {}
        for event in scan.events:
            if event.attributed:
                when, count = latest.get(event.peer, (event.when, 0))
                latest[event.peer] = (max(when, event.when), count + event.count)
            else:
                callers.heard_unattributed(event.when)
        for peer, (when, count) in latest.items():
            callers.heard(peer, when, count)

        newest = max(scan.events, key=lambda a: a.when, default=None)
        if newest is not None and (self._last is None or newest.when > self._last.when):
            log.info(
                "traffic_activity",
                kind=newest.kind,
                peer=newest.peer or None,
                port=newest.port,
                age_s=round(now - newest.when, 3),
                connections=scan.open_count,
            )
            self._last = newest

        self._previous_poll = now
        if counters is not None:
            self._previous_counters = counters

        judgement = callers.judge(now)
        last = callers.last()
        quiet_since = callers.started if last is None else max(callers.started, last)
        details: dict[str, object] = {
            "source": self.source,
            "ports": sorted(self._scanner.ports),
            "connections": scan.open_count,
            "peers": sorted(scan.peers)[:_MAX_PEERS_SHOWN],
            "ignored_connections": scan.ignored,
            "new_connections": scan.new_count,
            "closed_connections": scan.closed_count,
            "last_activity_age_s": None if self._last is None else round(now - self._last.when, 3),
            "last_activity_kind": None if self._last is None else self._last.kind,
            "quiet_for_s": round(max(0.0, now - quiet_since), 3),
            "quiet_needed_s": round(judgement.until - quiet_since, 3),
            "quiet_seconds": self._config.quiet_seconds,
            "quiet_min_seconds": self._config.quiet_min_seconds,
            "judged_by_rate": judgement.judged_by_rate,
            "callers": self._caller_details(callers, now),
            "passive_opens": passive_opens,
        }
        if judgement.quiet:
            return Observation(Verdict.GONE, "quiet", details)
        details["next_poll_s"] = self._next_poll(callers, now, judgement.until)
        if self._last is not None and now - self._last.when < self._config.quiet_seconds:
            if self._last.kind == "unmeasured_connection":
                return Observation(Verdict.PRESENT, "unmeasured_connections", details)
            return Observation(Verdict.PRESENT, "recent_activity", details)
        return Observation(Verdict.PRESENT, "observing", details)

    def _next_poll(self, callers: Callers, now: float, until: float) -> float:
        """Often while a caller is active (its gaps are measured at this grain), else when the rule could decide."""
        wait = max(0.05, until - now)
        active = [c for peer, c in callers.callers.items() if now - c.last < callers.quiet_time(peer)]
        if any(not callers.rule.judged(c) and now - c.last < 1.0 for c in active):
            return min(wait, FIRST_POLLS_S)
        if active:
            return min(wait, ACTIVE_POLL_S)
        return wait

    @staticmethod
    def _caller_details(callers: Callers, now: float) -> list[dict[str, object]]:
        recent = sorted(callers.callers.items(), key=lambda item: item[1].last, reverse=True)[:_MAX_PEERS_SHOWN]
        return [
            {
                "peer": peer,
                "arrivals": c.arrivals,
                "longest_gap_s": round(c.longest_gap, 3),
                "silent_s": round(now - c.last, 3),
                "quiet_time_s": round(callers.quiet_time(peer), 3),
            }
            for peer, c in recent
        ]
