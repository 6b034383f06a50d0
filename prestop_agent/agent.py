"""What the commands do, as plain functions over Settings and injected dependencies.

Nothing here reads the environment or exits the process: the CLI builds ``Settings`` and
``Deps``, calls one of these, and maps the report's error to an exit code.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.config import Settings
from prestop_agent.drain import CONSUMERS_OF_AN_EMPTY_SERVICE, DrainSet, last_instances
from prestop_agent.dubbo import is_dubbo, qos_command
from prestop_agent.errors import AuthError, BudgetExhausted, InstanceNotFound, Interrupted, RegistryError
from prestop_agent.nacos.model import Registration
from prestop_agent.nacos.registry import Registry
from prestop_agent.run import (
    Deps,
    Report,
    endpoint_of,
    find_registrations,
    make_registry,
    primary,
    registrations_data,
    target_of,
)
from prestop_agent.status import run_status
from prestop_agent.wait import WatchResult, wait_until_gone
from prestop_agent.watchers import catalog
from prestop_agent.watchers.base import Verdict, WatchContext, Watcher
from prestop_agent.watchers.registry import RegistryWatcher

__all__ = ["Deps", "Report", "run_deregister", "run_register", "run_status"]

log = structlog.get_logger(__name__)

REGISTER_POLL_S = 1.0
# After the app's first registration is back, how long `register --wait` looks for more (a Dubbo
# provider registers after the web port, within a second or two) before it stops looking.
REGISTER_SETTLE_S = 5.0
# How long Dubbo may take to leave Nacos after its QoS `offline` answered OK (observed: under 1 s).
DUBBO_SETTLE_S = 5.0


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
        scope=settings.scope.value,
    )
    if wait and "registry" not in settings.wait_for.value:
        log.warning(
            "drain_not_held",
            reason="registry is not in PRESTOP_WAIT_FOR: a registration that comes back "
            "during the wait is not taken out again",
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
        reasserted=report.data.get("reasserted"),
        error=str(report.error) if report.error else None,
    )
    return report


def _interrupted(exc: KeyboardInterrupt, report: Report) -> Interrupted:
    """What a signal left behind: a manual drain stopped after the write leaves the registrations disabled."""
    signum = exc.signum if isinstance(exc, Interrupted) else signal.SIGINT
    how = f"interrupted by {signal.Signals(signum).name}"
    write = report.data.get("write")
    disabled = report.data.get("disabled")
    where = ", ".join(disabled) if isinstance(disabled, list) and disabled else f"{report.data.get('endpoint')}"
    if write is None:
        message = f"{how} before anything was written"
    elif write == "sent":
        message = f"{how} while disabling {where}: it may be left disabled; run `prestop-agent register` to undo"
    else:
        message = f"{how}: {where} left disabled; run `prestop-agent register` to put it back"
    log.warning("deregister_interrupted", signal=signal.Signals(signum).name, write=write, message=message)
    return Interrupted(signum, message)


@dataclass(frozen=True)
class _Run:
    settings: Settings
    deps: Deps
    registry: Registry
    deadline: Deadline


def _deregister(
    settings: Settings, deps: Deps, registry: Registry, deadline: Deadline, report: Report, *, wait: bool, dry_run: bool
) -> None:
    try:
        found = find_registrations(settings, registry, deadline)
        report.data.update(registrations_data(settings, found))
        registrations = found.registrations
        last = last_instances(registrations, found.listings)
        keep = settings.last_instance.value == "keep"
        if last:
            log.warning(
                "last_instance",
                registrations=[str(r) for r in last],
                action="kept until another instance is served" if keep else "drained",
                consumers=None if keep else CONSUMERS_OF_AN_EMPTY_SERVICE,
            )
        report.data["last_instance"] = [str(r) for r in last]
        kept = last if keep else []
        if dry_run:
            report.outcome = "dry_run"
            report.data["would"] = {str(r): _would(r, kept) for r in registrations}
            log.info("dry_run", would=report.data["would"], then="wait" if wait else "confirm")
            return
        run = _Run(settings, deps, registry, deadline)
        out = [r for r in registrations if r not in kept]
        if not wait:
            _disable_and_confirm(run, out, report)
            report.outcome = "disabled"
            return
        held = DrainSet(registry, [*out, *kept], kept=kept, holding=True)
        context = WatchContext(target_of(settings), deps.clock, registry, held)
        # Built before the write: the traffic watcher's first look dates the callers' requests before it,
        # and callers that follow the registry's pushes stop within a second of it.
        with catalog.built(settings.watcher_configs.values(), context) as watchers:
            # The traffic watcher's gaps are measured at its polls: it keeps polling while the proof runs.
            _disable_and_confirm(run, out, report, observers=[w for w in watchers if w.name == "traffic"])
            _wait_for_evidence(run, watchers, held, report)
    except RegistryError as exc:
        report.error = exc
        log.error("registry_failed", error=str(exc))
        if wait and not dry_run:
            # Never worse than the sleep this replaces: keep the pod alive for the budget anyway.
            log.warning("waiting_out_budget", reason="registry_failed", remaining_s=round(deadline.remaining(), 3))
            deadline.sleep(deadline.remaining())


def _would(registration: Registration, kept: list[Registration]) -> str:
    if registration in kept:
        return "keep: the last enabled, healthy instance of its service"
    return "disable" if registration.instance.enabled else "nothing: already disabled"


def _disable_and_confirm(
    run: _Run, registrations: list[Registration], report: Report, *, observers: Sequence[Watcher] = ()
) -> None:
    settings, registry, deadline = run.settings, run.registry, run.deadline
    for done in (r for r in registrations if not r.instance.enabled):
        log.info("instance_already_disabled", service=str(done.key), endpoint=done.instance.endpoint)
    to_write = [r for r in registrations if r.instance.enabled]
    if settings.dubbo_qos.value and any(is_dubbo(r.instance) for r in to_write):
        to_write = _dubbo_offline(run, to_write)
    disabled: list[str] = []
    failed: list[str] = []
    report.data["disabled"] = disabled
    for index, registration in enumerate(to_write):
        report.data["write"] = "sent"
        key, endpoint = str(registration.key), registration.instance.endpoint
        # A server that keeps failing must not spend the whole budget on the first write: each write
        # may use its share of what is left (the last one all of it).
        now = deadline.clock.monotonic()
        share = Deadline(
            deadline.clock, deadline.started, min(deadline.end, now + deadline.remaining() / (len(to_write) - index))
        )
        try:
            server = registry.write(registration, False, share)
        except AuthError:
            raise
        except RegistryError as exc:  # the others still go out: one lost write must not keep them all in
            failed.append(f"{registration}: {exc}")
            log.error("instance_disable_failed", service=key, endpoint=endpoint, error=str(exc))
            continue
        disabled.append(str(registration))
        log.info("instance_disabled", server=server, service=key, endpoint=endpoint)
    report.data["write"] = "accepted" if disabled else "none: already disabled"
    if failed:
        raise RegistryError(f"{len(failed)} of {len(to_write)} disables failed: " + "; ".join(failed))
    if not registrations:
        return  # every registration is kept as the last instance of its service: nothing to prove yet
    # Proof, not the word "ok": no server may still serve any of them (consumer caches are the wait's business).
    proof = RegistryWatcher(DrainSet(registry, registrations), 0.0, run.deps.clock)
    confirmed, results = wait_until_gone(
        [proof], deadline, request_timeout=settings.request_timeout.value, observers=observers
    )
    if not confirmed:
        raise RegistryError(_not_confirmed(registrations, results[0], proof))
    log.info("instance_unserved", registrations=[str(r) for r in registrations])


def _not_confirmed(registrations: list[Registration], result: WatchResult, proof: RegistryWatcher) -> str:
    state = "is still served" if result.verdict is Verdict.PRESENT else "was never shown to be unserved"
    serving = proof.last.details.get("serving") if proof.last is not None else None
    names = list(serving) if isinstance(serving, dict) and serving else [str(r) for r in registrations]
    what = names[0] if len(names) == 1 else f"one of {', '.join(names)}"
    cause = f"{result.reason}{': ' + result.last_error if result.last_error else ''}"
    return f"the write was accepted but {what} {state} ({cause})"


def _dubbo_offline(run: _Run, to_write: list[Registration]) -> list[Registration]:
    """Ask Dubbo to unregister; the registrations it took out need no write. Returns those that still do."""
    settings, deadline = run.settings, run.deadline
    answer = qos_command(
        run.deps.http, settings.dubbo_qos_port.value, "offline", deadline, settings.request_timeout.value
    )
    dubbo = [r for r in to_write if is_dubbo(r.instance)]
    if not answer.ok:
        log.warning("dubbo_qos_failed", answer=answer.detail, fallback="enabled=false in Nacos")
        return to_write
    settle = Deadline.after(run.deps.clock, min(DUBBO_SETTLE_S, deadline.remaining() / 4))
    proof = RegistryWatcher(DrainSet(run.registry, dubbo), 0.0, run.deps.clock)
    wait_until_gone([proof], settle, request_timeout=settings.request_timeout.value)
    try:
        still = DrainSet(run.registry, dubbo).check(deadline).served
    except AuthError:
        raise
    except RegistryError as exc:
        log.warning("dubbo_qos_unproven", error=str(exc), fallback="enabled=false in Nacos")
        return to_write
    left = {r.identity for r in still}
    log.info(
        "dubbo_offline",
        unregistered=[str(r) for r in dubbo if r.identity not in left],
        still_served=[str(r) for r in still],
    )
    return [r for r in to_write if not is_dubbo(r.instance) or r.identity in left]


def _wait_for_evidence(run: _Run, watchers: Sequence[Watcher], held: DrainSet, report: Report) -> None:
    settings, deadline = run.settings, run.deadline
    done, results = wait_until_gone(watchers, deadline, request_timeout=settings.request_timeout.value)
    report.data["watchers"] = {r.name: r.as_dict() for r in results}
    report.data["reasserted"] = held.reasserted
    _last_instance_outcome(report, {r.name: r for r in results})
    if done:
        report.outcome = "drained"
        return
    report.outcome = "budget_exhausted"
    pending = ", ".join(f"{r.name}={r.verdict.value}({r.reason})" for r in results if r.verdict is not Verdict.GONE)
    report.error = BudgetExhausted(
        f"the budget of {settings.budget.value:g}s ran out before every watcher said gone: {pending}"
    )


def _last_instance_outcome(report: Report, results: dict[str, WatchResult]) -> None:
    """Which it was, for a service left without instances: did its consumers stop calling, or keep a stale list?"""
    last = report.data.get("last_instance")
    if not last:
        return
    traffic = results.get("traffic")
    if traffic is None:
        consumers = "unknown: add traffic to PRESTOP_WAIT_FOR to see whether they kept calling"
    elif traffic.verdict is Verdict.GONE:
        consumers = "stopped calling this pod: they found no provider (or another one)"
    else:
        consumers = "kept calling this pod: they hold a stale list (empty-push protection) until it stops"
    log.warning("last_instance_outcome", registrations=last, consumers=consumers)


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
        scope=settings.scope.value,
    )
    report = Report("register", "failed")
    try:
        if settings.dubbo_qos.value:
            qos_command(deps.http, settings.dubbo_qos_port.value, "online", deadline, settings.request_timeout.value)
        registrations = (
            _await_registration(settings, registry, deadline)
            if wait
            else _registrations(settings, registry, deadline, report)
        )
        restored = _restore(settings, registry, registrations, deadline)
        if wait:
            restored += _settle(settings, registry, deadline, restored)
        _confirm_served(registry, [primary(settings, registrations), *restored], deadline)
        report.data["enabled"] = [str(r) for r in restored]
        report.outcome = "enabled"
    except RegistryError as exc:
        report.error = exc
        log.error("registry_failed", error=str(exc))
    log.info("register_finished", outcome=report.outcome, ok=report.ok)
    return report


def _registrations(
    settings: Settings, registry: Registry, deadline: Deadline, report: Report | None = None
) -> tuple[Registration, ...]:
    found = find_registrations(settings, registry, deadline)
    if report is not None:
        report.data.update(registrations_data(settings, found))
    return found.registrations


def _restore(
    settings: Settings, registry: Registry, registrations: tuple[Registration, ...], deadline: Deadline
) -> list[Registration]:
    """Enable exactly what a drain disabled: the marked registrations, and the one the settings name.

    A registration disabled without the mark was taken out by someone else (an operator, another
    tool): it stays out, and the log says so.
    """
    named = primary(settings, registrations)
    restored: list[Registration] = []
    for registration in registrations:
        if registration.instance.enabled:
            if registration.same_as(named):
                log.info("instance_already_enabled", service=str(named.key), endpoint=named.instance.endpoint)
            continue
        if not (registration.instance.marked or registration.same_as(named)):
            log.warning("registration_left_disabled", registration=str(registration), reason="not disabled by a drain")
            continue
        server = registry.write(registration, True, deadline)
        restored.append(registration)
        key, endpoint = str(registration.key), registration.instance.endpoint
        log.info("instance_enabled", server=server, service=key, endpoint=endpoint)
    return restored


def _settle(
    settings: Settings, registry: Registry, deadline: Deadline, restored: list[Registration]
) -> list[Registration]:
    """Registrations that come back a little after the first one (the restart trap keeps them disabled too)."""
    more: list[Registration] = []
    quiet_until = deadline.clock.monotonic() + REGISTER_SETTLE_S
    while deadline.clock.monotonic() < quiet_until and deadline.remaining() > REGISTER_POLL_S:
        deadline.sleep(REGISTER_POLL_S)
        done = [*restored, *more]
        fresh = [
            r
            for r in _registrations(settings, registry, deadline)
            if not r.instance.enabled and r.instance.marked and not any(r.same_as(d) for d in done)
        ]
        if fresh:
            more += _restore(settings, registry, tuple(fresh), deadline)
            quiet_until = deadline.clock.monotonic() + REGISTER_SETTLE_S
    return more


def _await_registration(settings: Settings, registry: Registry, deadline: Deadline) -> tuple[Registration, ...]:
    """Wait until the app has (re-)registered this ip:port, then return the registrations as found."""
    last: RegistryError | None = None
    while True:
        try:
            registrations = _registrations(settings, registry, deadline)
            if any(r.instance.port == settings.port.value for r in registrations):
                return registrations
            last = InstanceNotFound(f"nothing registered at {endpoint_of(settings)} yet")
        except AuthError:
            raise
        except RegistryError as exc:  # not registered yet, or the server is still starting
            last = exc
        if deadline.remaining() <= REGISTER_POLL_S:
            raise InstanceNotFound(f"the app did not register within {settings.register_timeout.value:g}s: {last}")
        log.info("awaiting_registration", reason=str(last))
        deadline.sleep(REGISTER_POLL_S)


def _confirm_served(registry: Registry, registrations: list[Registration], deadline: Deadline) -> None:
    unique = list({r.identity: r for r in registrations}.values())
    while True:
        check = DrainSet(registry, unique).check(deadline)
        unserved = [r for r in unique if r not in check.served]
        if not unserved:
            log.info("instance_served", registrations=[str(r) for r in unique])
            return
        if deadline.expired():
            failed = f" ({'; '.join(check.serving.failed)})" if check.serving.failed else ""
            names = ", ".join(str(r) for r in unserved)
            raise RegistryError(f"the write was accepted but {names} is still not served{failed}")
        deadline.sleep(REGISTER_POLL_S)
