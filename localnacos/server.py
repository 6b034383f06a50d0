"""Start real Nacos servers and real registering clients on this machine, for tests and demos.

Everything binds to 127.0.0.1 on free ports. Java programs are built with Maven into a cache
directory (``$PRESTOP_CACHE_DIR``, default ``~/.cache/prestop-agent``): the Maven repository lives
in ``<cache>/m2`` and every build in ``<cache>/build/<project>-<hash of its sources>``, so a second
run starts at once. Servers run in their own process group with a fresh temporary ``nacos.home``;
leaving the context manager (or the interpreter) kills the group and removes the directory.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import hashlib
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

ROOT = Path(__file__).resolve().parent

#: Nacos server versions behind each major, as resolved by the Maven projects.
SERVER_VERSIONS = {2: "2.0.4", 3: "3.1.0"}
#: The Java client each major is exercised with (what applications of that era ship).
CLIENT_VERSIONS = {2: "2.5.1", 3: "3.1.1"}
#: The admin user the harness creates when auth is on (3.x has no default user).
ADMIN_USERNAME = "nacos"
ADMIN_PASSWORD = "nacos-test-pw"  # noqa: S105 - a throwaway local test server
#: Base64 of a 48-byte key; Nacos wants at least 32 bytes for its HMAC token signer.
TOKEN_SECRET = "bG9jYWxuYWNvcy10ZXN0LXRva2VuLXNlY3JldC1rZXktMDEyMzQ1Njc4OQ=="  # noqa: S105 - same

_JVM_OPENS = (
    "java.lang",
    "java.lang.reflect",
    "java.util",
    "java.util.concurrent",
    "java.util.concurrent.atomic",
    "java.math",
    "java.net",
    "java.nio",
    "java.io",
    "java.text",
    "java.time",
    "sun.nio.ch",
)


class HarnessError(RuntimeError):
    """A Java program could not be built or started, or a server never became ready."""


class AuthUnavailableError(HarnessError):
    """The requested server cannot run with auth on (see SERVER_AUTH_SUPPORT)."""


#: Why a combination cannot run, or None when it can.
SERVER_AUTH_SUPPORT: dict[tuple[int, bool], str | None] = {
    (2, False): None,
    (2, True): (
        "the only Nacos 2.x server modules on Maven Central (com.pig4cloud.nacos 2.0.4.RELEASE) lack the "
        "console module, which in 2.0.x holds the user store and the login endpoint"
    ),
    (3, False): None,
    (3, True): None,
}


# ---------------------------------------------------------------------------------------------
# Paths, ports, builds


def cache_dir() -> Path:
    """The directory that survives between runs: Maven repository and build outputs."""
    configured = os.environ.get("PRESTOP_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "prestop-agent"


def java_available() -> str | None:
    """Why Java programs cannot be built or run here, or None when they can."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (Java 17 and Maven are needed for the real Nacos tests)"
    return None


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def free_nacos_port() -> int:
    """An HTTP port whose gRPC companions (+1000 client, +1001 cluster) are free as well."""
    for _ in range(200):
        candidate = free_port()
        if candidate + 1001 > 65535:
            continue
        if all(_port_free(candidate + offset) for offset in (1000, 1001)):
            return candidate
    raise HarnessError("found no free port p with p+1000 and p+1001 free too")


