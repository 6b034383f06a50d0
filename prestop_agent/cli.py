"""The command line: parse, build Settings once, call the agent, map the outcome to an exit code.

Exit codes (the README repeats this table):
    0  done (with --wait: the drain is confirmed by every watcher; check: every timing rule holds)
    1  check only: a timing rule in the manifests is violated
    2  usage or configuration error; nothing was sent
    3  the registry operation failed (after --wait has waited out the budget)
    4  the budget ran out before the drain was confirmed
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Annotated

import httpx
import structlog
import typer

from prestop_agent import PROCESS_STARTED, __version__
from prestop_agent.agent import Deps, Report, run_deregister, run_register, run_status
from prestop_agent.clock import Clock, SystemClock
from prestop_agent.config import Settings, load
from prestop_agent.errors import BudgetExhausted, ConfigError, Interrupted, PrestopError, RegistryError
from prestop_agent.flags import (
    BIND,
    BUDGET,
    CONSUMER_CACHE,
    INSTANCE,
    LISTEN_PORT,
    SCOPE,
    TIMEOUT,
    WAIT_FOR,
    Flags,
    with_flags,
)
from prestop_agent.logs import RunClock, Secrets, configure, is_terminal, open_pid1_stdout
from prestop_agent.source import Source

EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_REGISTRY = 3
EXIT_BUDGET = 4
EXIT_VIOLATIONS = 1  # `check` only: a timing rule in the manifests is violated

# The one table from errors to exit codes; the first matching class wins.
EXIT_CODES: tuple[tuple[type[PrestopError], int], ...] = (
    (ConfigError, EXIT_CONFIG),
    (BudgetExhausted, EXIT_BUDGET),
    (RegistryError, EXIT_REGISTRY),
    (PrestopError, EXIT_REGISTRY),
)

# The watchdog ends the process this long after the budget if something blocks past every timeout.
WATCHDOG_GRACE_S = 0.5

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    rich_markup_mode=None,  # plain help and usage errors: rich is never needed (see launch.py)
    help="Take this pod out of Nacos (and its load balancers), prove it, and exit within the grace budget.",
)


def exit_code_for(error: PrestopError | None) -> int:
    if error is None:
        return EXIT_OK
    for cls, code in EXIT_CODES:
        if isinstance(error, cls):
            return code
    return EXIT_REGISTRY


def _version(value: bool) -> None:
    if value:
        typer.echo(f"prestop-agent {__version__}")
        raise typer.Exit(EXIT_OK)


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """prestop-agent: drain a pod on evidence, never past its budget."""


JsonOut = Annotated[bool, typer.Option("--json", help="Print the result as one JSON object on stdout.")]


@contextlib.contextmanager
def _bad_input_exits() -> Iterator[None]:
    """Bad input ends here: one line naming what is wrong and how to fix it, exit 2, nothing sent."""
    try:
        yield
    except ConfigError as exc:
        typer.echo(f"prestop-agent: {exc}", err=True)
        raise typer.Exit(EXIT_CONFIG) from None


def _start_logging(settings: Settings, run: RunClock, *secret_values: str) -> Secrets:
    """The secrets every output is scrubbed of, and the log setup: the same for every command."""
    secrets = Secrets()
    for value in (settings.password.value if settings.password else None, *secret_values):
        secrets.add(value)
    configure(
        stream=sys.stderr,
        console=is_terminal(sys.stderr),
        secrets=secrets,
        run=run,
        tee=open_pid1_stdout(settings.log_to_pid1.value, pid=os.getpid()),
    )
    return secrets


def _started() -> float:
    """When the budget starts counting: at process start when run as a program, else now."""
    return _process_started if _process_started is not None else SystemClock().monotonic()


def _execute(
    flags: Flags,
    command: Callable[[Settings, Deps], Report],
    *,
    json_out: bool,
    watchdog_s: Callable[[Settings], float],
    wait_out_on_crash: bool,
) -> None:
    with _bad_input_exits():
        settings = load(Source(os.environ, flags))
    run = RunClock()
    secrets = _start_logging(settings, run)
    clock = SystemClock()
    started = _started()
    watchdog = _start_watchdog(watchdog_s(settings) - (clock.monotonic() - started))
    try:
        with _interruptible():
            report = _run_command(settings, command, clock, secrets, run, started, wait_out_on_crash=wait_out_on_crash)
        _print(report, json_out=json_out, secrets=secrets)
    except KeyboardInterrupt as exc:
        interrupted = exc if isinstance(exc, Interrupted) else Interrupted(signal.SIGINT)
        typer.echo(secrets.net(f"prestop-agent: {interrupted.message}"), err=True)
        raise typer.Exit(128 + interrupted.signum) from None
    finally:
        watchdog.cancel()
    raise typer.Exit(exit_code_for(report.error))


@contextlib.contextmanager
def _interruptible() -> Iterator[None]:
    """SIGTERM and SIGINT raise ``Interrupted``, so a stopped manual run can say what it left behind."""

    def interrupt(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum, f"interrupted by {signal.Signals(signum).name}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {signum: signal.signal(signum, interrupt) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _run_command(
    settings: Settings,
    command: Callable[[Settings, Deps], Report],
    clock: Clock,
    secrets: Secrets,
    run: RunClock,
    started: float,
    *,
    wait_out_on_crash: bool,
) -> Report:
    with httpx.Client(verify=_tls(settings), trust_env=False, follow_redirects=False) as http:
        deps = Deps(clock=clock, http=http, secrets=secrets, run=run, started=started)
        try:
            report = command(settings, deps)
        except Exception as exc:  # never leave the pod worse off than a sleep, even on a bug
            structlog.get_logger(__name__).exception("agent_crashed", error=f"{type(exc).__name__}: {exc}")
            if wait_out_on_crash and run.deadline is not None:
                run.deadline.sleep(run.deadline.remaining())
            report = Report("crash", "failed", error=PrestopError(f"{type(exc).__name__}: {exc}"))
    return report


def _tls(settings: Settings) -> ssl.SSLContext:
    if settings.ca_bundle is None and all(server.scheme == "http" for server in settings.servers.value):
        # No server speaks TLS: skip loading the system's trust store, 40 to 90 ms of every start here.
        # A context with no trust anchors refuses every certificate, so an https URL could only fail closed.
        return ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context = ssl.create_default_context()
    if settings.ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=settings.ca_bundle.value)
        except (OSError, ssl.SSLError) as exc:
            typer.echo(f"prestop-agent: PRESTOP_CA_BUNDLE={settings.ca_bundle.value!r} is unreadable ({exc})", err=True)
            raise typer.Exit(EXIT_CONFIG) from None
    return context


def _start_watchdog(seconds: float) -> threading.Timer:
    """The last line of defence for the budget: a blocked DNS lookup has no timeout of its own."""

    def fire() -> None:
        sys.stderr.write(json.dumps({"event": "watchdog_exit", "level": "error", "after_s": round(seconds, 3)}) + "\n")
        sys.stderr.flush()
        os._exit(EXIT_BUDGET)

    timer = threading.Timer(max(0.0, seconds), fire)
    timer.daemon = True
    timer.start()
    return timer


def _print(report: Report, *, json_out: bool, secrets: Secrets) -> None:
    if json_out:
        typer.echo(secrets.dumps(report.as_dict()))
        return
    if report.command == "status":
        typer.echo(secrets.net(_status_text(report)))
    line = f"{report.command}: {report.outcome}"
    if report.error is not None:
        line += f": {report.error}"
    typer.echo(secrets.net(line), err=report.error is not None)


def _view_text(view: dict[str, object]) -> str:
    head = f"{view.get('server')} (api {view.get('api') or '?'}):"
    if view.get("error"):
        return f"{head} error: {view['error']}"
    instance = view.get("instance")
    if not isinstance(instance, dict):
        return f"{head} instance not found in this service"
    fields = " ".join(f"{k}={instance[k]}" for k in ("cluster", "enabled", "healthy", "weight") if k in instance)
    return f"{head} {fields} served={view.get('served')}"


def _registration_text(registration: dict[str, object]) -> str:
    head = f"{registration.get('group')}@@{registration.get('service')} {registration.get('endpoint')}:"
    fields = " ".join(
        f"{k}={registration[k]}" for k in ("cluster", "enabled", "healthy", "weight", "ephemeral") if k in registration
    )
    marked = " (disabled by a drain)" if registration.get("marked") else ""
    return f"{head} {fields} served_by={registration.get('served_by')}{marked}"


def _status_text(report: Report) -> str:
    data = report.data
    lines = ["settings:"]
    settings = data.get("settings")
    if isinstance(settings, dict):
        for name, entry in settings.items():
            lines.append(f"  {name:18} {entry.get('value')!s:40} ({entry.get('source')})")
    lines.append("servers:")
    views = data.get("servers")
    for view in views if isinstance(views, list) else []:
        lines.append(f"  {_view_text(view)}")
    lines.append("registrations:")
    registrations = data.get("registrations")
    for registration in registrations if isinstance(registrations, list) else []:
        lines.append(f"  {_registration_text(registration)}")
    if data.get("registrations_error"):
        lines.append(f"  error: {data['registrations_error']}")
    last = data.get("last_instance")
    if isinstance(last, list) and last:
        lines.append(
            "last instance: " + ", ".join(str(item) for item in last) + " (draining leaves the service no "
            "enabled, healthy instance; PRESTOP_LAST_INSTANCE=keep keeps it until another is served)"
        )
    lines.append(f"deregister would: {data.get('deregister_would')}")
    lines.append("watchers:")
    watchers = data.get("watchers")
    if isinstance(watchers, dict):
        for name, verdict in watchers.items():
            lines.append(f"  {name}: {verdict}")
    return "\n".join(lines)


# -- commands --------------------------------------------------------------------------------------


@app.command()
@with_flags(*INSTANCE, SCOPE, BUDGET, WAIT_FOR, CONSUMER_CACHE)
def deregister(
    flags: Flags,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for evidence that traffic has left.")] = True,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read and report; send no write.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Take this pod's instance out of Nacos; with --wait, wait until the evidence says traffic has left."""
    _execute(
        flags,
        lambda settings, deps: run_deregister(settings, deps, wait=wait, dry_run=dry_run),
        json_out=json_out,
        watchdog_s=lambda s: s.budget.value + WATCHDOG_GRACE_S,
        wait_out_on_crash=wait and not dry_run,
    )


