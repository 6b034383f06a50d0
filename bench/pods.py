"""The provider pods on loopback, started and deleted as the kubelet would: preStop hook, SIGTERM, SIGKILL.

A pod here is a Spring Boot JVM bound to its own loopback address (127.0.0.11, .12, ...) with
the environment its container would have; its preStop hook runs with that environment.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from summary import Strategy, Termination

from localnacos.machine import kill_group, port_free, track

SERVICE = "demo-provider"
JVM_FLAGS = (
    "-Xmx128m",
    "-Xss512k",
    "-XX:TieredStopAtLevel=1",
    "-XX:CICompilerCount=1",
    "-XX:+UseSerialGC",
    "-Xshare:auto",
)
# Startup robustness only (nothing that changes how instances leave): on two shared cores the
# first gRPC handshake with Nacos can take longer than the client's 3 s check; and if it does,
# the app registers through the client's redo task instead of failing its start.
NACOS_CLIENT_FLAGS = (
    "-Dnacos.remote.client.grpc.server.check.timeout=10000",
    "-Dspring.cloud.nacos.discovery.fail-fast=false",
)
FIRST_POD_OCTET = 11  # providers bind 127.0.0.11, 127.0.0.12, ...
PORT_RANGE = (20000, 29999)  # below the ephemeral range, so no client socket can take one
STARTUP_TIMEOUT_S = 240.0
KUBELET_MIN_GRACE_AFTER_HOOK_S = 2.0


@dataclasses.dataclass(frozen=True)
class Nacos:
    addr: str  # host:port of the HTTP API; gRPC is this port + 1000
    version: str


def spawn(argv: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A process in its own group (so teardown reaches its children), torn down at exit if still running."""
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    track(proc)
    return proc


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs we build
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def java_command(jar: Path, home: Path) -> list[str]:
    """A Spring app's JVM: the benchmark's flags, its Nacos client's state and logs under ``home``."""
    return [
        "java",
        *JVM_FLAGS,
        *NACOS_CLIENT_FLAGS,
        f"-DJM.LOG.PATH={home / 'nacos-logs'}",
        f"-DJM.SNAPSHOT.PATH={home}",
        f"-Duser.home={home}",
        "-jar",
        str(jar),
    ]


def free_port(ip: str, taken: set[int]) -> int:
    for _ in range(1000):
        port = random.randint(*PORT_RANGE)  # noqa: S311 - not security relevant
        if port not in taken and port_free(port, ip):
            taken.add(port)
            return port
    raise RuntimeError(f"no free port on {ip} in {PORT_RANGE}")


