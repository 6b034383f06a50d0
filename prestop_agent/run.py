"""What every command runs with: its injected dependencies, its report, the Nacos cluster, the pod's registrations.

Nothing here reads the environment or exits the process: the CLI builds ``Settings`` and
``Deps``; the commands (``agent``, ``status``) find the registrations the settings select here.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import httpx
import structlog

from prestop_agent.clock import Clock, Deadline
from prestop_agent.config import Settings
from prestop_agent.errors import InstanceNotFound, PrestopError
from prestop_agent.logs import RunClock, Secrets
from prestop_agent.nacos.discovery import Found, Scope, discover, not_found_message
from prestop_agent.nacos.model import Registration, format_endpoint, same_address
from prestop_agent.nacos.registry import Located, Registry
from prestop_agent.nacos.server import Credentials, NacosServer
from prestop_agent.watchers.base import PodTarget

log = structlog.get_logger("prestop_agent.agent")


@dataclass(frozen=True)
class Deps:
    clock: Clock
    http: httpx.Client
    secrets: Secrets = field(default_factory=Secrets)
    run: RunClock = field(default_factory=RunClock)
    started: float | None = None  # when the process started, on ``clock``; None: now

    def deadline(self, seconds: float) -> Deadline:
        start = self.clock.monotonic() if self.started is None else self.started
        deadline = Deadline(self.clock, started=start, end=start + seconds)
        self.run.deadline = deadline
        return deadline


@dataclass
class Report:
    """The result of one command: what happened, the evidence, and the error if any."""

    command: str
    outcome: str
    error: PrestopError | None = None
    data: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, object]:
        return {
            "command": self.command,
            "ok": self.ok,
            "outcome": self.outcome,
            "error": None if self.error is None else {"type": type(self.error).__name__, "message": str(self.error)},
            **self.data,
        }


def make_registry(settings: Settings, deps: Deps) -> Registry:
    credentials = None
    if settings.username is not None and settings.password is not None:
        credentials = Credentials(settings.username.value, settings.password.value)
    servers = [
        NacosServer(
            address,
            deps.http,
            credentials=credentials,
            request_timeout=settings.request_timeout.value,
            secrets=deps.secrets,
        )
        for address in settings.servers.value
    ]
    return Registry(servers, settings.api.value, settings.pod_ip.value, settings.port.value, settings.cluster.value)


def target_of(settings: Settings) -> PodTarget:
    return PodTarget(settings.pod_ip.value, settings.port.value, settings.host_ip.value if settings.host_ip else None)


def endpoint_of(settings: Settings) -> str:
    return format_endpoint(settings.pod_ip.value, settings.port.value)


def scope_of(settings: Settings) -> Scope:
    host_ip = settings.host_ip.value if settings.host_ip else None
    return Scope(
        kind=settings.scope.value,
        pod_ip=settings.pod_ip.value,
        ports=frozenset({settings.port.value, *settings.drain_ports.value}),
        service=settings.key,
        host_network=host_ip is not None and same_address(host_ip, settings.pod_ip.value),
    )


# -- the pod's registrations ------------------------------------------------------------------------


def find_registrations(settings: Settings, registry: Registry, deadline: Deadline) -> Found:
    """Every registration the scope selects, each named in the log; InstanceNotFound when there is none."""
    scope = scope_of(settings)
    if scope.host_network and scope.kind == "pod":
        log.info("host_network_pod", pod_ip=scope.pod_ip, ports=sorted(scope.ports))
    elif scope.kind == "pod" and settings.host_ip is None:
        log.warning(
            "host_ip_unknown",
            reason="a hostNetwork pod shares its IP with the node and cannot be told apart without HOST_IP",
            fix="set HOST_IP from the downward API (fieldRef: status.hostIP), or PRESTOP_DRAIN_SCOPE=port",
        )
    if scope.kind == "service":
        found = _in_the_service(settings, registry, deadline)
    else:
        found = discover(registry, scope, deadline)
        if not found.registrations:
            raise InstanceNotFound(not_found_message(scope, found.server))
        _name_the_service(settings, found.registrations)
    for registration in found.registrations:
        log.info(
            "instance_located",
            service=str(registration.key),
            endpoint=registration.instance.endpoint,
            cluster=registration.instance.cluster,
            enabled=registration.instance.enabled,
            server=found.server,
        )
    return found


def _in_the_service(settings: Settings, registry: Registry, deadline: Deadline) -> Found:
    """Scope ``service``: the one instance at ip:port in the configured service (found by search if need be)."""
    located = located_in_service(settings, registry, deadline)
    key, cluster = located.key, located.instance.cluster
    _, listing = registry.first_answer("answered", lambda s: registry.list_all(s, key, cluster, deadline), deadline)
    return Found((located.registration,), {key: listing}, located.server, complete=True)


def located_in_service(settings: Settings, registry: Registry, deadline: Deadline) -> Located:
    located = registry.locate(settings.key, deadline, search=True)
    if located.searched:
        if not settings.service_derived:
            raise InstanceNotFound(
                f"{endpoint_of(settings)} is not in service {settings.service.value!r} "
                f"({settings.service.source}) but in {located.key.service!r}; "
                f"set NACOS_SERVICE_NAME={located.key.service}"
            )
        _corrected(settings, located.key.service)
    return located


def _name_the_service(settings: Settings, registrations: tuple[Registration, ...]) -> None:
    """Say which service holds ip:port when the configured (or derived) one does not: the hint is worth keeping."""
    at_port = [r for r in registrations if r.instance.port == settings.port.value]
    if any(r.key == settings.key for r in at_port):
        return
    holders = sorted({r.key.service for r in at_port})
    if settings.service_derived:
        if len(holders) == 1:
            _corrected(settings, holders[0])
        return
    log.warning(
        "configured_service_not_registered",
        service=settings.service.value,
        endpoint=endpoint_of(settings),
        registered_in=holders,
        hint=f"set NACOS_SERVICE_NAME={holders[0]}" if len(holders) == 1 else None,
    )


def _corrected(settings: Settings, found: str) -> None:
    log.warning(
        "service_name_corrected" if settings.service.value else "service_found_by_endpoint",
        derived=settings.service.value or None,
        found=found,
        hint=f"set NACOS_SERVICE_NAME={found}",
    )


def primary(settings: Settings, registrations: tuple[Registration, ...]) -> Registration:
    """The registration the settings name (configured service and port), else the first at the port, else the first."""
    at_port = [r for r in registrations if r.instance.port == settings.port.value]
    named = [r for r in at_port if r.key == settings.key]
    return (named or at_port or list(registrations))[0]


def registrations_data(settings: Settings, found: Found) -> dict[str, object]:
    main = primary(settings, found.registrations)
    return {
        "service": str(main.key),
        "endpoint": main.instance.endpoint,
        "instance": main.instance.summary(),
        "found_by_search": main.key != settings.key,
        "scope": settings.scope.value,
        "registrations": [r.summary() for r in found.registrations],
        "search_complete": found.complete,
    }
