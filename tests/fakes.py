"""Test doubles that are ours to own: a clock that never waits, an in-memory Nacos, a watcher's build context."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

import httpx

from prestop_agent.clock import Clock, SystemClock
from prestop_agent.drain import DrainSet
from prestop_agent.nacos.registry import Registry
from prestop_agent.watchers.base import PodTarget, WatchContext


class FakeClock:
    """Monotonic time that moves only when someone sleeps (or a test advances it)."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += max(0.0, seconds)

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class FakeInstance:
    ip: str
    port: int
    cluster: str = "DEFAULT"
    enabled: bool = True
    healthy: bool = True
    weight: float = 1.0
    ephemeral: bool = True
    metadata: dict[str, str] = field(default_factory=dict)
    client_id: str | None = None  # the gRPC connection that registered it ("ts_ip_port"); None: HTTP

    def json(self, service: str) -> dict[str, Any]:
        return {
            "ip": self.ip,
            "port": self.port,
            "clusterName": self.cluster,
            "enabled": self.enabled,
            "healthy": self.healthy,
            "weight": self.weight,
            "ephemeral": self.ephemeral,
            "metadata": self.metadata,
            "serviceName": service,
            "instanceId": f"{self.ip}#{self.port}#{self.cluster}#{service}",
        }


