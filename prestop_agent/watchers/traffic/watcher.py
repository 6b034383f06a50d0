"""Watcher ``traffic``: has the pod's service port gone quiet, as seen from inside the pod?

No credentials needed: all containers of a pod share one network namespace, so the
agent sees the TCP sockets of the app. The verdict is GONE when, for
``PRESTOP_QUIET_SECONDS``, no outside peer has opened a connection to a watched port
and no connection on it has carried inbound data.

Default quiet time: 10 s. Callers that still hold this pod (consumers with a cached
instance list, kube-proxy rules, ingress or load-balancer pools) keep sending requests
at their normal rate; a service that got nothing for 10 s after it was taken out of
the registry has almost certainly been dropped by them. 10 s is also the figure a Nacos
maintainer gives for this problem ("wait until no new request for about 10 s"), it is
longer than the 1-5 s poll interval (so one quiet poll never suffices on its own), and
it fits inside the default grace budget. Low-traffic services that see fewer than one
request per 10 s should raise it, or combine this watcher with ``endpoints``.

Evidence, per poll, for sockets whose local port is a watched port:

* new connection: a socket (by peer, local address and inode) not seen in the previous
  poll, a half-open SYN_RECV, or a new TIME_WAIT left by a connection that opened and
  closed between polls;
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
that counter cannot be read. This never says GONE early; it may hold the wait until the
peers close their idle connections or the budget ends.

Every time that cannot be measured is dated to the poll that first saw it, and GONE is
only given after the watcher itself has observed the port for the quiet time.

Peers ignored by default: the node (``HOST_IP``: kubelet probes come from it), loopback
and the pod's own IP (traffic from inside the pod). Behind a sidecar proxy (Istio and
the like) the app's peers are loopback or the pod IP; set
``PRESTOP_TRAFFIC_IGNORE_LOOPBACK=false`` there. ``/proc/net/snmp`` ``PassiveOpens`` is
reported in the details but is not evidence: it is namespace-wide and counts probes and
other ports too.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from prestop_agent.errors import ConfigError, WatcherError
from prestop_agent.source import Source, parse_networks, parse_port
from prestop_agent.watchers.base import Observation, PodTarget, Verdict, WatchContext

NAME = "traffic"

DEFAULT_QUIET_SECONDS = 10.0
DEFAULT_PROC_ROOT = "/proc"
SOURCES = ("auto", "sock_diag", "proc")

log = structlog.get_logger("prestop_agent.watchers.traffic")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# TCP states as numbered by the kernel (include/net/tcp_states.h).
ESTABLISHED = 1
SYN_SENT = 2
SYN_RECV = 3
FIN_WAIT1 = 4
FIN_WAIT2 = 5
TIME_WAIT = 6
CLOSE = 7
CLOSE_WAIT = 8
LAST_ACK = 9
LISTEN = 10
CLOSING = 11
NEW_SYN_RECV = 12

_CONNECTING = frozenset({SYN_RECV, NEW_SYN_RECV})
_PEER_MAY_SEND = frozenset({ESTABLISHED, FIN_WAIT1, FIN_WAIT2})  # the peer has not sent FIN yet
_OPEN = frozenset({ESTABLISHED, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK, CLOSING})
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


# --------------------------------------------------------------------------- sockets


@dataclass(frozen=True)
class Conn:
    """One TCP socket of the namespace; times and byte counts are None when not measured."""

    state: int
    local_ip: str
    local_port: int
    peer_ip: str
    peer_port: int
    inode: int
    rx_queue: int
    tx_queue: int
    last_data_recv_ms: int | None = None
    bytes_received: int | None = None

    @property
    def key(self) -> tuple[str, int, str, int, int]:
        return (self.local_ip, self.local_port, self.peer_ip, self.peer_port, self.inode)


class SocketTable(Protocol):
    """A way to list the namespace's TCP sockets. ``read`` raises OSError or ValueError."""

    @property
    def source(self) -> str: ...

    def read(self, timeout: float) -> list[Conn]: ...


