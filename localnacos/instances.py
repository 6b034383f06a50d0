"""Instances registered with a real Nacos the way applications do it: the Java client over gRPC, or HTTP v1."""

from __future__ import annotations

import contextlib
import json
import queue
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Self

import httpx

from localnacos.machine import HarnessError, Lifecycle, stop_process, tail, track
from localnacos.maven import build, classpath, java
from localnacos.server import ADMIN_PASSWORD, ADMIN_USERNAME, CLIENT_VERSIONS, NacosProcess


class JavaInstance(Lifecycle):
    """An ephemeral instance registered over gRPC by the real Nacos Java client, subscribed to its service.

    ``events`` collects every JSON line the client printed (``registered``, ``push``,
    ``deregistered``, ``error``), in order, across restarts.
    """

    def __init__(
        self,
        server: NacosProcess,
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

    def start(self) -> Self:
        build_dir = build("client", {"nacos.client.version": self.client_version})
        self._home = Path(tempfile.mkdtemp(prefix="localnacos-client-"))
        args = [self.server.http_addr, self.namespace, self.group, self.service, self.ip, str(self.port), self.cluster]
        if self.server.auth:
            args += [ADMIN_USERNAME, ADMIN_PASSWORD]
        command = [
            java(),
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
        track(self.process)
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
        return tail(self._home / "stderr.log")

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
        stop_process(process, grace=0.0 if not graceful else 10.0)
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


class HttpInstance(Lifecycle):
    """An ephemeral instance registered over HTTP v1 and kept alive by heartbeats, as 1.x clients do.

    Works against 2.x and 3.x servers: 3.1 still serves the v1 *client* APIs (register, beat).
    """

    def __init__(
        self,
        server: NacosProcess,
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
