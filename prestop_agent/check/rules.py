"""``prestop-agent check``: do a workload's shutdown timings fit together?

Most 502s during rollouts come from numbers that contradict each other: a preStop wait
longer than ``terminationGracePeriodSeconds``, an agent budget too short for the
consumer caches, an ALB that keeps draining after the pod is gone, an app that closes
keep-alive connections the load balancer still reuses. This module reads Deployment,
StatefulSet and DaemonSet manifests (multi-document YAML, ``kind: List`` too), finds
each container whose preStop hook is the agent or a plain ``sleep``, derives the
shutdown timeline and checks the rules below. It reads files only; it never talks to
a cluster.

Hooks recognised, per container:

* agent: ``exec`` running ``prestop-agent deregister`` (directly or in ``sh -c``), or an
  ``httpGet`` to a sidecar's ``/prestop`` (``prestop-agent serve``; its env holds the
  agent's settings). The preStop wait is at most the agent's budget.
* sleep: ``exec`` ``sleep N`` (directly or in ``sh -c``) or the native ``sleep`` action.

Rules (W = preStop wait, R = shutdown reserve, G = terminationGracePeriodSeconds):

* ``grace``: G >= W + R. The kubelet counts the grace period from the start of the
  preStop hook; the app needs R after SIGTERM to finish its work.
* ``budget``: an agent's budget covers the registry propagation plus the longest of the
  consumer-cache allowance (when ``registry`` is watched) and the traffic quiet time
  (when ``traffic`` is watched); ``deregister --no-wait`` does not wait at all.
* ``keepalive``: behind a load balancer, the app's keep-alive timeout is longer than
  the LB idle timeout, so the LB never reuses a connection the app already closed.
* ``lb-drain``: behind a load balancer, W covers the LB propagation plus the
  deregistration delay (connection draining).

A workload is behind a load balancer when an ALB Ingress routes to a Service selecting its
pods (manifests in the same directory), when its agent is configured for the ``aws-alb`` or
``aliyun-alb`` watcher, or when ``prestop-agent.io/lb-*`` annotations say so.
Values the manifests do not state come from the agent's own defaults, the load
balancer's documented defaults, or ``prestop-agent.io/*`` annotations (``ANNOTATIONS``)
on the pod template, the workload, or a Service or Ingress that routes to it.
"""

from __future__ import annotations

import math
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from prestop_agent.config import (
    DEFAULT_GRACE_SECONDS,
    DEFAULT_SHUTDOWN_RESERVE_SECONDS,
    DEFAULT_WAIT_FOR,
)
from prestop_agent.errors import ConfigError
from prestop_agent.watchers.registry import DEFAULT_CONSUMER_CACHE_SECONDS
from prestop_agent.watchers.traffic import DEFAULT_QUIET_SECONDS

WORKLOAD_KINDS = ("Deployment", "StatefulSet", "DaemonSet")
KUBERNETES_DEFAULT_GRACE_SECONDS = 30.0

# Our own annotations, for values no manifest field or upstream annotation states.
PREFIX = "prestop-agent.io/"
A_LB_IDLE = PREFIX + "lb-idle-timeout-seconds"
A_LB_DELAY = PREFIX + "lb-deregistration-delay-seconds"
A_LB_PROPAGATION = PREFIX + "lb-propagation-seconds"
A_KEEPALIVE = PREFIX + "app-keepalive-seconds"
A_REGISTRY_PROPAGATION = PREFIX + "registry-propagation-seconds"
A_RESERVE = PREFIX + "shutdown-reserve-seconds"
A_LOAD_BALANCER = PREFIX + "load-balancer"
ANNOTATIONS = (A_LB_IDLE, A_LB_DELAY, A_LB_PROPAGATION, A_KEEPALIVE, A_REGISTRY_PROPAGATION, A_RESERVE, A_LOAD_BALANCER)

# Upstream annotations read (AWS Load Balancer Controller; ACK ALB Ingress controller).
AWS_TG_ATTRIBUTES = "alb.ingress.kubernetes.io/target-group-attributes"
AWS_LB_ATTRIBUTES = "alb.ingress.kubernetes.io/load-balancer-attributes"
AWS_MARKERS = (AWS_TG_ATTRIBUTES, AWS_LB_ATTRIBUTES, "alb.ingress.kubernetes.io/target-type")
ALIYUN_DRAIN_ENABLED = "alb.ingress.kubernetes.io/connection-drain-enabled"
ALIYUN_DRAIN_TIMEOUT = "alb.ingress.kubernetes.io/connection-drain-timeout"
ALB_ANNOTATION_PREFIX = "alb.ingress.kubernetes.io/"
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"
CONTROLLERS = {"ingress.k8s.aws/alb": "aws", "ingress.k8s.alibabacloud/alb": "aliyun"}

# Documented defaults of the load balancers (AWS: target group and load balancer attributes).
AWS_DEFAULT_DEREGISTRATION_DELAY = 300.0
AWS_DEFAULT_IDLE_TIMEOUT = 60.0
# Our assumptions, overridable by annotation: the time from the pod's deletion until the
# LB controller has taken the pod out of the LB (seed example: a 10 s sleep for the ALB
# Ingress controller to reconcile), and until every Nacos server stops serving the
# instance (cluster sync is about a second; the registry watcher polls at most every 5 s).
DEFAULT_LB_PROPAGATION_SECONDS = 10.0
DEFAULT_REGISTRY_PROPAGATION_SECONDS = 5.0

