"""A real Nacos server on this machine: started from the cached build, ready when its APIs answer, always stopped.

Servers run in their own process group with a fresh temporary ``nacos.home``; leaving the
context manager (or the interpreter) kills the group and removes the directory.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

import httpx

from localnacos.machine import HarnessError, Lifecycle, free_port, port_free, stop_process, tail, track
from localnacos.maven import build, classpath, java

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


def free_nacos_port() -> int:
    """An HTTP port whose gRPC companions (+1000 client, +1001 cluster) are free as well."""
    for _ in range(200):
        candidate = free_port()
        if candidate + 1001 > 65535:
            continue
        if all(port_free(candidate + offset) for offset in (1000, 1001)):
            return candidate
    raise HarnessError("found no free port p with p+1000 and p+1001 free too")


class NacosProcess(Lifecycle):
    """A real standalone Nacos server (2.x or 3.x) running on 127.0.0.1, as a context manager.

    (A server process; ``prestop_agent.nacos.server.NacosServer`` is the agent's client of one.)
    """

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
        return tail(self.log_path, lines)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        reason = SERVER_AUTH_SUPPORT[(self.major, self.auth)]
        if reason:
            raise AuthUnavailableError(f"Nacos {self.major}.x with auth on cannot run here: {reason}")
        build_dir = build(f"server-{self.major}x")
        started = time.monotonic()
        self.home = Path(tempfile.mkdtemp(prefix=f"localnacos-{self.major}x-"))
        self.port = free_nacos_port()
        self.console_port = free_port() if self.major == 3 else 0
        command = [java(), *self._jvm_options(), "-cp", classpath(build_dir), self._main_class()]
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
        track(self.process)
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
            stop_process(self.process, grace=20.0)
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
