"""What the commands do, as plain functions over Settings and injected dependencies.

Nothing here reads the environment or exits the process: the CLI builds ``Settings`` and
``Deps``, calls one of these, and maps the report's error to an exit code.
"""

from __future__ import annotations

import contextlib
import signal
from dataclasses import dataclass, field

import httpx
import structlog

from prestop_agent.clock import Clock, Deadline
from prestop_agent.config import Settings
from prestop_agent.errors import (
    AuthError,
    BudgetExhausted,
    InstanceNotFound,
    Interrupted,
    PrestopError,
    RegistryError,
)
from prestop_agent.logs import RunClock, Secrets
from prestop_agent.nacos.model import ServiceKey, format_endpoint
from prestop_agent.nacos.registry import Located, Registry
from prestop_agent.nacos.server import Credentials, NacosServer
from prestop_agent.wait import wait_until_gone
from prestop_agent.watchers import catalog
from prestop_agent.watchers.base import PodTarget, Verdict, WatchContext
from prestop_agent.watchers.registry import RegistryWatcher

log = structlog.get_logger(__name__)

REGISTER_POLL_S = 1.0


@dataclass(frozen=True)
class Deps:
    clock: Clock
    http: httpx.Client
    secrets: Secrets = field(default_factory=Secrets)
    run: RunClock = field(default_factory=RunClock)
    started: float | None = None  # when the process started, on ``clock``; None: now

    def deadline(self, seconds: float) -> Deadline:
        start = self.clock.monotonic() if self.started is None else self.started
        deadline = Deadline(self.clock, started=start, end=start + seconds)
        self.run.deadline = deadline
        return deadline


@dataclass
class Report:
    """The result of one command: what happened, the evidence, and the error if any."""

    command: str
    outcome: str
    error: PrestopError | None = None
    data: dict[str, object] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict[str, object]:
        return {
            "command": self.command,
            "ok": self.ok,
            "outcome": self.outcome,
            "error": None if self.error is None else {"type": type(self.error).__name__, "message": str(self.error)},
            **self.data,
        }


def make_registry(settings: Settings, deps: Deps) -> Registry:
    credentials = None
    if settings.username is not None and settings.password is not None:
        credentials = Credentials(settings.username.value, settings.password.value)
    servers = [
        NacosServer(
            address,
            deps.http,
            credentials=credentials,
            request_timeout=settings.request_timeout.value,
            secrets=deps.secrets,
        )
        for address in settings.servers.value
    ]
    return Registry(servers, settings.api.value, settings.pod_ip.value, settings.port.value, settings.cluster.value)


def target_of(settings: Settings) -> PodTarget:
    return PodTarget(settings.pod_ip.value, settings.port.value, settings.host_ip.value if settings.host_ip else None)


def endpoint_of(settings: Settings) -> str:
    return format_endpoint(settings.pod_ip.value, settings.port.value)


def _located(settings: Settings, registry: Registry, deadline: Deadline) -> Located:
    located = registry.locate(settings.key, deadline, search=True)
    if located.searched:
        if not settings.service_derived:
            raise InstanceNotFound(
                f"{endpoint_of(settings)} is not in service {settings.service.value!r} "
                f"({settings.service.source}) but in {located.key.service!r}; "
                f"set NACOS_SERVICE_NAME={located.key.service}"
            )
        log.warning(
            "service_name_corrected" if settings.service.value else "service_found_by_endpoint",
            derived=settings.service.value or None,
            found=located.key.service,
            hint=f"set NACOS_SERVICE_NAME={located.key.service}",
        )
    log.info(
        "instance_located",
        service=str(located.key),
        endpoint=located.instance.endpoint,
        cluster=located.instance.cluster,
        enabled=located.instance.enabled,
        server=located.server,
    )
    return located


def _instance_data(located: Located) -> dict[str, object]:
    return {
        "service": str(located.key),
        "endpoint": located.instance.endpoint,
        "instance": located.instance.summary(),
        "found_by_search": located.searched,
    }


# -- deregister ------------------------------------------------------------------------------------