@dataclass
class FakeNacos:
    """Nacos as the project reads it: major 2 serves v1/v2, major 3 the v3 admin/client API and 410s v1 writes.

    Used only with respx in unit tests; the integration suite runs the real server.
    """

    major: int = 2
    services: dict[str, list[FakeInstance]] = field(default_factory=dict)  # "group@@name" -> instances
    client_list: bool | None = None  # the client list APIs (2.2+, 3.x); None: as the major has them (3 only)
    users: dict[str, str] = field(default_factory=dict)  # auth on when non-empty
    tokens: set[str] = field(default_factory=set)
    ignore_writes: bool = False  # answer ok but change nothing, as Nacos does for a mismatched PUT
    writes: list[dict[str, str]] = field(default_factory=list)
    logins: int = 0

    def add(self, service: str, instance: FakeInstance, group: str = "DEFAULT_GROUP") -> FakeInstance:
        self.services.setdefault(f"{group}@@{service}", []).append(instance)
        return instance

    # -- respx side effect ------------------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/nacos")
        params = {k: v[-1] for k, v in parse_qs(request.url.query.decode()).items()}
        if request.method in ("PUT", "POST"):
            params.update({k: v[-1] for k, v in parse_qs(request.content.decode()).items()})
        if path in ("/v1/auth/login", "/v3/auth/user/login"):
            return self._login(params)
        if self.users and params.get("accessToken") not in self.tokens:
            return httpx.Response(403, text="user not found!" if self.major == 2 else '{"code":403,"message":"no"}')
        handler = self._routes().get((request.method, path))
        if handler is None:
            return httpx.Response(404, json={"status": 404, "error": "Not Found", "path": request.url.path})
        return handler(params)

    def _routes(self) -> dict[tuple[str, str], Callable[[dict[str, str]], httpx.Response]]:
        if self.major == 2:
            return {
                ("GET", "/v1/ns/catalog/instances"): self._catalog,
                ("GET", "/v1/ns/instance/list"): self._served_v1,
                ("PUT", "/v1/ns/instance"): self._put_v1,
                ("GET", "/v1/ns/service/list"): self._service_list_v1,
                ("GET", "/v1/ns/catalog/services"): self._scan_v1,
                **(self._client_routes("/v2/ns/client") if self.client_list else {}),
            }
        return {
            ("GET", "/v3/admin/ns/instance/list"): self._admin_list_v3,
            ("GET", "/v3/client/ns/instance/list"): self._served_v3,
            ("PUT", "/v3/admin/ns/instance"): self._put_v3,
            ("GET", "/v3/admin/ns/service/list"): self._service_list_v3,
            ("PUT", "/v1/ns/instance"): lambda _p: httpx.Response(410, text="this api is deprecated"),
            **(self._client_routes("/v3/admin/ns/client") if self.client_list is not False else {}),
        }

    def _login(self, params: dict[str, str]) -> httpx.Response:
        self.logins += 1
        if self.users.get(params.get("username", "")) != params.get("password"):
            return httpx.Response(403, text="unknown user!")
        token = f"token-{self.logins}-secretvalue"
        self.tokens.add(token)
        return httpx.Response(200, json={"accessToken": token, "tokenTtl": 18000, "globalAdmin": True})

    def _key(self, params: dict[str, str]) -> str:
        return f"{params.get('groupName', 'DEFAULT_GROUP')}@@{params['serviceName']}"

    def _all(self, params: dict[str, str]) -> list[FakeInstance] | None:
        return self.services.get(self._key(params))

    def _missing(self, params: dict[str, str]) -> httpx.Response:
        if self.major == 2:
            return httpx.Response(404, text=f"service {self._key(params)} is not found!")
        return httpx.Response(404, json={"code": 20004, "message": "resource not found", "data": "service not found"})

    def _catalog(self, params: dict[str, str]) -> httpx.Response:
        found = self._all(params)
        if found is None:
            return self._missing(params)
        return httpx.Response(200, json={"list": [i.json(self._key(params)) for i in found], "count": len(found)})

    def _served(self, params: dict[str, str]) -> list[dict[str, Any]] | None:
        found = self._all(params)
        return None if found is None else [i.json(self._key(params)) for i in found if i.enabled]

    def _served_v1(self, params: dict[str, str]) -> httpx.Response:
        hosts = self._served(params)
        if hosts is None:
            return self._missing(params)
        return httpx.Response(200, json={"name": self._key(params), "hosts": hosts, "cacheMillis": 10000})

    def _put(self, params: dict[str, str]) -> None:
        self.writes.append(params)
        if self.ignore_writes:
            return
        for inst in self._all(params) or []:
            if inst.ip == params["ip"] and inst.port == int(params["port"]) and inst.cluster == params["clusterName"]:
                inst.enabled = params["enabled"] == "true"
                inst.weight = float(params.get("weight", 1.0))
                inst.metadata = json.loads(params.get("metadata") or "{}")

    def _put_v1(self, params: dict[str, str]) -> httpx.Response:
        self._put(params)
        return httpx.Response(200, text="ok")

    def _service_list_v1(self, params: dict[str, str]) -> httpx.Response:
        group = params.get("groupName", "DEFAULT_GROUP")
        doms = [k.split("@@", 1)[1] for k in self.services if k.startswith(group + "@@")]
        return httpx.Response(200, json={"count": len(doms), "doms": doms})

    def _envelope(self, data: Any) -> httpx.Response:
        return httpx.Response(200, content=json.dumps({"code": 0, "message": "success", "data": data}))

    def _admin_list_v3(self, params: dict[str, str]) -> httpx.Response:
        found = self._all(params)
        if found is None:
            return self._missing(params)
        return self._envelope([i.json(self._key(params)) for i in found])

    def _served_v3(self, params: dict[str, str]) -> httpx.Response:
        hosts = self._served(params)
        return self._missing(params) if hosts is None else self._envelope(hosts)

    def _put_v3(self, params: dict[str, str]) -> httpx.Response:
        self._put(params)
        return self._envelope("ok")

    # -- the bulk views: the scan of services with their instances, and the client list ------------

    def _details(self, params: dict[str, str]) -> list[dict[str, Any]]:
        if params.get("namespaceId", "public") != "public":
            return []
        page, size = int(params.get("pageNo", 1)), int(params.get("pageSize", 10))
        keys = sorted(self.services)[(page - 1) * size : page * size]
        return [
            {
                "serviceName": key.split("@@", 1)[1],
                "groupName": key.split("@@", 1)[0],
                "clusterMap": {
                    cluster: {"hosts": [i.json(key) for i in self.services[key] if i.cluster == cluster]}
                    for cluster in sorted({i.cluster for i in self.services[key]})
                },
            }
            for key in keys
        ]

    def _scan_v1(self, params: dict[str, str]) -> httpx.Response:
        return httpx.Response(200, json=self._details(params))  # 2.0.4 answers withInstances with a bare list

    def _scan_v3(self, params: dict[str, str]) -> httpx.Response:
        total = len(self.services) if params.get("namespaceId", "public") == "public" else 0
        return self._envelope({"totalCount": total, "pageItems": self._details(params)})

    def _client_routes(self, base: str) -> dict[tuple[str, str], Callable[[dict[str, str]], httpx.Response]]:
        return {("GET", f"{base}/list"): self._clients, ("GET", f"{base}/publish/list"): self._published}

    def _client_id(self, inst: FakeInstance) -> str:
        # gRPC clients are named after the connection's address, HTTP and persistent ones after the instance's.
        return inst.client_id or f"{inst.ip}:{inst.port}#{str(inst.ephemeral).lower()}"

    def _clients(self, _params: dict[str, str]) -> httpx.Response:
        ids = sorted({self._client_id(i) for instances in self.services.values() for i in instances})
        return self._envelope(ids)

    def _published(self, params: dict[str, str]) -> httpx.Response:
        found = [
            {
                "namespaceId": "public",
                "groupName": key.split("@@", 1)[0],
                "serviceName": key.split("@@", 1)[1],
                "publisherInfo": {"clientId": None, "ip": i.ip, "port": i.port, "clusterName": i.cluster},
            }
            for key, instances in self.services.items()
            for i in instances
            if self._client_id(i) == params["clientId"]
        ]
        if not found:
            return httpx.Response(404, json={"code": 20004, "message": "x", "data": "clientId [ x ] not exist"})
        return self._envelope(found)

    def _service_list_v3(self, params: dict[str, str]) -> httpx.Response:
        if params.get("withInstances") == "true":
            return self._scan_v3(params)
        group = params.get("groupNameParam", "DEFAULT_GROUP")
        items = [{"name": k.split("@@", 1)[1], "groupName": group} for k in self.services if k.startswith(group + "@@")]
        return self._envelope({"totalCount": len(items), "pageNumber": 1, "pagesAvailable": 1, "pageItems": items})


def watch_context(target: PodTarget, clock: Clock | None = None) -> WatchContext:
    """What a watcher that never asks Nacos is built with: the pod, a clock, and a cluster of no servers."""
    registry = Registry([], "auto", target.pod_ip, target.port, "DEFAULT")
    return WatchContext(target, clock or SystemClock(), registry, DrainSet(registry, []))