def normalize_ip(address: str) -> str:
    """Canonical text of an address; an IPv4-mapped IPv6 address becomes plain IPv4."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _ip_from_packed(packed: bytes) -> str:
    if len(packed) == 4:
        return socket.inet_ntop(socket.AF_INET, packed)
    return normalize_ip(socket.inet_ntop(socket.AF_INET6, packed))


def decode_proc_address(text: str) -> tuple[str, int]:
    """``0100007F:1F90`` -> ("127.0.0.1", 8080). The kernel prints each 32-bit word in host order."""
    hex_ip, _, hex_port = text.partition(":")
    if len(hex_ip) not in (8, 32) or not hex_port:
        raise ValueError(f"malformed socket address {text!r}")
    words = [int(hex_ip[i : i + 8], 16) for i in range(0, len(hex_ip), 8)]
    packed = struct.pack(f"={len(words)}I", *words)
    return _ip_from_packed(packed), int(hex_port, 16)


def parse_proc_net_tcp(text: str) -> list[Conn]:
    """Parse the body of /proc/net/tcp or /proc/net/tcp6."""
    conns: list[Conn] = []
    for number, line in enumerate(text.splitlines()):
        fields = line.split()
        if number == 0 or not fields:
            continue  # header
        if len(fields) < 10:
            raise ValueError(f"short line {number + 1} in TCP table: {line.strip()!r}")
        local_ip, local_port = decode_proc_address(fields[1])
        peer_ip, peer_port = decode_proc_address(fields[2])
        tx_hex, _, rx_hex = fields[4].partition(":")
        conns.append(
            Conn(
                state=int(fields[3], 16),
                local_ip=local_ip,
                local_port=local_port,
                peer_ip=peer_ip,
                peer_port=peer_port,
                inode=int(fields[9]),
                rx_queue=int(rx_hex, 16),
                tx_queue=int(tx_hex, 16),
            )
        )
    return conns


class ProcNetTable:
    """The namespace's sockets from ``<root>/net/tcp`` and ``<root>/net/tcp6`` (tcp6 may be absent)."""

    source = "proc"

    def __init__(self, proc_root: str) -> None:
        self._root = proc_root

    def read(self, timeout: float) -> list[Conn]:
        conns: list[Conn] = []
        for name, required in (("tcp", True), ("tcp6", False)):
            path = os.path.join(self._root, "net", name)
            try:
                with open(path, encoding="ascii") as handle:
                    text = handle.read()
            except FileNotFoundError:
                if required:
                    raise
                continue
            conns.extend(parse_proc_net_tcp(text))
        return conns


def read_snmp_tcp(proc_root: str) -> dict[str, int]:
    """The ``Tcp:`` counters of ``<root>/net/snmp`` (InSegs, PassiveOpens, ...)."""
    with open(os.path.join(proc_root, "net", "snmp"), encoding="ascii") as handle:
        return parse_snmp_tcp(handle.read())


def parse_snmp_tcp(text: str) -> dict[str, int]:
    rows = [line.split()[1:] for line in text.splitlines() if line.startswith("Tcp:")]
    if len(rows) < 2 or len(rows[0]) != len(rows[1]):
        raise ValueError("no Tcp counters in snmp table")
    return {name: int(value) for name, value in zip(rows[0], rows[1], strict=True)}


# ---------------------------------------------------------------- NETLINK_SOCK_DIAG
# Layouts from the kernel's uapi headers (linux/netlink.h, linux/inet_diag.h, linux/tcp.h).

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
INET_DIAG_INFO = 2

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ_V2 = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states; then a zeroed sockid
_SOCKID_LEN = 48  # sport, dport (be16), src[4], dst[4] (be32), if, cookie[2]
_MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_MSG_LEN = _MSG_HEAD.size + _SOCKID_LEN + _MSG_TAIL.size  # 72
_RTATTR = struct.Struct("=HH")
# struct tcp_info: u32 tcpi_last_data_recv at byte 52, u64 tcpi_bytes_received at byte 128 (Linux 4.1+).
_TCPI_LAST_DATA_RECV = 52
_TCPI_BYTES_RECEIVED = 128


def _align4(n: int) -> int:
    return (n + 3) & ~3


