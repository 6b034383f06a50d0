"""The timing rules, computed per container from the values the manifests state or the defaults they imply.

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

Values the manifests do not state come from the agent's own defaults, the load balancer's
documented defaults, or ``prestop-agent.io/*`` annotations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from prestop_agent.check.annotations import (
    A_KEEPALIVE,
    A_LB_DELAY,
    A_LB_IDLE,
    A_LB_PROPAGATION,
    A_REGISTRY_PROPAGATION,
    A_RESERVE,
    ALIYUN_DRAIN_ENABLED,
    ALIYUN_DRAIN_TIMEOUT,
    AWS_LB_ATTRIBUTES,
    AWS_TG_ATTRIBUTES,
    annotation_seconds,
    attribute_seconds,
    first,
)
from prestop_agent.check.balancers import LoadBalancer
from prestop_agent.check.environment import ContainerEnv, env_seconds, watched_by
from prestop_agent.check.hooks import Hook
from prestop_agent.check.report import ContainerCheck, Value, Violation, fmt
from prestop_agent.config import DEFAULT_GRACE_SECONDS, DEFAULT_SHUTDOWN_RESERVE_SECONDS, default_budget
from prestop_agent.watchers.registry import default_consumer_cache
from prestop_agent.watchers.traffic import DEFAULT_QUIET_SECONDS

KUBERNETES_DEFAULT_GRACE_SECONDS = 30.0

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
_SPRING_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ns|us|ms|s|m|h|d)?$")
_SPRING_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_ISO_SECONDS = re.compile(r"^PT(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?$", re.IGNORECASE)


def _keepalive(
    check: ContainerCheck, app_env: ContainerEnv, sources: list[tuple[str, Mapping[str, Any]]]
) -> Value | None:
    stated = annotation_seconds(check, sources, A_KEEPALIVE)
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
    hook: Hook
    env: ContainerEnv
    app_env: ContainerEnv
    sources: list[tuple[str, Mapping[str, Any]]]
    grace: float = KUBERNETES_DEFAULT_GRACE_SECONDS
    wait: float | None = None  # the whole preStop hook
    budget: float | None = None  # the agent's part of it
    reserve: float | None = None
    agent_grace: float | None = None
    evidence: float | None = None
    lb_done: float | None = None

    def violate(self, rule: str, message: str) -> None:
        self.check.violations.append(Violation(rule, message))


def evaluate(
    check: ContainerCheck,
    hook: Hook,
    *,
    grace: Value,
    env: ContainerEnv,
    app_env: ContainerEnv,
    lb: LoadBalancer | None,
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
    budget = env_seconds(check, t.env, flags, "budget", "PRESTOP_BUDGET_SECONDS")
    agent_grace = env_seconds(check, t.env, flags, "grace", "PRESTOP_GRACE_SECONDS")
    reserve = env_seconds(check, t.env, flags, "shutdown-reserve", "PRESTOP_SHUTDOWN_RESERVE_SECONDS") or Value(
        DEFAULT_SHUTDOWN_RESERVE_SECONDS, "agent default"
    )
    t.agent_grace = agent_grace.seconds if agent_grace is not None else None
    if budget is not None:
        wait = budget
    elif (agent_grace is not None and not agent_grace.known) or reserve.seconds is None:
        wait = Value(None, "PRESTOP_GRACE_SECONDS - PRESTOP_SHUTDOWN_RESERVE_SECONDS (unresolved)")
    else:
        given = t.agent_grace is not None
        origin = "PRESTOP_GRACE_SECONDS" if given else f"agent default grace {DEFAULT_GRACE_SECONDS:g}"
        wait = Value(max(0.0, default_budget(t.agent_grace, reserve.seconds)), f"{origin} - shutdown reserve")
    if not t.hook.wait and t.hook.sleep_s:  # the seed scripts' way: out of the registry, then a fixed sleep
        check.notes.append("`deregister --no-wait` and a sleep: a fixed wait, not evidence; `--wait` ends on evidence")
        wait = Value(0.0, "--no-wait")
    elif not t.hook.wait:
        t.violate(
            "budget",
            "preStop runs `prestop-agent deregister --no-wait`: it does not wait for traffic to leave; "
            "use `deregister --wait`",
        )
        wait = Value(0.0, "--no-wait")
    t.budget = wait.seconds
    source = f"at most the agent budget: {wait.source}"
    if t.hook.sleep_s:  # a sleep in the same script runs before or after the agent, not instead
        wait = Value(None if wait.seconds is None else wait.seconds + t.hook.sleep_s, wait.source)
        source += f", plus sleep {fmt(t.hook.sleep_s)} in the same script"
    check.values.append(("preStop wait", Value(wait.seconds, source)))
    check.values.append(("shutdown reserve", reserve))
    t.wait, t.reserve = wait.seconds, reserve.seconds


def _sleep_wait(t: _Timing) -> None:
    reserve = annotation_seconds(t.check, t.sources, A_RESERVE) or Value(
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
    fix = f"raise terminationGracePeriodSeconds to {fmt(w + r)}"
    if t.hook.kind == "agent" and t.hook.sleep_s:
        fix += f", or drop the sleep of {fmt(t.hook.sleep_s)} beside the agent, which waits on evidence itself"
    elif t.hook.kind == "agent" and t.agent_grace is not None and t.agent_grace > g:
        fix += f", or set PRESTOP_GRACE_SECONDS={fmt(g)} to match the pod's grace period"
    elif t.hook.kind == "agent" and g - r > 0:
        fix += f", or lower the budget to {fmt(g - r)} (PRESTOP_BUDGET_SECONDS={fmt(g - r)})"
    elif g - r > 0:
        fix += f", or shorten the sleep to {fmt(g - r)}"
    t.violate(
        "grace",
        f"terminationGracePeriodSeconds {fmt(g)} < preStop wait {fmt(w)} + shutdown reserve {fmt(r)}: "
        f"the kubelet kills the app before it has shut down; {fix}",
    )


def _rule_budget(t: _Timing) -> None:
    """The agent's budget covers registry propagation plus the cache allowance or the traffic quiet time."""
    needed, w, r = t.evidence, t.budget, t.reserve
    if needed is None or w is None or w >= needed:
        return
    fix = f"raise the budget to {fmt(needed)} (PRESTOP_BUDGET_SECONDS={fmt(needed)})"
    if r is not None and t.grace < needed + r:
        fix += f" and terminationGracePeriodSeconds to {fmt(needed + r)}"
    t.violate(
        "budget",
        f"agent budget {fmt(w)} < {fmt(needed)} needed for registry propagation plus the consumer-cache "
        f"allowance or traffic quiet time: the wait always runs out (exit 4); {fix}",
    )


