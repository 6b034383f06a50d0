"""What a namespace holds, read in bulk: its services with their instances, and what each client published.

Two sources, because neither sees everything (checked on real 2.0.4 and 3.1.0 servers, see
localnacos/RESPONSES.md):

- the **service scan**, paged, with each service's instances in the same answer, across all
  groups: ``/v1/ns/catalog/services?withInstances=true`` (1.x, 2.x; a bare list, no total) and
  ``/v3/admin/ns/service/list?withInstances=true`` (3.x). It sees every kind of registration, but
  a namespace of thousands of services takes many pages;
- the **client list** (2.2+: ``/v2/ns/client/...``; 3.x: ``/v3/admin/ns/client/...``; 2.0.4 has
  neither). Its ids carry an address: ``1796279988574_10.0.0.7_41396`` for a gRPC connection (the
  address the server saw, which NAT or a proxy may have replaced) and ``10.0.0.7:8080#true`` for an
  instance registered over HTTP or a persistent one. Asking only the pod's own clients what they
  published costs a few requests whatever the size of the namespace.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from prestop_agent.clock import Deadline
from prestop_agent.nacos.api import _check, _count, _not_nacos
from prestop_agent.nacos.model import Instance, ServiceKey, instance_from_json, parse_address
from prestop_agent.nacos.server import NacosServer, Params, Reply

SCAN_PAGE_SIZE = 200


@dataclass(frozen=True)
class Listed:
    """A service of the namespace as the scan or a client's publish list shows it, with the instances shown."""

    key: ServiceKey
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class ScanPage:
    services: list[Listed]
    last: bool  # no page follows


def _base(api: str) -> str:
    return "/v3/admin/ns" if api == "v3" else "/v2/ns"


# -- the service scan -----------------------------------------------------------------------------


def scan_page(server: NacosServer, api: str, namespace: str, page: int, deadline: Deadline) -> ScanPage:
    """One page of the namespace's services (every group), each with its instances."""
    if api == "v3":
        path = "/v3/admin/ns/service/list"
        params: Params = {
            "namespaceId": namespace,
            "groupNameParam": "",
            "serviceNameParam": "",
            "withInstances": "true",
            "pageNo": page,
            "pageSize": SCAN_PAGE_SIZE,
        }
    else:
        path = "/v1/ns/catalog/services"
        params = {"namespaceId": namespace, "withInstances": "true", "pageNo": page, "pageSize": SCAN_PAGE_SIZE}
    what = f"GET {path}"
    reply = server.call("GET", path, deadline, params=params)
    payload = _check(server, what, reply)
    if isinstance(payload, list):  # 1.x/2.x: a bare list and no total; a short page is the last
        items: Any = payload
        last = len(payload) < SCAN_PAGE_SIZE
    elif isinstance(payload, dict) and isinstance(payload.get("pageItems"), list):
        items = payload["pageItems"]
        last = page * SCAN_PAGE_SIZE >= _count(server, what, reply, payload, "totalCount")
    else:
        raise _not_nacos(server, what, reply, "a Nacos service list with instances")
    services = [_detail(server, what, reply, namespace, item) for item in items]
    return ScanPage(services, last or not services)


def _detail(server: NacosServer, what: str, reply: Reply, namespace: str, item: Any) -> Listed:
    """A service with instances: ``serviceName``, ``groupName`` and ``clusterMap`` of clusters with ``hosts``."""
    name = item.get("serviceName") if isinstance(item, dict) else None
    group = item.get("groupName") if isinstance(item, dict) else None
    clusters = item.get("clusterMap") if isinstance(item, dict) else None
    if not isinstance(name, str) or not isinstance(group, str) or not isinstance(clusters, Mapping):
        raise _not_nacos(server, what, reply, "services with serviceName, groupName and clusterMap")
    instances: list[Instance] = []
    for cluster, detail in clusters.items():
        hosts = detail.get("hosts") if isinstance(detail, Mapping) else None
        if not isinstance(hosts, list):
            raise _not_nacos(server, what, reply, "clusters with a list of hosts")
        for host in hosts:
            # 2.0.4 leaves the cluster out of each host: it is the key the host is listed under.
            instance = instance_from_json(host, str(cluster)) if isinstance(host, Mapping) else None
            if instance is None:
                raise _not_nacos(server, what, reply, "hosts with an ip and a port")
            instances.append(instance)
    return Listed(ServiceKey(namespace, group, name), tuple(instances))


# -- the client list ------------------------------------------------------------------------------


def client_ids(server: NacosServer, api: str, deadline: Deadline) -> list[str]:
    """Every client the cluster knows (all namespaces); ApiGone where the server has no client list."""
    path = f"{_base(api)}/client/list"
    what = f"GET {path}"
    reply = server.call("GET", path, deadline)
    payload = _check(server, what, reply)
    ids = payload.get("clientIds") if isinstance(payload, dict) else payload
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise _not_nacos(server, what, reply, "a Nacos client list")
    return [str(i) for i in ids]


def client_address(client_id: str) -> str | None:
    """The address a client id names: ``ts_ip_port`` (a connection) or ``ip:port#ephemeral`` (HTTP, persistent)."""
    if "#" in client_id:
        address = client_id.split("#", 1)[0].rsplit(":", 1)[0]
    else:
        parts = client_id.split("_")
        address = "_".join(parts[1:-1]) if len(parts) >= 3 else ""
    return address if parse_address(address) is not None else None


def published(server: NacosServer, api: str, client_id: str, deadline: Deadline) -> list[Listed]:
    """What one client published: each service with the instance it registered there.

    A client that went away between the two requests published nothing (Nacos answers 404
    "clientId [ x ] not exist", checked on 3.1.0).
    """
    path = f"{_base(api)}/client/publish/list"
    what = f"GET {path}"
    reply = server.call("GET", path, deadline, params={"clientId": client_id})
    if _client_missing(reply):
        return []
    payload = _check(server, what, reply)
    if not isinstance(payload, list):
        raise _not_nacos(server, what, reply, "a Nacos publish list")
    return [_publication(server, what, reply, item) for item in payload]


def _client_missing(reply: Reply) -> bool:
    payload = reply.json()
    if reply.status != 404 or not isinstance(payload, dict) or not isinstance(payload.get("code"), int):
        return False
    data = payload.get("data")
    return isinstance(data, str) and "not exist" in data


def _publication(server: NacosServer, what: str, reply: Reply, item: Any) -> Listed:
    info = item.get("publisherInfo") if isinstance(item, dict) else None
    names = [item.get(k) for k in ("namespaceId", "groupName", "serviceName")] if isinstance(item, dict) else []
    instance = instance_from_json(info, str(info.get("clusterName") or "DEFAULT")) if isinstance(info, dict) else None
    if instance is None or len(names) != 3 or not all(isinstance(n, str) for n in names):
        raise _not_nacos(server, what, reply, "publications with a service and a publisherInfo")
    namespace, group, service = (str(n) for n in names)
    return Listed(ServiceKey(namespace, group, service), (instance,))


def pages(server: NacosServer, api: str, namespace: str, deadline: Deadline, max_pages: int) -> Iterator[ScanPage]:
    """The scan's pages in order, at most ``max_pages`` of them."""
    for page in range(1, max_pages + 1):
        found = scan_page(server, api, namespace, page, deadline)
        yield found
        if found.last:
            return
