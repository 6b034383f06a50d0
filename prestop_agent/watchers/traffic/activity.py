"""What one poll proves about the watched ports: when an outside peer last sent something.

Evidence, per poll, for sockets whose local port is a watched port:

* new connection: a connection (by its addresses) not seen in the previous poll, a
  half-open SYN_RECV, or a new TIME_WAIT left by a connection that opened and closed
  between polls;
* ended connection (``closed``): a connection that opened and ended between two polls,
  or that received data after the previous poll and then ended. This is what counts the
  callers that send one request per connection and close first, which leave no trace in
  the table;
* inbound data: from the kernel's socket diagnostics (NETLINK_SOCK_DIAG, inet_diag with
  ``tcp_info``): ``tcpi_last_data_recv`` dates the last data received on each
  connection, ``tcpi_bytes_received`` growing between polls proves data arrived since
  the last poll. This is what lets an idle keep-alive connection go quiet while a busy
  one keeps the wait going. It works unprivileged for the agent's own namespace;
* queued bytes: unread request bytes or an unacknowledged response (rx/tx queue), and a
  non-empty accept backlog on the listening socket, count as activity now.

Outbound data alone (a long response, a server push) does not count: the question is
whether anyone still sends this pod requests; finishing work in flight is the app's
graceful shutdown.

Fallback without socket diagnostics (``/proc/net/tcp`` and ``tcp6`` only, also used
when ``PRESTOP_PROC_ROOT`` points elsewhere): /proc has no per-connection byte counters,
so an open connection from an outside peer counts as active whenever the namespace's
``InSegs`` counter (``/proc/net/snmp``) moved since the previous poll, and always when
that counter cannot be read.

Every time that cannot be measured is dated to the poll that first saw it. Evidence
carries the caller's address when the kernel names it; what cannot be attributed
(``accept_backlog``, ``unmeasured_connection``, announcements the kernel dropped) is
marked so, and the quiet judgement gives it the full quiet time.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass, field

from prestop_agent.watchers.base import PodTarget
from prestop_agent.watchers.traffic.closed import Closed
from prestop_agent.watchers.traffic.sockets import (
    CLOSE,
    CLOSE_WAIT,
    CLOSING,
    ESTABLISHED,
    FIN_WAIT1,
    FIN_WAIT2,
    LAST_ACK,
    LISTEN,
    NEW_SYN_RECV,
    SYN_RECV,
    SYN_SENT,
    TIME_WAIT,
    Conn,
    normalize_ip,
)

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_CONNECTING = frozenset({SYN_RECV, NEW_SYN_RECV})
_PEER_MAY_SEND = frozenset({ESTABLISHED, FIN_WAIT1, FIN_WAIT2})  # the peer has not sent FIN yet
_OPEN = frozenset({ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING})


UNATTRIBUTED = frozenset({"accept_backlog", "unmeasured_connection", "missed_closed"})


@dataclass
class Activity:
    when: float
    kind: str
    peer: str  # "" when the kernel does not say who
    port: int
    count: int = 1  # requests it stands for, where the kernel counted them (data segments); else 1

    @property
    def attributed(self) -> bool:
        return self.kind not in UNATTRIBUTED


Flow = tuple[str, int, str, int]


@dataclass
class Scan:
    """What one poll found on the watched ports."""

    events: list[Activity] = field(default_factory=list)
    flows: set[Flow] = field(default_factory=set)
    received: dict[Flow, int] = field(default_factory=dict)
    segments: dict[Flow, int] = field(default_factory=dict)
    peers: set[str] = field(default_factory=set)
    open_count: int = 0
    ignored: int = 0
    new_count: int = 0
    closed_count: int = 0


class Scanner:
    """Reads one poll's sockets as evidence; remembers the connections and byte counts of the previous poll."""

    def __init__(self, ports: frozenset[int], ignore: tuple[IPNetwork, ...]) -> None:
        self.ports = ports
        self._ignore = ignore
        self._previous_flows: set[Flow] = set()
        self._previous_bytes: dict[Flow, int] = {}
        self._previous_segments: dict[Flow, int] = {}

    def scan(
        self,
        conns: list[Conn],
        now: float,
        since: float,
        *,
        first: bool,
        in_segs_moved: bool,
        closed: Closed | None = None,
    ) -> Scan:
        """The evidence in ``conns`` and ``closed`` at ``now``; ``since`` is the previous poll (else ``now``)."""
        scan = Scan()
        if closed is not None:
            self._ended(closed, now, first, scan)
        for conn in conns:
            if conn.local_port not in self.ports:
                continue
            if conn.state == LISTEN:
                if conn.rx_queue > 0:  # connections the kernel accepted and the app has not yet
                    scan.events.append(Activity(now, "accept_backlog", "", conn.local_port))
                continue
            if conn.state in (SYN_SENT, CLOSE):
                continue  # outbound from the service port, or already finished
            if self._is_ignored(conn.peer_ip):
                scan.ignored += 1
                continue
            scan.flows.add(conn.flow)
            if conn.state in _OPEN or conn.state in _CONNECTING:
                scan.open_count += 1
                scan.peers.add(conn.peer_ip)
            scan.events.extend(self._evidence(conn, now, since, first, in_segs_moved))
            if not first and conn.flow not in self._previous_flows:
                scan.new_count += 1
            if conn.bytes_received is not None:
                scan.received[conn.flow] = conn.bytes_received
            if conn.data_segs_in is not None:
                scan.segments[conn.flow] = conn.data_segs_in
        self._previous_flows = scan.flows
        self._previous_bytes = scan.received
        self._previous_segments = scan.segments
        return scan

    def _count(self, conn: Conn) -> int:
        """Requests that arrived on ``conn`` since the previous poll, as data segments (at least 1)."""
        previous = self._previous_segments.get(conn.flow, 0)
        return max(1, (conn.data_segs_in or 0) - previous)

    def _ended(self, closed: Closed, now: float, first: bool, scan: Scan) -> None:
        """Connections that ended since the previous poll: evidence if they carried something the table did not show."""
        if closed.missed and not first:
            scan.events.append(Activity(now, "missed_closed", "", 0))
        for conn in closed.conns:
            if conn.local_port not in self.ports or conn.state == LISTEN or self._is_ignored(conn.peer_ip):
                continue
            if first:
                continue  # ended before the watch began: its time is unknown, and the table has the rest
            if conn.flow not in self._previous_flows:
                scan.closed_count += 1
                scan.events.append(Activity(now, "closed_connection", conn.peer_ip, conn.local_port, self._count(conn)))
            elif self._received_more(conn):
                scan.events.append(Activity(now, "data", conn.peer_ip, conn.local_port, self._count(conn)))

    def _evidence(self, conn: Conn, now: float, since: float, first: bool, in_segs_moved: bool) -> list[Activity]:
        """What one socket proves about when an outside peer last sent something."""

        def at(kind: str, when: float, count: int = 1) -> Activity:
            return Activity(min(when, now), kind, conn.peer_ip, conn.local_port, count)

        if conn.state in _CONNECTING:
            return [at("connecting", now)]
        is_new = conn.flow not in self._previous_flows
        if conn.state == TIME_WAIT:
            # a connection that closed; its age is not measured: date it to the poll that first saw it
            return [at("closed_connection", now)] if is_new else []
        found: list[Activity] = []
        if conn.rx_queue > 0 or conn.tx_queue > 0:
            found.append(at("queued_bytes", now))
        if conn.last_data_recv_ms is not None:
            last_recv = now - conn.last_data_recv_ms / 1000.0
            if first:
                found.append(at("data", last_recv))  # measured age, also for connections older than the watch
            elif is_new:
                found.append(at("new_connection", now, self._count(conn)))
            elif self._data_arrived(conn, last_recv, since):
                found.append(at("data", max(last_recv, since), self._count(conn)))
        elif is_new:
            found.append(at("new_connection", now))  # at the first poll too: its age is unknown
        elif conn.state in _PEER_MAY_SEND and in_segs_moved:
            found.append(at("unmeasured_connection", now))
        return found

    def _data_arrived(self, conn: Conn, last_recv: float, since: float) -> bool:
        """Did this connection receive data since the previous poll?"""
        more = self._received_more(conn)
        return last_recv > since if more is None else more

    def _received_more(self, conn: Conn) -> bool | None:
        """Did the kernel count more data in than at the previous poll? None when it cannot say.

        Data segments first: the byte count also counts the peer's FIN, which closes an idle
        connection without carrying a request.
        """
        segments = self._previous_segments.get(conn.flow)
        if conn.data_segs_in is not None and segments is not None:
            return conn.data_segs_in > segments
        previous = self._previous_bytes.get(conn.flow)
        if conn.bytes_received is not None and previous is not None:
            return conn.bytes_received > previous + (1 if conn.state not in _PEER_MAY_SEND else 0)
        return None

    def _is_ignored(self, peer: str) -> bool:
        ip = ipaddress.ip_address(peer)
        return any(ip.version == net.version and ip in net for net in self._ignore)


def ignored_networks(
    target: PodTarget, extra: Iterable[IPNetwork], *, loopback: bool, host: bool
) -> tuple[IPNetwork, ...]:
    """Peers that are not callers: ``extra``, loopback and the pod itself (``loopback``), the node (``host``)."""
    nets: list[IPNetwork] = list(extra)
    if loopback:
        nets += [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
        nets += _host_networks([target.pod_ip])
    if host and target.host_ip:
        nets += _host_networks([target.host_ip])
    return tuple(nets)


def _host_networks(addresses: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(normalize_ip(a)) for a in addresses]
