"""The agent's own settings validation, run on a container's environment and its hook's arguments.

``check`` must never pass what the agent refuses, so it does not re-implement the rules: it
builds a ``Source`` from the manifest and runs ``prestop_agent.config.load`` on it (and, for a
sidecar, the sidecar's own ``load_config``), the same code the hook runs. The agent's refusal,
word for word, becomes a ``config`` violation.

A manifest cannot state what only the running pod has. Where the agent needs such a value,
a stand-in of the right shape takes its place, and the report names each one:

* the downward API: ``status.podIP`` and ``status.hostIP`` become documentation addresses
  (192.0.2.0/24, RFC 5737), ``metadata.name`` the pod name, ``metadata.namespace`` the
  workload's namespace;
* what Kubernetes gives every container: ``HOSTNAME`` (the pod name, shaped the way Kubernetes
  generates it for the workload's kind, so the service name derived from it is the one the
  running pod will derive), ``KUBERNETES_SERVICE_HOST`` and ``KUBERNETES_SERVICE_PORT``;
* Nacos credentials from a Secret: the agent takes any non-empty value.

Anything else the files cannot give (other values from Secrets, a ConfigMap elsewhere, a
``$(VAR)`` reference, a ``$VAR`` in a shell script) stays unset. When the validation fails on a
setting that consulted such a value, the check says it cannot tell, instead of failing the rule.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from prestop_agent.check.environment import ContainerEnv
from prestop_agent.check.hooks import Hook
from prestop_agent.check.report import ContainerCheck, Value, Violation
from prestop_agent.config import Settings, load
from prestop_agent.errors import ConfigError
from prestop_agent.serve.settings import load_config as load_serve_config
from prestop_agent.source import Resolved, Source

# Shaped like what Kubernetes generates: a ReplicaSet's pod-template hash and a pod's random
# suffix, both in its safe alphabet (no vowels, no 0, 1 or 3).
TEMPLATE_HASH = "5d8f7c9b6d"
RANDOM_SUFFIX = "x2x9k"
# Kubernetes keeps a generated name's base to 58 characters, so base and suffix fit in 63.
MAX_GENERATED_BASE = 58

DOWNWARD_STAND_INS = {"status.podIP": "192.0.2.10", "status.hostIP": "192.0.2.20"}
RUNTIME_STAND_INS = {"KUBERNETES_SERVICE_HOST": "192.0.2.1", "KUBERNETES_SERVICE_PORT": "443"}
LITERAL_DOLLAR_HINT = (
    " (the kubelet does not expand $(VAR) or $VAR in a lifecycle hook's exec command: "
    'run it through ["sh", "-c", "..."], or let the agent read the variable itself)'
)
CREDENTIALS = (
    "NACOS_USERNAME",
    "NACOS_PASSWORD",
    "SPRING_CLOUD_NACOS_DISCOVERY_USERNAME",
    "SPRING_CLOUD_NACOS_DISCOVERY_PASSWORD",
    "SPRING_CLOUD_NACOS_USERNAME",
    "SPRING_CLOUD_NACOS_PASSWORD",
)


@dataclass(frozen=True)
class Pod:
    """What the manifest says about the pods a workload makes."""

    kind: str
    workload: str
    namespace: str | None
    hostname: str | None = None  # the pod spec's ``hostname``, which replaces the pod name as host name

    @property
    def name(self) -> str:
        """A pod name of the shape Kubernetes gives this workload's pods."""
        if self.kind == "StatefulSet":
            return f"{self.workload}-0"
        base = f"{self.workload}-{TEMPLATE_HASH}-" if self.kind == "Deployment" else f"{self.workload}-"
        return base[:MAX_GENERATED_BASE] + RANDOM_SUFFIX


class _Recording(Source):
    """A manifest's Source that remembers which flags and variables each lookup consulted."""

    def __init__(self, environ: dict[str, str], flags: dict[str, object | None]) -> None:
        super().__init__(environ, flags, local=False)
        self.consulted: list[str] = []

    def raw(self, *names: str, flag: str | None = None, strip: bool = True) -> Resolved[str] | None:
        found = super().raw(*names, flag=flag, strip=strip)
        order = [*([f"--{flag}"] if flag else []), *names]
        # Only what came before the winner could have changed the outcome.
        self.consulted.extend(order[: order.index(found.name) + 1] if found is not None else order)
        return found