def _agent_evidence(t: _Timing) -> float | None:
    check, flags = t.check, t.hook.flags
    watched = watched_by(t.env, flags, check)
    if watched is None:
        return None
    names, origin = watched
    check.values.append(("watchers", Value(None, f"{','.join(names)} ({origin})")))
    propagation = annotation_seconds(check, t.sources, A_REGISTRY_PROPAGATION) or Value(
        DEFAULT_REGISTRY_PROPAGATION_SECONDS, f"assumed (set {A_REGISTRY_PROPAGATION})"
    )
    check.values.append(("registry propagation", propagation))
    parts: list[float | None] = [0.0]
    if "registry" in names:
        cache = env_seconds(check, t.env, flags, "consumer-cache", "PRESTOP_CONSUMER_CACHE_SECONDS") or Value(
            default_consumer_cache(names), "agent default"
        )
        check.values.append(("consumer-cache allowance", cache))
        parts.append(cache.seconds)
    if "traffic" in names:
        quiet = env_seconds(check, t.env, flags, "quiet-seconds", "PRESTOP_QUIET_SECONDS") or Value(
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


def _lb_values(t: _Timing, lb: LoadBalancer) -> _LbValues:
    check, sources = t.check, lb.annotations
    propagation = annotation_seconds(check, sources, A_LB_PROPAGATION) or Value(
        DEFAULT_LB_PROPAGATION_SECONDS, f"assumed (set {A_LB_PROPAGATION})"
    )
    delay = annotation_seconds(check, sources, A_LB_DELAY)
    idle = annotation_seconds(check, sources, A_LB_IDLE)
    if lb.vendor == "aws":
        delay = delay or attribute_seconds(check, sources, AWS_TG_ATTRIBUTES, "deregistration_delay.timeout_seconds")
        delay = delay or Value(AWS_DEFAULT_DEREGISTRATION_DELAY, "AWS default (not stated)")
        idle = idle or attribute_seconds(check, sources, AWS_LB_ATTRIBUTES, "idle_timeout.timeout_seconds")
        idle = idle or Value(AWS_DEFAULT_IDLE_TIMEOUT, "AWS default (not stated)")
    if lb.vendor == "aliyun" and delay is None:
        enabled = first(sources, ALIYUN_DRAIN_ENABLED)
        if enabled is not None and str(enabled[1]).lower() == "true":
            delay = annotation_seconds(check, sources, ALIYUN_DRAIN_TIMEOUT)
            if delay is None:
                check.notes.append(f"{ALIYUN_DRAIN_ENABLED} is true but {ALIYUN_DRAIN_TIMEOUT} is not stated")
        elif enabled is not None:
            delay = Value(0.0, f"connection draining off ({ALIYUN_DRAIN_ENABLED})")
    return _LbValues(propagation, delay, idle, _keepalive(check, t.app_env, sources))


def _lb_rules(t: _Timing, lb: LoadBalancer) -> None:
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
        f"app keep-alive {fmt(keepalive)} <= LB idle timeout {fmt(idle)}: the app closes idle connections the LB "
        f"still reuses (502); set the app's keep-alive timeout to at least {fmt(idle + 1)} "
        f"(e.g. {KEEPALIVE_ENV}={fmt(idle + 1)}s) or lower the LB idle timeout below {fmt(keepalive)}",
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
    fix = f"raise {'the agent budget' if agent else 'the sleep'} to {fmt(needed)}"
    fix += f" (PRESTOP_BUDGET_SECONDS={fmt(needed)})" if agent else ""
    if r is not None and t.grace < needed + r:
        fix += f" and terminationGracePeriodSeconds to {fmt(needed + r)}"
    lower = w - propagation
    if delay > 0 and lower > 0:
        fix += f", or lower the deregistration delay to {fmt(lower)}"
        if vendor == "aws":
            fix += f" ({AWS_TG_ATTRIBUTES}: deregistration_delay.timeout_seconds={fmt(lower)})"
        elif vendor == "aliyun":
            fix += f' ({ALIYUN_DRAIN_TIMEOUT}: "{fmt(lower)}")'
    delay_text = f" + deregistration delay {fmt(delay)}" if v.delay is not None else ""
    t.violate(
        "lb-drain",
        f"preStop wait {fmt(w)} < LB propagation {fmt(propagation)}{delay_text}: the app gets SIGTERM while the "
        f"LB still routes or drains to it; {fix}",
    )


def _timeline(t: _Timing) -> None:
    events = t.check.events
    events.append((0.0, "pod deleted: preStop starts; Endpoints, registry and LB removal start in parallel"))
    if t.evidence is not None:
        events.append(
            (t.evidence, "evidence complete even for callers too sparse to have a rate (busy ones end sooner)")
        )
    if t.lb_done is not None:
        events.append((t.lb_done, "LB has removed and drained the pod"))
    if t.wait is not None:
        ends = "preStop ends at the latest: SIGTERM" if t.hook.kind == "agent" else "preStop ends: SIGTERM"
        events.append((t.wait, ends))
        if t.reserve is not None:
            events.append((t.wait + t.reserve, "app shut down (reserve used up)"))
    events.append((t.grace, "grace period ends: SIGKILL"))
    events.sort(key=lambda e: e[0])