def run_deregister(settings: Settings, deps: Deps, *, wait: bool, dry_run: bool) -> Report:
    deadline = deps.deadline(settings.budget.value)
    registry = make_registry(settings, deps)
    log.info(
        "deregister_started",
        wait=wait,
        dry_run=dry_run,
        budget_s=settings.budget.value,
        endpoint=endpoint_of(settings),
        service=str(settings.key),
    )
    report = Report("deregister", "failed")
    try:
        _deregister(settings, deps, registry, deadline, report, wait=wait, dry_run=dry_run)
    except KeyboardInterrupt as exc:
        raise _interrupted(exc, report) from None
    log.info(
        "deregister_finished",
        outcome=report.outcome,
        ok=report.ok,
        watchers=report.data.get("watchers"),
        error=str(report.error) if report.error else None,
    )
    return report


def _interrupted(exc: KeyboardInterrupt, report: Report) -> Interrupted:
    """What a signal left behind: a manual drain stopped after the write leaves the instance disabled."""
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    how = f"interrupted by {signal.Signals(signum).name}"
    write = report.data.get("write")
    where = f"{report.data.get('endpoint')} in {report.data.get('service')}"
    if write is None:
        message = f"{how} before anything was written"
    elif write == "sent":
        message = f"{how} while disabling {where}: it may be left disabled; run `prestop-agent register` to undo"
    else:
        message = f"{how}: {where} is left disabled; run `prestop-agent register` to put it back"
    log.warning("deregister_interrupted", signal=signal.Signals(signum).name, write=write, message=message)
    return Interrupted(signum, message)


def _deregister(
    settings: Settings, deps: Deps, registry: Registry, deadline: Deadline, report: Report, *, wait: bool, dry_run: bool
) -> None:
    try:
        located = _located(settings, registry, deadline)
        report.data.update(_instance_data(located))
        if dry_run:
            action = "disable" if located.instance.enabled else "nothing: already disabled"
            report.outcome = "dry_run"
            report.data["would"] = action
            log.info("dry_run", would=action, then="wait" if wait else "confirm")
            return
        run = _Run(settings, deps, registry, deadline)
        _disable_and_confirm(run, located, report)
        if wait:
            _wait_for_evidence(run, located, report)
        else:
            report.outcome = "disabled"
    except RegistryError as exc:
        report.error = exc
        log.error("registry_failed", error=str(exc))
        if wait and not dry_run:
            # Never worse than the sleep this replaces: keep the pod alive for the budget anyway.
            log.warning("waiting_out_budget", reason="registry_failed", remaining_s=round(deadline.remaining(), 3))
            deadline.sleep(deadline.remaining())


@dataclass(frozen=True)
class _Run:
    settings: Settings
    deps: Deps
    registry: Registry
    deadline: Deadline


def _disable_and_confirm(run: _Run, located: Located, report: Report) -> None:
    settings, deps, registry, deadline = run.settings, run.deps, run.registry, run.deadline
    if located.instance.enabled:
        report.data["write"] = "sent"
        server = registry.set_enabled(located, False, deadline)
        report.data["write"] = "accepted"
        log.info("instance_disabled", server=server, service=str(located.key), endpoint=located.instance.endpoint)
    else:
        report.data["write"] = "none: already disabled"
        log.info("instance_already_disabled", service=str(located.key), endpoint=located.instance.endpoint)
    # Proof, not the word "ok": no server may still serve it (consumer caches are the wait's business).
    proof = RegistryWatcher(registry, located.key, 0.0, deps.clock)
    confirmed, results = wait_until_gone([proof], deadline, request_timeout=settings.request_timeout.value)
    if not confirmed:
        result = results[0]
        state = "is still served" if result.verdict is Verdict.PRESENT else "was never shown to be unserved"
        raise RegistryError(
            f"the write was accepted but {located.instance.endpoint} {state} in {located.key} "
            f"({result.reason}{': ' + result.last_error if result.last_error else ''})"
        )
    log.info("instance_unserved", service=str(located.key), endpoint=located.instance.endpoint)


def _wait_for_evidence(run: _Run, located: Located, report: Report) -> None:
    settings, deadline = run.settings, run.deadline
    context = WatchContext(target_of(settings), run.deps.clock, run.registry, located.key)
    with catalog.built(settings.watcher_configs.values(), context) as watchers:
        done, results = wait_until_gone(watchers, deadline, request_timeout=settings.request_timeout.value)
    report.data["watchers"] = {r.name: r.as_dict() for r in results}
    if done:
        report.outcome = "drained"
        return
    report.outcome = "budget_exhausted"
    pending = ", ".join(f"{r.name}={r.verdict.value}({r.reason})" for r in results if r.verdict is not Verdict.GONE)
    report.error = BudgetExhausted(
        f"the budget of {settings.budget.value:g}s ran out before every watcher said gone: {pending}"
    )