def pod_name() -> str:
    """A Deployment pod's name: <deployment>-<replicaset hash>-<5 random characters>."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses for generated names
    suffix = "".join(random.choice(alphabet) for _ in range(5))  # noqa: S311 - not security relevant
    return f"{SERVICE}-7d9c6b5f48-{suffix}"


def served(addr: str) -> set[tuple[str, int]]:
    """ip:port pairs Nacos serves to consumers for the provider service (never disabled ones)."""
    query = urllib.parse.urlencode({"serviceName": SERVICE, "healthyOnly": "true"})
    with contextlib.suppress(OSError, ValueError):
        status, body = http_get(f"http://{addr}/nacos/v1/ns/instance/list?{query}")
        if status == 200:
            hosts = json.loads(body).get("hosts", [])
            return {(h["ip"], int(h["port"])) for h in hosts if h.get("enabled", True)}
    return set()


def nacos_version(addr: str) -> str | None:
    for path in ("/nacos/v1/console/server/state", "/nacos/v3/admin/core/state"):
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(f"http://{addr}{path}")
            if status == 200:
                data = json.loads(body)
                data = data.get("data", data) if isinstance(data, dict) else data
                if isinstance(data, dict) and data.get("version"):
                    return str(data["version"])
    return None


@dataclasses.dataclass
class Pod:
    name: str
    ip: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    started: float
    ready: float | None = None


class Cluster:
    """The provider pods on loopback, started and deleted as the kubelet would."""

    def __init__(self, *, jar: Path, nacos: Nacos, run_dir: Path, agent_bin: Path) -> None:
        self.jar = jar
        self.nacos = nacos
        self.run_dir = run_dir
        self.agent_bin = agent_bin
        self._next_octet = FIRST_POD_OCTET
        self._ports: set[int] = set()

    def pod_env(self, name: str, ip: str, port: int, strategy: Strategy | None) -> dict[str, str]:
        """The container's environment, which is also what its preStop hook runs with."""
        env = {
            "PATH": f"{self.agent_bin}:/usr/local/bin:/usr/bin:/bin",
            "HOME": str(self.run_dir),
            "LANG": "C.UTF-8",
            "HOSTNAME": name,
            # Downward API, as in the README's pod spec; HOST_IP is left out on purpose: the node
            # is 127.0.0.1 here, which is also where the consumer's requests come from.
            "POD_IP": ip,
            "SERVER_PORT": str(port),
            "SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR": self.nacos.addr,
            # Bench only: a pod has its own network namespace and IP; here every pod shares the
            # host's, so each binds and registers its own loopback address.
            "SERVER_ADDRESS": ip,
            "SPRING_CLOUD_NACOS_DISCOVERY_IP": ip,
        }
        if strategy is None:
            return env
        env["PRESTOP_GRACE_SECONDS"] = str(int(strategy.grace_s))
        # The consumer calls from 127.0.0.1: loopback peers must count as traffic here.
        env["PRESTOP_TRAFFIC_IGNORE_LOOPBACK"] = "false"
        # PID 1 of this machine is not the app: never write to its stdout.
        env["PRESTOP_LOG_TO_PID1"] = "false"
        if strategy.name == "seed001":
            env |= {"PODIP": ip, "NACOS_SERVER_ADDR": self.nacos.addr, "NACOS_NAMESPACE": "public"}
        env.update(strategy.env)
        return env

    def start(self, strategy: Strategy | None) -> Pod:
        if self._next_octet > 250:
            raise RuntimeError("out of loopback addresses")
        ip = f"127.0.0.{self._next_octet}"
        self._next_octet += 1
        port = free_port(ip, self._ports)
        name = pod_name()
        env = self.pod_env(name, ip, port, strategy)
        home = self.run_dir / name
        home.mkdir(parents=True, exist_ok=True)
        java_env = dict(env, PATH=os.environ.get("PATH", "/usr/bin:/bin"))
        proc = spawn(java_command(self.jar, home), env=java_env, log=self.run_dir / f"{name}.log", cwd=home)
        return Pod(name, ip, port, env, proc, time.time())

    def wait_ready(self, pod: Pod, timeout: float = STARTUP_TIMEOUT_S) -> None:
        """Ready = answers /hello and Nacos serves it (the app registers after its port opens)."""
        deadline = time.time() + timeout
        answered = False
        while time.time() < deadline:
            if pod.proc.poll() is not None:
                raise RuntimeError(f"{pod.name} exited with {pod.proc.returncode}; see {self.run_dir}/{pod.name}.log")
            if not answered:
                with contextlib.suppress(OSError):
                    answered = http_get(f"http://{pod.ip}:{pod.port}/hello", timeout=1.0)[0] == 200
            if answered and (pod.ip, pod.port) in served(self.nacos.addr):
                pod.ready = time.time()
                return
            time.sleep(0.25)
        raise RuntimeError(f"{pod.name} not ready after {timeout:.0f} s; see {self.run_dir}/{pod.name}.log")

    def delete(self, pod: Pod, strategy: Strategy) -> Termination:
        """The kubelet's part: preStop to completion or the grace period, SIGTERM, SIGKILL."""
        rec = Termination(pod.name, pod.ip, pod.port, time.time())
        deadline = rec.deleted + strategy.grace_s
        kill_at = deadline
        if strategy.hook is not None:
            hook_log = self.run_dir / f"{pod.name}.prestop.log"
            hook = spawn(strategy.hook, env=pod.env, log=hook_log, cwd=self.run_dir)
            memory = PeakMemory(hook.pid)
            status, usage = wait4_until(hook, deadline)
            if status is None:
                rec.hook_timed_out = True
                kill_group(hook.pid)
                status, usage = wait4_until(hook, None)
                kill_at = time.time() + KUBELET_MIN_GRACE_AFTER_HOOK_S
            rec.hook_exit = status
            rec.hook_peak_rss_kib = memory.stop()
            if usage is not None:  # CPU time of the hook and every child it waited for
                rec.hook_cpu_s = usage.ru_utime + usage.ru_stime
        rec.sigterm = time.time()
        rec.prestop_s = rec.sigterm - rec.deleted
        with contextlib.suppress(ProcessLookupError):
            pod.proc.send_signal(signal.SIGTERM)  # the container's main process only
        try:
            pod.proc.wait(timeout=max(0.0, kill_at - time.time()))
        except subprocess.TimeoutExpired:
            rec.sigkilled = True
            kill_group(pod.proc.pid)
            pod.proc.wait()
        kill_group(pod.proc.pid)  # anything the app left behind goes with the container
        rec.exited = time.time()
        return rec


class PeakMemory:
    """The largest peak RSS (VmHWM) of the hook process and its children, sampled from /proc.

    ru_maxrss from wait4 cannot be used: Linux carries the peak of the memory image a process
    had before exec() into it, and a hook is forked from this driver, which is far larger than
    a shell or curl. A process is only sampled once it no longer shows this driver's command line.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._interval = interval
        self._stop = threading.Event()
        self._own_cmdline = Path("/proc/self/cmdline").read_bytes()
        self._thread = threading.Thread(target=self._run, name=f"peak-rss-{pid}", daemon=True)
        self._thread.start()

    def stop(self) -> int | None:
        self._stop.set()
        self._thread.join()
        return self.peak_kib or None

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self._interval)

    def _sample(self) -> None:
        todo = [self.pid]
        while todo:
            pid = todo.pop()
            proc = Path(f"/proc/{pid}")
            with contextlib.suppress(OSError, ValueError):
                children = (proc / "task" / str(pid) / "children").read_text().split()
                todo.extend(int(c) for c in children)
            with contextlib.suppress(OSError, ValueError):
                if (proc / "cmdline").read_bytes() == self._own_cmdline:
                    continue  # forked, not yet exec'd: still this driver's memory
                for line in (proc / "status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak_kib = max(self.peak_kib, int(line.split()[1]))


def wait4_until(proc: subprocess.Popen[bytes], deadline: float | None) -> tuple[int | None, Any]:
    """Reap one child with its own resource usage (CPU time, peak RSS), or None at the deadline."""
    while True:
        try:
            pid, status, usage = os.wait4(proc.pid, 0 if deadline is None else os.WNOHANG)
        except ChildProcessError:
            return proc.returncode, None
        if pid == proc.pid:
            code = os.waitstatus_to_exitcode(status)
            proc.returncode = code
            return code, usage
        if deadline is not None and time.time() >= deadline:
            return None, None
        time.sleep(0.05)
