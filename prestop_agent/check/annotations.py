"""The annotations ``check`` reads (ours, and the ALB Ingress controllers'), and seconds read from them.

``prestop-agent.io/*`` annotations (``ANNOTATIONS``) state what a manifest cannot say
otherwise; they are read from the pod template, the workload, or a Service or Ingress that
routes to it, in that order.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prestop_agent.check.report import ContainerCheck, Value, Violation
from prestop_agent.errors import ConfigError
from prestop_agent.source import parse_seconds

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


def first(sources: Iterable[tuple[str, Mapping[str, Any]]], key: str) -> tuple[str, Any] | None:
    for where, found in sources:
        if key in found:
            return where, found[key]
    return None


def annotation_seconds(
    check: ContainerCheck, sources: Iterable[tuple[str, Mapping[str, Any]]], key: str
) -> Value | None:
    hit = first(sources, key)
    if hit is None:
        return None
    where, raw = hit
    try:
        return Value(parse_seconds(key, str(raw)), f"annotation {key} on {where}")
    except ConfigError as exc:
        check.violations.append(Violation("annotation", f"on {where}: {exc}"))
        return Value(None, f"annotation {key} on {where} (invalid)")


def _string_map(text: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for part in text.replace("\n", ",").split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            pairs[key.strip()] = value.strip()
    return pairs


def attribute_seconds(
    check: ContainerCheck, sources: Iterable[tuple[str, Mapping[str, Any]]], annotation: str, attribute: str
) -> Value | None:
    for where, found in sources:
        if annotation in found:
            pairs = _string_map(str(found[annotation]))
            if attribute in pairs:
                try:
                    seconds = parse_seconds(attribute, pairs[attribute])
                except ConfigError as exc:
                    check.violations.append(Violation("annotation", f"{annotation} on {where}: {exc}"))
                    return Value(None, f"{annotation} on {where} (invalid)")
                return Value(seconds, f"{annotation} {attribute} on {where}")
    return None
