"""``status``: the settings and their sources, every registration of the pod, what ``deregister`` would do.

It changes nothing: the registry watcher it asks for a verdict only looks (it holds nothing).
"""

from __future__ import annotations

import contextlib

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.config import Settings
from prestop_agent.drain import DrainSet, last_instances
from prestop_agent.errors import PrestopError, RegistryError
from prestop_agent.nacos.discovery import Found
from prestop_agent.nacos.model import Registration
from prestop_agent.nacos.registry import Registry
from prestop_agent.run import Deps, Report, endpoint_of, find_registrations, make_registry, target_of
from prestop_agent.watchers.base import Verdict, WatchContext

log = structlog.get_logger("prestop_agent.agent")


def run_status(settings: Settings, deps: Deps) -> Report:
    deadline = deps.deadline(min(settings.budget.value, 3 * settings.request_timeout.value))
    registry = make_registry(settings, deps)
    report = Report("status", "reported", data={"settings": settings.sources()})
    key = settings.key
    try:
        if not key.service:  # no name to look in: find the service by ip:port, as deregister would
            key = registry.locate(key, deadline, search=True).key
            report.data["service_found_by_endpoint"] = str(key)
        views = registry.view(key, deadline)
    except RegistryError as exc:
        report.error = exc
        return report
    report.data["servers"] = [v.as_dict() for v in views]
    if all(v.error is not None for v in views):
        report.error = RegistryError("no Nacos server answered: " + "; ".join(str(v.error) for v in views))
    registrations: list[Registration] = []
    try:
        found = find_registrations(settings, registry, deadline)
        registrations = list(found.registrations)
        report.data["registrations"] = _registrations_data(registry, found, deadline)
        report.data["last_instance"] = [str(r) for r in last_instances(found.registrations, found.listings)]
        report.data["search_complete"] = found.complete
    except RegistryError as exc:
        report.data["registrations"] = []
        report.data["registrations_error"] = str(exc)
    report.data["deregister_would"] = _plan(settings, registrations)
    report.data["watchers"] = _watcher_verdicts(settings, deps, registry, registrations, deadline)
    return report


def _registrations_data(registry: Registry, found: Found, deadline: Deadline) -> list[dict[str, object]]:
    try:
        serving = DrainSet(registry, found.registrations).check(deadline).serving
    except RegistryError as exc:
        log.warning("status_served_unknown", error=str(exc))
        return [{**r.summary(), "served_by": None} for r in found.registrations]
    return [
        {**r.summary(), "served_by": serving.servers(r) if serving.answered_for(r) else None}
        for r in found.registrations
    ]


def _plan(settings: Settings, registrations: list[Registration]) -> str:
    if not registrations:
        return (
            f"look up every registration of {endpoint_of(settings)} (scope {settings.scope.value})"
            + (" (the service name was derived from the pod name)" if settings.service_derived else "")
            + "; fail with exit 3 if there is none"
        )
    enabled = [r for r in registrations if r.instance.enabled]
    if not enabled:
        return f"nothing to write: {len(registrations)} registration(s), all already disabled; confirm and wait"
    shown = ", ".join(f"{r.instance.endpoint} in {r.key} (weight {r.instance.weight:g} kept)" for r in enabled)
    return f"disable {shown} (enabled=false), then wait"


def _watcher_verdicts(
    settings: Settings, deps: Deps, registry: Registry, registrations: list[Registration], deadline: Deadline
) -> dict[str, object]:
    context = WatchContext(target_of(settings), deps.clock, registry, DrainSet(registry, registrations))
    verdicts: dict[str, object] = {}
    for name, config in settings.watcher_configs.items():
        try:
            with contextlib.closing(config.build(context)) as watcher:
                obs = watcher.poll(deps.clock.monotonic(), deadline.cap(settings.request_timeout.value))
            verdicts[name] = {"verdict": obs.verdict.value, "reason": obs.reason, **dict(obs.details)}
        except PrestopError as exc:
            verdicts[name] = {"verdict": Verdict.UNKNOWN.value, "reason": "error", "error": str(exc)}
    return verdicts
