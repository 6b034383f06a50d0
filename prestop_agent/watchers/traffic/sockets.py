"""The pod's TCP sockets as the kernel lists them, and its TCP counters.

Two ways to list the sockets of the agent's network namespace (which is the pod's):
``/proc/net/tcp`` and ``tcp6`` (every kernel; no per-connection byte counters), and
NETLINK_SOCK_DIAG with ``tcp_info`` (unprivileged for the own namespace; dates the last
data received and counts the bytes and data segments). The dump asks the kernel for the
watched ports only, so a poll costs the same however many other sockets the namespace
holds. ``/proc/net/snmp`` gives the namespace-wide ``Tcp:`` counters (InSegs,
PassiveOpens). The sockets that ended between two polls come from ``closed``.
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

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
    data_segs_in: int | None = None

    @property
    def key(self) -> tuple[str, int, str, int, int]:
        return (self.local_ip, self.local_port, self.peer_ip, self.peer_port, self.inode)

    @property
    def flow(self) -> tuple[str, int, str, int]:
        """The connection's addresses: stable from its first dump to its end (its inode is not)."""
        return (self.local_ip, self.local_port, self.peer_ip, self.peer_port)


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
TCPDIAG_GETSOCK = 18  # the older request: one dump of both families, one walk of the kernel's table
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
INET_DIAG_INFO = 2
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_GE = 2
INET_DIAG_BC_S_LE = 3

_NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_REQ_V2 = struct.Struct("=BBBxI")  # family, protocol, ext, pad, states; then a zeroed sockid
_REQ_V1_HEAD = struct.Struct("=BBBB")  # family, src_len, dst_len, ext; then a zeroed sockid
_REQ_V1_TAIL = struct.Struct("=II")  # states, dbs
_SOCKID_LEN = 48  # sport, dport (be16), src[4], dst[4] (be32), if, cookie[2]
_MSG_HEAD = struct.Struct("=BBBB")  # family, state, timer, retrans
_MSG_TAIL = struct.Struct("=IIIII")  # expires, rqueue, wqueue, uid, inode
_MSG_LEN = _MSG_HEAD.size + _SOCKID_LEN + _MSG_TAIL.size  # 72
_RTATTR = struct.Struct("=HH")
_BC_OP = struct.Struct("=BBH")  # code, yes, no: jump offsets in bytes
# struct tcp_info: u32 tcpi_last_data_recv at byte 52, u64 tcpi_bytes_received at byte 128 (Linux 4.1+),
# u32 tcpi_data_segs_in at byte 152 (Linux 4.6+).
_TCPI_LAST_DATA_RECV = 52
_TCPI_BYTES_RECEIVED = 128
_TCPI_DATA_SEGS_IN = 152


def _align4(n: int) -> int:
    return (n + 3) & ~3


