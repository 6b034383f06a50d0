"""Every registration of the pod: the selection rules, and how they are found on the servers.

A pod often has more than one registration: an app service on its HTTP port, Dubbo's
interface-level services and its application-level service on the Dubbo port (Dubbo 3 registers
both ways by default), a second name for another port. Traffic to any of them reaches this pod.

The rules (``Scope``): every instance whose IP is the pod's, in the configured namespace, in every
group; with scope ``port`` only on the configured ports; with scope ``service`` only in the
configured service. A ``hostNetwork`` pod (POD_IP = HOST_IP) shares its IP with the node and every
other hostNetwork pod on it, so there only the configured ports count, whatever the scope.

Where they are found (``discover``), on the first server that answers: the configured service,
then the clients whose address is the pod's (what each published), then a paged scan of the
namespace's services with their instances; each candidate service is then read in full. The
search may use at most half of the time left, so that the drain itself keeps the rest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.errors import AuthError, RegistryError
from prestop_agent.nacos import inventory
from prestop_agent.nacos.api import ApiGone
from prestop_agent.nacos.model import Instance, Registration, ServiceKey, format_endpoint, same_address
from prestop_agent.nacos.registry import PROBE_SERVICE, Registry
from prestop_agent.nacos.server import NacosServer

log = structlog.get_logger(__name__)

SCOPES = ("pod", "port", "service")
DEFAULT_SCOPE = "pod"
MAX_SCAN_PAGES = 50  # of inventory.SCAN_PAGE_SIZE services each
SEARCH_SHARE = 0.5


@dataclass(frozen=True)
class Scope:
    """Which instances count as this pod's registrations."""

    kind: str  # pod, port or service
    pod_ip: str
    ports: frozenset[int]  # NACOS_SERVICE_PORT and PRESTOP_DRAIN_PORTS
    service: ServiceKey  # the configured one (its name may be empty: none configured or derivable)
    host_network: bool = False

    @property
    def by_port(self) -> bool:
        """Only the configured ports count: asked for, or because other pods share a hostNetwork pod's IP."""
        return self.kind != "pod" or self.host_network

    def admits(self, key: ServiceKey, instance: Instance) -> bool:
        if key.namespace != self.service.namespace or not same_address(instance.ip, self.pod_ip):
            return False
        if self.by_port and instance.port not in self.ports:
            return False
        return self.kind != "service" or (key.group, key.service) == (self.service.group, self.service.service)

    def describe(self) -> str:
        ports = ",".join(str(p) for p in sorted(self.ports))
        where = f"namespace {self.service.namespace!r}"
        if self.kind == "service":
            return f"{format_endpoint(self.pod_ip, min(self.ports))} in {self.service} ({where})"
        on = f" on port(s) {ports}" if self.by_port else " on any port"
        why = " (hostNetwork: POD_IP is HOST_IP)" if self.host_network and self.kind == "pod" else ""
        return f"{self.pod_ip}{on} in every group of {where}{why}"


@dataclass(frozen=True)
class Found:
    """The registrations found, every instance of their services (for the last-instance rule), and how."""

    registrations: tuple[Registration, ...]
    listings: dict[ServiceKey, list[Instance]]
    server: str
    complete: bool
    notes: tuple[str, ...] = ()
    sources: dict[str, int] = field(default_factory=dict)  # candidates each source added first


@dataclass
class _Search:
    scope: Scope
    candidates: dict[tuple[ServiceKey, str], None] = field(default_factory=dict)  # (service, cluster), ordered
    sources: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    complete: bool = True

    def consider(self, source: str, listed: Iterable[inventory.Listed]) -> None:
        for item in listed:
            for instance in item.instances:
                if self.scope.admits(item.key, instance) and (item.key, instance.cluster) not in self.candidates:
                    self.candidates[(item.key, instance.cluster)] = None
                    self.sources[source] = self.sources.get(source, 0) + 1