def diag_request(family: int, seq: int) -> bytes:
    """A dump request for every TCP socket of ``family``, with tcp_info."""
    body = _REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), 0xFFF) + bytes(_SOCKID_LEN)
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def parse_diag_messages(data: bytes, seq: int) -> tuple[list[Conn], bool]:
    """Parse one datagram of a dump reply: the sockets in it, and whether the dump is done."""
    conns: list[Conn] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise ValueError(f"truncated netlink message (length {length})")
        body = offset + _NLMSGHDR.size
        end = offset + length
        offset += _align4(length)
        if msg_seq != seq:
            continue  # a late reply to an earlier request
        if kind == NLMSG_DONE:
            return conns, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            if code != 0:
                raise OSError(-code, f"sock_diag dump refused: {os.strerror(-code)}")
        elif kind == SOCK_DIAG_BY_FAMILY:
            conns.append(_parse_diag_socket(data, body, end))
    return conns, False


def _parse_diag_socket(data: bytes, body: int, end: int) -> Conn:
    """One ``struct inet_diag_msg`` at ``body``, followed by attributes up to ``end``."""
    if end - body < _MSG_LEN:
        raise ValueError("truncated inet_diag message")
    family, state, _timer, _retrans = _MSG_HEAD.unpack_from(data, body)
    sport, dport = struct.unpack_from("!HH", data, body + 4)
    width = 4 if family == socket.AF_INET else 16
    src = _ip_from_packed(data[body + 8 : body + 8 + width])
    dst = _ip_from_packed(data[body + 24 : body + 24 + width])
    _expires, rqueue, wqueue, _uid, inode = _MSG_TAIL.unpack_from(data, body + 4 + _SOCKID_LEN)
    last_recv: int | None = None
    received: int | None = None
    attr = body + _MSG_LEN
    while attr + _RTATTR.size <= end:
        attr_len, attr_type = _RTATTR.unpack_from(data, attr)
        if attr_len < _RTATTR.size:
            break
        if attr_type == INET_DIAG_INFO:
            info = data[attr + _RTATTR.size : min(attr + attr_len, end)]
            if len(info) >= _TCPI_LAST_DATA_RECV + 4:
                (last_recv,) = struct.unpack_from("=I", info, _TCPI_LAST_DATA_RECV)
            if len(info) >= _TCPI_BYTES_RECEIVED + 8:
                (received,) = struct.unpack_from("=Q", info, _TCPI_BYTES_RECEIVED)
        attr += _align4(attr_len)
    return Conn(
        state=state,
        local_ip=src,
        local_port=sport,
        peer_ip=dst,
        peer_port=dport,
        inode=inode,
        rx_queue=rqueue,
        tx_queue=wqueue,
        last_data_recv_ms=last_recv,
        bytes_received=received,
    )


class SockDiagTable:
    """The agent's own namespace's sockets via NETLINK_SOCK_DIAG (no privileges needed)."""

    source = "sock_diag"

    def __init__(self, socket_factory: Callable[[], socket.socket] | None = None) -> None:
        self._factory = socket_factory or (
            lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        )
        self._seq = 0

    def read(self, timeout: float) -> list[Conn]:
        conns: list[Conn] = []
        with self._factory() as sock:
            sock.settimeout(max(0.05, timeout))
            for family in (socket.AF_INET, socket.AF_INET6):
                self._seq += 1
                sock.sendall(diag_request(family, self._seq))
                done = False
                while not done:
                    data = sock.recv(1 << 18)
                    if not data:
                        raise OSError(errno.EPIPE, "netlink socket closed during dump")
                    batch, done = parse_diag_messages(data, self._seq)
                    conns.extend(batch)
        return conns


# --------------------------------------------------------------------------- watcher


@dataclass
class _Activity:
    when: float
    kind: str
    peer: str
    port: int


_Key = tuple[str, int, str, int, int]


