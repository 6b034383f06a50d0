"""What the cluster changes on the host, how it is undone, and how to prove nothing is left.

The cluster adds a bridge and its veths, network namespaces for pods, mounts (containerd's
snapshots, the kubelet's volumes), iptables chains (kube-proxy's ``KUBE-*``, the CNI plugins'
``CNI-*``) and a few sysctls (IP forwarding; the kubelet sets its kernel tunables). :func:`sweep`
removes all of that, also after a crash; :func:`leftovers` lists whatever is still there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import time
from pathlib import Path

from localkube.errors import HarnessError
from localkube.layout import BRIDGE, NODE_IP, POD_CIDR, Layout

#: Sysctls the cluster changes: IP forwarding and bridge filtering (routed and bridged pod traffic
#: must pass kube-proxy's rules), then the kernel tunables the kubelet sets at start.
SYSCTLS = (
    "net/ipv4/ip_forward",
    "net/bridge/bridge-nf-call-iptables",
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
)
_WANTED = {"net/ipv4/ip_forward": "1", "net/bridge/bridge-nf-call-iptables": "1"}
OUR_CHAIN_PREFIXES = ("KUBE-", "CNI-")
NETNS_DIR = Path("/var/run/netns")
_TABLES = ("filter", "nat", "mangle", "raw")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and result.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _snapshot_path(layout: Layout) -> Path:
    return layout.home / "host-before.json"


# -- sysctls ------------------------------------------------------------------------------------


def _read_sysctl(name: str) -> str | None:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return None


def _write_sysctl(name: str, value: str) -> None:
    with contextlib.suppress(OSError):
        (Path("/proc/sys") / name).write_text(value)


def prepare(layout: Layout) -> None:
    """Remember the sysctls, then add the bridge with the node address and turn forwarding on."""
    snapshot = _snapshot_path(layout)
    if not snapshot.exists():  # after a crash the older, true "before" is kept
        values = {name: _read_sysctl(name) for name in SYSCTLS}
        snapshot.write_text(json.dumps({"sysctls": values, "netns": sorted(_netns())}))
    for name, value in _WANTED.items():
        _write_sysctl(name, value)
    _run("ip", "link", "add", BRIDGE, "type", "bridge")
    _run("ip", "addr", "add", f"{NODE_IP}/{POD_CIDR.split('/')[1]}", "dev", BRIDGE)
    _run("ip", "link", "set", BRIDGE, "up")


def _restore_sysctls(layout: Layout) -> None:
    snapshot = _snapshot_path(layout)
    if not snapshot.exists():
        return
    values: dict[str, str | None] = json.loads(snapshot.read_text()).get("sysctls", {})
    for name, value in values.items():
        if value is not None and _read_sysctl(name) != value:
            _write_sysctl(name, value)


# -- network ------------------------------------------------------------------------------------


def _links_on_bridge() -> list[str]:
    result = _run("ip", "-o", "link", "show", "master", BRIDGE, check=False)
    return [line.split(":")[1].strip().split("@")[0] for line in result.stdout.splitlines() if ":" in line]


def _bridge_exists() -> bool:
    return _run("ip", "link", "show", BRIDGE, check=False).returncode == 0


def _netns() -> set[str]:
    with contextlib.suppress(OSError):
        return {entry.name for entry in NETNS_DIR.iterdir()}
    return set()


def _our_netns(layout: Layout) -> list[str]:
    """Pod namespaces (containerd names them cni-<uuid>) that were not there before the cluster."""
    before: set[str] = set()
    with contextlib.suppress(OSError, ValueError):
        before = set(json.loads(_snapshot_path(layout).read_text()).get("netns", []))
    return sorted(name for name in _netns() - before if name.startswith("cni-"))


def _iptables_commands() -> list[str]:
    """iptables and ip6tables; the legacy variants only where legacy tables exist (reading creates them)."""
    tools = [tool for tool in ("iptables", "ip6tables") if shutil.which(tool)]
    for tool, tables in (("iptables-legacy", "ip_tables_names"), ("ip6tables-legacy", "ip6_tables_names")):
        with contextlib.suppress(OSError):
            if shutil.which(tool) and (Path("/proc/net") / tables).read_text().strip():
                tools.append(tool)
    return tools


def parse_save(text: str) -> tuple[list[str], list[str]]:
    """From one table of ``iptables-save``: our chains, and the rules of other chains that jump to ours."""
    chains: list[str] = []
    jumps: list[str] = []
    for line in text.splitlines():
        if line.startswith(":") and line[1:].startswith(OUR_CHAIN_PREFIXES):
            chains.append(line[1:].split()[0])
        elif line.startswith("-A ") and not line.split()[1].startswith(OUR_CHAIN_PREFIXES):
            words = shlex.split(line)
            targets = (words[i] for i in range(1, len(words)) if words[i - 1] in ("-j", "-g"))
            if any(target.startswith(OUR_CHAIN_PREFIXES) for target in targets):
                jumps.append(line)
    return chains, jumps


def _our_iptables(tool: str) -> dict[str, tuple[list[str], list[str]]]:
    """Per table: (our chains, rules of other chains that jump to ours)."""
    found: dict[str, tuple[list[str], list[str]]] = {}
    for table in _TABLES:
        chains, jumps = parse_save(_run(f"{tool}-save", "-t", table, check=False).stdout)
        if chains or jumps:
            found[table] = (chains, jumps)
    return found


def _sweep_iptables() -> None:
    for tool in _iptables_commands():
        for table, (chains, jumps) in _our_iptables(tool).items():
            for rule in jumps:
                _run(tool, "-w", "-t", table, "-D", *shlex.split(rule)[1:], check=False)
            for chain in chains:
                _run(tool, "-w", "-t", table, "-F", chain, check=False)
            for chain in chains:
                _run(tool, "-w", "-t", table, "-X", chain, check=False)


# -- processes and mounts ------------------------------------------------------------------------


def _ours(layout: Layout, text: str) -> bool:
    """Whether a command line or path belongs to the cluster (image builds under the cache do not)."""
    return any(f"{directory}/" in text for directory in (layout.run, layout.containerd_root))


def _our_processes(layout: Layout) -> list[tuple[int, str]]:
    """Processes started for the cluster: by their command line, or a container's root inside our state."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            root = os.readlink(entry / "root")
            if _ours(layout, cmdline) or _ours(layout, root):
                found.append((int(entry.name), cmdline[:200] or f"(root {root})"))
    return found


