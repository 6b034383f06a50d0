"""One backend per Nacos API generation, behind one small protocol.

Each backend answers four questions on one server:
- ``list_all``: every instance of a service, disabled ones included (the admin/catalog view);
- ``list_served``: the instances consumers are given (disabled ones never appear here);
- ``update``: write an instance's ``enabled`` flag, sending back the observed weight and metadata;
- ``service_names``: the services of a namespace, to find an instance by ip:port.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

from prestop_agent.clock import Deadline
from prestop_agent.errors import ServerError
from prestop_agent.nacos.model import Instance, ServiceKey, instance_from_json
from prestop_agent.nacos.server import NacosServer, Params, Reply

PAGE_SIZE = 500
MAX_PAGES = 20


class ApiGone(ServerError):
    """The server does not offer this API (404/405/410/501 for the path itself)."""


class NacosApi(Protocol):
    @property
    def name(self) -> str: ...

    def list_all(self, server: NacosServer, key: ServiceKey, cluster: str, deadline: Deadline) -> list[Instance]: ...

    def list_served(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> list[Instance]: ...

    def update(
        self, server: NacosServer, key: ServiceKey, inst: Instance, enabled: bool, deadline: Deadline
    ) -> None: ...

    def service_names(self, server: NacosServer, namespace: str, group: str, deadline: Deadline) -> list[str]: ...


# -- reply handling shared by every backend -------------------------------------------------------


def _route_missing(reply: Reply) -> bool:
    """The path itself is not served (Spring's 404 JSON with a ``path``, or 405/410/501)."""
    if reply.status in (405, 410, 501):
        return True
    payload = reply.json()
    return reply.status == 404 and isinstance(payload, dict) and "path" in payload and "code" not in payload


def _service_missing(reply: Reply) -> bool:
    """Nacos's own "no such service/cluster" answer: an empty list, not an error."""
    if reply.status not in (400, 404, 500) or _route_missing(reply):
        return False
    text = reply.text.lower()
    return ("service" in text or "cluster" in text) and ("not found" in text or "not exist" in text)


def _check(server: NacosServer, what: str, reply: Reply) -> Any:
    """The payload of a successful reply; ApiGone or ServerError otherwise."""
    if _route_missing(reply):
        raise ApiGone(
            f"{server}: {what} is not available on this server ({reply.status}: {reply.brief()})", status=reply.status
        )
    if reply.status != 200:
        raise ServerError(f"{server}: {what} answered {reply.status}: {reply.brief()}", status=reply.status)
    payload = reply.json()
    if isinstance(payload, dict) and "code" in payload and "data" in payload and payload["code"] not in (0, 200):
        raise ServerError(f"{server}: {what} answered code {payload['code']}: {reply.brief()}")
    return reply.unwrap()


def _instances(payload: Any, default_cluster: str) -> list[Instance]:
    """Instances from any of the list shapes: a bare list, ``hosts``, ``list``, ``pageItems`` or ``instances``."""
    raw: Any = payload
    if isinstance(payload, dict):
        for key in ("hosts", "list", "pageItems", "instances"):
            if isinstance(payload.get(key), list):
                raw = payload[key]
                break
        else:
            raw = []
    if not isinstance(raw, list):
        return []
    found = (instance_from_json(item, default_cluster) for item in raw if isinstance(item, dict))
    return [inst for inst in found if inst is not None]


def _written(server: NacosServer, what: str, reply: Reply) -> None:
    payload = _check(server, what, reply)
    if payload is None:
        payload = reply.text.strip()  # v1 answers a bare "ok"
    if payload != "ok":
        raise ServerError(f"{server}: {what} did not answer ok: {reply.brief()}")


def _pages(fetch: Any) -> Iterator[list[str]]:
    for page in range(1, MAX_PAGES + 1):
        names, total = fetch(page)
        yield names
        if not names or page * PAGE_SIZE >= total:
            return


def _update_form(key: ServiceKey, inst: Instance, enabled: bool) -> dict[str, str | int | float]:
    return {
        "namespaceId": key.namespace,
        "groupName": key.group,
        "serviceName": key.service,
        "clusterName": inst.cluster,
        "ip": inst.ip,
        "port": inst.port,
        "weight": inst.weight,
        "enabled": "true" if enabled else "false",
        "ephemeral": "true" if inst.ephemeral else "false",
        "metadata": inst.metadata_json(),
    }


def _list_params(key: ServiceKey) -> Params:
    return {"namespaceId": key.namespace, "groupName": key.group, "serviceName": key.service}


# -- the backends --------------------------------------------------------------------------------


class V1Api:
    """Nacos 1.4 and 2.x: ``/v1/ns/catalog/instances`` sees disabled instances, ``/v1/ns/instance`` writes."""

    name = "v1"
    served_path = "/v1/ns/instance/list"
    update_path = "/v1/ns/instance"

    def list_all(self, server: NacosServer, key: ServiceKey, cluster: str, deadline: Deadline) -> list[Instance]:
        # 2.0.x requires clusterName here and answers 404 "cluster X is not found!" for an empty one.
        found: list[Instance] = []
        for page in range(1, MAX_PAGES + 1):
            params: Params = {**_list_params(key), "clusterName": cluster, "pageNo": page, "pageSize": PAGE_SIZE}
            reply = server.call("GET", "/v1/ns/catalog/instances", deadline, params=params)
            if _service_missing(reply):
                return found
            payload = _check(server, "GET /v1/ns/catalog/instances", reply)
            batch = _instances(payload, "DEFAULT")
            found.extend(batch)
            total = payload.get("count", 0) if isinstance(payload, dict) else 0
            if not batch or len(found) >= int(total or 0):
                return found
        return found

    def list_served(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> list[Instance]:
        params: Params = {**_list_params(key), "healthyOnly": "false"}
        reply = server.call("GET", self.served_path, deadline, params=params)
        if _service_missing(reply):
            return []
        return _instances(_check(server, f"GET {self.served_path}", reply), "DEFAULT")

    def update(self, server: NacosServer, key: ServiceKey, inst: Instance, enabled: bool, deadline: Deadline) -> None:
        reply = server.call("PUT", self.update_path, deadline, form=_update_form(key, inst, enabled))
        _written(server, f"PUT {self.update_path}", reply)

    def service_names(self, server: NacosServer, namespace: str, group: str, deadline: Deadline) -> list[str]:
        names: list[str] = []

        def fetch(page: int) -> tuple[list[str], int]:
            params: Params = {"namespaceId": namespace, "groupName": group, "pageNo": page, "pageSize": PAGE_SIZE}
            reply = server.call("GET", "/v1/ns/service/list", deadline, params=params)
            payload = _check(server, "GET /v1/ns/service/list", reply)
            doms = payload.get("doms", []) if isinstance(payload, dict) else []
            total = payload.get("count", 0) if isinstance(payload, dict) else 0
            return [str(d) for d in doms], int(total or 0)

        for batch in _pages(fetch):
            names.extend(batch)
        return names


class V2Api(V1Api):
    """Nacos 2.2+: the v2 open API for the served list and writes (JSON envelopes); catalog as v1."""

    name = "v2"
    served_path = "/v2/ns/instance/list"
    update_path = "/v2/ns/instance"


class V3Api:
    """Nacos 3.x: the admin API (token by default) sees and writes everything; the client API serves."""

    name = "v3"

    def list_all(self, server: NacosServer, key: ServiceKey, cluster: str, deadline: Deadline) -> list[Instance]:
        params: Params = {**_list_params(key), "healthyOnly": "false"}
        reply = server.call("GET", "/v3/admin/ns/instance/list", deadline, params=params)
        if _service_missing(reply):
            return []
        return _instances(_check(server, "GET /v3/admin/ns/instance/list", reply), "DEFAULT")

    def list_served(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> list[Instance]:
        params: Params = {**_list_params(key), "healthyOnly": "false"}
        reply = server.call("GET", "/v3/client/ns/instance/list", deadline, params=params)
        if _service_missing(reply):
            return []
        return _instances(_check(server, "GET /v3/client/ns/instance/list", reply), "DEFAULT")

    def update(self, server: NacosServer, key: ServiceKey, inst: Instance, enabled: bool, deadline: Deadline) -> None:
        reply = server.call("PUT", "/v3/admin/ns/instance", deadline, form=_update_form(key, inst, enabled))
        _written(server, "PUT /v3/admin/ns/instance", reply)

    def service_names(self, server: NacosServer, namespace: str, group: str, deadline: Deadline) -> list[str]:
        names: list[str] = []

        def fetch(page: int) -> tuple[list[str], int]:
            params: Params = {
                "namespaceId": namespace,
                "groupNameParam": group,
                "serviceNameParam": "",
                "pageNo": page,
                "pageSize": PAGE_SIZE,
            }
            reply = server.call("GET", "/v3/admin/ns/service/list", deadline, params=params)
            payload = _check(server, "GET /v3/admin/ns/service/list", reply)
            items = payload.get("pageItems", []) if isinstance(payload, dict) else []
            total = payload.get("totalCount", 0) if isinstance(payload, dict) else 0
            return [str(i.get("name")) for i in items if isinstance(i, dict) and i.get("name")], int(total or 0)

        for batch in _pages(fetch):
            names.extend(batch)
        return names


APIS: dict[str, NacosApi] = {"v1": V1Api(), "v2": V2Api(), "v3": V3Api()}
