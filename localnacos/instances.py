"""Instances registered with a real Nacos the way applications do it: the Java client over gRPC, or HTTP v1."""

from __future__ import annotations

import contextlib
import json
import queue
import threading
from collections.abc import Callable
from typing import Any, Self

import httpx

from localnacos.jvm import JsonLinesProgram
from localnacos.machine import HarnessError, Lifecycle
from localnacos.server import ADMIN_PASSWORD, ADMIN_USERNAME, CLIENT_VERSIONS, NacosProcess


class JavaInstance(JsonLinesProgram):
    """An ephemeral instance registered over gRPC by the real Nacos Java client, subscribed to its service.

    ``events`` collects every JSON line the client printed (``registered``, ``push``,
    ``deregistered``, ``error``), in order, across restarts.
    """

    label = "gRPC client"

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
        super().__init__()
        self.server = server
        self.service = service
        self.ip = ip
        self.port = port
        self.group = group
        self.namespace = namespace
        self.cluster = cluster
        self.client_version = client_version or CLIENT_VERSIONS[server.major]
        self.register_timeout = register_timeout

    def start(self) -> Self:
        args = [self.server.http_addr, self.namespace, self.group, self.service, self.ip, str(self.port), self.cluster]
        if self.server.auth:
            args += [ADMIN_USERNAME, ADMIN_PASSWORD]
        registered_before = self.count("registered")
        self._launch(
            "client",
            "localnacos.client.GrpcInstance",
            args,
            heap="128m",
            properties={"nacos.client.version": self.client_version},
        )
        try:
            self.wait_for(
                lambda: self.count("registered") > registered_before, timeout=self.register_timeout, what="registered"
            )
        except BaseException:
            self.stop()
            raise
        return self

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
