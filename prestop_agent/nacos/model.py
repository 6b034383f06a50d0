"""Plain values: a server address, a service key, an instance as Nacos reports it, one registration of the pod."""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from prestop_agent.errors import ConfigError

DEFAULT_PORT = 8848
DEFAULT_CONTEXT = "/nacos"
# Written into an instance's metadata with enabled=false, so that `register` puts back exactly what a
# drain took out, even after the process that drained is gone: Nacos keeps this metadata together with
# the enabled flag, also across the app's re-registration within its metadata memory (60 s by default).
DISABLED_MARK = "prestop-agent.disabled"


@dataclass(frozen=True)
class ServerAddress:
    scheme: str
    host: str
    port: int
    context: str

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.context}"

    def __str__(self) -> str:
        return self.base_url


def parse_server_addresses(name: str, value: str) -> tuple[ServerAddress, ...]:
    """Parse ``host``, ``host:port`` or ``http(s)://host:port[/context]``, comma-separated."""
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ConfigError(f"{name} is empty; set it to the Nacos address, e.g. nacos.example:8848")
    return tuple(_parse_one(name, part) for part in parts)


def _parse_one(name: str, part: str) -> ServerAddress:
    fix = "use host, host:port or http(s)://host:port[/context]"
    text = part if "://" in part else f"http://{part}"
    try:
        split = urlsplit(text)
        port = split.port
    except ValueError:
        raise ConfigError(f"{name} has an unparsable server address {part!r}; {fix}") from None
    if split.scheme not in {"http", "https"} or not split.hostname or split.query or split.fragment:
        raise ConfigError(f"{name} has an unparsable server address {part!r}; {fix}")
    if split.username or split.password:
        raise ConfigError(f"{name} must not carry credentials in the address; use NACOS_USERNAME and NACOS_PASSWORD")
    host = split.hostname
    if not _valid_host(host):
        raise ConfigError(f"{name} has an unparsable server address {part!r}; {fix}")
    context = split.path.rstrip("/") if "://" in part else ""
    return ServerAddress(
        scheme=split.scheme,
        host=host,
        port=port if port is not None else DEFAULT_PORT,
        context=context or DEFAULT_CONTEXT,
    )


def _valid_host(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        labels = host.rstrip(".").split(".")
        return all(label and len(label) <= 63 and label.replace("-", "").replace("_", "").isalnum() for label in labels)
    return True


Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_address(text: str) -> Address | None:
    """An IP address in any form a registry may hold: bracketed, uncompressed, any case, with a zone; else None."""
    candidate = text.strip()
    if candidate.startswith("[") and candidate.endswith("]"):
        candidate = candidate[1:-1]
    # A zone (``%eth0``) names the interface of a link-local address, not a different address.
    candidate = candidate.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(candidate)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def same_address(left: str, right: str) -> bool:
    """Whether two texts name the same IP address (compared as addresses, not as text)."""
    a, b = parse_address(left), parse_address(right)
    if a is None or b is None:
        return left == right
    return a == b


def format_endpoint(ip: str, port: int) -> str:
    """``ip:port`` written unambiguously: ``[2001:db8::5]:8080`` for IPv6, canonical form."""
    address = parse_address(ip)
    if address is None:
        return f"{ip}:{port}"
    if address.version == 6:
        return f"[{address}]:{port}"
    return f"{address}:{port}"


@dataclass(frozen=True)
class ServiceKey:
    namespace: str
    group: str
    service: str

    def __str__(self) -> str:
        # No service name: the pod's name gave none, and the instance is looked up by ip:port.
        return f"{self.namespace}/{self.group}@@{self.service or '(by ip:port)'}"


@dataclass(frozen=True)
class Instance:
    """One instance as a server reports it. ``weight`` and ``metadata`` are sent back on update."""

    ip: str
    port: int
    cluster: str
    enabled: bool
    healthy: bool
    weight: float
    ephemeral: bool
    metadata: Mapping[str, str] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.ip, self.port)

    def summary(self) -> dict[str, object]:
        return {
            "ip": self.ip,
            "port": self.port,
            "cluster": self.cluster,
            "enabled": self.enabled,
            "healthy": self.healthy,
            "weight": self.weight,
            "ephemeral": self.ephemeral,
        }

    def metadata_json(self) -> str:
        return json.dumps(dict(self.metadata), separators=(",", ":"), sort_keys=True)

    @property
    def marked(self) -> bool:
        """Disabled by a drain of this agent (see ``DISABLED_MARK``)."""
        return DISABLED_MARK in self.metadata

    def as_written(self, enabled: bool) -> Instance:
        """The instance to send with ``enabled``: with the mark in its metadata when disabling, without it else."""
        metadata = {k: v for k, v in self.metadata.items() if k != DISABLED_MARK}
        if not enabled:
            metadata[DISABLED_MARK] = "true"
        return replace(self, enabled=enabled, metadata=metadata)


@dataclass(frozen=True)
class Registration:
    """One registration of the pod: an instance at the pod's address in one service."""

    key: ServiceKey
    instance: Instance

    @property
    def identity(self) -> tuple[str, str, str, str, int, str]:
        """What makes it this registration, whatever its state: service, address and cluster."""
        address = parse_address(self.instance.ip)
        ip = str(address) if address is not None else self.instance.ip
        key = self.key
        return (key.namespace, key.group, key.service, ip, self.instance.port, self.instance.cluster)

    def same_as(self, other: Registration) -> bool:
        return self.identity == other.identity

    def __str__(self) -> str:
        return f"{self.key.group}@@{self.key.service} {self.instance.endpoint}"

    def summary(self) -> dict[str, object]:
        return {
            "service": self.key.service,
            "group": self.key.group,
            "endpoint": self.instance.endpoint,
            **{k: v for k, v in self.instance.summary().items() if k not in ("ip", "port")},
            "marked": self.instance.marked,
        }


def instance_from_json(raw: Mapping[str, Any], default_cluster: str) -> Instance | None:
    """Build an Instance from any of Nacos's instance shapes; None when it has no ip/port."""
    ip = raw.get("ip")
    port = raw.get("port")
    if not isinstance(ip, str) or not isinstance(port, int | str):
        return None
    try:
        port_number = int(port)
        weight = float(raw.get("weight", 1.0))
    except (TypeError, ValueError):
        return None
    metadata = raw.get("metadata")
    cluster = raw.get("clusterName") or raw.get("cluster") or default_cluster
    return Instance(
        ip=ip,
        port=port_number,
        cluster=str(cluster),
        enabled=_truthy(raw.get("enabled", True)),
        healthy=_truthy(raw.get("healthy", True)),
        weight=weight,
        ephemeral=_truthy(raw.get("ephemeral", True)),
        metadata={str(k): str(v) for k, v in metadata.items()} if isinstance(metadata, Mapping) else {},
    )


def _truthy(value: object) -> bool:
    if isinstance(value, str):
        return value.lower() == "true"
    return bool(value)