@app.command()
@with_flags(*INSTANCE, SCOPE, TIMEOUT)
def register(
    flags: Flags,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="First wait until the app has registered.")] = False,
    json_out: JsonOut = False,
) -> None:
    """Put the instance back (enabled=true); with --wait, first wait until the app has (re-)registered it."""
    _execute(
        flags,
        lambda settings, deps: run_register(settings, deps, wait=wait),
        json_out=json_out,
        watchdog_s=lambda s: s.register_timeout.value + WATCHDOG_GRACE_S,
        wait_out_on_crash=False,
    )


@app.command()
@with_flags(*INSTANCE, SCOPE, WAIT_FOR)
def status(flags: Flags, json_out: JsonOut = False) -> None:
    """Show the resolved identity, each server's view of the instance, and what deregister would do."""
    _execute(
        flags,
        run_status,
        json_out=json_out,
        watchdog_s=lambda s: min(s.budget.value, 3 * s.request_timeout.value) + 5.0,
        wait_out_on_crash=False,
    )


@app.command()
@with_flags(*INSTANCE, SCOPE, BUDGET, WAIT_FOR, CONSUMER_CACHE, LISTEN_PORT, BIND)
def serve(flags: Flags) -> None:
    """Sidecar mode: serve /prestop (deregister --wait), /status and /register for a preStop httpGet hook."""
    # Only this command needs the HTTP server.
    from prestop_agent.serve.listener import Listener, run
    from prestop_agent.serve.operations import Operations, ThreadRunClock
    from prestop_agent.serve.routes import Routes
    from prestop_agent.serve.settings import load_config

    started = _started()
    src = Source(os.environ, flags)
    with _bad_input_exits():
        settings = load(src)
        config = load_config(src, settings)
    _tls(settings)  # an unreadable CA bundle is a configuration error now, not at the first drain
    run_clock = ThreadRunClock()
    secrets = _start_logging(settings, run_clock, *([config.token.value] if config.token else []))

    # No process-wide watchdog here: the budget applies per drain, and the sidecar answers each
    # /prestop by its budget's end (plus a fraction of a second) even if the drain is stuck.
    def runner(
        command: Callable[[Settings, Deps], Report], op_started: float, clock: Clock, crash_wait: bool
    ) -> Report:
        return _run_command(settings, command, clock, secrets, run_clock, op_started, wait_out_on_crash=crash_wait)

    with _bad_input_exits():
        listener = Listener(Routes(Operations(settings, runner, SystemClock()), config, secrets))
    raise typer.Exit(run(listener, started=started))


@app.command()
def check(
    files: Annotated[list[str], typer.Argument(help="Manifest files or directories (YAML, multi-document).")],
) -> None:
    """Check the shutdown timings of Deployments, StatefulSets and DaemonSets: grace period, preStop wait, budget, LB.

    Prints the timeline derived per container, then one line per violated rule with its fix. Exit 0 when every
    rule holds, 1 on any violation, 2 for unreadable or invalid input.
    """
    from pathlib import Path

    from prestop_agent.check import render, run_check

    with _bad_input_exits():
        report = run_check([Path(f) for f in files])
    typer.echo(render(report))
    raise typer.Exit(EXIT_OK if report.ok else EXIT_VIOLATIONS)


# Set by ``main`` (the installed command and ``python -m``): the budget then counts from process start.
_process_started: float | None = None


def main() -> None:
    global _process_started  # noqa: PLW0603 - one value, set once at the process entry point
    _process_started = PROCESS_STARTED
    app(prog_name="prestop-agent")
