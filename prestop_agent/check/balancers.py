"""Finding the load balancer in front of a workload, and the annotations that describe it.

A workload is behind a load balancer when an ALB Ingress routes to a Service selecting its
pods (manifests in the same directory), when its agent is configured for the ``aws-alb`` or
``aliyun-alb`` watcher, or when ``prestop-agent.io/lb-*`` annotations say so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prestop_agent.check.annotations import (
    A_LB_DELAY,
    A_LB_IDLE,
    A_LB_PROPAGATION,
    A_LOAD_BALANCER,
    ALB_ANNOTATION_PREFIX,
    ALIYUN_DRAIN_ENABLED,
    ALIYUN_DRAIN_TIMEOUT,
    AWS_MARKERS,
    CONTROLLERS,
    INGRESS_CLASS_ANNOTATION,
    first,
)
from prestop_agent.check.environment import ContainerEnv
from prestop_agent.check.hooks import Hook
from prestop_agent.check.manifests import Directory, Doc, as_list, mapping
from prestop_agent.watchers import aliyun_alb, aws_alb
from prestop_agent.watchers.catalog import watcher_names


@dataclass
class LoadBalancer:
    vendor: str | None  # "aws", "aliyun" or None (an ALB of unknown make)
    via: list[str]
    annotations: list[tuple[str, Mapping[str, Any]]]  # (where, annotations), highest priority first


def _selects(service: Doc, labels: Mapping[str, Any], ns: str | None) -> bool:
    selector = mapping(mapping(service.obj.get("spec")).get("selector"))
    if not selector or (ns is not None and service.namespace is not None and service.namespace != ns):
        return False
    return all(str(labels.get(k)) == str(v) for k, v in selector.items())


def _ingress_services(ingress: Doc) -> set[str]:
    spec = mapping(ingress.obj.get("spec"))
    names: set[str] = set()
    backends = [mapping(spec.get("defaultBackend"))]
    for rule in as_list(spec.get("rules")):
        for path in as_list(mapping(mapping(rule).get("http")).get("paths")):
            backends.append(mapping(mapping(path).get("backend")))
    for backend in backends:
        service = mapping(backend.get("service"))
        if service.get("name"):
            names.add(str(service["name"]))
    return names


def _ingress_vendor(ingress: Doc, classes: Mapping[str, str]) -> tuple[bool, str | None]:
    """Whether the Ingress is served by an ALB controller, and whose (``classes``: IngressClass -> controller)."""
    spec = mapping(ingress.obj.get("spec"))
    class_name = str(spec.get("ingressClassName") or ingress.annotations.get(INGRESS_CLASS_ANNOTATION) or "")
    vendor = CONTROLLERS.get(classes.get(class_name, ""))
    keys = [str(k) for k in ingress.annotations]
    if vendor is None and any(k in AWS_MARKERS for k in keys):
        vendor = "aws"
    if vendor is None and any(k in (ALIYUN_DRAIN_ENABLED, ALIYUN_DRAIN_TIMEOUT) for k in keys):
        vendor = "aliyun"
    is_alb = vendor is not None or class_name == "alb" or any(k.startswith(ALB_ANNOTATION_PREFIX) for k in keys)
    return is_alb, vendor


def find_load_balancer(
    workload: Doc, labels: Mapping[str, Any], inputs: Directory, annotation_sources: list[tuple[str, Mapping[str, Any]]]
) -> LoadBalancer | None:
    services = [s for s in inputs.services if _selects(s, labels, workload.namespace)]
    names = {s.name for s in services}
    found: LoadBalancer | None = None
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
            found = LoadBalancer(vendor, [], [])
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
        found = LoadBalancer(None, [f"annotations on the {ours[0][0]}"], [])
    if found is not None:
        found.annotations = [*annotation_sources, *found.annotations]
        declared = first(found.annotations, A_LOAD_BALANCER)
        if declared is not None and str(declared[1]).lower() in ("aws", "aliyun"):
            found.vendor = str(declared[1]).lower()
    return found


def lb_from_env(
    lb: LoadBalancer | None, env: ContainerEnv, hook: Hook, annotation_sources: list[tuple[str, Mapping[str, Any]]]
) -> LoadBalancer | None:
    """An agent configured for an ALB watcher is behind that ALB, even when no Ingress is in the files."""
    watchers = hook.flags.get("wait-for") or env.values.get("PRESTOP_WAIT_FOR") or ""
    names = set(watcher_names(watchers.split(",")))
    for vendor, variable, watcher in (
        ("aws", aws_alb.ENV_TARGET_GROUP_ARNS, aws_alb.NAME),
        ("aliyun", aliyun_alb.ENV_SERVER_GROUP_IDS, aliyun_alb.NAME),
    ):
        if env.values.get(variable, "").strip() or watcher in names:
            if lb is None:
                via = f"env {variable}" if env.values.get(variable, "").strip() else f"watcher {watcher}"
                return LoadBalancer(vendor, [via], list(annotation_sources))
            if lb.vendor is None:
                return LoadBalancer(vendor, lb.via, lb.annotations)
    return lb
