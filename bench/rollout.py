"""Rolling-update benchmark: the preStop strategies people use today against prestop-agent.

On one machine, with real processes only: a real Nacos server (the localnacos harness), three
instances of a Spring Boot provider registered over gRPC, and one Spring Cloud consumer that
calls them through Nacos discovery and Spring Cloud LoadBalancer (default 35 s cache) at a
steady rate and records every outcome. For each strategy the providers are rolled one at a time
the way a Deployment with maxSurge 1 / maxUnavailable 0 and the kubelet do it:

1. start a replacement (new loopback IP, new port) and wait until it is registered and answers;
2. delete one old pod: run its preStop hook to completion or until the grace period, then
   SIGTERM, then SIGKILL when the grace period is over (at least 2 s after a hook that used
   all of it);
3. go on with the next replacement at once: a terminating pod no longer counts as a replica,
   so its termination overlaps the next replacement's start, as in a real rollout.

After the last old pod is gone the benchmark waits ``--settle`` seconds (longer than the
consumer's cache) so that failures caused by a strategy are counted against it, plus a random
part (``--jitter``) so that no roll starts at the same point of the consumer's cache cycle as
the one before, then rolls again with the next strategy. Run ``bench/run --help`` for the options.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import dataclasses
import datetime as dt
import fcntl
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
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


# -- strategies ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Strategy:
    name: str
    label: str
    grace_s: float
    hook: tuple[str, ...] | None
    env: tuple[tuple[str, str], ...] = ()


def agent_hook() -> tuple[str, ...]:
    return ("prestop-agent", "deregister", "--wait")


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("none", "no preStop hook (grace 30)", 30.0, None),
        Strategy("sleep10", "sleep 10, seed 000 (grace 45)", 45.0, ("/bin/sh", "-c", "sleep 10")),
        Strategy(
            "seed001",
            "curl PUT enabled=false; sleep 45, seed 001 (grace 60)",
            60.0,
            ("/bin/bash", str(BENCH / "seed001-prestop.sh")),
        ),
        Strategy("agent", "prestop-agent deregister --wait (grace 60)", 60.0, agent_hook()),
        Strategy(
            "agent-traffic",
            "prestop-agent, PRESTOP_WAIT_FOR=traffic (grace 60)",
            60.0,
            agent_hook(),
            (("PRESTOP_WAIT_FOR", "traffic"),),
        ),
        Strategy(
            "agent-registry",
            "prestop-agent, PRESTOP_WAIT_FOR=registry, 35 s (grace 60)",
            60.0,
            agent_hook(),
            (("PRESTOP_WAIT_FOR", "registry"),),
        ),
    )
}
DEFAULT_STRATEGIES = ",".join(STRATEGIES)


# -- processes: everything started is registered here and torn down on every exit path ----------

_LIVE: list[subprocess.Popen[bytes]] = []
_LIVE_LOCK = threading.Lock()


def spawn(argv: Sequence[str], *, env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so teardown reaches its children
        )
    with _LIVE_LOCK:
        _LIVE.append(proc)
    return proc


def kill_group(proc: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def teardown() -> None:
    with _LIVE_LOCK:
        procs = list(_LIVE)
        _LIVE.clear()
    for proc in procs:
        if proc.returncode is None:
            kill_group(proc)
    for proc in procs:
        if proc.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                proc.wait(timeout=10)


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


# -- small helpers --------------------------------------------------------------------------------


def log(msg: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback URLs we build
            return int(resp.status), resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode("utf-8", "replace")


def port_is_free(ip: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((ip, port))
        except OSError:
            return False
    return True


def free_port(ip: str, taken: set[int]) -> int:
    for _ in range(1000):
        port = random.randint(*PORT_RANGE)  # noqa: S311 - not security relevant
        if port not in taken and port_is_free(ip, port):
            taken.add(port)
            return port
    raise RuntimeError(f"no free port on {ip} in {PORT_RANGE}")


def pod_name() -> str:
    """A Deployment pod's name: <deployment>-<replicaset hash>-<5 random characters>."""
    alphabet = "bcdfghjklmnpqrstvwxz2456789"  # the alphabet Kubernetes uses for generated names
    suffix = "".join(random.choice(alphabet) for _ in range(5))  # noqa: S311 - not security relevant
    return f"{SERVICE}-7d9c6b5f48-{suffix}"


def cache_dir() -> Path:
    root = os.environ.get("PRESTOP_CACHE_DIR") or str(Path.home() / ".cache" / "prestop-agent")
    return Path(root)


