"""The traffic watcher's settings and its judgement: GONE once the watched ports have been quiet long enough.

GONE is only given after the watcher itself has observed the ports for the quiet time
(``PRESTOP_QUIET_SECONDS``) with no activity from an outside peer (``activity``), so one
quiet poll never suffices on its own. Without socket diagnostics an open connection may
hold the wait until the peers close it or the budget ends; it never says GONE early.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import structlog

from prestop_agent.errors import ConfigError, WatcherError
from prestop_agent.source import Source, parse_networks, parse_port
from prestop_agent.watchers.base import Observation, PodTarget, Verdict, WatchContext
from prestop_agent.watchers.traffic.activity import Activity, IPNetwork, Scanner, ignored_networks
from prestop_agent.watchers.traffic.sockets import Conn, ProcNetTable, SockDiagTable, SocketTable, read_snmp_tcp

NAME = "traffic"

DEFAULT_QUIET_SECONDS = 10.0
DEFAULT_PROC_ROOT = "/proc"
SOURCES = ("auto", "sock_diag", "proc")

log = structlog.get_logger("prestop_agent.watchers.traffic")
_MAX_PEERS_SHOWN = 10


@dataclass(frozen=True)
class TrafficConfig:
    quiet_seconds: float = DEFAULT_QUIET_SECONDS
    proc_root: str = DEFAULT_PROC_ROOT
    extra_ports: tuple[int, ...] = ()
    ignore: tuple[IPNetwork, ...] = ()
    ignore_loopback: bool = True
    ignore_host: bool = True
    source: str = "auto"

    def build(self, context: WatchContext) -> TrafficWatcher:
        tables: list[SocketTable] = []
        if self.source == "sock_diag" or (self.source == "auto" and self.proc_root == DEFAULT_PROC_ROOT):
            tables.append(SockDiagTable())
        if self.source != "sock_diag":
            tables.append(ProcNetTable(self.proc_root))
        return TrafficWatcher(self, context.target, tables=tables, counters=lambda: read_snmp_tcp(self.proc_root))


def load_config(src: Source, watched: Collection[str] = ()) -> TrafficConfig:
    quiet = src.seconds("PRESTOP_QUIET_SECONDS", flag="quiet-seconds", default=DEFAULT_QUIET_SECONDS, minimum=0.1)
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
        proc_root=root.value,
        extra_ports=tuple(ports),
        ignore=tuple(ignore),
        ignore_loopback=src.boolean("PRESTOP_TRAFFIC_IGNORE_LOOPBACK", default=True).value,
        ignore_host=src.boolean("PRESTOP_TRAFFIC_IGNORE_HOST", default=True).value,
        source=mode.value.lower(),
    )


class TrafficWatcher:
    """Judges quiet over time; keeps what it saw in the previous poll."""

    name = NAME

    def __init__(
        self,
        config: TrafficConfig,
        target: PodTarget,
        *,
        tables: Sequence[SocketTable],
        counters: Callable[[], Mapping[str, int]] | None = None,
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
        self._started: float | None = None
        self._previous_poll: float | None = None
        self._previous_counters: Mapping[str, int] | None = None
        self._last: Activity | None = None

    @property
    def source(self) -> str:
        return self._tables[0].source

    def close(self) -> None:
        """Nothing to release: each poll opens and closes its own netlink socket."""

    def restart(self, at: float) -> None:
        """Quiet counts again from ``at``: a registration came back, so callers may have found the pod again."""
        if self._started is not None:
            self._started = max(self._started, at)

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
                    continue
                raise WatcherError(f"cannot read the pod's TCP sockets ({table.source}): {exc}") from exc

    def _read_counters(self) -> Mapping[str, int] | None:
        if self._counters is None:
            return None
        try:
            return self._counters()
        except (OSError, ValueError) as exc:
            log.debug("traffic_counters_unavailable", error=str(exc))
            return None

    def poll(self, now: float, timeout: float) -> Observation:
        conns = self._read(timeout)
        counters = self._read_counters()
        first = self._started is None
        started = now if self._started is None else self._started
        self._started = started
        since = now if self._previous_poll is None else self._previous_poll

        before = self._previous_counters
        # Without both readings we cannot prove that nothing arrived: assume it did.
        in_segs_moved = counters is None or before is None or counters.get("InSegs") != before.get("InSegs")
        passive_opens = (
            None
            if counters is None or before is None
            else counters.get("PassiveOpens", 0) - before.get("PassiveOpens", 0)
        )

        scan = self._scanner.scan(conns, now, since, first=first, in_segs_moved=in_segs_moved)
        events, peers = scan.events, scan.peers
        open_count, ignored, new_count = scan.open_count, scan.ignored, scan.new_count

        latest = max(events, key=lambda a: a.when, default=None)
        if latest is not None and (self._last is None or latest.when > self._last.when):
            log.info(
                "traffic_activity",
                kind=latest.kind,
                peer=latest.peer or None,
                port=latest.port,
                age_s=round(now - latest.when, 3),
                connections=open_count,
            )
            self._last = latest

        self._previous_poll = now
        if counters is not None:
            self._previous_counters = counters

        quiet_since = started if self._last is None else max(started, self._last.when)
        quiet_for = max(0.0, now - quiet_since)
        details: dict[str, object] = {
            "source": self.source,
            "ports": sorted(self._scanner.ports),
            "connections": open_count,
            "peers": sorted(peers)[:_MAX_PEERS_SHOWN],
            "ignored_connections": ignored,
            "new_connections": new_count,
            "last_activity_age_s": None if self._last is None else round(now - self._last.when, 3),
            "last_activity_kind": None if self._last is None else self._last.kind,
            "quiet_for_s": round(quiet_for, 3),
            "quiet_seconds": self._config.quiet_seconds,
            "passive_opens": passive_opens,
        }
        if quiet_for >= self._config.quiet_seconds:
            return Observation(Verdict.GONE, "quiet", details)
        if self._last is not None and now - self._last.when < self._config.quiet_seconds:
            if self._last.kind == "unmeasured_connection":
                return Observation(Verdict.PRESENT, "unmeasured_connections", details)
            return Observation(Verdict.PRESENT, "recent_activity", details)
        return Observation(Verdict.PRESENT, "observing", details)
