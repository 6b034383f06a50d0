"""The traffic watcher: parsers, and the quiet logic on fake /proc trees and fake socket tables."""

from __future__ import annotations

import ipaddress
import socket
import struct
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from prestop_agent.errors import ConfigError, WatcherError
from prestop_agent.source import Source
from prestop_agent.watchers.base import PodTarget, Verdict
from prestop_agent.watchers.traffic.sockets import (
    CLOSE_WAIT,
    ESTABLISHED,
    LISTEN,
    SYN_RECV,
    TIME_WAIT,
    Conn,
    ProcNetTable,
    decode_proc_address,
    parse_diag_messages,
    parse_proc_net_tcp,
    parse_snmp_tcp,
    read_snmp_tcp,
)
from prestop_agent.watchers.traffic.watcher import TrafficConfig, TrafficWatcher, load_config

POD = "10.1.2.3"
NODE = "192.168.0.7"
PORT = 8080
CLIENT = "10.9.8.7"
TARGET = PodTarget(pod_ip=POD, port=PORT, host_ip=NODE)


# ----------------------------------------------------------------------------- config


def test_defaults() -> None:
    config = load_config(Source({}))
    assert config == TrafficConfig()
    assert config.quiet_seconds == 10.0
    assert config.proc_root == "/proc"
    assert config.ignore_loopback is True
    assert config.ignore_host is True
    assert config.source == "auto"


def test_settings_from_environment() -> None:
    config = load_config(
        Source(
            {
                "PRESTOP_QUIET_SECONDS": "4.5",
                "PRESTOP_PROC_ROOT": "/host/proc/1",
                "PRESTOP_TRAFFIC_PORTS": "9090, 8081",
                "PRESTOP_TRAFFIC_IGNORE": "10.0.0.5, 10.1.0.0/16,fd00::/8",
                "PRESTOP_TRAFFIC_IGNORE_LOOPBACK": "false",
                "PRESTOP_TRAFFIC_IGNORE_HOST": "no",
                "PRESTOP_TRAFFIC_SOURCE": "PROC",
            }
        )
    )
    assert config.quiet_seconds == 4.5
    assert config.proc_root == "/host/proc/1"
    assert config.extra_ports == (9090, 8081)
    assert [str(n) for n in config.ignore] == ["10.0.0.5/32", "10.1.0.0/16", "fd00::/8"]
    assert config.ignore_loopback is False
    assert config.ignore_host is False
    assert config.source == "proc"


@pytest.mark.parametrize(
    ("env", "floor"),
    [
        ({}, 2.0),
        ({"PRESTOP_QUIET_SECONDS": "1"}, 1.0),  # a quiet time under the default floor lowers the floor
        ({"PRESTOP_QUIET_MIN_SECONDS": "3"}, 3.0),
        ({"PRESTOP_QUIET_MIN_SECONDS": "10"}, 10.0),  # the fixed rule of earlier versions
    ],
)
def test_quiet_floor(env: dict[str, str], floor: float) -> None:
    assert load_config(Source(env)).quiet_min_seconds == floor


def test_quiet_floor_longer_than_the_quiet_time_is_refused() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(Source({"PRESTOP_QUIET_MIN_SECONDS": "12"}))
    assert "PRESTOP_QUIET_MIN_SECONDS=12" in str(caught.value)
    assert "at most 10" in str(caught.value)