# -- the Spring apps: built once per pom/source hash, cached ---------------------------------------


def sources_hash() -> str:
    digest = hashlib.sha256()
    files = [BENCH / "pom.xml"]
    for module in ("provider", "consumer"):
        files.append(BENCH / module / "pom.xml")
        files.extend(sorted(p for p in (BENCH / module / "src").rglob("*") if p.is_file()))
    for path in files:
        digest.update(str(path.relative_to(BENCH)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def build_apps() -> tuple[Path, Path]:
    """The provider and consumer jars, built with Maven unless this source hash is cached."""
    target = cache_dir() / "bench" / f"apps-{sources_hash()}"
    provider, consumer = target / "demo-provider.jar", target / "demo-consumer.jar"
    if provider.exists() and consumer.exists():
        return provider, consumer
    target.parent.mkdir(parents=True, exist_ok=True)
    with (target.parent / "build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if provider.exists() and consumer.exists():
            return provider, consumer
        log("building the provider and consumer jars with Maven (once per source change)")
        mvn = shutil.which("mvn")
        if mvn is None:
            raise RuntimeError("mvn not found: install Maven 3.8+ and a JDK 17")
        env = dict(os.environ, MAVEN_OPTS="-XX:TieredStopAtLevel=1 -Xmx512m")
        subprocess.run(
            [mvn, "-B", "-q", f"-Dmaven.repo.local={cache_dir() / 'm2'}", "-DskipTests", "package"],
            cwd=BENCH,
            env=env,
            check=True,
        )
        staging = target.with_name(target.name + ".tmp")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        shutil.copy2(BENCH / "provider" / "target" / "demo-provider.jar", staging / "demo-provider.jar")
        shutil.copy2(BENCH / "consumer" / "target" / "demo-consumer.jar", staging / "demo-consumer.jar")
        staging.rename(target)
    return provider, consumer


# -- Nacos ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Nacos:
    addr: str  # host:port of the HTTP API; gRPC is this port + 1000
    version: str


@contextlib.contextmanager
def nacos_server(existing: str | None, major: str) -> Iterator[Nacos]:
    if existing:
        yield Nacos(existing, nacos_version(existing) or "unknown (external)")
        return
    sys.path.insert(0, str(REPO))
    try:
        from localnacos.server import NacosServer
    except ImportError as exc:
        raise RuntimeError(
            "the localnacos harness (localnacos/) is not available; "
            "pass --nacos HOST:PORT to use a running Nacos 2.x/3.x server"
        ) from exc
    with NacosServer(int(major)) as server:
        yield Nacos(server.http_addr, server.version)


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


def served(addr: str) -> set[tuple[str, int]]:
    """ip:port pairs Nacos serves to consumers for the provider service (never disabled ones)."""
    query = urllib.parse.urlencode({"serviceName": SERVICE, "healthyOnly": "true"})
    with contextlib.suppress(OSError, ValueError):
        status, body = http_get(f"http://{addr}/nacos/v1/ns/instance/list?{query}")
        if status == 200:
            hosts = json.loads(body).get("hosts", [])
            return {(h["ip"], int(h["port"])) for h in hosts if h.get("enabled", True)}
    return set()


# -- pods --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Pod:
    name: str
    ip: str
    port: int
    env: dict[str, str]
    proc: subprocess.Popen[bytes]
    started: float
    ready: float | None = None


@dataclasses.dataclass
class Termination:
    pod: str
    ip: str
    port: int
    deleted: float
    hook_exit: int | None = None
    hook_timed_out: bool = False
    prestop_s: float = 0.0
    sigterm: float = 0.0
    exited: float = 0.0
    sigkilled: bool = False
    hook_cpu_s: float | None = None
    hook_peak_rss_kib: int | None = None


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
        argv = [
            "java",
            *JVM_FLAGS,
            *NACOS_CLIENT_FLAGS,
            f"-DJM.LOG.PATH={home / 'nacos-logs'}",
            f"-DJM.SNAPSHOT.PATH={home}",
            f"-Duser.home={home}",
            "-jar",
            str(self.jar),
        ]
        java_env = dict(env, PATH=os.environ.get("PATH", "/usr/bin:/bin"))
        proc = spawn(argv, env=java_env, log=self.run_dir / f"{name}.log", cwd=home)
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
                kill_group(hook)
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
            kill_group(pod.proc)
            pod.proc.wait()
        kill_group(pod.proc)  # anything the app left behind goes with the container
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


# -- the consumer -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    t: float
    status: int | None
    error: str | None
    host: str | None
    port: int | None

    @property
    def kind(self) -> str:
        if self.error is not None:
            return "conn_error" if self.error in CONNECTION_ERRORS else "other_error"
        if self.status is not None and self.status >= 500:
            return "5xx"
        if self.status is not None and self.status >= 400:
            return "4xx"
        return "ok"


CONNECTION_ERRORS = frozenset(
    {"ConnectException", "SocketTimeoutException", "SocketException", "NoRouteToHostException", "IOException"}
)


def read_outcomes(path: Path) -> list[Outcome]:
    outcomes: list[Outcome] = []
    if not path.exists():
        return outcomes
    with path.open(encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except ValueError:
                continue  # a line cut by the consumer's exit
            if "seq" not in row:
                continue
            outcomes.append(Outcome(row["t"] / 1000.0, row["status"], row["error"], row["host"], row["port"]))
    outcomes.sort(key=lambda o: o.t)
    return outcomes


def start_consumer(jar: Path, nacos: Nacos, run_dir: Path, rate: int) -> tuple[subprocess.Popen[bytes], Path]:
    out = run_dir / "consumer.jsonl"
    home = run_dir / "consumer"
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR": nacos.addr,
        "BENCH_OUT": str(out),
        "BENCH_RATE": str(rate),
    }
    argv = [
        "java",
        *JVM_FLAGS,
        *NACOS_CLIENT_FLAGS,
        f"-DJM.LOG.PATH={home / 'nacos-logs'}",
        f"-DJM.SNAPSHOT.PATH={home}",
        f"-Duser.home={home}",
        "-jar",
        str(jar),
    ]
    return spawn(argv, env=env, log=run_dir / "consumer.log", cwd=home), out


def wait_consumer_sees(out: Path, pods: Sequence[Pod], proc: subprocess.Popen[bytes], timeout: float) -> None:
    want = {(p.ip, p.port) for p in pods}
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the consumer exited with {proc.returncode}")
        recent = [o for o in read_outcomes(out)[-500:] if o.kind == "ok"]
        if want <= {(o.host, o.port) for o in recent}:
            return
        time.sleep(1.0)
    raise RuntimeError("the consumer never reached every provider")


# -- one roll per strategy --------------------------------------------------------------------------


@dataclasses.dataclass
class Phase:
    strategy: Strategy
    started: float
    ended: float = 0.0  # the last old pod is gone
    settled: float = 0.0  # end of the window failures are counted in
    terminations: list[Termination] = dataclasses.field(default_factory=list)
    starts: list[tuple[str, float, float]] = dataclasses.field(default_factory=list)  # pod, started, ready


def roll(cluster: Cluster, pods: list[Pod], strategy: Strategy, rolls: int) -> tuple[Phase, list[Pod]]:
    phase = Phase(strategy, time.time())
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    old = list(pods)
    current = list(pods)

    def delete(pod: Pod) -> None:
        try:
            rec = cluster.delete(pod, strategy)
            phase.terminations.append(rec)
            log(
                f"  {pod.name} gone: preStop {rec.prestop_s:.1f} s (exit {rec.hook_exit}), "
                f"exited {rec.exited - rec.sigterm:.1f} s after SIGTERM{' (SIGKILL)' if rec.sigkilled else ''}"
            )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    for victim in old[:rolls]:
        new = cluster.start(strategy)
        cluster.wait_ready(new)
        ready = new.ready or time.time()
        phase.starts.append((new.name, new.started, ready))
        log(f"  {new.name} ({new.ip}:{new.port}) ready in {ready - new.started:.1f} s; deleting {victim.name}")
        current.remove(victim)
        current.append(new)
        thread = threading.Thread(target=delete, args=(victim,), name=f"delete-{victim.name}", daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    phase.ended = time.time()
    return phase, current


# -- results ----------------------------------------------------------------------------------------


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarize(phase: Phase, outcomes: Sequence[Outcome]) -> dict[str, Any]:
    window = [o for o in outcomes if phase.started <= o.t < phase.settled]
    kinds: dict[str, int] = {}
    errors: dict[str, int] = {}
    for o in window:
        kinds[o.kind] = kinds.get(o.kind, 0) + 1
        if o.error is not None:
            errors[o.error] = errors.get(o.error, 0) + 1
        elif o.status is not None and o.status >= 400:
            errors[str(o.status)] = errors.get(str(o.status), 0) + 1
    prestops = [t.prestop_s for t in phase.terminations]
    cpus = [t.hook_cpu_s for t in phase.terminations if t.hook_cpu_s is not None]
    rss = [t.hook_peak_rss_kib for t in phase.terminations if t.hook_peak_rss_kib is not None]
    s = phase.strategy
    return {
        "strategy": s.name,
        "label": s.label,
        "grace_s": s.grace_s,
        "hook": [_repo_relative(a) for a in s.hook] if s.hook else None,
        "hook_env": dict(s.env),
        "started": phase.started,
        "ended": phase.ended,
        "settled": phase.settled,
        "rollout_s": round(phase.ended - phase.started, 2),
        "requests": len(window),
        "ok": kinds.get("ok", 0),
        "status_5xx": kinds.get("5xx", 0),
        "status_4xx": kinds.get("4xx", 0),
        "connection_errors": kinds.get("conn_error", 0),
        "other_errors": kinds.get("other_error", 0),
        "failed": kinds.get("5xx", 0) + kinds.get("conn_error", 0) + kinds.get("other_error", 0),
        "errors_by_kind": errors,
        "prestop_mean_s": _round(mean(prestops)),
        "prestop_max_s": _round(max(prestops, default=None)),
        "hook_cpu_mean_s": _round(mean(cpus), 3),
        "hook_cpu_max_s": _round(max(cpus, default=None), 3),
        "hook_peak_rss_mib": _round(max(rss) / 1024 if rss else None, 1),
        "terminations": [dataclasses.asdict(t) for t in sorted(phase.terminations, key=lambda t: t.deleted)],
        "replacements": [{"pod": n, "started": a, "ready": b} for n, a, b in phase.starts],
    }


def _repo_relative(arg: str) -> str:
    return arg.removeprefix(f"{REPO}/")


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


def table(rows: Sequence[dict[str, Any]]) -> str:
    head = (
        "strategy",
        "requests",
        "5xx",
        "conn err",
        "other err",
        "preStop mean",
        "preStop max",
        "rollout",
        "hook CPU",
        "hook peak RSS",
    )
    lines = []
    for r in rows:
        lines.append(
            (
                r["strategy"],
                str(r["requests"]),
                str(r["status_5xx"]),
                str(r["connection_errors"]),
                str(r["other_errors"]),
                _fmt(r["prestop_mean_s"], " s"),
                _fmt(r["prestop_max_s"], " s"),
                _fmt(r["rollout_s"], " s"),
                _fmt(r["hook_cpu_mean_s"], " s"),
                _fmt(r["hook_peak_rss_mib"], " MiB"),
            )
        )
    widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=True)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)) + " |"]
    out.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for line in lines:
        out.append("| " + " | ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)) + " |")
    return "\n".join(out)


def _fmt(value: float | None, unit: str) -> str:
    return "-" if value is None else f"{value}{unit}"


def machine() -> dict[str, Any]:
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": platform.platform(),
    }