def diag_request(family: int | None, seq: int, ports: tuple[int, ...] = ()) -> bytes:
    """A dump request for the TCP sockets with tcp_info, only those with a local port in ``ports`` (if any).

    ``family`` None asks with the older TCPDIAG_GETSOCK request, which the kernel answers
    with both families in one walk of its socket table (half the cost of two requests).
    """
    ext = 1 << (INET_DIAG_INFO - 1)
    if family is None:
        kind = TCPDIAG_GETSOCK
        body = _REQ_V1_HEAD.pack(socket.AF_INET, 0, 0, ext) + bytes(_SOCKID_LEN) + _REQ_V1_TAIL.pack(0xFFF, 0)
    else:
        kind = SOCK_DIAG_BY_FAMILY
        body = _REQ_V2.pack(family, socket.IPPROTO_TCP, ext, 0xFFF) + bytes(_SOCKID_LEN)
    if ports:
        program = port_filter(ports)
        attr = _RTATTR.pack(_RTATTR.size + len(program), INET_DIAG_REQ_BYTECODE) + program
        body += attr + bytes(_align4(len(attr)) - len(attr))
    return _NLMSGHDR.pack(_NLMSGHDR.size + len(body), kind, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def port_filter(ports: tuple[int, ...]) -> bytes:
    """An inet_diag program that accepts a socket whose local port is one of ``ports``.

    The kernel runs it by jumping ``yes`` bytes when a test holds and ``no`` bytes when
    not; landing exactly on the end accepts, landing past it rejects. It only accepts a
    ``no`` target that the chain of ``yes`` jumps also reaches, hence the JMP closing each
    block but the last. Block i: port >= p_i, port <= p_i, then jump to the end (accept);
    either test failing goes on to block i + 1 (or, in the last block, past the end).
    """
    program = b""
    for index, port in enumerate(ports):
        last = index == len(ports) - 1
        rest = 20 * (len(ports) - index - 1) + 16  # bytes from this block to the end
        failed = rest + 4 if last else 20  # past the end, or the next block
        program += _BC_OP.pack(INET_DIAG_BC_S_GE, 8, failed) + _BC_OP.pack(0, 0, port)
        program += _BC_OP.pack(INET_DIAG_BC_S_LE, 8, failed - 8) + _BC_OP.pack(0, 0, port)
        if not last:
            program += _BC_OP.pack(INET_DIAG_BC_JMP, 4, rest - 16)
    return program


def parse_diag_messages(data: bytes, seq: int | None) -> tuple[list[Conn], bool]:
    """One datagram of a dump reply (with ``seq`` None: of announcements): its sockets, and whether the dump is done."""
    conns: list[Conn] = []
    offset = 0
    while offset + _NLMSGHDR.size <= len(data):
        length, kind, _flags, msg_seq, _pid = _NLMSGHDR.unpack_from(data, offset)
        if length < _NLMSGHDR.size or offset + length > len(data):
            raise ValueError(f"truncated netlink message (length {length})")
        body = offset + _NLMSGHDR.size
        end = offset + length
        offset += _align4(length)
        if seq is not None and msg_seq != seq:
            continue  # a late reply to an earlier request
        if kind == NLMSG_DONE:
            return conns, True
        if kind == NLMSG_ERROR:
            (code,) = struct.unpack_from("=i", data, body)
            if code != 0:
                raise OSError(-code, f"sock_diag dump refused: {os.strerror(-code)}")
        elif kind in (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK):
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
    segs_in: int | None = None
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
            if len(info) >= _TCPI_DATA_SEGS_IN + 4:
                (segs_in,) = struct.unpack_from("=I", info, _TCPI_DATA_SEGS_IN)
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
        data_segs_in=segs_in,
    )


def diag_socket() -> socket.socket:
    return socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)


class SockDiagTable:
    """The agent's own namespace's sockets via NETLINK_SOCK_DIAG (no privileges needed).

    With ``ports``, the kernel lists only the sockets whose local port is one of them; a
    kernel that refuses the filter lists every socket, and the caller filters as before.
    """

    source = "sock_diag"

    def __init__(self, socket_factory: Callable[[], socket.socket] | None = None, ports: tuple[int, ...] = ()) -> None:
        self._factory = socket_factory or diag_socket
        self._ports = ports
        self._seq = 0

        self._families: tuple[int | None, ...] = (None,)

    def read(self, timeout: float) -> list[Conn]:
        try:
            return self._dump(timeout)
        except OSError as exc:
            if exc.errno != errno.EINVAL:
                raise
            if self._families == (None,):  # a kernel without the older request: one per family
                self._families = (socket.AF_INET, socket.AF_INET6)
            elif self._ports:  # a kernel that refuses the filter: every socket, filtered by the caller
                self._ports = ()
            else:
                raise
            return self.read(timeout)

    def _dump(self, timeout: float) -> list[Conn]:
        conns: list[Conn] = []
        with self._factory() as sock:
            sock.settimeout(max(0.05, timeout))
            for family in self._families:
                self._seq += 1
                sock.sendall(diag_request(family, self._seq, self._ports))
                done = False
                while not done:
                    data = sock.recv(1 << 18)
                    if not data:
                        raise OSError(errno.EPIPE, "netlink socket closed during dump")
                    batch, done = parse_diag_messages(data, self._seq)
                    conns.extend(batch)
        return conns