def test_quiet_seconds_flag_wins() -> None:
    src = Source({"PRESTOP_QUIET_SECONDS": "4"}, {"quiet-seconds": "7"})
    assert load_config(src).quiet_seconds == 7.0


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"PRESTOP_QUIET_SECONDS": "soon"}, ["PRESTOP_QUIET_SECONDS", "soon"]),
        ({"PRESTOP_QUIET_SECONDS": "0"}, ["PRESTOP_QUIET_SECONDS"]),
        ({"PRESTOP_TRAFFIC_IGNORE": "10.0.0.5,node-a"}, ["PRESTOP_TRAFFIC_IGNORE", "node-a"]),
        ({"PRESTOP_TRAFFIC_PORTS": "8080,http"}, ["PRESTOP_TRAFFIC_PORTS", "http"]),
        ({"PRESTOP_TRAFFIC_PORTS": "70000"}, ["PRESTOP_TRAFFIC_PORTS", "70000"]),
        ({"PRESTOP_TRAFFIC_IGNORE_LOOPBACK": "maybe"}, ["PRESTOP_TRAFFIC_IGNORE_LOOPBACK"]),
        ({"PRESTOP_TRAFFIC_SOURCE": "ebpf"}, ["PRESTOP_TRAFFIC_SOURCE", "ebpf", "sock_diag"]),
    ],
)
def test_bad_settings_name_the_variable_and_value(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(Source(env))
    message = str(caught.value)
    assert "\n" not in message
    for name in names:
        assert name in message


# ----------------------------------------------------------------------------- parsers


def encode(ip: str, port: int) -> str:
    """An address as the kernel prints it in /proc/net/tcp*: 32-bit words in host byte order."""
    packed = ipaddress.ip_address(ip).packed
    words = struct.unpack(f"={len(packed) // 4}I", packed)
    return "".join(f"{w:08X}" for w in words) + f":{port:04X}"


def test_decode_addresses() -> None:
    assert decode_proc_address(encode("127.0.0.1", 8080)) == ("127.0.0.1", 8080)
    assert decode_proc_address(encode("10.1.2.3", 443)) == ("10.1.2.3", 443)
    assert decode_proc_address(encode("fd00::1", 80)) == ("fd00::1", 80)
    # IPv4-mapped IPv6 (a dual-stack socket accepting an IPv4 client) reads as plain IPv4
    assert decode_proc_address(encode("::ffff:10.9.8.7", 5555)) == ("10.9.8.7", 5555)
    with pytest.raises(ValueError, match="malformed"):
        decode_proc_address("0100007F")


def test_decode_matches_the_kernel_format_of_this_machine() -> None:
    # a line as printed by a little-endian kernel for 127.0.0.1:8080
    if struct.pack("=I", 1) == b"\x01\x00\x00\x00":
        assert decode_proc_address("0100007F:1F90") == ("127.0.0.1", 8080)


HEADER = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"


def row(
    local: tuple[str, int],
    peer: tuple[str, int],
    state: int,
    *,
    inode: int = 0,
    tx: int = 0,
    rx: int = 0,
) -> str:
    return (
        f"   0: {encode(*local)} {encode(*peer)} {state:02X} {tx:08X}:{rx:08X} 00:00000000 00000000"
        f"  1000        0 {inode} 1 0000000000000000 20 4 30 10 -1"
    )


def test_parse_table() -> None:
    text = "\n".join(
        [
            HEADER,
            row(("0.0.0.0", PORT), ("0.0.0.0", 0), LISTEN, inode=11, rx=2, tx=128),
            row((POD, PORT), (CLIENT, 40000), ESTABLISHED, inode=12, tx=5, rx=7),
            row((POD, PORT), (CLIENT, 40001), TIME_WAIT),
            "",
        ]
    )
    conns = parse_proc_net_tcp(text)
    assert [c.state for c in conns] == [LISTEN, ESTABLISHED, TIME_WAIT]
    assert conns[0].rx_queue == 2
    assert conns[1] == Conn(ESTABLISHED, POD, PORT, CLIENT, 40000, 12, rx_queue=7, tx_queue=5)
    assert conns[2].inode == 0
    with pytest.raises(ValueError, match="short line"):
        parse_proc_net_tcp(HEADER + "\n   0: 0100007F:1F90 00000000:0000 0A\n")


def test_parse_snmp() -> None:
    text = (
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Tcp: RtoAlgorithm ActiveOpens PassiveOpens InSegs\nTcp: 1 5 7 1234\n"
        "Udp: InDatagrams\nUdp: 3\n"
    )
    assert parse_snmp_tcp(text) == {"RtoAlgorithm": 1, "ActiveOpens": 5, "PassiveOpens": 7, "InSegs": 1234}
    with pytest.raises(ValueError, match="Tcp"):
        parse_snmp_tcp("Ip: Forwarding\nIp: 1\n")


# ------------------------------------------------------------------ netlink messages


def diag_message(
    *,
    seq: int,
    state: int,
    src: tuple[str, int],
    dst: tuple[str, int],
    inode: int,
    rqueue: int = 0,
    wqueue: int = 0,
    info: bytes | None = None,
) -> bytes:
    src_ip = ipaddress.ip_address(src[0])
    family = socket.AF_INET if src_ip.version == 4 else socket.AF_INET6
    body = struct.pack("=BBBB", family, state, 0, 0)
    body += struct.pack("!HH", src[1], dst[1])
    body += src_ip.packed.ljust(16, b"\0") + ipaddress.ip_address(dst[0]).packed.ljust(16, b"\0")
    body += struct.pack("=I2I", 0, 0, 0)  # interface, cookie
    body += struct.pack("=IIIII", 0, rqueue, wqueue, 1000, inode)
    if info is not None:
        attr = struct.pack("=HH", 4 + len(info), 2) + info
        body += attr + b"\0" * ((-len(attr)) % 4)
    return struct.pack("=IHHII", 16 + len(body), 20, 2, seq, 0) + body


def tcp_info(last_data_recv_ms: int, bytes_received: int | None, data_segs_in: int = 0) -> bytes:
    info = bytearray(232 if bytes_received is not None else 104)
    struct.pack_into("=I", info, 52, last_data_recv_ms)
    if bytes_received is not None:
        struct.pack_into("=Q", info, 128, bytes_received)
        struct.pack_into("=I", info, 152, data_segs_in)
    return bytes(info)


def done(seq: int) -> bytes:
    return struct.pack("=IHHIIi", 20, 3, 2, seq, 0, 0)


def test_parse_diag_messages() -> None:
    data = (
        diag_message(seq=7, state=LISTEN, src=("0.0.0.0", PORT), dst=("0.0.0.0", 0), inode=5, rqueue=1)
        + diag_message(
            seq=7,
            state=ESTABLISHED,
            src=(POD, PORT),
            dst=(CLIENT, 41000),
            inode=6,
            info=tcp_info(1500, 4096, 3),
        )
        + diag_message(
            seq=7,
            state=ESTABLISHED,
            src=("::ffff:" + POD, PORT),
            dst=("::ffff:" + CLIENT, 41001),
            inode=8,
            info=tcp_info(20, None),  # an old kernel's shorter tcp_info
        )
        + diag_message(seq=6, state=ESTABLISHED, src=(POD, PORT), dst=(CLIENT, 1), inode=9)  # stale reply
    )
    conns, finished = parse_diag_messages(data, 7)
    assert not finished
    assert [c.inode for c in conns] == [5, 6, 8]
    assert conns[0].rx_queue == 1
    assert conns[0].last_data_recv_ms is None
    assert conns[1] == Conn(ESTABLISHED, POD, PORT, CLIENT, 41000, 6, 0, 0, 1500, 4096, 3)
    assert (conns[2].local_ip, conns[2].peer_ip) == (POD, CLIENT)
    assert (conns[2].last_data_recv_ms, conns[2].bytes_received, conns[2].data_segs_in) == (20, None, None)
    assert parse_diag_messages(done(7), 7) == ([], True)


def test_parse_diag_errors() -> None:
    error = struct.pack("=IHHIIi", 20, 2, 0, 3, 0, -1)  # NLMSG_ERROR, -EPERM
    with pytest.raises(OSError, match="refused") as caught:
        parse_diag_messages(error, 3)
    assert caught.value.errno == 1
    with pytest.raises(ValueError, match="truncated"):
        parse_diag_messages(struct.pack("=IHHII", 400, 20, 2, 3, 0), 3)
    with pytest.raises(ValueError, match="truncated inet_diag"):
        parse_diag_messages(struct.pack("=IHHII", 24, 20, 2, 3, 0) + bytes(8), 3)


# ------------------------------------------------------------- fake /proc, proc mode


class FakeProc:
    """A /proc tree in a temporary directory: net/tcp, net/tcp6, net/snmp."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "net").mkdir(parents=True)
        self.in_segs = 100
        self.passive_opens = 10
        self.set()

    def set(self, *rows: str, rows6: tuple[str, ...] = (), snmp: bool = True) -> None:
        (self.root / "net" / "tcp").write_text("\n".join([HEADER, *rows]) + "\n")
        (self.root / "net" / "tcp6").write_text("\n".join([HEADER, *rows6]) + "\n")
        snmp_path = self.root / "net" / "snmp"
        if snmp:
            snmp_path.write_text(f"Tcp: RtoAlgorithm PassiveOpens InSegs\nTcp: 1 {self.passive_opens} {self.in_segs}\n")
        elif snmp_path.exists():
            snmp_path.unlink()


@pytest.fixture
def proc(tmp_path: Path) -> FakeProc:
    return FakeProc(tmp_path / "proc")


def proc_watcher(proc: FakeProc, **overrides: object) -> TrafficWatcher:
    """A watcher over the fake /proc, as ``build`` makes it but without its first look (the tests poll at will)."""
    config = TrafficConfig(quiet_seconds=10.0, proc_root=str(proc.root), source="proc")
    for key, value in overrides.items():
        object.__setattr__(config, key, value)
    return from_config(config)


def from_config(config: TrafficConfig) -> TrafficWatcher:
    root = config.proc_root
    return TrafficWatcher(config, TARGET, tables=[ProcNetTable(root)], counters=lambda: read_snmp_tcp(root))


def listening() -> str:
    return row(("0.0.0.0", PORT), ("0.0.0.0", 0), LISTEN, inode=1, tx=128)


def test_no_connections_goes_quiet_only_after_observing_for_quiet_seconds(proc: FakeProc) -> None:
    proc.set(listening())
    watcher = proc_watcher(proc)
    first = watcher.poll(100.0, 1.0)
    assert (first.verdict, first.reason) == (Verdict.PRESENT, "observing")
    assert first.details["source"] == "proc"
    assert first.details["last_activity_age_s"] is None
    assert watcher.poll(109.9, 1.0).verdict is Verdict.PRESENT
    gone = watcher.poll(110.0, 1.0)
    assert (gone.verdict, gone.reason) == (Verdict.GONE, "quiet")
    assert gone.details["quiet_for_s"] == 10.0
    assert gone.details["connections"] == 0


def test_new_inbound_connection_resets_the_quiet(proc: FakeProc) -> None:
    proc.set(listening())
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)
    assert watcher.poll(111.0, 1.0).verdict is Verdict.GONE
    proc.set(listening(), row((POD, PORT), (CLIENT, 40000), ESTABLISHED, inode=20))
    with capture_logs() as logs:
        seen = watcher.poll(112.0, 1.0)
    assert (seen.verdict, seen.reason) == (Verdict.PRESENT, "recent_activity")
    assert seen.details["new_connections"] == 1
    assert seen.details["connections"] == 1
    assert seen.details["peers"] == [CLIENT]
    assert seen.details["last_activity_kind"] == "new_connection"
    assert logs == [
        {
            "event": "traffic_activity",
            "log_level": "info",
            "kind": "new_connection",
            "peer": CLIENT,
            "port": PORT,
            "age_s": 0.0,
            "connections": 1,
        }
    ]


def test_proc_mode_open_connection_holds_while_the_namespace_receives(proc: FakeProc) -> None:
    conn = row((POD, PORT), (CLIENT, 40000), ESTABLISHED, inode=20)
    proc.set(listening(), conn)
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)
    for step in range(1, 6):
        proc.in_segs += 3
        proc.set(listening(), conn)
        seen = watcher.poll(100.0 + 5 * step, 1.0)
        assert (seen.verdict, seen.reason) == (Verdict.PRESENT, "unmeasured_connections")
    assert seen.details["last_activity_age_s"] == 0.0


def test_proc_mode_open_connection_goes_quiet_when_nothing_arrives(proc: FakeProc) -> None:
    conn = row((POD, PORT), (CLIENT, 40000), ESTABLISHED, inode=20)
    proc.set(listening(), conn)
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)  # dated to the first poll: its age is unknown
    proc.in_segs += 1
    proc.set(listening(), conn)
    assert watcher.poll(103.0, 1.0).reason == "unmeasured_connections"
    assert watcher.poll(108.0, 1.0).verdict is Verdict.PRESENT  # InSegs unchanged since 103
    gone = watcher.poll(113.0, 1.0)
    assert gone.verdict is Verdict.GONE
    assert gone.details["connections"] == 1


def test_proc_mode_without_counters_never_says_gone_with_open_connections(proc: FakeProc) -> None:
    conn = row((POD, PORT), (CLIENT, 40000), ESTABLISHED, inode=20)
    proc.set(listening(), conn, snmp=False)
    watcher = proc_watcher(proc)
    for t in range(100, 160, 5):
        seen = watcher.poll(float(t), 1.0)
        assert seen.verdict is Verdict.PRESENT
    assert seen.details["passive_opens"] is None


def test_peer_closed_connection_is_not_open_for_requests(proc: FakeProc) -> None:
    conn = row((POD, PORT), (CLIENT, 40000), CLOSE_WAIT, inode=20)
    proc.set(listening(), conn)
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)
    proc.in_segs += 50
    proc.set(listening(), conn)
    assert watcher.poll(110.0, 1.0).verdict is Verdict.GONE


def test_time_wait_counts_once_when_first_seen(proc: FakeProc) -> None:
    proc.set(listening())
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)
    closed = row((POD, PORT), (CLIENT, 40002), TIME_WAIT)
    proc.set(listening(), closed)
    seen = watcher.poll(105.0, 1.0)
    assert seen.details["last_activity_kind"] == "closed_connection"
    assert seen.details["connections"] == 0
    assert watcher.poll(114.0, 1.0).verdict is Verdict.PRESENT
    assert watcher.poll(115.0, 1.0).verdict is Verdict.GONE


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        (row((POD, PORT), (CLIENT, 40000), SYN_RECV), "connecting"),
        (row((POD, PORT), (CLIENT, 40000), ESTABLISHED, inode=20, rx=90), "queued_bytes"),
        (row((POD, PORT), (CLIENT, 40000), ESTABLISHED, inode=20, tx=3000), "queued_bytes"),
        (row(("0.0.0.0", PORT), ("0.0.0.0", 0), LISTEN, inode=1, rx=1), "accept_backlog"),
    ],
)
def test_pending_work_is_activity_now(proc: FakeProc, line: str, kind: str) -> None:
    proc.set(listening(), line)
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)
    seen = watcher.poll(120.0, 1.0)
    assert (seen.verdict, seen.details["last_activity_kind"]) == (Verdict.PRESENT, kind)


def test_default_ignores_node_loopback_and_the_pod_itself(proc: FakeProc) -> None:
    proc.set(
        listening(),
        row((POD, PORT), (NODE, 50000), ESTABLISHED, inode=21),  # kubelet probe
        row(("127.0.0.1", PORT), ("127.0.0.1", 50001), ESTABLISHED, inode=22),
        row((POD, PORT), (POD, 50002), ESTABLISHED, inode=23),
        rows6=(
            row(("::ffff:" + POD, PORT), ("::ffff:" + NODE, 50003), ESTABLISHED, inode=24),
            row(("::1", PORT), ("::1", 50004), ESTABLISHED, inode=25),
        ),
    )
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)
    seen = watcher.poll(110.0, 1.0)
    assert seen.verdict is Verdict.GONE
    assert seen.details["ignored_connections"] == 5
    assert seen.details["connections"] == 0


def test_ignore_switches_and_extra_networks(proc: FakeProc) -> None:
    proc.set(
        listening(),
        row((POD, PORT), (NODE, 50000), ESTABLISHED, inode=21),
        row(("127.0.0.1", PORT), ("127.0.0.1", 50001), ESTABLISHED, inode=22),
        row((POD, PORT), ("10.250.0.9", 50002), ESTABLISHED, inode=23),
    )
    config = load_config(
        Source(
            {
                "PRESTOP_PROC_ROOT": str(proc.root),
                "PRESTOP_TRAFFIC_SOURCE": "proc",
                "PRESTOP_TRAFFIC_IGNORE_LOOPBACK": "false",
                "PRESTOP_TRAFFIC_IGNORE_HOST": "false",
                "PRESTOP_TRAFFIC_IGNORE": "10.250.0.0/16",
            }
        )
    )
    watcher = from_config(config)
    seen = watcher.poll(100.0, 1.0)
    assert seen.details["peers"] == ["127.0.0.1", NODE]
    assert seen.details["ignored_connections"] == 1


def test_other_ports_do_not_count_but_extra_ports_do(proc: FakeProc) -> None:
    metrics = row((POD, 9090), (CLIENT, 40000), ESTABLISHED, inode=30)
    outbound = row((POD, 45000), (CLIENT, PORT), ESTABLISHED, inode=31)  # the app calling a peer's 8080
    proc.set(listening(), metrics, outbound)
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)
    assert watcher.poll(110.0, 1.0).verdict is Verdict.GONE

    both = proc_watcher(proc, extra_ports=(9090,))
    both.poll(100.0, 1.0)
    proc.in_segs += 1  # something arrived somewhere in the namespace
    proc.set(listening(), metrics, outbound)
    seen = both.poll(110.0, 1.0)
    assert seen.verdict is Verdict.PRESENT
    assert seen.details["ports"] == [PORT, 9090]


def test_passive_opens_are_reported_not_judged(proc: FakeProc) -> None:
    proc.set(listening())
    watcher = proc_watcher(proc)
    watcher.poll(100.0, 1.0)
    proc.passive_opens += 4
    proc.set(listening())
    seen = watcher.poll(110.0, 1.0)
    assert seen.verdict is Verdict.GONE
    assert seen.details["passive_opens"] == 4


def test_unreadable_tables_fail_the_poll(proc: FakeProc) -> None:
    watcher = proc_watcher(proc)
    (proc.root / "net" / "tcp").write_text(HEADER + "\n   0: garbage\n")
    with pytest.raises(WatcherError, match="TCP sockets"):
        watcher.poll(100.0, 1.0)
    (proc.root / "net" / "tcp").unlink()
    with pytest.raises(WatcherError, match="proc"):
        watcher.poll(100.0, 1.0)


def test_missing_tcp6_is_fine(proc: FakeProc) -> None:
    (proc.root / "net" / "tcp6").unlink()
    assert ProcNetTable(str(proc.root)).read(1.0) == []


# ------------------------------------------------------------ measured (sock_diag) logic


class FakeTable:
    def __init__(self, source: str = "sock_diag") -> None:
        self.source = source
        self.conns: list[Conn] = []
        self.error: Exception | None = None

    def read(self, timeout: float) -> list[Conn]:
        if self.error is not None:
            raise self.error
        return list(self.conns)


def keepalive(last_recv_ms: int, received: int, inode: int = 40, port: int = 40000) -> Conn:
    return Conn(ESTABLISHED, POD, PORT, CLIENT, port, inode, 0, 0, last_recv_ms, received)


def measured_watcher(table: FakeTable, quiet: float = 10.0) -> TrafficWatcher:
    return TrafficWatcher(TrafficConfig(quiet_seconds=quiet), TARGET, tables=[table], counters=None)


def test_idle_keepalive_connection_goes_quiet() -> None:
    table = FakeTable()
    watcher = measured_watcher(table)
    table.conns = [keepalive(500, 1000)]
    first = watcher.poll(100.0, 1.0)
    assert (first.verdict, first.reason) == (Verdict.PRESENT, "recent_activity")
    assert first.details["last_activity_age_s"] == 0.5
    table.conns = [keepalive(5500, 1000)]
    assert watcher.poll(105.0, 1.0).verdict is Verdict.PRESENT
    table.conns = [keepalive(10_000, 1000)]
    assert watcher.poll(109.5, 1.0).verdict is Verdict.PRESENT
    table.conns = [keepalive(10_500, 1000)]
    gone = watcher.poll(110.0, 1.0)
    assert (gone.verdict, gone.reason) == (Verdict.GONE, "quiet")
    assert gone.details["connections"] == 1  # still open, and it does not hold the wait


def test_busy_keepalive_connection_holds() -> None:
    table = FakeTable()
    watcher = measured_watcher(table)
    received = 1000
    for step in range(20):
        received += 300
        table.conns = [keepalive(200, received)]
        seen = watcher.poll(100.0 + 3 * step, 1.0)
        assert seen.verdict is Verdict.PRESENT
    assert seen.details["last_activity_age_s"] == 0.2


def test_growing_bytes_count_even_when_the_last_receive_looks_old() -> None:
    # jiffies and the agent's clock differ slightly; the byte counter is the proof
    table = FakeTable()
    watcher = measured_watcher(table)
    table.conns = [keepalive(60_000, 1000)]
    watcher.poll(100.0, 1.0)
    table.conns = [keepalive(4_000, 1100)]
    seen = watcher.poll(104.0, 1.0)
    assert seen.details["last_activity_age_s"] == 4.0  # no earlier than the previous poll
    assert seen.verdict is Verdict.PRESENT


def test_without_byte_counters_the_last_receive_decides() -> None:
    table = FakeTable()
    watcher = measured_watcher(table)
    table.conns = [Conn(ESTABLISHED, POD, PORT, CLIENT, 40000, 41, 0, 0, 60_000, None)]
    watcher.poll(100.0, 1.0)
    table.conns = [Conn(ESTABLISHED, POD, PORT, CLIENT, 40000, 41, 0, 0, 1_000, None)]
    assert watcher.poll(104.0, 1.0).details["last_activity_age_s"] == 1.0
    table.conns = [Conn(ESTABLISHED, POD, PORT, CLIENT, 40000, 41, 0, 0, 11_000, None)]
    assert watcher.poll(114.0, 1.0).verdict is Verdict.GONE


def test_new_measured_connection_is_activity_even_without_data() -> None:
    table = FakeTable()
    watcher = measured_watcher(table)
    watcher.poll(100.0, 1.0)
    table.conns = [keepalive(50_000, 0, inode=42)]  # whatever the kernel says, it is new
    seen = watcher.poll(103.0, 1.0)
    assert seen.details["last_activity_kind"] == "new_connection"
    assert seen.details["new_connections"] == 1


def test_old_idle_connections_do_not_shorten_the_observation() -> None:
    table = FakeTable()
    watcher = measured_watcher(table)
    table.conns = [keepalive(600_000, 5)]
    first = watcher.poll(100.0, 1.0)
    assert (first.verdict, first.reason) == (Verdict.PRESENT, "observing")
    assert first.details["last_activity_age_s"] == 600.0
    assert watcher.poll(110.0, 1.0).verdict is Verdict.GONE


def test_falls_back_to_proc_when_sock_diag_is_refused(proc: FakeProc) -> None:
    diag = FakeTable("sock_diag")
    diag.error = PermissionError(1, "Operation not permitted")
    proc.set(listening(), row((POD, PORT), (CLIENT, 40000), ESTABLISHED, inode=20))
    watcher = TrafficWatcher(TrafficConfig(), TARGET, tables=[diag, ProcNetTable(str(proc.root))], counters=None)
    with capture_logs() as logs:
        seen = watcher.poll(100.0, 1.0)
    assert watcher.source == "proc"
    assert seen.details["source"] == "proc"
    assert seen.details["connections"] == 1
    assert logs[0]["event"] == "traffic_source_unavailable"
    assert logs[0]["fallback"] == "proc"


def test_explicit_sock_diag_failure_is_a_watcher_error() -> None:
    diag = FakeTable("sock_diag")
    diag.error = OSError(93, "Protocol not supported")
    watcher = TrafficWatcher(TrafficConfig(source="sock_diag"), TARGET, tables=[diag])
    with pytest.raises(WatcherError, match="sock_diag"):
        watcher.poll(100.0, 1.0)