def versions(nacos: Nacos) -> dict[str, str]:
    pom = (BENCH / "pom.xml").read_text()

    def pom_value(pattern: str) -> str:
        found = re.search(pattern, pom, re.S)
        return found.group(1) if found else "unknown"

    java_bin = shutil.which("java") or "java"
    java = subprocess.run([java_bin, "-version"], capture_output=True, text=True, check=False).stderr.splitlines()
    from prestop_agent import __version__

    return {
        "prestop_agent": __version__,
        "nacos_server": nacos.version,
        "spring_boot": pom_value(r"spring-boot-starter-parent</artifactId>\s*<version>([^<]+)"),
        "spring_cloud": pom_value(r"<spring-cloud.version>([^<]+)"),
        "spring_cloud_alibaba": pom_value(r"<spring-cloud-alibaba.version>([^<]+)"),
        "nacos_client": "2.4.3 (from Spring Cloud Alibaba)",
        "java": java[0] if java else "unknown",
        "python": platform.python_version(),
    }


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--strategies",
        default=DEFAULT_STRATEGIES,
        help=f"comma-separated, in order (default: {DEFAULT_STRATEGIES})",
    )
    p.add_argument("--providers", type=int, default=3, help="provider replicas (default 3)")
    p.add_argument("--rolls", type=int, default=0, help="old pods replaced per strategy (default: all)")
    p.add_argument("--rate", type=int, default=50, help="consumer requests per second (default 50)")
    p.add_argument(
        "--settle",
        type=float,
        default=40.0,
        help="seconds after each roll before the next (default 40: longer than the consumer's 35 s cache)",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=35.0,
        help="add a random 0..JITTER seconds to each settle time (default 35, the consumer's cache time-to-live),\n"
        "so a roll does not start at the same point of the consumer's cache cycle every time",
    )
    p.add_argument("--seed", type=int, help="seed for the jitter, pod names and ports")
    p.add_argument("--nacos", metavar="HOST:PORT", help="use this running Nacos instead of starting one")
    p.add_argument("--nacos-major", default="2", choices=("2", "3"), help="Nacos server the harness starts")
    p.add_argument("--results", type=Path, default=BENCH / "results", help="where the JSON and PNG go")
    p.add_argument("--name", help="file name stem for the results (default: today's date)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    args = p.parse_args(argv)
    unknown = [s for s in args.strategies.split(",") if s not in STRATEGIES]
    if unknown:
        p.error(f"unknown strategies {unknown}; known: {DEFAULT_STRATEGIES}")
    return args


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915 - the run, top to bottom
    args = parse_args(argv)
    strategies = [STRATEGIES[s] for s in args.strategies.split(",")]
    rolls = args.rolls or args.providers
    stem = args.name or dt.date.today().isoformat()
    run_dir = args.results / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    agent_bin = Path(sys.executable).parent
    if not (agent_bin / "prestop-agent").exists():
        raise SystemExit(f"prestop-agent is not installed next to {sys.executable}; run bench/run")

    atexit.register(teardown)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    jitter = random.Random(args.seed)  # noqa: S311 - not security relevant
    if args.seed is not None:
        random.seed(args.seed)
    provider_jar, consumer_jar = build_apps()
    began = time.time()
    phases: list[Phase] = []
    try:
        log(f"run directory {run_dir}")
        with nacos_server(args.nacos, args.nacos_major) as nacos:
            log(f"Nacos {nacos.version} at {nacos.addr}")
            cluster = Cluster(jar=provider_jar, nacos=nacos, run_dir=run_dir, agent_bin=agent_bin)
            first = strategies[0]
            pods = [cluster.start(first) for _ in range(args.providers)]
            for pod in pods:
                cluster.wait_ready(pod)
            log(f"{len(pods)} providers ready: {', '.join(f'{p.ip}:{p.port}' for p in pods)}")
            consumer, out = start_consumer(consumer_jar, nacos, run_dir, args.rate)
            wait_consumer_sees(out, pods, consumer, timeout=STARTUP_TIMEOUT_S)
            log(f"consumer calls every provider at {args.rate}/s")
            time.sleep(5.0 + jitter.uniform(0.0, args.jitter))
            for strategy in strategies:
                log(f"rolling with: {strategy.label}")
                for pod in pods:  # the hook a pod runs is the one in the spec it was started with
                    pod.env = cluster.pod_env(pod.name, pod.ip, pod.port, strategy)
                phase, pods = roll(cluster, pods, strategy, rolls)
                settle = args.settle + jitter.uniform(0.0, args.jitter)
                log(f"  rollout took {phase.ended - phase.started:.1f} s; settling {settle:.0f} s")
                time.sleep(settle)
                phase.settled = time.time()
                phases.append(phase)
                if consumer.poll() is not None:
                    raise RuntimeError(f"the consumer exited with {consumer.returncode}")
            outcomes = read_outcomes(out)
    finally:
        teardown()

    rows = [summarize(p, outcomes) for p in phases]
    result = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "versions": versions(nacos),
        "settings": {
            "providers": args.providers,
            "rolls_per_strategy": rolls,
            "rate_per_s": args.rate,
            "settle_s": args.settle,
            "settle_jitter_s": args.jitter,
            "seed": args.seed,
            "jvm_flags": list(JVM_FLAGS),
            "consumer": "Spring Cloud LoadBalancer defaults: round robin, 35 s cache (Caffeine), no retries",
        },
        "total_s": round(time.time() - began, 1),
        "run_dir": str(run_dir.relative_to(REPO)) if run_dir.is_relative_to(REPO) else str(run_dir),
        "strategies": rows,
    }
    args.results.mkdir(parents=True, exist_ok=True)
    json_path = args.results / f"{stem}.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    print(table(rows))
    print(f"\nresults: {json_path}")
    if not args.no_chart:
        from chart import draw

        png = args.results / f"{stem}.png"
        origin = phases[0].started - 15.0 if phases else began
        draw(result, outcomes_as_rows(outcomes, origin), png, origin)
        print(f"chart:   {png}")
    return 0


def outcomes_as_rows(outcomes: Sequence[Outcome], began: float) -> list[tuple[float, str, str]]:
    return [(o.t - began, o.kind, f"{o.host}:{o.port}" if o.host else "none") for o in outcomes]


if __name__ == "__main__":
    sys.exit(main())