# Spring Boot's server.tomcat.keep-alive-timeout, in the environment (both spellings bind).
KEEPALIVE_ENV = "SERVER_TOMCAT_KEEP_ALIVE_TIMEOUT"
KEEPALIVE_ENVS = (KEEPALIVE_ENV, "SERVER_TOMCAT_KEEPALIVETIMEOUT")
_SLEEP_IN_SHELL = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?sleep\s+(\d+(?:\.\d+)?)([smhd]?)(?=$|[\s;&|)])")
_AGENT_IN_SHELL = re.compile(r"(?:^|[\s;&|(])(?:\S*/)?prestop-agent\s+(deregister|serve)\b([^;&|\n]*)")
SHELLS = ("sh", "bash", "ash", "dash")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_SPRING_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)?$")
_SPRING_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ISO_SECONDS = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$", re.IGNORECASE)


# -- results ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """A number of seconds and where it came from; ``seconds`` is None when it could not be known."""

    seconds: float | None
    source: str

    @property
    def known(self) -> bool:
        return self.seconds is not None


@dataclass(frozen=True)
class Violation:
    rule: str
    message: str


@dataclass
class ContainerCheck:
    """One container's derived timeline, the rules it breaks, and what could not be checked."""

    file: str
    workload: str
    container: str
    hook: str
    values: list[tuple[str, Value]] = field(default_factory=list)
    events: list[tuple[float, str]] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.workload} container {self.container}"


@dataclass
class CheckReport:
    containers: list[ContainerCheck] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def violations(self) -> list[tuple[ContainerCheck, Violation]]:
        return [(c, v) for c in self.containers for v in c.violations]

    @property
    def ok(self) -> bool:
        return not self.violations


# -- reading ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Doc:
    file: str
    obj: Mapping[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str(_mapping(self.obj.get("metadata")).get("name", "?"))

    @property
    def namespace(self) -> str | None:
        ns = _mapping(self.obj.get("metadata")).get("namespace")
        return str(ns) if ns is not None else None

    @property
    def annotations(self) -> Mapping[str, Any]:
        return _mapping(_mapping(self.obj.get("metadata")).get("annotations"))


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: object) -> list[Any]:
    return value if isinstance(value, list) else []