def discover(registry: Registry, scope: Scope, deadline: Deadline) -> Found:
    """The registrations the scope admits, as the first server that answers holds them now."""
    clock = deadline.clock
    now = clock.monotonic()
    share = Deadline(clock, started=now, end=now + deadline.remaining() * SEARCH_SHARE)
    server, found = registry.first_answer(
        "answered the search for the pod's registrations",
        lambda s: _discover_on(registry, s, scope, deadline, share),
        deadline,
    )
    log.info(
        "registrations_found",
        server=str(server),
        count=len(found.registrations),
        registrations=[str(r) for r in found.registrations],
        scope=scope.kind,
        complete=found.complete,
        sources=found.sources,
    )
    for note in found.notes:
        log.warning("registrations_search_incomplete", server=str(server), reason=note)
    return found


def _discover_on(registry: Registry, server: NacosServer, scope: Scope, deadline: Deadline, share: Deadline) -> Found:
    """The search on one server: the lists within ``share``, the candidates read in full within ``deadline``."""
    probe = scope.service if scope.service.service else replace(scope.service, service=PROBE_SERVICE)
    api = registry.api(server, probe, deadline).name
    search = _Search(scope)
    if scope.service.service:
        search.candidates[(scope.service, registry.cluster)] = None
    if scope.kind != "service":
        _from_clients(server, api, search, share)
        _from_scan(server, api, search, share)
    registrations: dict[tuple[str, str, str, str, int, str], Registration] = {}
    listings: dict[ServiceKey, dict[tuple[str, int, str], Instance]] = {}
    for key, cluster in search.candidates:
        listed = registry.list_all(server, key, cluster, deadline)
        known = listings.setdefault(key, {})
        for instance in listed:
            known.setdefault((instance.ip, instance.port, instance.cluster), instance)
            if scope.admits(key, instance):
                registration = Registration(key, instance)
                registrations.setdefault(registration.identity, registration)
    return Found(
        tuple(registrations.values()),
        {key: list(found.values()) for key, found in listings.items()},
        str(server),
        search.complete,
        tuple(search.notes),
        dict(search.sources),
    )


def _from_clients(server: NacosServer, api: str, search: _Search, deadline: Deadline) -> None:
    """What the clients at the pod's address published (2.2+, 3.x)."""
    try:
        ids = inventory.client_ids(server, api, deadline)
        for client_id in ids:
            address = inventory.client_address(client_id)
            if address is not None and same_address(address, search.scope.pod_ip):
                search.consider("client_list", inventory.published(server, api, client_id, deadline))
    except AuthError:
        raise
    except ApiGone:
        log.info("client_list_unavailable", server=str(server), api=api)
    except RegistryError as exc:  # the scan still runs; this source is a shortcut, not the proof
        log.warning("client_list_failed", server=str(server), error=str(exc))


def _from_scan(server: NacosServer, api: str, search: _Search, deadline: Deadline) -> None:
    """Every service of the namespace with its instances, page by page, within the search's time."""
    scanned = 0
    try:
        for page in inventory.pages(server, api, search.scope.service.namespace, deadline, MAX_SCAN_PAGES):
            scanned += 1
            search.consider("scan", page.services)
            if page.last:
                return
            if deadline.remaining() <= 0:
                search.complete = False
                search.notes.append(f"the scan of the namespace ran out of time after {scanned} page(s)")
                return
        search.complete = False
        search.notes.append(f"the namespace has more than {MAX_SCAN_PAGES * inventory.SCAN_PAGE_SIZE} services")
    except AuthError:
        raise
    except RegistryError as exc:
        search.complete = False
        search.notes.append(f"the scan of the namespace failed after {scanned} page(s): {exc}")


def not_found_message(scope: Scope, server: str) -> str:
    return (
        f"no registration of {scope.describe()} on {server}; set NACOS_NAMESPACE to where the app registers, "
        "and check POD_IP, NACOS_SERVICE_PORT and PRESTOP_DRAIN_SCOPE"
    )