@dataclass
class _Scan:
    """What one poll found on the watched ports."""

    events: list[_Activity] = field(default_factory=list)
    keys: set[_Key] = field(default_factory=set)
    received: dict[_Key, int] = field(default_factory=dict)
    peers: set[str] = field(default_factory=set)
    open_count: int = 0
    ignored: int = 0
    new_count: int = 0


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
        self._ports = frozenset({target.port, *config.extra_ports})
        self._ignore = _ignored_networks(config, target)
        self._tables = list(tables)
        self._counters = counters
        self._started: float | None = None
        self._previous_poll: float | None = None
        self._previous_keys: set[_Key] = set()
        self._previous_bytes: dict[_Key, int] = {}
        self._previous_counters: Mapping[str, int] | None = None
        self._last: _Activity | None = None

    @property
    def source(self) -> str:
        return self._tables[0].source

    def close(self) -> None:
        """Nothing to release: each poll opens and closes its own netlink socket."""

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

        scan = self._scan(conns, now, since, first=first, in_segs_moved=in_segs_moved)
        events, keys, peers = scan.events, scan.keys, scan.peers
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

        self._previous_keys = keys
        self._previous_bytes = scan.received
        self._previous_poll = now
        if counters is not None:
            self._previous_counters = counters

        quiet_since = started if self._last is None else max(started, self._last.when)
        quiet_for = max(0.0, now - quiet_since)
        details: dict[str, object] = {
            "source": self.source,
            "ports": sorted(self._ports),
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

    def _scan(self, conns: list[Conn], now: float, since: float, *, first: bool, in_segs_moved: bool) -> _Scan:
        scan = _Scan()
        for conn in conns:
            if conn.local_port not in self._ports:
                continue
            if conn.state == LISTEN:
                if conn.rx_queue > 0:  # connections the kernel accepted and the app has not yet
                    scan.events.append(_Activity(now, "accept_backlog", "", conn.local_port))
                continue
            if conn.state in (SYN_SENT, CLOSE):
                continue  # outbound from the service port, or already finished
            if self._is_ignored(conn.peer_ip):
                scan.ignored += 1
                continue
            scan.keys.add(conn.key)
            if conn.state in _OPEN or conn.state in _CONNECTING:
                scan.open_count += 1
                scan.peers.add(conn.peer_ip)
            scan.events.extend(self._evidence(conn, now, since, first, in_segs_moved))
            if not first and conn.key not in self._previous_keys:
                scan.new_count += 1
            if conn.bytes_received is not None:
                scan.received[conn.key] = conn.bytes_received
        return scan

    def _evidence(self, conn: Conn, now: float, since: float, first: bool, in_segs_moved: bool) -> list[_Activity]:
        """What one socket proves about when an outside peer last sent something."""

        def at(kind: str, when: float) -> _Activity:
            return _Activity(min(when, now), kind, conn.peer_ip, conn.local_port)

        if conn.state in _CONNECTING:
            return [at("connecting", now)]
        is_new = conn.key not in self._previous_keys
        if conn.state == TIME_WAIT:
            # a connection that closed; its age is not measured: date it to the poll that first saw it
            return [at("closed_connection", now)] if is_new else []
        found: list[_Activity] = []
        if conn.rx_queue > 0 or conn.tx_queue > 0:
            found.append(at("queued_bytes", now))
        if conn.last_data_recv_ms is not None:
            last_recv = now - conn.last_data_recv_ms / 1000.0
            if first:
                found.append(at("data", last_recv))  # measured age, also for connections older than the watch
            elif is_new:
                found.append(at("new_connection", now))
            elif self._data_arrived(conn, last_recv, since):
                found.append(at("data", max(last_recv, since)))
        elif is_new:
            found.append(at("new_connection", now))  # at the first poll too: its age is unknown
        elif conn.state in _PEER_MAY_SEND and in_segs_moved:
            found.append(at("unmeasured_connection", now))
        return found

    def _data_arrived(self, conn: Conn, last_recv: float, since: float) -> bool:
        """Did this connection receive data since the previous poll?"""
        previous = self._previous_bytes.get(conn.key)
        if conn.bytes_received is not None and previous is not None:
            return conn.bytes_received > previous
        return last_recv > since

    def _is_ignored(self, peer: str) -> bool:
        ip = ipaddress.ip_address(peer)
        return any(ip.version == net.version and ip in net for net in self._ignore)


def _ignored_networks(config: TrafficConfig, target: PodTarget) -> tuple[IPNetwork, ...]:
    nets: list[IPNetwork] = list(config.ignore)
    if config.ignore_loopback:
        nets += [ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128")]
        nets += _host_networks([target.pod_ip])
    if config.ignore_host and target.host_ip:
        nets += _host_networks([target.host_ip])
    return tuple(nets)


def _host_networks(addresses: Iterable[str]) -> list[IPNetwork]:
    return [ipaddress.ip_network(normalize_ip(a)) for a in addresses]