def _our_mounts(layout: Layout) -> list[str]:
    mounts = []
    for line in Path("/proc/mounts").read_text().splitlines():
        point = line.split()[1].replace("\\040", " ")
        if _ours(layout, point) or (
            point.startswith(str(NETNS_DIR) + "/cni-") and point.rsplit("/", 1)[1] in _our_netns(layout)
        ):
            mounts.append(point)
    return mounts


def _kill_processes(layout: Layout) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        processes = _our_processes(layout)
        if not processes:
            return
        for pid, _ in processes:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _our_processes(layout):
            time.sleep(0.2)


def _unmount_all(layout: Layout) -> None:
    for _ in range(3):
        mounts = _our_mounts(layout)
        if not mounts:
            return
        # Deepest first, so a mount is never hidden under another one we still hold.
        for point in sorted(mounts, key=len, reverse=True):
            _run("umount", "-l", point, check=False)


# -- the whole host --------------------------------------------------------------------------------


def sweep(layout: Layout) -> None:
    """Undo everything the cluster may have left on the host (processes last started first)."""
    _kill_processes(layout)
    _unmount_all(layout)
    for name in _our_netns(layout):
        _run("umount", str(NETNS_DIR / name), check=False)
        with contextlib.suppress(OSError):
            (NETNS_DIR / name).unlink()
    for link in _links_on_bridge():
        _run("ip", "link", "delete", link, check=False)
    if _bridge_exists():
        _run("ip", "link", "delete", BRIDGE, check=False)
    _sweep_iptables()
    _restore_sysctls(layout)
    with contextlib.suppress(FileNotFoundError):
        _snapshot_path(layout).unlink()


def leftovers(layout: Layout) -> list[str]:
    """Everything of the cluster still on the host: processes, mounts, links, namespaces, iptables rules."""
    found = [f"process {pid}: {cmdline}" for pid, cmdline in _our_processes(layout)]
    found += [f"mount {point}" for point in _our_mounts(layout)]
    if _bridge_exists():
        found.append(f"link {BRIDGE}")
    found += [f"link {link} (on {BRIDGE})" for link in _links_on_bridge()]
    found += [f"netns {name}" for name in _our_netns(layout)]
    for tool in _iptables_commands():
        for table, (chains, jumps) in _our_iptables(tool).items():
            found += [f"{tool} -t {table} chain {chain}" for chain in chains]
            found += [f"{tool} -t {table} rule {rule}" for rule in jumps]
    return found