def validate(check: ContainerCheck, hook: Hook, env: ContainerEnv, pod: Pod) -> None:
    """Run the agent's settings validation for this container; a violation, a note, or a row of values."""
    arguments = hook.arguments
    if arguments.refused is not None:
        check.violations.append(Violation("config", f"the agent would not drain: {arguments.refused}"))
        return
    if arguments.dry_run:
        check.violations.append(
            Violation("config", "`--dry-run` reads and reports but writes nothing: the pod is never taken out")
        )
    environ, stand_ins = _environment(env, pod)
    flags = {name: value for name, value in arguments.flags.items() if f"--{name}" not in arguments.unknown}
    src = _Recording(environ, dict(flags))
    try:
        settings = load(src)
        if hook.command == "serve":
            load_serve_config(src, settings)
    except ConfigError as exc:
        unknown = _unknowable(src.consulted, env, stand_ins, arguments.unknown)
        if unknown:
            check.notes.append(
                f"agent settings not fully checked: {exc}; but {', '.join(unknown)} cannot be known from the files"
            )
        else:
            hint = LITERAL_DOLLAR_HINT if arguments.literal_dollar else ""
            check.violations.append(
                Violation("config", f"the agent would refuse its settings and exit 2 without draining: {exc}{hint}")
            )
        return
    unset = _unknowable(src.consulted, env, stand_ins, arguments.unknown)
    used = {n: origin for n, origin in stand_ins.items() if n in src.consulted}
    if not settings.service_derived:
        used.pop("HOSTNAME", None)  # read, but it decides nothing when the service is named
    text = "accepted by the agent's own validation"
    if used:
        by_origin = {o: [n for n, origin in used.items() if origin == o] for o in dict.fromkeys(used.values())}
        text += "; as in the running pod: " + "; ".join(f"{', '.join(n)} {o}" for o, n in by_origin.items())
    if unset:
        text += f"; taken as unset, not known from the files: {', '.join(unset)}"
    check.values.append(("agent settings", Value(None, text)))
    check.values.append(("Nacos service", Value(None, _service(settings))))


def _environment(env: ContainerEnv, pod: Pod) -> tuple[dict[str, str], dict[str, str]]:
    """The container's variables with stand-ins for what only the running pod has, and where each comes from."""
    environ = dict(env.values)
    stand_ins: dict[str, str] = {}
    downward = {**DOWNWARD_STAND_INS, "metadata.name": pod.name, "metadata.namespace": pod.namespace or "default"}
    for name, path in env.field_paths.items():
        if path in downward:
            environ[name] = downward[path]
            stand_ins[name] = "from the downward API"
    for name in CREDENTIALS:
        if name in env.from_secrets:
            environ[name] = "value-from-a-secret"
            stand_ins[name] = "from a Secret"
    runtime = {"HOSTNAME": pod.hostname or pod.name, **RUNTIME_STAND_INS}
    for name, value in runtime.items():
        if name not in env.explicit and name not in environ:
            environ[name] = value
            stand_ins[name] = "set by Kubernetes"
    return environ, stand_ins


def _unknowable(
    consulted: Collection[str], env: ContainerEnv, stand_ins: Collection[str], unknown_flags: Collection[str]
) -> list[str]:
    """The consulted flags and variables whose value the files cannot give."""
    wildcards = [key[:-1] for key in env.unresolved if key.endswith("*")]
    found: list[str] = []
    for name in dict.fromkeys(consulted):
        if name.startswith("--"):
            if name in unknown_flags:
                found.append(name)
        elif name in stand_ins:
            continue
        elif name in env.unresolved or (name not in env.explicit and any(name.startswith(p) for p in wildcards)):
            found.append(name)
    return found


def _service(settings: Settings) -> str:
    where = f"namespace {settings.namespace.value}, group {settings.group.value}"
    if not settings.service.value:
        return f"none derivable from the pod name: looked up by ip:port at run time ({where})"
    if settings.service_derived:
        return f"{settings.service.value} ({where}; derived from the pod name)"
    return f"{settings.service.value} ({where}; {settings.service.source})"
