"""The one frozen settings object, built at the edge from flags and the environment."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prestop_agent.drain import LAST_INSTANCE_CHOICES
from prestop_agent.errors import ConfigError
from prestop_agent.nacos.discovery import DEFAULT_SCOPE, SCOPES
from prestop_agent.nacos.model import ServerAddress, ServiceKey, parse_server_addresses
from prestop_agent.source import Resolved, Source, parse_ip, parse_port
from prestop_agent.watchers import catalog, registry
from prestop_agent.watchers.base import WatcherConfig

API_CHOICES = ("auto", "v1", "v2", "v3")
DEFAULT_GRACE_SECONDS = 30.0
DEFAULT_SHUTDOWN_RESERVE_SECONDS = 10.0
DEFAULT_REGISTER_TIMEOUT_SECONDS = 120.0
DEFAULT_DUBBO_QOS_PORT = 22222
# Registry proof plus direct evidence of traffic: with the traffic watcher on, the consumer-cache
# allowance is not needed as a proxy (it defaults to 0); without it, 35 s covers the caches.
DEFAULT_WAIT_FOR = ("registry", "traffic")

# Kubernetes' safe-encoding alphabet for generated names (no vowels, no 0/1/3).
_SAFE = "bcdfghjklmnpqrstvwxz2456789"
_DEPLOYMENT_POD = re.compile(rf"^(?P<base>[a-z0-9][a-z0-9.-]*?)-[{_SAFE}]{{6,10}}-[{_SAFE}]{{5}}$")
_STATEFUL_POD = re.compile(r"^(?P<base>[a-z0-9][a-z0-9.-]*?)-\d+$")
_GENERATED_POD = re.compile(rf"^(?P<base>[a-z0-9][a-z0-9.-]*?)-[{_SAFE}]{{5}}$")
# Kubernetes cuts a generateName base longer than 58 characters to 58 and appends 5 random ones
# (apiserver's names.SimpleNameGenerator), so a Deployment pod's ReplicaSet hash, or the dash
# before the random part, may be cut: the workload name is what stands before the last dash.
_MAX_GENERATED_BASE = 58
_TRUNCATED_BASE = re.compile(rf"^(?P<base>[a-z0-9][a-z0-9.-]*[a-z0-9])-[{_SAFE}]{{0,10}}$")
_RANDOM_SUFFIX = re.compile(rf"^[{_SAFE}]{{5}}$")


@dataclass(frozen=True)
class Settings:
    pod_ip: Resolved[str]
    port: Resolved[int]
    servers: Resolved[tuple[ServerAddress, ...]]
    namespace: Resolved[str]
    group: Resolved[str]
    cluster: Resolved[str]
    service: Resolved[str]
    service_derived: bool
    pod_name: Resolved[str] | None
    host_ip: Resolved[str] | None
    username: Resolved[str] | None
    password: Resolved[str] | None = field(repr=False)
    api: Resolved[str]
    budget: Resolved[float]
    consumer_cache: Resolved[float]
    register_timeout: Resolved[float]
    request_timeout: Resolved[float]
    ca_bundle: Resolved[str] | None
    log_to_pid1: Resolved[str]
    wait_for: Resolved[tuple[str, ...]]
    scope: Resolved[str]
    drain_ports: Resolved[tuple[int, ...]]
    last_instance: Resolved[str]
    dubbo_qos: Resolved[bool]
    dubbo_qos_port: Resolved[int]
    watcher_configs: Mapping[str, WatcherConfig] = field(default_factory=dict)

    @property
    def key(self) -> ServiceKey:
        return ServiceKey(self.namespace.value, self.group.value, self.service.value)

    def sources(self) -> dict[str, dict[str, object]]:
        """Each setting with its value and the source that won (secrets masked), for ``status``."""
        shown: dict[str, Resolved[Any] | None] = {
            "pod_ip": self.pod_ip,
            "pod_name": self.pod_name,
            "host_ip": self.host_ip,
            "service_port": self.port,
            "servers": Resolved(",".join(s.base_url for s in self.servers.value), self.servers.source),
            "namespace": self.namespace,
            "group": self.group,
            "cluster": self.cluster,
            "service": self.service,
            "username": self.username,
            "password": Resolved("***", self.password.source) if self.password else None,
            "api": self.api,
            "budget_s": self.budget,
            "consumer_cache_s": self.consumer_cache,
            "request_timeout_s": self.request_timeout,
            "wait_for": Resolved(",".join(self.wait_for.value), self.wait_for.source),
            "drain_scope": self.scope,
            "drain_ports": Resolved(",".join(str(p) for p in self.drain_ports.value), self.drain_ports.source),
            "last_instance": self.last_instance,
            "dubbo_qos": self.dubbo_qos,
            "dubbo_qos_port": self.dubbo_qos_port,
        }
        return {
            name: {"value": r.value if r else None, "source": r.source if r else "unset"} for name, r in shown.items()
        }


def derive_service(pod_name: str) -> str | None:
    """The workload name from a generated pod name (Deployment, StatefulSet, DaemonSet/Job), or None."""
    for pattern in (_DEPLOYMENT_POD, _STATEFUL_POD, _GENERATED_POD):
        match = pattern.match(pod_name)
        if match:
            return match.group("base")
    base, suffix = pod_name[:_MAX_GENERATED_BASE], pod_name[_MAX_GENERATED_BASE:]
    if _RANDOM_SUFFIX.match(suffix):
        match = _TRUNCATED_BASE.match(base)
        if match:
            return match.group("base")
    return None


def load(src: Source) -> Settings:
    """Build Settings from flags and environment; ConfigError on the first bad or missing value."""
    pod_ip_raw = src.raw("POD_IP", "PODIP", flag="pod-ip")
    if pod_ip_raw is None:
        raise ConfigError("POD_IP is not set; add it from the downward API (env valueFrom fieldRef: status.podIP)")
    pod_ip = pod_ip_raw.parsed(parse_ip)

    port_raw = src.raw("NACOS_SERVICE_PORT", "SERVER_PORT", flag="port")
    if port_raw is None:
        raise ConfigError("NACOS_SERVICE_PORT is not set; set it to the port the app registers in Nacos")
    port = port_raw.parsed(parse_port)

    servers_raw = src.raw(
        "NACOS_SERVER_ADDR", "SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR", "SPRING_CLOUD_NACOS_SERVER_ADDR", flag="server"
    )
    if servers_raw is None:
        raise ConfigError("NACOS_SERVER_ADDR is not set; set it to the Nacos address, e.g. nacos-headless:8848")
    servers = servers_raw.parsed(parse_server_addresses)

    pod_name = src.raw("HOSTNAME", flag="pod-name")
    scope = _choice(src.string("PRESTOP_DRAIN_SCOPE", flag="scope", default=DEFAULT_SCOPE), SCOPES)
    service_raw, service_derived = _service(src, pod_name, scope.value)

    api = src.string("NACOS_API", flag="api", default="auto")
    if api.value.lower() not in API_CHOICES:
        raise ConfigError(f"{api.name}={api.value!r} is not a known API; use one of {', '.join(API_CHOICES)}")
    api = api.parsed(lambda _name, value: value.lower())

    username = src.raw(
        "NACOS_USERNAME", "SPRING_CLOUD_NACOS_DISCOVERY_USERNAME", "SPRING_CLOUD_NACOS_USERNAME", flag="username"
    )
    password = src.raw(
        "NACOS_PASSWORD", "SPRING_CLOUD_NACOS_DISCOVERY_PASSWORD", "SPRING_CLOUD_NACOS_PASSWORD", strip=False
    )
    if (username is None) != (password is None):
        missing = "NACOS_PASSWORD" if password is None else "NACOS_USERNAME"
        raise ConfigError(f"{missing} is not set but its partner is; set both NACOS_USERNAME and NACOS_PASSWORD")

    host_ip_raw = src.raw("HOST_IP", flag="host-ip")
    host_ip = host_ip_raw.parsed(parse_ip) if host_ip_raw else None

    wait_for = src.items("PRESTOP_WAIT_FOR", flag="wait-for") or Resolved(
        DEFAULT_WAIT_FOR, "default", "PRESTOP_WAIT_FOR"
    )
    if not wait_for.value:
        raise ConfigError(f"{wait_for.name} is empty; name at least one watcher, e.g. registry")
    wait_names = catalog.watcher_names(wait_for.value)
    watcher_configs = catalog.load_configs(wait_names, src, wait_for.name)
    last_instance = _choice(src.string("PRESTOP_LAST_INSTANCE", default="drain"), LAST_INSTANCE_CHOICES)
    log_to_pid1 = src.string("PRESTOP_LOG_TO_PID1", default="auto")
    if log_to_pid1.value.lower() not in ("auto", "true", "false"):
        raise ConfigError(f"PRESTOP_LOG_TO_PID1={log_to_pid1.value!r} must be auto, true or false")

    return Settings(
        pod_ip=pod_ip,
        port=port,
        servers=servers,
        namespace=(
            src.string("NACOS_NAMESPACE", "SPRING_CLOUD_NACOS_DISCOVERY_NAMESPACE", flag="namespace", default="public")
        ),
        group=(src.string("NACOS_GROUP", "SPRING_CLOUD_NACOS_DISCOVERY_GROUP", flag="group", default="DEFAULT_GROUP")),
        cluster=(
            src.string("NACOS_CLUSTER", "SPRING_CLOUD_NACOS_DISCOVERY_CLUSTER_NAME", flag="cluster", default="DEFAULT")
        ),
        service=service_raw,
        service_derived=service_derived,
        pod_name=pod_name,
        host_ip=host_ip,
        username=username,
        password=password,
        api=api,
        budget=_budget(src),
        consumer_cache=registry.consumer_cache(src, wait_names),
        register_timeout=(
            src.seconds(
                "PRESTOP_REGISTER_TIMEOUT_SECONDS",
                flag="timeout",
                default=DEFAULT_REGISTER_TIMEOUT_SECONDS,
                minimum=0.1,
            )
        ),
        request_timeout=(src.seconds("PRESTOP_REQUEST_TIMEOUT_SECONDS", default=5.0, minimum=0.1)),
        ca_bundle=src.raw("PRESTOP_CA_BUNDLE", "NACOS_CA_BUNDLE"),
        log_to_pid1=log_to_pid1.parsed(lambda _name, value: value.lower()),
        wait_for=Resolved(wait_names, wait_for.source, wait_for.name),
        scope=scope,
        drain_ports=_drain_ports(src),
        last_instance=last_instance,
        dubbo_qos=src.boolean("PRESTOP_DUBBO_QOS", default=False),
        dubbo_qos_port=_qos_port(src),
        watcher_configs=watcher_configs,
    )


def _service(src: Source, pod_name: Resolved[str] | None, scope: str) -> tuple[Resolved[str], bool]:
    """The service name and whether it was derived (not set); an empty name means "look up by ip:port"."""
    found = src.raw(
        "NACOS_SERVICE_NAME", "SPRING_CLOUD_NACOS_DISCOVERY_SERVICE", "SPRING_APPLICATION_NAME", flag="service"
    )
    if found is not None:
        return found, False
    if pod_name is None:
        if scope == "service":
            raise ConfigError(
                "NACOS_SERVICE_NAME is not set and HOSTNAME is unknown; set NACOS_SERVICE_NAME "
                "(PRESTOP_DRAIN_SCOPE=service drains that service only)"
            )
        return Resolved("", "none: every registration is looked up by ip", "NACOS_SERVICE_NAME"), True
    derived = derive_service(pod_name.value)
    if derived is None:  # the README's promise: then the instance is looked up by ip:port
        return Resolved(
            "", f"none derivable from HOSTNAME={pod_name.value}: looked up by ip:port", "NACOS_SERVICE_NAME"
        ), True
    return Resolved(derived, f"derived from HOSTNAME={pod_name.value}", "NACOS_SERVICE_NAME"), True


def _drain_ports(src: Source) -> Resolved[tuple[int, ...]]:
    found = src.items("PRESTOP_DRAIN_PORTS")
    if found is None:
        none: tuple[int, ...] = ()
        return Resolved(none, "default", "PRESTOP_DRAIN_PORTS")
    return found.parsed(lambda name, items: tuple(parse_port(name, item) for item in items))


def _qos_port(src: Source) -> Resolved[int]:
    found = src.raw("PRESTOP_DUBBO_QOS_PORT")
    if found is None:
        return Resolved(DEFAULT_DUBBO_QOS_PORT, "default", "PRESTOP_DUBBO_QOS_PORT")
    return found.parsed(parse_port)


def _choice(found: Resolved[str], choices: tuple[str, ...]) -> Resolved[str]:
    """A setting that is one of a few words, in lower case; ConfigError naming them otherwise."""
    value = found.value.lower()
    if value not in choices:
        raise ConfigError(f"{found.name}={found.value!r} is not known; set it to {', '.join(choices)} (or unset it)")
    return Resolved(value, found.source, found.name)


def default_budget(grace: float | None, reserve: float | None) -> float:
    """The budget when none is set: the grace period minus the shutdown reserve, each at its default if unset."""
    grace_s = DEFAULT_GRACE_SECONDS if grace is None else grace
    reserve_s = DEFAULT_SHUTDOWN_RESERVE_SECONDS if reserve is None else reserve
    return grace_s - reserve_s


def _budget(src: Source) -> Resolved[float]:
    budget = src.optional_seconds("PRESTOP_BUDGET_SECONDS", flag="budget", minimum=0.1)
    grace = src.optional_seconds("PRESTOP_GRACE_SECONDS", flag="grace", minimum=0.1)
    reserve = src.optional_seconds("PRESTOP_SHUTDOWN_RESERVE_SECONDS", flag="shutdown-reserve")
    grace_s = grace.value if grace else DEFAULT_GRACE_SECONDS
    reserve_s = reserve.value if reserve else DEFAULT_SHUTDOWN_RESERVE_SECONDS
    if budget is not None:
        if grace is not None and budget.value > grace_s:
            raise ConfigError(
                f"{budget.name}={budget.value:g} is longer than {grace.name}={grace_s:g}; the kubelet would kill "
                "the pod mid-wait: lower the budget or raise terminationGracePeriodSeconds"
            )
        return budget
    budget_s = default_budget(grace.value if grace else None, reserve.value if reserve else None)
    if budget_s <= 0:
        raise ConfigError(
            f"PRESTOP_SHUTDOWN_RESERVE_SECONDS={reserve_s:g} leaves no time within PRESTOP_GRACE_SECONDS={grace_s:g}; "
            "raise the grace period or lower the reserve"
        )
    origin = "default" if grace is None and reserve is None else "grace - shutdown reserve"
    return Resolved(budget_s, origin, "PRESTOP_BUDGET_SECONDS")
