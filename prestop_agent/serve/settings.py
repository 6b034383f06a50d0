"""The sidecar's own settings (the pod identity and Nacos settings stay in ``Settings``)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from prestop_agent.config import Settings
from prestop_agent.errors import ConfigError
from prestop_agent.source import Resolved, Source, parse_networks, parse_port

DEFAULT_PORT = 9911
DEFAULT_TOKEN_HEADER = "X-Prestop-Token"  # noqa: S105 - a header name, not a secret
MIN_TOKEN_LENGTH = 16


@dataclass(frozen=True)
class ServeConfig:
    """Where the sidecar listens, who may call it, and how."""

    port: Resolved[int]
    bind: Resolved[str]
    prestop_path: Resolved[str]
    token: Resolved[str] | None = field(repr=False)
    token_header: Resolved[str]
    allow_any: bool
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    register_get: Resolved[bool]

    def describe(self) -> dict[str, object]:
        return {
            "listen": f"{self.bind.value or '*'}:{self.port.value}",
            "prestop_path": self.prestop_path.value,
            # (key names avoid "token": the log scrubber masks such keys whatever their value)
            "shared_header_required": self.token is not None,
            "shared_header": self.token_header.value if self.token else None,
            "allow_from": "any" if self.allow_any else [str(n) for n in self.allow_from],
            "register_get": self.register_get.value,
        }


def load_config(src: Source, settings: Settings) -> ServeConfig:
    """The sidecar's settings; ConfigError (exit 2) for anything that would make it unsafe or useless."""
    port_raw = src.raw("PRESTOP_SERVE_PORT", flag="listen-port")
    port = (
        port_raw.parsed(parse_port) if port_raw is not None else Resolved(DEFAULT_PORT, "default", "PRESTOP_SERVE_PORT")
    )
    if port.value == settings.port.value:
        raise ConfigError(
            f"{port.name}={port.value} is the app's service port ({settings.port.name}); "
            f"the sidecar must listen elsewhere: set PRESTOP_SERVE_PORT, e.g. {DEFAULT_PORT}"
        )
    bind = src.string("PRESTOP_SERVE_BIND", flag="bind", default="")
    if bind.value:
        try:
            ipaddress.ip_address(bind.value)
        except ValueError:
            raise ConfigError(
                f"{bind.name}={bind.value!r} is not an IP address; use 0.0.0.0, :: or the pod IP, or unset it"
            ) from None
    path = src.string("PRESTOP_SERVE_PRESTOP_PATH", flag="prestop-path", default="/prestop")
    if not path.value.startswith("/") or path.value in ("/status", "/register", "/healthz") or "?" in path.value:
        raise ConfigError(
            f"{path.name}={path.value!r} must be a path starting with '/', without a query, "
            "and not /status, /register or /healthz"
        )
    token = src.raw("PRESTOP_SERVE_TOKEN")
    if token is not None and len(token.value) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"PRESTOP_SERVE_TOKEN is too short ({len(token.value)} characters); use at least {MIN_TOKEN_LENGTH}, "
            "e.g. the output of `openssl rand -hex 16`"
        )
    header = src.string("PRESTOP_SERVE_TOKEN_HEADER", default=DEFAULT_TOKEN_HEADER)
    allow_any, allow_from = _allow_from(src, token is not None)
    if settings.host_ip is None and not allow_any and not allow_from:
        raise ConfigError(
            "HOST_IP is not set, so the kubelet's preStop call would be refused; add HOST_IP from the downward API "
            "(env valueFrom fieldRef: status.hostIP), or list the callers in PRESTOP_SERVE_ALLOW_FROM"
        )
    return ServeConfig(
        port=port,
        bind=bind,
        prestop_path=path,
        token=token,
        token_header=header,
        allow_any=allow_any,
        allow_from=allow_from,
        register_get=src.boolean("PRESTOP_SERVE_REGISTER_GET", default=False),
    )


def _allow_from(src: Source, has_token: bool) -> tuple[bool, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    found = src.items("PRESTOP_SERVE_ALLOW_FROM")
    if found is None:
        return False, ()
    if any(item.lower() in ("any", "*") for item in found.value):
        if not has_token:
            raise ConfigError(
                "PRESTOP_SERVE_ALLOW_FROM=any lets anyone who reaches the pod drain it; "
                "set PRESTOP_SERVE_TOKEN too, or list the callers' addresses instead"
            )
        return True, ()
    networks = parse_networks(
        "PRESTOP_SERVE_ALLOW_FROM",
        found.value,
        example="e.g. 10.244.1.1,10.0.0.0/24, or 'any' with PRESTOP_SERVE_TOKEN",
    )
    wide = too_wide(networks)
    if wide is not None and not has_token:
        raise ConfigError(
            f"PRESTOP_SERVE_ALLOW_FROM={','.join(found.value)} lets callers from {wide} drain the pod, "
            "as good as 'any'; set PRESTOP_SERVE_TOKEN too, or list narrower networks "
            f"(together at most a /{WIDEST_PREFIX} per address family)"
        )
    return False, networks


# Callers that together hold more addresses than a /7 of a family count as "any" and need the token
# too. A /7 is twice 10.0.0.0/8, the widest private IPv4 range, and exactly fc00::/7, the whole IPv6
# unique-local range: every list of private networks fits; 0.0.0.0/0, ::/0 or their halves do not.
WIDEST_PREFIX = 7


def too_wide(networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]) -> str | None:
    """What the networks let in, when together (overlaps merged) they hold more addresses than a /7 of a family."""
    v4 = list(ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv4Network)))
    v6 = list(ipaddress.collapse_addresses(n for n in networks if isinstance(n, ipaddress.IPv6Network)))
    for version, bits, merged in ((4, 32, v4), (6, 128, v6)):
        held = sum(n.num_addresses for n in merged)
        if held > 2 ** (bits - WIDEST_PREFIX):
            listed = ", ".join(str(n) for n in merged[:3]) + (", ..." if len(merged) > 3 else "")
            return f"{held / 2**bits:.0%} of IPv{version} ({listed})"
    return None
