"""The TCP sockets of the namespace that ended, as the kernel announces them.

A caller that opens a connection, sends one request and closes first (curl, HTTP clients
with keep-alive off, kubelet probes) leaves the pod's side in CLOSE_WAIT and LAST_ACK for
a millisecond or so, and no TIME_WAIT: a poll of the socket table almost never sees it.
The kernel announces every full TCP socket it frees, with its addresses and final
``tcp_info``, to the NETLINK_SOCK_DIAG multicast groups for TCP socket destruction
(Linux 4.5+). Any process may listen to its own namespace's announcements, no
capability needed. So every connection to the port is counted, however it ends.

The announcements queue in the socket's receive buffer between polls. If the buffer
overflows (thousands of sockets freed between two polls), the kernel drops some and says
so; the feed then reports that it missed some (``missed``), which the watcher takes as
activity it cannot attribute.
"""

from __future__ import annotations

import ctypes
import errno
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from prestop_agent.watchers.traffic.sockets import Conn, diag_socket, parse_diag_messages

SKNLGRP_INET_TCP_DESTROY = 1
SKNLGRP_INET6_TCP_DESTROY = 3
_GROUPS = (1 << (SKNLGRP_INET_TCP_DESTROY - 1)) | (1 << (SKNLGRP_INET6_TCP_DESTROY - 1))
_RECEIVE_BUFFER = 1 << 20  # capped by net.core.rmem_max; the port filter keeps what is queued small
SO_ATTACH_FILTER = 26
# Classic BPF: the announcement's local port is the big-endian u16 at byte 20 (nlmsghdr 16 + family, state, timer,
# retrans); keep the message when it is a watched port, drop it otherwise.
_BPF_LD_H_ABS = 0x28
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_PORT_OFFSET = 20


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


def port_program(ports: tuple[int, ...]) -> list[tuple[int, int, int, int]]:
    """The filter as (code, jt, jf, k): load the local port, keep a watched port's message, drop the rest."""
    program = [(_BPF_LD_H_ABS, 0, 0, _PORT_OFFSET)]
    for index, port in enumerate(ports):
        program.append((_BPF_JEQ_K, len(ports) - index, 0, port))  # a match jumps over the rest and the drop
    program.append((_BPF_RET_K, 0, 0, 0))  # drop
    program.append((_BPF_RET_K, 0, 0, 0xFFFF))  # keep the whole message
    return program


@dataclass
class Closed:
    """What the feed announced since the previous drain."""

    conns: list[Conn] = field(default_factory=list)
    missed: bool = False  # the kernel dropped announcements: some connections went uncounted


class ClosedFeed:
    """Announcements of the namespace's freed TCP sockets on the watched ports, from opening until ``close``."""

    def __init__(self, ports: tuple[int, ...], socket_factory: Callable[[], socket.socket] | None = None) -> None:
        self._sock = (socket_factory or diag_socket)()
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RECEIVE_BUFFER)
            if ports:
                self._attach(port_program(ports))
            self._sock.bind((0, _GROUPS))
            self._sock.setblocking(False)
        except OSError:
            self._sock.close()
            raise

    def _attach(self, program: list[tuple[int, int, int, int]]) -> None:
        filters = (_SockFilter * len(program))(*(_SockFilter(*op) for op in program))
        prog = _SockFprog(len(program), ctypes.cast(filters, ctypes.POINTER(_SockFilter)))
        self._sock.setsockopt(
            socket.SOL_SOCKET, SO_ATTACH_FILTER, ctypes.string_at(ctypes.addressof(prog), ctypes.sizeof(prog))
        )

    def drain(self) -> Closed:
        """Everything queued since the previous drain; never blocks."""
        closed = Closed()
        while True:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                return closed
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                closed.missed = True  # the queue overflowed; reading on gets what is still queued
                continue
            conns, _ = parse_diag_messages(data, None)
            closed.conns.extend(conns)

    def close(self) -> None:
        self._sock.close()
