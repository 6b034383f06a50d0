"""Where a setting comes from: flag > PRESTOP_*/NACOS_* variable > Spring fallback > default.

The CLI hands a ``Source`` the process environment and the flags it parsed; every
setting is looked up here, so the precedence is written once and every value
remembers which source won (``status`` shows it).
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

from prestop_agent.errors import ConfigError

T = TypeVar("T")
U = TypeVar("U")


@dataclass(frozen=True)
class Resolved(Generic[T]):
    """A value, the source that supplied it (``--flag``, ``env NAME``, ``default``), and the name a message shows.

    ``name`` is the flag or variable that supplied the value; for a default, the setting's own
    variable, so that an error about it names what to set.
    """

    value: T
    source: str
    name: str = ""

    def parsed(self, parse: Callable[[str, T], U]) -> Resolved[U]:
        """The value through ``parse(name, value)``, which raises ConfigError naming this setting."""
        return Resolved(parse(self.name, self.value), self.source, self.name)


class Source:
    """Flags and environment variables, read in the project's precedence order.

    ``local`` says whether the run happens on this machine: then settings that name files (the
    service-account mount) or need an installed package (a cloud SDK) are checked here too.
    ``check`` builds a Source from a manifest with ``local=False``: the pod's files and image
    are not the checking machine's.
    """

    def __init__(
        self, environ: Mapping[str, str], flags: Mapping[str, object | None] | None = None, *, local: bool = True
    ):
        self._environ = dict(environ)
        self._flags = dict(flags or {})
        self.local = local

    def raw(self, *names: str, flag: str | None = None, strip: bool = True) -> Resolved[str] | None:
        """The first non-empty value among the flag, then the variables in order.

        ``strip=False`` keeps surrounding spaces, which belong to a password.
        """
        if flag is not None:
            value = self._flags.get(flag)
            if value is not None and str(value).strip() != "":
                return Resolved(str(value).strip() if strip else str(value), f"--{flag}", f"--{flag}")
        for name in names:
            value = self._environ.get(name)
            if value is not None and value.strip() != "":
                return Resolved(value.strip() if strip else value, f"env {name}", name)
        return None

    def string(self, *names: str, flag: str | None = None, default: str) -> Resolved[str]:
        return self.raw(*names, flag=flag) or _default(default, names, flag)

    def optional_seconds(self, *names: str, flag: str | None = None, minimum: float = 0.0) -> Resolved[float] | None:
        found = self.raw(*names, flag=flag)
        if found is None:
            return None
        return found.parsed(lambda name, value: parse_seconds(name, value, minimum=minimum))

    def seconds(self, *names: str, flag: str | None = None, default: float, minimum: float = 0.0) -> Resolved[float]:
        return self.optional_seconds(*names, flag=flag, minimum=minimum) or _default(default, names, flag)

    def boolean(self, *names: str, flag: str | None = None, default: bool) -> Resolved[bool]:
        found = self.raw(*names, flag=flag)
        if found is None:
            return _default(default, names, flag)
        return found.parsed(parse_bool)

    def items(self, *names: str, flag: str | None = None) -> Resolved[tuple[str, ...]] | None:
        """A comma-separated list, blanks dropped."""
        found = self.raw(*names, flag=flag)
        if found is None:
            return None
        return found.parsed(lambda _name, value: tuple(p.strip() for p in value.split(",") if p.strip()))


def _default(value: T, names: tuple[str, ...], flag: str | None) -> Resolved[T]:
    """A default, named after the setting's first variable (or its flag): what a message tells the user to set."""
    return Resolved(value, "default", names[0] if names else f"--{flag}" if flag else "")


# Plain ASCII digits only: int() and float() also take "8_080", "+8080" and full-width digits.
_DIGITS = re.compile(r"[0-9]+")
# Longer than any grace period in practice, and far below what timers and sleeps accept.
MAX_SECONDS = 86400.0


def parse_seconds(name: str, value: str, *, minimum: float = 0.0) -> float:
    try:
        if not value.isascii() or "_" in value or value.startswith("+"):
            raise ValueError(value)
        number = float(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a number of seconds; set it to a number such as 30") from None
    if not math.isfinite(number) or number < minimum:
        raise ConfigError(f"{name}={value!r} must be a number of seconds of at least {minimum:g}; fix or unset it")
    if number > MAX_SECONDS:
        raise ConfigError(
            f"{name}={value!r} is longer than a day ({MAX_SECONDS:g} s); set it to the seconds it should be"
        )
    return number


def parse_bool(name: str, value: str) -> bool:
    lowered = value.lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={value!r} is not a boolean; set it to true or false")


def parse_port(name: str, value: str) -> int:
    if not _DIGITS.fullmatch(value):
        raise ConfigError(f"{name}={value!r} is not a port number; set it to the port the app serves on, 1-65535")
    port = int(value)
    if not 1 <= port <= 65535:
        raise ConfigError(f"{name}={value!r} is out of range; set it to the port the app serves on, 1-65535")
    return port


def parse_ip(name: str, value: str) -> str:
    bare = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not an IP address; set it from the downward API (fieldRef: status.podIP)"
        ) from None


def parse_networks(
    name: str, items: tuple[str, ...], *, example: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    """IP addresses or CIDRs from a list setting; ConfigError naming the first bad entry."""
    networks = []
    for item in items:
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigError(f"{name} has {item!r}, which is not an IP address or CIDR; use {example}") from None
    return tuple(networks)