# -- register --------------------------------------------------------------------------------------


def run_register(settings: Settings, deps: Deps, *, wait: bool) -> Report:
    deadline = deps.deadline(settings.register_timeout.value)
    registry = make_registry(settings, deps)
    log.info(
        "register_started",
        wait=wait,
        timeout_s=settings.register_timeout.value,
        endpoint=endpoint_of(settings),
        service=str(settings.key),
    )
    report = Report("register", "failed")
    try:
        located = _await_registration(settings, registry, deadline) if wait else _located(settings, registry, deadline)
        report.data.update(_instance_data(located))
        if located.instance.enabled:
            log.info("instance_already_enabled", service=str(located.key), endpoint=located.instance.endpoint)
        else:
            server = registry.set_enabled(located, True, deadline)
            log.info("instance_enabled", server=server, service=str(located.key), endpoint=located.instance.endpoint)
        _confirm_served(registry, located, deadline)
        report.outcome = "enabled"
    except RegistryError as exc:
        report.error = exc
        log.error("registry_failed", error=str(exc))
    log.info("register_finished", outcome=report.outcome, ok=report.ok)
    return report


def _await_registration(settings: Settings, registry: Registry, deadline: Deadline) -> Located:
    """Wait until the app has (re-)registered this ip:port, then return it as found."""
    last: RegistryError | None = None
    while True:
        try:
            return _located(settings, registry, deadline)
        except AuthError:
            raise
        except RegistryError as exc:  # not registered yet, or the server is still starting
            last = exc
        if deadline.remaining() <= REGISTER_POLL_S:
            raise InstanceNotFound(f"the app did not register within {settings.register_timeout.value:g}s: {last}")
        log.info("awaiting_registration", reason=str(last))
        deadline.sleep(REGISTER_POLL_S)


def _confirm_served(registry: Registry, located: Located, deadline: Deadline) -> None:
    while True:
        served = registry.served(located.key, deadline)
        if served.serving:
            log.info("instance_served", servers=served.serving, endpoint=located.instance.endpoint)
            return
        if deadline.expired():
            failed = f" ({'; '.join(served.failed)})" if served.failed else ""
            raise RegistryError(f"the write was accepted but {located.instance.endpoint} is still not served{failed}")
        deadline.sleep(REGISTER_POLL_S)


# -- status ----------------------------------------------------------------------------------------


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
    found = next((v.instance for v in views if v.instance is not None), None)
    if all(v.error is not None for v in views):
        report.error = RegistryError("no Nacos server answered: " + "; ".join(str(v.error) for v in views))
    if found is None:
        plan = (
            f"look up {endpoint_of(settings)} by ip:port in the namespace"
            + (" (the service name was derived from the pod name)" if settings.service_derived else "")
            + "; fail with exit 3 if no service holds it"
        )
    elif found.enabled:
        plan = f"disable {found.endpoint} in {key} (enabled=false, weight {found.weight:g} kept), then wait"
    else:
        plan = f"nothing to write: {found.endpoint} is already disabled; confirm and wait"
    report.data["deregister_would"] = plan
    report.data["watchers"] = _watcher_verdicts(settings, deps, registry, key, deadline)
    return report


def _watcher_verdicts(
    settings: Settings, deps: Deps, registry: Registry, key: ServiceKey, deadline: Deadline
) -> dict[str, object]:
    context = WatchContext(target_of(settings), deps.clock, registry, key)
    verdicts: dict[str, object] = {}
    for name, config in settings.watcher_configs.items():
        try:
            with contextlib.closing(config.build(context)) as watcher:
                obs = watcher.poll(deps.clock.monotonic(), deadline.cap(settings.request_timeout.value))
            verdicts[name] = {"verdict": obs.verdict.value, "reason": obs.reason, **dict(obs.details)}
        except PrestopError as exc:
            verdicts[name] = {"verdict": Verdict.UNKNOWN.value, "reason": "error", "error": str(exc)}
    return verdicts
