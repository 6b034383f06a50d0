"""One backend per Nacos API generation, behind one small protocol.

Each backend answers four questions on one server:
- ``list_all``: every instance of a service, disabled ones included (the admin/catalog view);
- ``list_served``: the instances consumers are given (disabled ones never appear here);
- ``update``: write an instance's ``enabled`` flag, sending back the observed weight and metadata;
- ``service_names``: the services of a namespace, to find an instance by ip:port.
"""

from __future__ import annotations

import re
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


_NOT_FOUND = re.compile(r"^(service|cluster)\b.{0,300}\bnot (found|exist)", re.IGNORECASE)


def _service_missing(reply: Reply) -> bool:
    """Nacos's own "no such service/cluster" answer: an empty list, not an error.

    Only Nacos's forms count: its plain-text line (1.x/2.x) or its JSON envelope (3.x). A proxy's
    or gateway's page that happens to say "service not found" is no answer from Nacos.
    """
    if reply.status not in (400, 404, 500) or _route_missing(reply):
        return False
    payload = reply.json()
    if isinstance(payload, dict):
        if not isinstance(payload.get("code"), int):
            return False
        texts = [payload.get("data"), payload.get("message")]
        return any(isinstance(t, str) and _NOT_FOUND.search(t.strip()) for t in texts)
    text = reply.text.strip()
    return "\n" not in text and "<" not in text and bool(_NOT_FOUND.search(text))


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


def _not_nacos(server: NacosServer, what: str, reply: Reply, expected: str) -> ServerError:
    """An answer that is not the one Nacos gives: never evidence of anything (invariant 2)."""
    body = reply.brief() or "an empty body"
    return ServerError(f"{server}: {what} answered {reply.status} with something other than {expected}: {body}")


def _instances(server: NacosServer, what: str, reply: Reply, payload: Any, *keys: str | None) -> list[Instance]:
    """The instances of a list answer, which must have one of the shapes named by ``keys``.

    ``None`` stands for a bare list; a name for an object holding the list under that name. Any
    other answer (an HTML page, an empty body, ``null``, a foreign JSON shape, an entry without
    ip and port) raises: "no instance listed" must come from Nacos, or it proves nothing.
    """
    raw: Any = None
    for key in keys:
        if key is None and isinstance(payload, list):
            raw = payload
        elif key is not None and isinstance(payload, dict) and isinstance(payload.get(key), list):
            raw = payload[key]
        if raw is not None:
            break
    if raw is None:
        raise _not_nacos(server, what, reply, "a Nacos instance list")
    found = [instance_from_json(item, "DEFAULT") if isinstance(item, dict) else None for item in raw]
    instances = [inst for inst in found if inst is not None]
    if len(instances) != len(found):
        raise _not_nacos(server, what, reply, "a list of Nacos instances (each with an ip and a port)")
    return instances


def _count(server: NacosServer, what: str, reply: Reply, payload: Any, key: str) -> int:
    total = payload.get(key) if isinstance(payload, dict) else None
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise _not_nacos(server, what, reply, f"a Nacos list with its {key}")
    return total


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
            what = "GET /v1/ns/catalog/instances"
            payload = _check(server, what, reply)
            batch = _instances(server, what, reply, payload, "list")
            found.extend(batch)
            total = _count(server, what, reply, payload, "count")
            if not batch or len(found) >= total:
                return found
        return found

    def list_served(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> list[Instance]:
        params: Params = {**_list_params(key), "healthyOnly": "false"}
        reply = server.call("GET", self.served_path, deadline, params=params)
        if _service_missing(reply):
            return []
        what = f"GET {self.served_path}"
        return _instances(server, what, reply, _check(server, what, reply), "hosts")

    def update(self, server: NacosServer, key: ServiceKey, inst: Instance, enabled: bool, deadline: Deadline) -> None:
        reply = server.call("PUT", self.update_path, deadline, form=_update_form(key, inst, enabled))
        _written(server, f"PUT {self.update_path}", reply)

    def service_names(self, server: NacosServer, namespace: str, group: str, deadline: Deadline) -> list[str]:
        names: list[str] = []

        def fetch(page: int) -> tuple[list[str], int]:
            params: Params = {"namespaceId": namespace, "groupName": group, "pageNo": page, "pageSize": PAGE_SIZE}
            reply = server.call("GET", "/v1/ns/service/list", deadline, params=params)
            what = "GET /v1/ns/service/list"
            payload = _check(server, what, reply)
            doms = payload.get("doms") if isinstance(payload, dict) else None
            if not isinstance(doms, list) or not all(isinstance(d, str) for d in doms):
                raise _not_nacos(server, what, reply, "a Nacos service list")
            return doms, _count(server, what, reply, payload, "count")

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
        what = "GET /v3/admin/ns/instance/list"
        return _instances(server, what, reply, _check(server, what, reply), None, "pageItems", "list")

    def list_served(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> list[Instance]:
        params: Params = {**_list_params(key), "healthyOnly": "false"}
        reply = server.call("GET", "/v3/client/ns/instance/list", deadline, params=params)
        if _service_missing(reply):
            return []
        what = "GET /v3/client/ns/instance/list"
        return _instances(server, what, reply, _check(server, what, reply), None, "hosts")

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
            what = "GET /v3/admin/ns/service/list"
            payload = _check(server, what, reply)
            items = payload.get("pageItems") if isinstance(payload, dict) else None
            names = [i.get("name") for i in items if isinstance(i, dict)] if isinstance(items, list) else None
            if names is None or len(names) != len(items or []) or not all(isinstance(n, str) for n in names):
                raise _not_nacos(server, what, reply, "a Nacos service list")
            return [str(n) for n in names], _count(server, what, reply, payload, "totalCount")

        for batch in _pages(fetch):
            names.extend(batch)
        return names


APIS: dict[str, NacosApi] = {"v1": V1Api(), "v2": V2Api(), "v3": V3Api()}