def _source_hash(project: Path, properties: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    files = [project / "pom.xml", *sorted(p for p in (project / "src").rglob("*") if p.is_file())]
    for path in files:
        digest.update(str(path.relative_to(project)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    for key in sorted(properties):
        digest.update(f"{key}={properties[key]}\0".encode())
    return digest.hexdigest()[:16]


def build(project: str, properties: Mapping[str, str] | None = None, *, timeout: float = 1200.0) -> Path:
    """Build one of the Maven projects next to this file (cached) and return its build directory.

    The directory holds ``classes/`` and ``classpath.txt`` (the runtime classpath in Maven's
    resolution order, pointing into the cached Maven repository).
    """
    reason = java_available()
    if reason:
        raise HarnessError(reason)
    props = dict(properties or {})
    source = ROOT / project
    target = cache_dir() / "build" / f"{project}-{_source_hash(source, props)}"
    done_marker = target / ".complete"
    if done_marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{project}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done_marker.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        command = [
            "mvn",
            "-B",
            "-q",
            f"-Dmaven.repo.local={cache_dir() / 'm2'}",
            f"-Dlocalnacos.buildDir={target}",
            "-DskipTests",
            *(f"-D{key}={value}" for key, value in sorted(props.items())),
            "-f",
            str(source / "pom.xml"),
            "package",
        ]
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"maven build of {project} took longer than {timeout:.0f} s") from exc
        if result.returncode != 0:
            tail = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
            raise HarnessError(f"maven build of {project} failed ({result.returncode}):\n{tail}")
        done_marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return target


def classpath(build_dir: Path) -> str:
    """The Java classpath of a build directory made by :func:`build`."""
    libraries = (build_dir / "classpath.txt").read_text().strip()
    return f"{build_dir / 'classes'}{os.pathsep}{libraries}"


# ---------------------------------------------------------------------------------------------
# Processes


_LIVE_GROUPS: set[int] = set()
_LIVE_LOCK = threading.Lock()


def _kill_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


@atexit.register
def _kill_leftovers() -> None:
    with _LIVE_LOCK:
        groups = list(_LIVE_GROUPS)
        _LIVE_GROUPS.clear()
    for pgid in groups:
        _kill_group(pgid, signal.SIGKILL)


def _track(process: subprocess.Popen[Any]) -> None:
    with _LIVE_LOCK:
        _LIVE_GROUPS.add(process.pid)


def _stop_process(process: subprocess.Popen[Any], *, grace: float) -> None:
    """SIGTERM the process group, then SIGKILL it when ``grace`` seconds pass."""
    if process.poll() is None:
        _kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _kill_group(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    # Children that outlived the leader still share its group.
    _kill_group(process.pid, signal.SIGKILL)
    with _LIVE_LOCK:
        _LIVE_GROUPS.discard(process.pid)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _java() -> str:
    java = shutil.which("java")
    if java is None:
        raise HarnessError("`java` is not on PATH")
    return java


# ---------------------------------------------------------------------------------------------
# Server


class NacosServer:
    """A real standalone Nacos server (2.x or 3.x) on 127.0.0.1, as a context manager."""

    def __init__(
        self,
        major: int,
        auth: bool = False,
        *,
        startup_timeout: float = 180.0,
        heap_mb: int = 384,
    ) -> None:
        if major not in SERVER_VERSIONS:
            raise ValueError(f"major must be one of {sorted(SERVER_VERSIONS)}, not {major}")
        self.major = major
        self.auth = auth
        self.version = SERVER_VERSIONS[major]
        self.startup_timeout = startup_timeout
        self.heap_mb = heap_mb
        self.port = 0
        self.console_port = 0
        self.home: Path | None = None
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds = 0.0
        self._token: str | None = None
        self._http = httpx.Client(timeout=10.0)

    # -- identity -------------------------------------------------------------------------

    @property
    def http_addr(self) -> str:
        """``127.0.0.1:PORT``, as it would appear in ``NACOS_SERVER_ADDR``."""
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/nacos``."""
        return f"http://{self.http_addr}/nacos"

    @property
    def grpc_port(self) -> int:
        return self.port + 1000

    @property
    def username(self) -> str | None:
        return ADMIN_USERNAME if self.auth else None

    @property
    def password(self) -> str | None:
        return ADMIN_PASSWORD if self.auth else None

    @property
    def log_path(self) -> Path:
        if self.home is None:
            raise HarnessError("server not started")
        return self.home / "stdout.log"

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    # -- lifecycle ------------------------------------------------------------------------

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        reason = SERVER_AUTH_SUPPORT[(self.major, self.auth)]
        if reason:
            raise AuthUnavailableError(f"Nacos {self.major}.x with auth on cannot run here: {reason}")
        build_dir = build(f"server-{self.major}x")
        started = time.monotonic()
        self.home = Path(tempfile.mkdtemp(prefix=f"localnacos-{self.major}x-"))
        self.port = free_nacos_port()
        self.console_port = free_port() if self.major == 3 else 0
        command = [_java(), *self._jvm_options(), "-cp", classpath(build_dir), self._main_class()]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                # Never written to: the JVM exits when this pipe closes, i.e. when this process dies.
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
            )
        _track(self.process)
        try:
            self._wait_ready(started + self.startup_timeout)
            if self.auth:
                self._create_admin(started + self.startup_timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        if self.process is not None:
            _stop_process(self.process, grace=20.0)
            if self.process.stdin is not None:
                with contextlib.suppress(OSError):
                    self.process.stdin.close()
            self.process = None
        if self.home is not None:
            shutil.rmtree(self.home, ignore_errors=True)
            self.home = None
        self._http.close()
        self._http = httpx.Client(timeout=10.0)
        self._token = None

    def _main_class(self) -> str:
        return "localnacos.server2.LocalNacosServer2" if self.major == 2 else "localnacos.server3.LocalNacosServer3"

    def _jvm_options(self) -> list[str]:
        if self.home is None:
            raise HarnessError("server home not created")
        auth = "true" if self.auth else "false"
        options = [
            f"-Xms{min(256, self.heap_mb)}m",
            f"-Xmx{self.heap_mb}m",
            # Two cores: the C1 compiler alone and a serial collector start Nacos faster.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            *(f"--add-opens=java.base/{package}=ALL-UNNAMED" for package in _JVM_OPENS),
            "-Dlocalnacos.exitOnStdinClose=true",
            f"-Duser.home={self.home}",
            f"-Dnacos.home={self.home}",
            f"-Dnacos.logs.path={self.home / 'logs'}",
            f"-DJM.LOG.PATH={self.home / 'logs'}",
            "-Dnacos.standalone=true",
            "-Dserver.address=127.0.0.1",
            "-Dnacos.inetutils.ip-address=127.0.0.1",
            "-Dnacos.core.auth.system.type=nacos",
            f"-Dnacos.core.auth.enabled={auth}",
            f"-Dnacos.core.auth.plugin.nacos.token.secret.key={TOKEN_SECRET}",
            "-Dnacos.core.auth.server.identity.key=localnacos",
            "-Dnacos.core.auth.server.identity.value=localnacos",
            # Users take effect at once instead of after the 15 s auth cache refresh.
            "-Dnacos.core.auth.caching.enabled=false",
        ]
        if self.major == 2:
            options += [
                f"-Dserver.port={self.port}",
                "-Dserver.servlet.contextPath=/nacos",
                "-Dspring.main.allow-circular-references=true",
                "-Dmanagement.metrics.export.elastic.enabled=false",
                "-Dmanagement.metrics.export.influx.enabled=false",
                # 2.0.x names the token secret differently.
                f"-Dnacos.core.auth.default.token.secret.key={TOKEN_SECRET}",
            ]
        else:
            options += [
                f"-Dnacos.server.main.port={self.port}",
                "-Dnacos.server.contextPath=/nacos",
                f"-Dnacos.console.port={self.console_port}",
                "-Dnacos.console.contextPath=",
                f"-Dnacos.core.auth.admin.enabled={auth}",
                f"-Dnacos.core.auth.console.enabled={auth}",
                "-Dmanagement.elastic.metrics.export.enabled=false",
                "-Dmanagement.influx.metrics.export.enabled=false",
            ]
        return options

    def _fail(self, why: str) -> HarnessError:
        return HarnessError(
            f"Nacos {self.version} on {self.http_addr}: {why}\n--- server log (tail) ---\n{self.log_tail()}"
        )

    def _ready_once(self) -> bool:
        if self.major == 2:
            response = self._http.get(f"{self.base_url}/v1/ns/operator/metrics")
            return response.status_code == 200 and response.json().get("status") == "UP"
        response = self._http.get(f"{self.base_url}/v3/admin/core/state/readiness")
        if response.status_code != 200 or response.json().get("code") != 0:
            return False
        # The server API is ready a few seconds before the console context has started.
        return "localnacos: all Nacos contexts started" in self.log_path.read_text(errors="replace")

    def _wait_ready(self, deadline: float) -> None:
        if self.process is None:
            raise HarnessError("server not started")
        while True:
            if self.process.poll() is not None:
                raise self._fail(f"the JVM exited with {self.process.returncode} before it was ready")
            with contextlib.suppress(httpx.HTTPError, ValueError):
                if self._ready_once():
                    return
            if time.monotonic() > deadline:
                raise self._fail(f"not ready after {self.startup_timeout:.0f} s")
            time.sleep(0.5)

    def _create_admin(self, deadline: float) -> None:
        response = self._http.post(f"{self.base_url}/v3/auth/user/admin", data={"password": ADMIN_PASSWORD})
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if response.status_code != 200 or body.get("code") not in (0, 409):
            raise self._fail(f"creating the admin user answered {response.status_code}: {response.text[:300]}")
        while True:
            with contextlib.suppress(httpx.HTTPError, HarnessError):
                self.login()
                return
            if time.monotonic() > deadline:
                raise self._fail("the admin user could not log in")
            time.sleep(0.5)

    # -- HTTP helpers ---------------------------------------------------------------------

    def login(self) -> str:
        """Log in as the admin and keep the token for :meth:`request`."""
        response = self._http.post(
            f"{self.base_url}/v1/auth/login", data={"username": ADMIN_USERNAME, "password": ADMIN_PASSWORD}
        )
        if response.status_code != 200:
            raise HarnessError(f"login answered {response.status_code}: {response.text[:300]}")
        token = response.json()["accessToken"]
        if not isinstance(token, str):
            raise HarnessError(f"login answered no token: {response.text[:300]}")
        self._token = token
        return token

    def request(self, method: str, path: str, params: Mapping[str, str | int] | None = None) -> httpx.Response:
        """Send a request to ``base_url + path``, with the admin's token when auth is on."""
        query: dict[str, str | int] = dict(params or {})
        if self.auth:
            query["accessToken"] = self._token or self.login()
        response = self._http.request(method, f"{self.base_url}{path}", params=query)
        if self.auth and response.status_code == 403:
            query["accessToken"] = self.login()
            response = self._http.request(method, f"{self.base_url}{path}", params=query)
        return response

    def served_hosts(
        self, service: str, *, group: str = "DEFAULT_GROUP", namespace: str = "public"
    ) -> list[dict[str, Any]]:
        """What clients are served: enabled, healthy instances only."""
        params: dict[str, str | int] = {"serviceName": service, "groupName": group, "namespaceId": namespace}
        if self.major == 2:
            response = self.request("GET", "/v1/ns/instance/list", params)
            response.raise_for_status()
            hosts: list[dict[str, Any]] = response.json()["hosts"]
            return hosts
        response = self.request("GET", "/v3/client/ns/instance/list", params)
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    def all_hosts(
        self, service: str, *, group: str = "DEFAULT_GROUP", namespace: str = "public"
    ) -> list[dict[str, Any]]:
        """Every instance the server holds for the service, disabled ones included."""
        params: dict[str, str | int] = {"serviceName": service, "groupName": group, "namespaceId": namespace}
        if self.major == 2:
            params.update({"clusterName": "DEFAULT", "pageNo": 1, "pageSize": 1000})
            response = self.request("GET", "/v1/ns/catalog/instances", params)
            if response.status_code == 404:
                return []
            response.raise_for_status()
            listed: list[dict[str, Any]] = response.json()["list"]
            return listed
        response = self.request("GET", "/v3/admin/ns/instance/list", params)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        data: list[dict[str, Any]] = response.json()["data"]
        return data

    def find_host(self, service: str, ip: str, port: int, **where: str) -> dict[str, Any] | None:
        """The instance ip:port of a service as the server holds it (disabled or not), or None."""
        for host in self.all_hosts(service, **where):
            if host.get("ip") == ip and host.get("port") == port:
                return host
        return None

    def set_enabled(self, service: str, ip: str, port: int, enabled: bool, *, group: str = "DEFAULT_GROUP") -> None:
        """Flip ``enabled`` the way an operator would (v1 on 2.x, v3 admin on 3.x)."""
        params: dict[str, str | int] = {
            "serviceName": service,
            "groupName": group,
            "ip": ip,
            "port": port,
            "enabled": "true" if enabled else "false",
            "ephemeral": "true",
        }
        path = "/v1/ns/instance" if self.major == 2 else "/v3/admin/ns/instance"
        response = self.request("PUT", path, params)
        response.raise_for_status()


# ---------------------------------------------------------------------------------------------
# Registering clients


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.25, what: str = "condition") -> None:
    """Poll ``check`` until it is true or ``timeout`` seconds pass (then raise TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)


class JavaInstance:
    """An ephemeral instance registered over gRPC by the real Nacos Java client, subscribed to its service.

    ``events`` collects every JSON line the client printed (``registered``, ``push``,
    ``deregistered``, ``error``), in order, across restarts.
    """

    def __init__(
        self,
        server: NacosServer,
        service: str,
        ip: str,
        port: int,
        *,
        group: str = "DEFAULT_GROUP",
        namespace: str = "public",
        cluster: str = "DEFAULT",
        client_version: str | None = None,
        register_timeout: float = 60.0,
    ) -> None:
        self.server = server
        self.service = service
        self.ip = ip
        self.port = port
        self.group = group
        self.namespace = namespace
        self.cluster = cluster
        self.client_version = client_version or CLIENT_VERSIONS[server.major]
        self.register_timeout = register_timeout
        self.events: list[dict[str, Any]] = []
        self._events_changed = threading.Condition()
        self.process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None
        self._home: Path | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        build_dir = build("client", {"nacos.client.version": self.client_version})
        self._home = Path(tempfile.mkdtemp(prefix="localnacos-client-"))
        args = [self.server.http_addr, self.namespace, self.group, self.service, self.ip, str(self.port), self.cluster]
        if self.server.auth:
            args += [ADMIN_USERNAME, ADMIN_PASSWORD]
        command = [
            _java(),
            "-Xmx128m",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Duser.home={self._home}",
            f"-DJM.LOG.PATH={self._home / 'logs'}",
            "-cp",
            classpath(build_dir),
            "localnacos.client.GrpcInstance",
            *args,
        ]
        with open(self._home / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                start_new_session=True,
            )
        _track(self.process)
        registered_before = self._count("registered")
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        try:
            self.wait_for(
                lambda: self._count("registered") > registered_before, timeout=self.register_timeout, what="registered"
            )
        except BaseException:
            self.stop()
            raise
        return self

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        if process.stdout is None:
            return
        for raw in process.stdout:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            with self._events_changed:
                self.events.append(event)
                self._events_changed.notify_all()

    def _count(self, kind: str) -> int:
        with self._events_changed:
            return sum(1 for event in self.events if event.get("event") == kind)

    def wait_for(self, check: Callable[[], bool], *, timeout: float, what: str = "event") -> None:
        """Wait until ``check`` (called with new events seen) is true; raise TimeoutError with the client's log."""
        deadline = time.monotonic() + timeout
        with self._events_changed:
            while not check():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"gRPC client: {what} not seen within {timeout:.0f} s; events: {self.events}")
                if self.process is not None and self.process.poll() is not None and self._reader_done():
                    raise HarnessError(
                        f"gRPC client exited with {self.process.returncode}; events: {self.events}\n"
                        + self.stderr_tail()
                    )
                self._events_changed.wait(timeout=min(remaining, 0.5))

    def _reader_done(self) -> bool:
        return self._reader is None or not self._reader.is_alive()

    def pushes(self) -> list[list[dict[str, Any]]]:
        """Every host list pushed to the subscribed client so far, oldest first."""
        with self._events_changed:
            return [list(event.get("hosts", [])) for event in self.events if event.get("event") == "push"]

    def has_self(self, hosts: list[dict[str, Any]]) -> bool:
        return any(host.get("ip") == self.ip and host.get("port") == self.port for host in hosts)

    def wait_for_push(
        self, predicate: Callable[[list[dict[str, Any]]], bool], *, timeout: float, after: int = 0
    ) -> None:
        """Wait for a push (the ``after``-th or later) whose host list satisfies ``predicate``."""
        self.wait_for(
            lambda: any(predicate(hosts) for hosts in self.pushes()[after:]),
            timeout=timeout,
            what="a matching push",
        )

    def stderr_tail(self) -> str:
        if self._home is None:
            return "(no log)"
        return _tail(self._home / "stderr.log")

    def stop(self, *, graceful: bool = True) -> None:
        """Deregister and exit (``graceful``: close stdin, like an app shutting down), or SIGKILL the JVM."""
        process = self.process
        if process is None:
            return
        if graceful and process.poll() is None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        _stop_process(process, grace=0.0 if not graceful else 10.0)
        if self._reader is not None:
            self._reader.join(timeout=5)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.process = None
        self._reader = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None

    def restart(self, *, graceful: bool = True) -> None:
        """Stop the client and register the same ip:port again, as a restarted container does."""
        self.stop(graceful=graceful)
        self.start()


class HttpInstance:
    """An ephemeral instance registered over HTTP v1 and kept alive by heartbeats, as 1.x clients do.

    Works against 2.x and 3.x servers: 3.1 still serves the v1 *client* APIs (register, beat).
    """

    def __init__(
        self,
        server: NacosServer,
        service: str,
        ip: str,
        port: int,
        *,
        group: str = "DEFAULT_GROUP",
        cluster: str = "DEFAULT",
        beat_interval: float = 5.0,
    ) -> None:
        self.server = server
        self.service = service
        self.ip = ip
        self.port = port
        self.group = group
        self.cluster = cluster
        self.beat_interval = beat_interval
        self.beat_errors: queue.Queue[str] = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _params(self) -> dict[str, str | int]:
        return {
            "serviceName": self.service,
            "groupName": self.group,
            "ip": self.ip,
            "port": self.port,
            "clusterName": self.cluster,
            "ephemeral": "true",
        }

    def start(self) -> Self:
        response = self.server.request(
            "POST", "/v1/ns/instance", {**self._params(), "weight": "1.0", "enabled": "true"}
        )
        if response.status_code != 200:
            raise HarnessError(f"HTTP register answered {response.status_code}: {response.text[:300]}")
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat_loop, daemon=True)
        self._thread.start()
        return self

    def beat(self) -> httpx.Response:
        beat = {
            "serviceName": f"{self.group}@@{self.service}",
            "ip": self.ip,
            "port": self.port,
            "cluster": self.cluster,
            "weight": 1.0,
            "metadata": {},
            "scheduled": True,
        }
        return self.server.request("PUT", "/v1/ns/instance/beat", {**self._params(), "beat": json.dumps(beat)})

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.beat_interval):
            try:
                response = self.beat()
            except httpx.HTTPError as exc:
                self.beat_errors.put(repr(exc))
                continue
            if response.status_code != 200:
                self.beat_errors.put(f"{response.status_code}: {response.text[:200]}")

    def stop(self, *, deregister: bool = True) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        if deregister:
            with contextlib.suppress(httpx.HTTPError):
                self.server.request("DELETE", "/v1/ns/instance", self._params())


@contextlib.contextmanager
def running(server: NacosServer) -> Iterator[NacosServer]:
    """``with running(NacosServer(3, auth=True)) as nacos:`` — start, yield, always stop."""
    try:
        yield server.start()
    finally:
        server.stop()