def _files(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml") and p.is_file()))
        else:
            found.append(path)
    return found


def _load(path: Path) -> list[_Doc]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: cannot read it: not UTF-8 text") from None
    try:
        raw = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        where = ""
        mark = getattr(exc, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
    docs: list[_Doc] = []
    for index, obj in enumerate(raw, start=1):
        docs.extend(_flatten(path, index, obj))
    return docs


def _flatten(path: Path, index: int, obj: object) -> Iterator[_Doc]:
    if obj is None:
        return
    if not isinstance(obj, Mapping) or not isinstance(obj.get("kind"), str):
        raise ConfigError(f"{path}: document {index} is not a Kubernetes object (a mapping with a kind)")
    if obj["kind"] == "List" or (obj["kind"].endswith("List") and isinstance(obj.get("items"), list)):
        for item in _list(obj.get("items")):
            yield from _flatten(path, index, item)
        return
    yield _Doc(str(path), obj)


# -- the environment of a container, as far as the manifests tell ----------------------------------


@dataclass(frozen=True)
class _Env:
    values: Mapping[str, str]
    unresolved: Mapping[str, str]  # name -> why it cannot be known from the files

    def get(self, name: str) -> tuple[str | None, str | None]:
        """(value, None), (None, why unknown) or (None, None) when unset."""
        if name in self.values:
            return self.values[name], None
        if name in self.unresolved:
            return None, self.unresolved[name]
        return None, None


def _container_env(container: Mapping[str, Any], ns: str | None, configmaps: Mapping[str, _Doc]) -> _Env:
    values: dict[str, str] = {}
    unresolved: dict[str, str] = {}
    for source in _list(container.get("envFrom")):
        source_map = _mapping(source)
        prefix = str(source_map.get("prefix") or "")
        ref = _mapping(source_map.get("configMapRef"))
        if ref:
            cm = _configmap(configmaps, str(ref.get("name")), ns)
            if cm is None:
                unresolved[f"{prefix}*"] = f"envFrom configMapRef {ref.get('name')} is not in the same directory"
            else:
                for key, value in _mapping(cm.obj.get("data")).items():
                    values[prefix + str(key)] = str(value)
        secret = _mapping(source_map.get("secretRef"))
        if secret:
            unresolved[f"{prefix}*"] = f"envFrom secretRef {secret.get('name')} cannot be read from manifests"
    for entry in _list(container.get("env")):
        item = _mapping(entry)
        name = str(item.get("name", ""))
        if "valueFrom" in item:
            values.pop(name, None)
            ref = _mapping(_mapping(item.get("valueFrom")).get("configMapKeyRef"))
            cm = _configmap(configmaps, str(ref.get("name")), ns) if ref else None
            data = _mapping(cm.obj.get("data")) if cm is not None else {}
            if ref and str(ref.get("key")) in data:
                values[name] = str(data[str(ref.get("key"))])
                unresolved.pop(name, None)
            else:
                kind = next(iter(_mapping(item.get("valueFrom"))), "valueFrom")
                unresolved[name] = f"{name} comes from {kind}, " + _UNREADABLE.get(kind, "which the check cannot read")
            continue
        value = str(item.get("value", ""))
        if "$(" in value:
            unresolved[name] = f"{name}={value!r} refers to other variables"
            values.pop(name, None)
            continue
        values[name] = value
        unresolved.pop(name, None)
    return _Env(values, unresolved)


_UNREADABLE = {
    "configMapKeyRef": "and that ConfigMap key is not in the files of the same directory",
    "secretKeyRef": "and the check never reads Secrets",
    "fieldRef": "known only in the running pod",
    "resourceFieldRef": "known only in the running pod",
}


def _configmap(configmaps: Mapping[str, _Doc], name: str, ns: str | None) -> _Doc | None:
    cm = configmaps.get(name)
    if cm is None or (ns is not None and cm.namespace is not None and cm.namespace != ns):
        return None
    return cm


# -- hooks -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Hook:
    kind: str  # "agent" or "sleep"
    text: str
    sleep_s: float = 0.0
    flags: Mapping[str, str] = field(default_factory=dict)
    wait: bool = True
    settings_from: Mapping[str, Any] | None = None  # the sidecar container holding the agent's env


def _agent_flags(args: Sequence[str]) -> tuple[dict[str, str], bool]:
    flags: dict[str, str] = {}
    wait = True
    items = list(args)
    i = 0
    while i < len(items):
        arg = items[i]
        if arg == "--no-wait":
            wait = False
        elif arg == "--wait":
            wait = True
        elif arg.startswith("--") and "=" in arg:
            key, _, value = arg[2:].partition("=")
            flags[key] = value
        elif arg.startswith("--") and i + 1 < len(items) and not items[i + 1].startswith("--"):
            flags[arg[2:]] = items[i + 1]
            i += 1
        i += 1
    return flags, wait


def _shell_hook(shown: str, script: str) -> _Hook | None:
    agent = _AGENT_IN_SHELL.search(script)
    if agent and agent.group(1) == "deregister":
        try:
            args = shlex.split(agent.group(2))
        except ValueError:
            args = agent.group(2).split()
        flags, wait = _agent_flags(args)
        return _Hook("agent", f"exec {shown}", flags=flags, wait=wait)
    sleeps = [float(m.group(1)) * _UNITS[m.group(2)] for m in _SLEEP_IN_SHELL.finditer(script)]
    return _Hook("sleep", f"exec {shown}", sleep_s=sum(sleeps)) if sleeps else None


def _exec_hook(words: Sequence[str]) -> _Hook | None:
    if not words:
        return None
    shown = " ".join(shlex.quote(w) for w in words)
    base = PurePosixPath(words[0]).name
    if base in SHELLS and len(words) >= 3 and words[1] in ("-c", "-ec", "-ce", "-lc"):
        return _shell_hook(shown, words[2])
    for index, word in enumerate(words):
        if PurePosixPath(word).name == "prestop-agent" and words[index + 1 : index + 2] == ["deregister"]:
            flags, wait = _agent_flags(words[index + 2 :])
            return _Hook("agent", f"exec {shown}", flags=flags, wait=wait)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([smhd]?)", words[1]) if base == "sleep" and len(words) == 2 else None
    if match:
        return _Hook("sleep", f"exec {shown}", sleep_s=float(match.group(1)) * _UNITS[match.group(2)])
    return None


def _runs_serve(container: Mapping[str, Any]) -> bool:
    """Whether the container runs ``prestop-agent serve`` (the sidecar of issue 7)."""
    words = [str(w) for w in [*_list(container.get("command")), *_list(container.get("args"))]]
    if "prestop-agent" in str(container.get("image", "")) and words[:1] == ["serve"]:
        return True  # the agent's image, its entrypoint given the ``serve`` argument
    for index, word in enumerate(words):
        if PurePosixPath(word).name == "prestop-agent" and "serve" in words[index + 1 :]:
            return True
        match = _AGENT_IN_SHELL.search(word)
        if match and match.group(1) == "serve":
            return True
    return False


def _ports(container: Mapping[str, Any]) -> set[str]:
    ports: set[str] = set()
    for port in _list(container.get("ports")):
        item = _mapping(port)
        if "containerPort" in item:
            ports.add(str(item["containerPort"]))
        if "name" in item:
            ports.add(str(item["name"]))
    return ports


def _http_hook(
    container: Mapping[str, Any], pod_spec: Mapping[str, Any], get: Mapping[str, Any]
) -> tuple[_Hook | None, str | None]:
    path = str(get.get("path", "/")).split("?", 1)[0]
    port = str(get.get("port", ""))
    sidecars: list[Mapping[str, Any]] = [
        c
        for c in [*_list(pod_spec.get("initContainers")), *_list(pod_spec.get("containers"))]
        if isinstance(c, Mapping) and c is not container and _runs_serve(c)
    ]
    by_port = [c for c in sidecars if port in _ports(c)]
    if not by_port and not path.rstrip("/").endswith("/prestop"):
        return None, f"preStop httpGet {path} on port {port} is not a prestop-agent sidecar"
    chosen = by_port or sidecars
    sidecar = chosen[0] if chosen else None
    flags, _ = _agent_flags([str(a) for a in _list(sidecar.get("args"))] if sidecar is not None else [])
    return _Hook("agent", f"httpGet {path} port {port}", flags=flags, settings_from=sidecar), None


def _hook(container: Mapping[str, Any], pod_spec: Mapping[str, Any]) -> tuple[_Hook | None, str | None]:
    """The container's preStop hook as the check understands it, or (None, why it is not checked)."""
    pre_stop = _mapping(_mapping(container.get("lifecycle")).get("preStop"))
    if not pre_stop:
        return None, "no preStop hook"
    if "exec" in pre_stop:
        command = [str(c) for c in _list(_mapping(pre_stop["exec"]).get("command"))]
        hook = _exec_hook(command)
        if hook is None:
            return None, f"preStop runs {' '.join(command)!r}, neither prestop-agent nor a plain sleep"
        return hook, None
    if "sleep" in pre_stop:
        seconds = _mapping(pre_stop["sleep"]).get("seconds")
        if not isinstance(seconds, int) or isinstance(seconds, bool) or seconds < 0:
            raise ConfigError(f"lifecycle.preStop.sleep.seconds={seconds!r} is not a whole number of seconds")
        return _Hook("sleep", f"sleep action {seconds} s", sleep_s=float(seconds)), None
    if "httpGet" in pre_stop:
        return _http_hook(container, pod_spec, _mapping(pre_stop["httpGet"]))
    return None, "preStop hook of an unknown kind"


# -- load balancers --------------------------------------------------------------------------------


@dataclass
class _LoadBalancer:
    vendor: str | None  # "aws", "aliyun" or None (an ALB of unknown make)
    via: list[str]
    annotations: list[tuple[str, Mapping[str, Any]]]  # (where, annotations), highest priority first


def _selects(service: _Doc, labels: Mapping[str, Any], ns: str | None) -> bool:
    selector = _mapping(_mapping(service.obj.get("spec")).get("selector"))
    if not selector or (ns is not None and service.namespace is not None and service.namespace != ns):
        return False
    return all(str(labels.get(k)) == str(v) for k, v in selector.items())


def _ingress_services(ingress: _Doc) -> set[str]:
    spec = _mapping(ingress.obj.get("spec"))
    names: set[str] = set()
    backends = [_mapping(spec.get("defaultBackend"))]
    for rule in _list(spec.get("rules")):
        for path in _list(_mapping(_mapping(rule).get("http")).get("paths")):
            backends.append(_mapping(_mapping(path).get("backend")))
    for backend in backends:
        service = _mapping(backend.get("service"))
        if service.get("name"):
            names.add(str(service["name"]))
    return names


def _ingress_vendor(ingress: _Doc, classes: Mapping[str, str]) -> tuple[bool, str | None]:
    """Whether the Ingress is served by an ALB controller, and whose."""
    spec = _mapping(ingress.obj.get("spec"))
    class_name = str(spec.get("ingressClassName") or ingress.annotations.get(INGRESS_CLASS_ANNOTATION) or "")
    vendor = classes.get(class_name)
    keys = [str(k) for k in ingress.annotations]
    if vendor is None and any(k in AWS_MARKERS for k in keys):
        vendor = "aws"
    if vendor is None and any(k in (ALIYUN_DRAIN_ENABLED, ALIYUN_DRAIN_TIMEOUT) for k in keys):
        vendor = "aliyun"
    is_alb = vendor is not None or class_name == "alb" or any(k.startswith(ALB_ANNOTATION_PREFIX) for k in keys)
    return is_alb, vendor


# -- the check -------------------------------------------------------------------------------------


@dataclass
class _Inputs:
    workloads: list[_Doc] = field(default_factory=list)
    services: list[_Doc] = field(default_factory=list)
    ingresses: list[_Doc] = field(default_factory=list)
    configmaps: dict[str, _Doc] = field(default_factory=dict)
    ingress_classes: dict[str, str] = field(default_factory=dict)


def run_check(paths: Sequence[Path]) -> CheckReport:
    """Check every Deployment/StatefulSet/DaemonSet in ``paths`` (files or directories).

    Services, Ingresses, IngressClasses and ConfigMaps are matched to the workloads of files in
    the same directory: one directory holds one application's manifests (as in k8s-examples/).
    Raises ConfigError for unreadable or invalid input, or when no workload is found.
    """
    files = _files(paths)
    if not files:
        raise ConfigError("no manifest files given; pass YAML files or directories holding them")
    groups: dict[Path, _Inputs] = {}
    for path in files:
        inputs = groups.setdefault(path.parent, _Inputs())
        for doc in _load(path):
            _sort_in(inputs, doc)
    if not any(inputs.workloads for inputs in groups.values()):
        shown = ", ".join(str(p) for p in paths)
        raise ConfigError(f"no Deployment, StatefulSet or DaemonSet found in {shown}; nothing to check")
    report = CheckReport()
    for inputs in groups.values():
        for workload in inputs.workloads:
            report.containers.extend(_check_workload(workload, inputs, report))
    return report


def _sort_in(inputs: _Inputs, doc: _Doc) -> None:
    if doc.kind in WORKLOAD_KINDS:
        inputs.workloads.append(doc)
    elif doc.kind == "Service":
        inputs.services.append(doc)
    elif doc.kind == "Ingress":
        inputs.ingresses.append(doc)
    elif doc.kind == "ConfigMap":
        inputs.configmaps[doc.name] = doc
    elif doc.kind == "IngressClass":
        controller = str(_mapping(doc.obj.get("spec")).get("controller", ""))
        if controller in CONTROLLERS:
            inputs.ingress_classes[doc.name] = CONTROLLERS[controller]


def _check_workload(workload: _Doc, inputs: _Inputs, report: CheckReport) -> list[ContainerCheck]:
    label = f"{workload.kind} {workload.namespace + '/' if workload.namespace else ''}{workload.name}"
    template = _mapping(_mapping(workload.obj.get("spec")).get("template"))
    pod_spec = _mapping(template.get("spec"))
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ConfigError(f"{workload.file}: {label} has no spec.template.spec.containers")
    grace_raw = pod_spec.get("terminationGracePeriodSeconds")
    if grace_raw is None:
        grace = Value(KUBERNETES_DEFAULT_GRACE_SECONDS, "Kubernetes default")
    elif isinstance(grace_raw, int) and not isinstance(grace_raw, bool) and grace_raw >= 0:
        grace = Value(float(grace_raw), "terminationGracePeriodSeconds")
    else:
        raise ConfigError(
            f"{workload.file}: {label}: terminationGracePeriodSeconds={grace_raw!r} is not a whole number of seconds"
        )
    labels = _mapping(_mapping(template.get("metadata")).get("labels"))
    annotation_sources = [
        ("pod template", _mapping(_mapping(template.get("metadata")).get("annotations"))),
        (label, workload.annotations),
    ]
    lb = _load_balancer(workload, labels, inputs, annotation_sources)
    checks: list[ContainerCheck] = []
    for container in containers:
        item = _mapping(container)
        name = str(item.get("name", "?"))
        try:
            hook, why_not = _hook(item, pod_spec)
        except ConfigError as exc:
            raise ConfigError(f"{workload.file}: {label} container {name}: {exc}") from None
        if hook is None:
            if _runs_serve(item):
                continue
            if lb is not None or why_not != "no preStop hook":
                report.notes.append(f"{label} container {name}: not checked: {why_not}")
            continue
        check = ContainerCheck(workload.file, label, name, hook.text)
        env_source = hook.settings_from if hook.settings_from is not None else item
        env = _container_env(env_source, workload.namespace, inputs.configmaps)
        app_env = _container_env(item, workload.namespace, inputs.configmaps)
        container_lb = _lb_from_env(lb, env, hook, annotation_sources) if hook.kind == "agent" else lb
        _evaluate(check, hook, grace=grace, env=env, app_env=app_env, lb=container_lb, sources=annotation_sources)
        checks.append(check)
    return checks


def _load_balancer(
    workload: _Doc, labels: Mapping[str, Any], inputs: _Inputs, annotation_sources: list[tuple[str, Mapping[str, Any]]]
) -> _LoadBalancer | None:
    services = [s for s in inputs.services if _selects(s, labels, workload.namespace)]
    names = {s.name for s in services}
    found: _LoadBalancer | None = None
    for ingress in inputs.ingresses:
        if workload.namespace is not None and ingress.namespace not in (None, workload.namespace):
            continue
        routed = _ingress_services(ingress) & names
        if not routed:
            continue
        is_alb, vendor = _ingress_vendor(ingress, inputs.ingress_classes)
        if not is_alb:
            continue
        if found is None:
            found = _LoadBalancer(vendor, [], [])
        found.vendor = found.vendor or vendor
        found.via.append(f"Ingress {ingress.name}")
        # Service annotations win over Ingress annotations (AWS Load Balancer Controller).
        found.annotations.extend((f"Service {s.name}", s.annotations) for s in services if s.name in routed)
        found.annotations.append((f"Ingress {ingress.name}", ingress.annotations))
    ours = [
        (where, annotations)
        for where, annotations in annotation_sources
        if any(str(k) in (A_LB_IDLE, A_LB_DELAY, A_LB_PROPAGATION, A_LOAD_BALANCER) for k in annotations)
    ]
    if found is None and ours:
        found = _LoadBalancer(None, [f"annotations on the {ours[0][0]}"], [])
    if found is not None:
        found.annotations = [*annotation_sources, *found.annotations]
        declared = _first(found.annotations, A_LOAD_BALANCER)
        if declared is not None and str(declared[1]).lower() in ("aws", "aliyun"):
            found.vendor = str(declared[1]).lower()
    return found


def _lb_from_env(
    lb: _LoadBalancer | None, env: _Env, hook: _Hook, annotation_sources: list[tuple[str, Mapping[str, Any]]]
) -> _LoadBalancer | None:
    """An agent configured for an ALB watcher is behind that ALB, even when no Ingress is in the files."""
    watchers = hook.flags.get("wait-for") or env.values.get("PRESTOP_WAIT_FOR") or ""
    names = {w.strip().lower() for w in watchers.split(",")}
    for vendor, variable, watcher in (
        ("aws", "PRESTOP_AWS_TARGET_GROUP_ARNS", "aws-alb"),
        ("aliyun", "PRESTOP_ALIYUN_SERVER_GROUP_IDS", "aliyun-alb"),
    ):
        if env.values.get(variable, "").strip() or watcher in names:
            if lb is None:
                via = f"env {variable}" if env.values.get(variable, "").strip() else f"watcher {watcher}"
                return _LoadBalancer(vendor, [via], list(annotation_sources))
            if lb.vendor is None:
                return _LoadBalancer(vendor, lb.via, lb.annotations)
    return lb


def _first(sources: Iterable[tuple[str, Mapping[str, Any]]], key: str) -> tuple[str, Any] | None:
    for where, found in sources:
        if key in found:
            return where, found[key]
    return None


def _seconds_text(name: str, text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a number of seconds") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"{name}={text!r} must be a number of seconds of at least 0")
    return number


def _annotation_value(
    check: ContainerCheck, sources: Iterable[tuple[str, Mapping[str, Any]]], key: str
) -> Value | None:
    hit = _first(sources, key)
    if hit is None:
        return None
    where, raw = hit
    try:
        return Value(_seconds_text(key, str(raw)), f"annotation {key} on {where}")
    except ValueError as exc:
        check.violations.append(Violation("annotation", f"{exc} (on {where}); set it to a number such as 30"))
        return Value(None, f"annotation {key} on {where} (invalid)")


def _string_map(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in text.replace("\n", ",").split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            pairs[key.strip()] = value.strip()
    return pairs


def _attribute(
    check: ContainerCheck, sources: Iterable[tuple[str, Mapping[str, Any]]], annotation: str, attribute: str
) -> Value | None:
    for where, found in sources:
        if annotation in found:
            pairs = _string_map(str(found[annotation]))
            if attribute in pairs:
                try:
                    seconds = _seconds_text(attribute, pairs[attribute])
                except ValueError as exc:
                    check.violations.append(Violation("annotation", f"{exc} in {annotation} on {where}"))
                    return Value(None, f"{annotation} on {where} (invalid)")
                return Value(seconds, f"{annotation} {attribute} on {where}")
    return None


def _env_seconds(check: ContainerCheck, env: _Env, flags: Mapping[str, str], flag: str, *names: str) -> Value | None:
    """The first of the flag and the variables that is set: a Value, or a Value without seconds if unknown."""
    if flag in flags:
        text, origin = flags[flag], f"--{flag}"
    else:
        for name in names:
            text_or_none, why = env.get(name)
            if why is not None:
                check.notes.append(f"{why}; the check assumes nothing for it")
                return Value(None, f"env {name} (unresolved)")
            if text_or_none is not None and text_or_none.strip():
                text, origin = text_or_none.strip(), f"env {name}"
                break
        else:
            return None
    try:
        return Value(_seconds_text(origin.removeprefix("env "), text), origin)
    except ValueError as exc:
        check.violations.append(
            Violation("config", f"{exc}: the agent would refuse it and exit 2 without waiting; set a number")
        )
        return Value(None, f"{origin} (invalid)")


def _wait_for(env: _Env, flags: Mapping[str, str], check: ContainerCheck) -> tuple[tuple[str, ...], str] | None:
    if "wait-for" in flags:
        text, origin = flags["wait-for"], "--wait-for"
    else:
        text_or_none, why = env.get("PRESTOP_WAIT_FOR")
        if why is not None:
            check.notes.append(f"{why}; watchers unknown")
            return None
        if text_or_none is None or not text_or_none.strip():
            return DEFAULT_WAIT_FOR, "default"
        text, origin = text_or_none, "env PRESTOP_WAIT_FOR"
    return tuple(dict.fromkeys(p.strip().lower() for p in text.split(",") if p.strip())), origin


def _keepalive(check: ContainerCheck, app_env: _Env, sources: list[tuple[str, Mapping[str, Any]]]) -> Value | None:
    stated = _annotation_value(check, sources, A_KEEPALIVE)
    if stated is not None:
        return stated
    for name in KEEPALIVE_ENVS:
        text, why = app_env.get(name)
        if why is not None:
            check.notes.append(f"{why}; app keep-alive unknown")
            return None
        if text is not None:
            return _spring_duration(check, name, text.strip())
    return None


def _spring_duration(check: ContainerCheck, name: str, text: str) -> Value | None:
    match = _SPRING_DURATION.fullmatch(text)
    if match:  # Spring Boot reads a bare number for this property as milliseconds
        return Value(float(match.group(1)) * _SPRING_UNITS[match.group(2) or "ms"], f"env {name}")
    iso = _ISO_SECONDS.fullmatch(text)
    if iso and any(iso.groups()):
        hours, minutes, seconds = (float(g) if g else 0.0 for g in iso.groups())
        return Value(hours * 3600 + minutes * 60 + seconds, f"env {name}")
    check.notes.append(f"{name}={text!r} is not a duration the check understands; app keep-alive unknown")
    return None


@dataclass
class _Timing:
    """What one container's rules are computed from (seconds; None = unknown)."""

    check: ContainerCheck
    hook: _Hook
    env: _Env
    app_env: _Env
    sources: list[tuple[str, Mapping[str, Any]]]
    grace: float = KUBERNETES_DEFAULT_GRACE_SECONDS
    wait: float | None = None
    reserve: float | None = None
    agent_grace: float | None = None
    evidence: float | None = None
    lb_done: float | None = None

    def violate(self, rule: str, message: str) -> None:
        self.check.violations.append(Violation(rule, message))


def _evaluate(
    check: ContainerCheck,
    hook: _Hook,
    *,
    grace: Value,
    env: _Env,
    app_env: _Env,
    lb: _LoadBalancer | None,
    sources: list[tuple[str, Mapping[str, Any]]],
) -> None:
    check.values.append(("grace period", grace))
    t = _Timing(check, hook, env, app_env, sources)
    t.grace = grace.seconds if grace.seconds is not None else KUBERNETES_DEFAULT_GRACE_SECONDS
    if hook.kind == "agent":
        _agent_wait(t)
    else:
        _sleep_wait(t)
    _rule_grace(t)
    if hook.kind == "agent" and hook.wait:
        t.evidence = _agent_evidence(t)
        _rule_budget(t)
    if lb is not None:
        _lb_rules(t, lb)
    _timeline(t)


def _agent_wait(t: _Timing) -> None:
    check, flags = t.check, t.hook.flags
    budget = _env_seconds(check, t.env, flags, "budget", "PRESTOP_BUDGET_SECONDS")
    agent_grace = _env_seconds(check, t.env, flags, "grace", "PRESTOP_GRACE_SECONDS")
    reserve = _env_seconds(check, t.env, flags, "shutdown-reserve", "PRESTOP_SHUTDOWN_RESERVE_SECONDS") or Value(
        DEFAULT_SHUTDOWN_RESERVE_SECONDS, "agent default"
    )
    t.agent_grace = agent_grace.seconds if agent_grace is not None else None
    if budget is not None:
        wait = budget
    elif (agent_grace is not None and not agent_grace.known) or reserve.seconds is None:
        wait = Value(None, "PRESTOP_GRACE_SECONDS - PRESTOP_SHUTDOWN_RESERVE_SECONDS (unresolved)")
    else:
        base = t.agent_grace if t.agent_grace is not None else DEFAULT_GRACE_SECONDS
        origin = "PRESTOP_GRACE_SECONDS" if t.agent_grace is not None else f"agent default grace {base:g}"
        wait = Value(max(0.0, base - reserve.seconds), f"{origin} - shutdown reserve")
    if not t.hook.wait:
        t.violate(
            "budget",
            "preStop runs `prestop-agent deregister --no-wait`: it does not wait for traffic to leave; "
            "use `deregister --wait`",
        )
        wait = Value(0.0, "--no-wait")
    check.values.append(("preStop wait", Value(wait.seconds, f"at most the agent budget: {wait.source}")))
    check.values.append(("shutdown reserve", reserve))
    t.wait, t.reserve = wait.seconds, reserve.seconds


def _sleep_wait(t: _Timing) -> None:
    reserve = _annotation_value(t.check, t.sources, A_RESERVE) or Value(
        DEFAULT_SHUTDOWN_RESERVE_SECONDS, f"assumed (set {A_RESERVE})"
    )
    t.check.values.append(("preStop wait", Value(t.hook.sleep_s, "sleep")))
    t.check.values.append(("shutdown reserve", reserve))
    t.wait, t.reserve = t.hook.sleep_s, reserve.seconds


def _rule_grace(t: _Timing) -> None:
    """terminationGracePeriodSeconds >= preStop wait + shutdown reserve."""
    g, w, r = t.grace, t.wait, t.reserve
    if w is None or r is None or g >= w + r:
        return
    fix = f"raise terminationGracePeriodSeconds to {_fmt(w + r)}"
    if t.hook.kind == "agent" and t.agent_grace is not None and t.agent_grace > g:
        fix += f", or set PRESTOP_GRACE_SECONDS={_fmt(g)} to match the pod's grace period"
    elif t.hook.kind == "agent" and g - r > 0:
        fix += f", or lower the budget to {_fmt(g - r)} (PRESTOP_BUDGET_SECONDS={_fmt(g - r)})"
    elif g - r > 0:
        fix += f", or shorten the sleep to {_fmt(g - r)}"
    t.violate(
        "grace",
        f"terminationGracePeriodSeconds {_fmt(g)} < preStop wait {_fmt(w)} + shutdown reserve {_fmt(r)}: "
        f"the kubelet kills the app before it has shut down; {fix}",
    )


def _rule_budget(t: _Timing) -> None:
    """The agent's budget covers registry propagation plus the cache allowance or the traffic quiet time."""
    needed, w, r = t.evidence, t.wait, t.reserve
    if needed is None or w is None or w >= needed:
        return
    fix = f"raise the budget to {_fmt(needed)} (PRESTOP_BUDGET_SECONDS={_fmt(needed)})"
    if r is not None and t.grace < needed + r:
        fix += f" and terminationGracePeriodSeconds to {_fmt(needed + r)}"
    t.violate(
        "budget",
        f"agent budget {_fmt(w)} < {_fmt(needed)} needed for registry propagation plus the consumer-cache "
        f"allowance or traffic quiet time: the wait always runs out (exit 4); {fix}",
    )


def _agent_evidence(t: _Timing) -> float | None:
    check, flags = t.check, t.hook.flags
    watched = _wait_for(t.env, flags, check)
    if watched is None:
        return None
    names, origin = watched
    check.values.append(("watchers", Value(None, f"{','.join(names)} ({origin})")))
    propagation = _annotation_value(check, t.sources, A_REGISTRY_PROPAGATION) or Value(
        DEFAULT_REGISTRY_PROPAGATION_SECONDS, f"assumed (set {A_REGISTRY_PROPAGATION})"
    )
    check.values.append(("registry propagation", propagation))
    parts: list[float | None] = [0.0]
    if "registry" in names:
        cache = _env_seconds(check, t.env, flags, "consumer-cache", "PRESTOP_CONSUMER_CACHE_SECONDS") or Value(
            0.0 if "traffic" in names else DEFAULT_CONSUMER_CACHE_SECONDS, "agent default"
        )
        check.values.append(("consumer-cache allowance", cache))
        parts.append(cache.seconds)
    if "traffic" in names:
        quiet = _env_seconds(check, t.env, flags, "quiet-seconds", "PRESTOP_QUIET_SECONDS") or Value(
            DEFAULT_QUIET_SECONDS, "agent default"
        )
        check.values.append(("traffic quiet time", quiet))
        parts.append(quiet.seconds)
    known = [p for p in parts if p is not None]
    if propagation.seconds is None or len(known) != len(parts):
        return None
    return propagation.seconds + max(known)


@dataclass(frozen=True)
class _LbValues:
    propagation: Value
    delay: Value | None
    idle: Value | None
    keepalive: Value | None


def _lb_values(t: _Timing, lb: _LoadBalancer) -> _LbValues:
    check, sources = t.check, lb.annotations
    propagation = _annotation_value(check, sources, A_LB_PROPAGATION) or Value(
        DEFAULT_LB_PROPAGATION_SECONDS, f"assumed (set {A_LB_PROPAGATION})"
    )
    delay = _annotation_value(check, sources, A_LB_DELAY)
    idle = _annotation_value(check, sources, A_LB_IDLE)
    if lb.vendor == "aws":
        delay = delay or _attribute(check, sources, AWS_TG_ATTRIBUTES, "deregistration_delay.timeout_seconds")
        delay = delay or Value(AWS_DEFAULT_DEREGISTRATION_DELAY, "AWS default (not stated)")
        idle = idle or _attribute(check, sources, AWS_LB_ATTRIBUTES, "idle_timeout.timeout_seconds")
        idle = idle or Value(AWS_DEFAULT_IDLE_TIMEOUT, "AWS default (not stated)")
    if lb.vendor == "aliyun" and delay is None:
        enabled = _first(sources, ALIYUN_DRAIN_ENABLED)
        if enabled is not None and str(enabled[1]).lower() == "true":
            delay = _annotation_value(check, sources, ALIYUN_DRAIN_TIMEOUT)
            if delay is None:
                check.notes.append(f"{ALIYUN_DRAIN_ENABLED} is true but {ALIYUN_DRAIN_TIMEOUT} is not stated")
        elif enabled is not None:
            delay = Value(0.0, f"connection draining off ({ALIYUN_DRAIN_ENABLED})")
    return _LbValues(propagation, delay, idle, _keepalive(check, t.app_env, sources))


def _lb_rules(t: _Timing, lb: _LoadBalancer) -> None:
    vendor_text = {"aws": "AWS ALB", "aliyun": "Alibaba Cloud ALB"}.get(lb.vendor or "", "ALB")
    t.check.values.append(("load balancer", Value(None, f"{vendor_text} via {', '.join(lb.via)}")))
    v = _lb_values(t, lb)
    t.check.values.append(("LB propagation", v.propagation))
    t.check.values.append(("LB deregistration delay", v.delay or Value(None, f"not stated (set {A_LB_DELAY})")))
    t.check.values.append(("LB idle timeout", v.idle or Value(None, f"not stated (set {A_LB_IDLE})")))
    t.check.values.append(("app keep-alive", v.keepalive or Value(None, f"not stated (set {A_KEEPALIVE})")))
    _rule_keepalive(t, v)
    _rule_lb_drain(t, v, lb.vendor)


def _rule_keepalive(t: _Timing, v: _LbValues) -> None:
    """App keep-alive timeout > LB idle timeout."""
    if v.idle is None or v.keepalive is None:
        missing = [name for name, value in (("LB idle timeout", v.idle), ("app keep-alive", v.keepalive)) if not value]
        t.check.notes.append(f"keep-alive rule not checked: {' and '.join(missing)} not stated")
        return
    idle, keepalive = v.idle.seconds, v.keepalive.seconds
    if idle is None or keepalive is None or keepalive > idle:
        return
    t.violate(
        "keepalive",
        f"app keep-alive {_fmt(keepalive)} <= LB idle timeout {_fmt(idle)}: the app closes idle connections the LB "
        f"still reuses (502); set the app's keep-alive timeout to at least {_fmt(idle + 1)} "
        f"(e.g. {KEEPALIVE_ENV}={_fmt(idle + 1)}s) or lower the LB idle timeout below {_fmt(keepalive)}",
    )


def _rule_lb_drain(t: _Timing, v: _LbValues, vendor: str | None) -> None:
    """preStop wait >= LB propagation + deregistration delay."""
    propagation = v.propagation.seconds
    delay = v.delay.seconds if v.delay is not None else 0.0
    if propagation is None or delay is None:
        return
    if v.delay is None:
        t.check.notes.append("LB deregistration delay not stated: the preStop wait is checked against propagation only")
    needed = propagation + delay
    t.lb_done = needed
    w, r = t.wait, t.reserve
    if w is None or w >= needed:
        return
    agent = t.hook.kind == "agent"
    fix = f"raise {'the agent budget' if agent else 'the sleep'} to {_fmt(needed)}"
    fix += f" (PRESTOP_BUDGET_SECONDS={_fmt(needed)})" if agent else ""
    if r is not None and t.grace < needed + r:
        fix += f" and terminationGracePeriodSeconds to {_fmt(needed + r)}"
    lower = w - propagation
    if delay > 0 and lower > 0:
        fix += f", or lower the deregistration delay to {_fmt(lower)}"
        if vendor == "aws":
            fix += f" ({AWS_TG_ATTRIBUTES}: deregistration_delay.timeout_seconds={_fmt(lower)})"
        elif vendor == "aliyun":
            fix += f' ({ALIYUN_DRAIN_TIMEOUT}: "{_fmt(lower)}")'
    delay_text = f" + deregistration delay {_fmt(delay)}" if v.delay is not None else ""
    t.violate(
        "lb-drain",
        f"preStop wait {_fmt(w)} < LB propagation {_fmt(propagation)}{delay_text}: the app gets SIGTERM while the "
        f"LB still routes or drains to it; {fix}",
    )


def _timeline(t: _Timing) -> None:
    events = t.check.events
    events.append((0.0, "pod deleted: preStop starts; Endpoints, registry and LB removal start in parallel"))
    if t.evidence is not None:
        events.append((t.evidence, "earliest complete evidence (agent may end here)"))
    if t.lb_done is not None:
        events.append((t.lb_done, "LB has removed and drained the pod"))
    if t.wait is not None:
        ends = "preStop ends at the latest: SIGTERM" if t.hook.kind == "agent" else "preStop ends: SIGTERM"
        events.append((t.wait, ends))
        if t.reserve is not None:
            events.append((t.wait + t.reserve, "app shut down (reserve used up)"))
    events.append((t.grace, "grace period ends: SIGKILL"))
    events.sort(key=lambda e: e[0])


# -- output ----------------------------------------------------------------------------------------


def _fmt(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{seconds:g}"


def render(report: CheckReport) -> str:
    """The timelines, then one line per violated rule with its fix, then a summary line."""
    lines: list[str] = []
    for check in report.containers:
        lines.append(f"{check.label} ({check.file}): preStop {check.hook}")
        for name, value in check.values:
            number = f"{_fmt(value.seconds)} s" if value.seconds is not None else ""
            lines.append(f"  {name:26} {number or '-':>7}  {value.source}")
        lines.append("  timeline:")
        lines.extend(f"    t={_fmt(t):<6} {text}" for t, text in check.events)
        lines.extend(f"  note: {note}" for note in check.notes)
        lines.append("")
    lines.extend(f"note: {note}" for note in report.notes)
    for check, violation in report.violations:
        lines.append(f"FAIL [{violation.rule}] {check.label}: {violation.message}")
    count = len(report.violations)
    checked = len(report.containers)
    if count:
        lines.append(f"{count} rule(s) violated in {checked} container(s) checked")
    else:
        lines.append(f"all timing rules hold in {checked} container(s) checked")
    return "\n".join(lines)
