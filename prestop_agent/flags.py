"""The command-line flags that override settings, each declared once, and how a command takes them.

Several commands take the same flags (the pod's identity and Nacos settings, the budget,
the watchers). Each is one ``Flag`` here; ``with_flags`` adds the ones a command takes to its
options, and hands their values to it as one mapping for ``Source``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import typer


@dataclass(frozen=True)
class Flag:
    """An option that overrides a setting: its name without ``--`` and its help (which names the variable)."""

    name: str
    help: str

    @property
    def parameter(self) -> str:
        return self.name.replace("-", "_")


POD_IP = Flag("pod-ip", "Pod IP (env POD_IP)")
PORT = Flag("port", "Registered port (env NACOS_SERVICE_PORT, SERVER_PORT)")
SERVER = Flag("server", "Nacos addresses, comma-separated (env NACOS_SERVER_ADDR)")
SERVICE = Flag("service", "Service name (env NACOS_SERVICE_NAME)")
NAMESPACE = Flag("namespace", "Namespace id (env NACOS_NAMESPACE)")
GROUP = Flag("group", "Group (env NACOS_GROUP)")
CLUSTER = Flag("cluster", "Cluster (env NACOS_CLUSTER)")
API = Flag("api", "auto, v1, v2 or v3 (env NACOS_API)")
BUDGET = Flag("budget", "Seconds before exit (env PRESTOP_BUDGET_SECONDS)")
WAIT_FOR = Flag("wait-for", "Watchers, comma-separated (env PRESTOP_WAIT_FOR)")
CONSUMER_CACHE = Flag("consumer-cache", "Seconds (env PRESTOP_CONSUMER_CACHE_SECONDS)")
TIMEOUT = Flag("timeout", "Seconds (env PRESTOP_REGISTER_TIMEOUT_SECONDS)")
LISTEN_PORT = Flag("listen-port", "Port to listen on, never the app's (env PRESTOP_SERVE_PORT)")
BIND = Flag("bind", "Address to listen on (env PRESTOP_SERVE_BIND)")
INSTANCE = (POD_IP, PORT, SERVER, SERVICE, NAMESPACE, GROUP, CLUSTER, API)

Flags = Mapping[str, object | None]


def with_flags(*flags: Flag) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command these options after its own; it receives their values as ``flags``, by option name.

    Typer reads a command's options from its signature, so the signature shown to it is the
    command's own parameters (without ``flags``) followed by one ``str | None`` option per flag.
    """

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "flags"]
        added = [
            inspect.Parameter(
                flag.parameter,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[str | None, typer.Option(f"--{flag.name}", help=flag.help)],
            )
            for flag in flags
        ]

        @functools.wraps(command)
        def run(**given: Any) -> None:
            command(flags={flag.name: given.pop(flag.parameter) for flag in flags}, **given)

        parameters = [*own, *added]
        run.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


# Declared apart from the flags above: how much of the pod a drain takes out.
SCOPE = Flag("scope", "pod, port or service: which registrations to drain (env PRESTOP_DRAIN_SCOPE)")
