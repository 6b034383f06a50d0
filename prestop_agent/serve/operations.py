"""Sidecar mode: the agent as a small HTTP server that the app container's ``preStop.httpGet`` calls.

The kubelet runs a ``preStop.httpGet`` hook against the pod IP and holds SIGTERM until the
answer arrives, so a sidecar sharing the pod's network namespace can drain any app, whatever
its image. Endpoints (paths as defaults):

    GET  /prestop   exactly ``deregister --wait``, under the same budget, counted from the first
                    call's arrival; answers when done. Later calls join the running drain, or get
                    its result again once it has finished. 200 drained · 502 registry failed ·
                    504 budget ran out · 500 unexpected error.
    GET  /status    what ``status --json`` prints. 200, or 502 when no server answered.
    POST /register  what ``register`` does (``?wait=true`` for ``register --wait``); resets the
                    finished drain so a later /prestop drains again. 409 while a drain or another
                    register runs. ``GET /register`` only with PRESTOP_SERVE_REGISTER_GET=true.
    GET  /healthz   200 while the server runs (for the sidecar's own startup/readiness probe).

Callers: /prestop, /register and /status are answered only for the node (HOST_IP, where the
kubelet calls from), loopback, and PRESTOP_SERVE_ALLOW_FROM; /prestop and /register also need
the PRESTOP_SERVE_TOKEN header value when one is set. Everything else gets 403, logged with the
source. /healthz answers anyone and reveals nothing.

Idle, the server blocks in one ``select`` with no timeout: no thread wakes up until a
connection or a signal arrives. SIGTERM/SIGINT close the listener, let a running drain finish
(it is bounded by its budget), give other requests up to a second, and exit 0.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import os
import selectors
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from prestop_agent.agent import Deps, Report, run_deregister, run_register, run_status
from prestop_agent.clock import Deadline, SystemClock
from prestop_agent.config import Settings
from prestop_agent.errors import BudgetExhausted, ConfigError, PrestopError, RegistryError
from prestop_agent.logs import RunClock, Secrets
from prestop_agent.source import Resolved, Source, parse_bool, parse_networks, parse_port

log = structlog.get_logger(__name__)

DEFAULT_PORT = 9911
DEFAULT_TOKEN_HEADER = "X-Prestop-Token"  # noqa: S105 - a header name, not a secret
MIN_TOKEN_LENGTH = 16
# /prestop answers at the latest this long after budget end, even if the drain thread is stuck.
ANSWER_GRACE_S = 0.5
# On SIGTERM, requests other than a running drain get this long to finish.
SHUTDOWN_LINGER_S = 1.0
# A drain waits at most this long for a register it cancelled to stop sending.
REGISTER_STOP_WAIT_S = 2.0
REQUEST_READ_TIMEOUT_S = 10.0

Command = Callable[[Settings, Deps], Report]
# (command, when the operation started on the monotonic clock, its clock, wait out the budget on a crash)
Runner = Callable[[Command, float, SystemClock, bool], Report]


# -- settings --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServeConfig:
    """The sidecar's own settings (the pod identity and Nacos settings stay in ``Settings``)."""

    port: Resolved[int]
    bind: Resolved[str]
    prestop_path: Resolved[str]
    token: Resolved[str] | None = field(repr=False)
    token_header: Resolved[str]
    allow_any: bool
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
    register_get: Resolved[bool]

    def describe(self) -> dict[str, object]:
        return {
            "listen": f"{self.bind.value or '*'}:{self.port.value}",
            "prestop_path": self.prestop_path.value,
            # (key names avoid "token": the log scrubber masks such keys whatever their value)
            "shared_header_required": self.token is not None,
            "shared_header": self.token_header.value if self.token else None,
            "allow_from": "any" if self.allow_any else [str(n) for n in self.allow_from],
            "register_get": self.register_get.value,
        }


def load_config(src: Source, settings: Settings) -> ServeConfig:
    """The sidecar's settings; ConfigError (exit 2) for anything that would make it unsafe or useless."""
    port_raw = src.raw("PRESTOP_SERVE_PORT", flag="listen-port")
    port = (
        port_raw.parsed(parse_port) if port_raw is not None else Resolved(DEFAULT_PORT, "default", "PRESTOP_SERVE_PORT")
    )
    if port.value == settings.port.value:
        raise ConfigError(
            f"{port.name}={port.value} is the app's service port ({settings.port.name}); "
            f"the sidecar must listen elsewhere: set PRESTOP_SERVE_PORT, e.g. {DEFAULT_PORT}"
        )
    bind = src.string("PRESTOP_SERVE_BIND", flag="bind", default="")
    if bind.value:
        try:
            ipaddress.ip_address(bind.value)
        except ValueError:
            raise ConfigError(
                f"{bind.name}={bind.value!r} is not an IP address; use 0.0.0.0, :: or the pod IP, or unset it"
            ) from None
    path = src.string("PRESTOP_SERVE_PRESTOP_PATH", flag="prestop-path", default="/prestop")
    if not path.value.startswith("/") or path.value in ("/status", "/register", "/healthz") or "?" in path.value:
        raise ConfigError(
            f"{path.name}={path.value!r} must be a path starting with '/', without a query, "
            "and not /status, /register or /healthz"
        )
    token = src.raw("PRESTOP_SERVE_TOKEN")
    if token is not None and len(token.value) < MIN_TOKEN_LENGTH:
        raise ConfigError(
            f"PRESTOP_SERVE_TOKEN is too short ({len(token.value)} characters); use at least {MIN_TOKEN_LENGTH}, "
            "e.g. the output of `openssl rand -hex 16`"
        )
    header = src.string("PRESTOP_SERVE_TOKEN_HEADER", default=DEFAULT_TOKEN_HEADER)
    allow_any, allow_from = _allow_from(src, token is not None)
    if settings.host_ip is None and not allow_any and not allow_from:
        raise ConfigError(
            "HOST_IP is not set, so the kubelet's preStop call would be refused; add HOST_IP from the downward API "
            "(env valueFrom fieldRef: status.hostIP), or list the callers in PRESTOP_SERVE_ALLOW_FROM"
        )
    return ServeConfig(
        port=port,
        bind=bind,
        prestop_path=path,
        token=token,
        token_header=header,
        allow_any=allow_any,
        allow_from=allow_from,
        register_get=src.boolean("PRESTOP_SERVE_REGISTER_GET", default=False),
    )


def _allow_from(src: Source, has_token: bool) -> tuple[bool, tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]]:
    found = src.items("PRESTOP_SERVE_ALLOW_FROM")
    if found is None:
        return False, ()
    if any(item.lower() in ("any", "*") for item in found.value):
        if not has_token:
            raise ConfigError(
                "PRESTOP_SERVE_ALLOW_FROM=any lets anyone who reaches the pod drain it; "
                "set PRESTOP_SERVE_TOKEN too, or list the callers' addresses instead"
            )
        return True, ()
    networks = parse_networks(
        "PRESTOP_SERVE_ALLOW_FROM",
        found.value,
        example="e.g. 10.244.1.1,10.0.0.0/24, or 'any' with PRESTOP_SERVE_TOKEN",
    )
    return False, networks


# -- logging per thread ----------------------------------------------------------------------------


class ThreadRunClock(RunClock):
    """A ``RunClock`` whose deadline belongs to the current thread.

    A drain, a register and a status call can run at once in the sidecar; each logs the
    elapsed/remaining time of its own deadline, not of whichever started last.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def deadline(self) -> Deadline | None:
        value: Deadline | None = getattr(self._local, "deadline", None)
        return value

    @deadline.setter
    def deadline(self, value: Deadline | None) -> None:
        self._local.deadline = value


class _CancellableClock(SystemClock):
    """The real clock, whose sleeps end with ``RegisterCancelled`` once a drain has asked for it."""

    def __init__(self, cancel: threading.Event) -> None:
        self._cancel = cancel

    def sleep(self, seconds: float) -> None:
        if self._cancel.wait(max(0.0, seconds)):
            raise RegisterCancelled("cancelled: a drain (/prestop) started; it takes precedence")


class RegisterCancelled(RegistryError):
    """A running register gave way to a drain."""


# -- the state: one drain at a time, joined and remembered -----------------------------------------


@dataclass
class _Drain:
    started: float  # arrival of the first call, monotonic
    answer_by: float  # budget end plus ANSWER_GRACE_S
    done: threading.Event = field(default_factory=threading.Event)
    report: Report | None = None


@dataclass
class _RegisterRun:
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


def status_code_for(report: Report) -> int:
    """The HTTP status for an operation's report (the CLI's exit code table, in HTTP words)."""
    error = report.error
    if error is None:
        return 200
    if isinstance(error, BudgetExhausted):
        return 504
    if isinstance(error, RegistryError):
        return 502
    return 500


class Sidecar:
    """What the endpoints do, independent of HTTP: drains (started, joined, cached), registers, status."""

    def __init__(self, settings: Settings, runner: Runner) -> None:
        self.settings = settings
        self._runner = runner
        self._lock = threading.Lock()
        self._drain: _Drain | None = None
        self._register: _RegisterRun | None = None

    # -- drain ---------------------------------------------------------------------------------

    def drain(self, arrival: float) -> tuple[Report, str]:
        """The drain's report and how this call got it: ``started``, ``joined`` or ``cached``."""
        with self._lock:
            drain = self._drain
            if drain is None:
                how = "started"
                drain = _Drain(arrival, arrival + self.settings.budget.value + ANSWER_GRACE_S)
                self._drain = drain
                threading.Thread(
                    target=self._drain_worker, args=(drain, self._register), name="prestop-drain", daemon=True
                ).start()
            else:
                how = "cached" if drain.done.is_set() else "joined"
        if not drain.done.wait(max(0.0, drain.answer_by - time.monotonic())):
            self._give_up(drain)
        report = drain.report
        if report is None:  # cannot happen: ``done`` is set only together with a report
            raise RuntimeError("drain finished without a report")
        return report, how

    def _drain_worker(self, drain: _Drain, register: _RegisterRun | None) -> None:
        if register is not None and not register.done.is_set():
            log.warning("register_cancelled", reason="a drain started")
            register.cancel.set()
            left = drain.started + self.settings.budget.value - time.monotonic()
            register.done.wait(max(0.0, min(REGISTER_STOP_WAIT_S, left)))
        try:
            report = self._runner(
                lambda settings, deps: run_deregister(settings, deps, wait=True, dry_run=False),
                drain.started,
                SystemClock(),
                True,
            )
        except Exception as exc:  # the runner itself failed; the caller still gets an answer
            log.exception("drain_crashed")
            report = Report("deregister", "failed", error=PrestopError(f"{type(exc).__name__}: {exc}"))
        self._finish(drain, report)

    def _give_up(self, drain: _Drain) -> None:
        """The per-drain watchdog: the answer goes out by budget + grace even if the drain is stuck."""
        report = Report(
            "deregister",
            "budget_exhausted",
            error=BudgetExhausted(
                f"the drain did not finish within the budget of {self.settings.budget.value:g}s "
                "(something blocked past every timeout)"
            ),
        )
        if self._finish(drain, report):
            log.error("drain_watchdog", budget_s=self.settings.budget.value)

    def _finish(self, drain: _Drain, report: Report) -> bool:
        with self._lock:
            if drain.report is not None:
                return False  # the first answer given stays the answer
            drain.report = report
            drain.done.set()
            return True

    def drain_state(self) -> str:
        with self._lock:
            if self._register is not None:
                return "registering"
            if self._drain is None:
                return "idle"
            return "drained" if self._drain.done.is_set() else "draining"

    def running_drain_answer_by(self) -> float | None:
        with self._lock:
            drain = self._drain
            return drain.answer_by if drain is not None and not drain.done.is_set() else None

    # -- register, status ------------------------------------------------------------------------

    def register(self, arrival: float, *, wait: bool) -> Report | None:
        """Run ``register``; None (409) while a drain or another register runs."""
        with self._lock:
            if self._register is not None or (self._drain is not None and not self._drain.done.is_set()):
                return None
            self._drain = None  # the instance is back: a later /prestop must drain again
            run = _RegisterRun()
            self._register = run
        try:
            return self._runner(
                lambda settings, deps: run_register(settings, deps, wait=wait),
                arrival,
                _CancellableClock(run.cancel),
                False,
            )
        finally:
            with self._lock:
                run.done.set()
                if self._register is run:
                    self._register = None

    def status(self, arrival: float) -> Report:
        return self._runner(run_status, arrival, SystemClock(), False)


# -- HTTP ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    source: str
    allowed_source: bool


def source_allowed(
    source: str,
    *,
    host_ip: str | None,
    allow_any: bool,
    allow_from: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...],
) -> bool:
    """Loopback, the node (HOST_IP), and the configured networks; IPv4-mapped IPv6 counts as IPv4."""
    if allow_any:
        return True
    try:
        address = ipaddress.ip_address(source.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    if address.is_loopback:
        return True
    if host_ip is not None and address == ipaddress.ip_address(host_ip):
        return True
    return any(address.version == net.version and address in net for net in allow_from)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, app: SidecarApp) -> None:
        self.address_family = family
        self.app = app
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            with contextlib.suppress(OSError):
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
        super().server_bind()


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_READ_TIMEOUT_S
    server_version = "prestop-agent"
    sys_version = ""

    def do_GET(self) -> None:
        self.server.app.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.app.handle(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged by the app as structured events; the stdlib's stderr lines are not wanted."""


_Answer = tuple[int, dict[str, object], dict[str, str]]  # status, JSON body, extra headers


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    query: dict[str, str]
    source: str
    arrival: float
    header: Callable[[str], str | None]


class SidecarApp:
    """Routes, caller checks and responses; counts active requests for a clean shutdown."""

    def __init__(self, sidecar: Sidecar, config: ServeConfig, secrets: Secrets) -> None:
        self.sidecar = sidecar
        self.config = config
        self.secrets = secrets
        self._active = 0
        self._idle = threading.Condition()

    @contextlib.contextmanager
    def _tracked(self) -> Iterator[None]:
        with self._idle:
            self._active += 1
        try:
            yield
        finally:
            with self._idle:
                self._active -= 1
                self._idle.notify_all()

    @property
    def active_requests(self) -> int:
        with self._idle:
            return self._active

    def wait_idle(self, until: Callable[[], float]) -> bool:
        """Wait until no request is in flight or ``until()`` (re-read as drains start) has passed."""
        with self._idle:
            while self._active:
                left = until() - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def handle(self, request: _Handler, method: str) -> None:
        arrival = time.monotonic()
        with self._tracked():
            url = urlsplit(request.path)
            call = _Call(
                method=method,
                path=url.path,
                query={k: v[-1] for k, v in parse_qs(url.query).items()},
                source=str(request.client_address[0]),
                arrival=arrival,
                header=request.headers.get,
            )
            status, body, headers = self._route(call)
            self._respond(request, status, body, headers)
            if call.path != "/healthz":
                log.info(
                    "serve_request",
                    method=method,
                    path=call.path,
                    source=call.source,
                    status=status,
                    took_ms=round((time.monotonic() - arrival) * 1000),
                    user_agent=call.header("User-Agent"),
                )

    def _route(self, call: _Call) -> _Answer:
        if call.path == "/healthz":
            return 200, {"ok": True, "state": self.sidecar.drain_state()}, {}
        endpoints: dict[str, Callable[[_Call], _Answer]] = {
            self.config.prestop_path.value: self._prestop,
            "/register": self._register,
            "/status": self._status,
        }
        endpoint = endpoints.get(call.path)
        if endpoint is None:
            return 404, {"ok": False, "error": f"no such endpoint {call.path!r}"}, {}
        refusal = self._refusal(call, check_token=call.path != "/status")
        if refusal is not None:
            log.warning("serve_refused", path=call.path, source=call.source, reason=refusal, hint=self._hint(refusal))
            return 403, {"ok": False, "error": f"refused: {refusal}"}, {}
        return endpoint(call)

    def _prestop(self, call: _Call) -> _Answer:
        if call.method != "GET":
            return 405, {"ok": False, "error": f"use GET {call.path}"}, {"Allow": "GET"}
        report, how = self.sidecar.drain(call.arrival)
        return status_code_for(report), report.as_dict(), {"X-Prestop-Drain": how}

    def _status(self, call: _Call) -> _Answer:
        if call.method != "GET":
            return 405, {"ok": False, "error": "use GET /status"}, {"Allow": "GET"}
        report = self.sidecar.status(call.arrival)
        return status_code_for(report), report.as_dict(), {}

    def _register(self, call: _Call) -> _Answer:
        if call.method == "GET" and not self.config.register_get.value:
            hint = "use POST /register, or set PRESTOP_SERVE_REGISTER_GET=true for a postStart httpGet hook"
            return 405, {"ok": False, "error": hint}, {"Allow": "POST"}
        try:
            wait = parse_bool("wait", call.query.get("wait", "false"))
        except ConfigError as exc:
            return 400, {"ok": False, "error": str(exc)}, {}
        report = self.sidecar.register(call.arrival, wait=wait)
        if report is None:
            return 409, {"ok": False, "error": "a drain or another register is running; try again when it ends"}, {}
        return status_code_for(report), report.as_dict(), {}

    def _refusal(self, call: _Call, *, check_token: bool) -> str | None:
        cfg = self.config
        host_ip = self.sidecar.settings.host_ip.value if self.sidecar.settings.host_ip else None
        if not source_allowed(call.source, host_ip=host_ip, allow_any=cfg.allow_any, allow_from=cfg.allow_from):
            return "source not allowed"
        if check_token and cfg.token is not None:
            given = call.header(cfg.token_header.value)
            if given is None:
                return f"header {cfg.token_header.value} missing"
            if not hmac.compare_digest(given.encode(), cfg.token.value.encode()):
                return f"header {cfg.token_header.value} does not match"
        return None

    def _hint(self, refusal: str) -> str:
        if refusal == "source not allowed":
            return "if this caller is the kubelet, add its address to PRESTOP_SERVE_ALLOW_FROM"
        return f"send the PRESTOP_SERVE_TOKEN value in the {self.config.token_header.value} header"

    def _respond(self, request: _Handler, status: int, body: dict[str, object], headers: dict[str, str]) -> None:
        payload = self.secrets.scrub(json.dumps(body, default=str)).encode() + b"\n"
        try:
            request.send_response(status)
            request.send_header("Content-Type", "application/json")
            request.send_header("Content-Length", str(len(payload)))
            request.send_header("Cache-Control", "no-store")
            for name, value in headers.items():
                request.send_header(name, value)
            request.end_headers()
            request.wfile.write(payload)
        except OSError as exc:  # the caller went away (e.g. the kubelet gave up); the result stays cached
            log.warning("serve_response_lost", status=status, error=f"{type(exc).__name__}: {exc}")


# -- the process -----------------------------------------------------------------------------------


class Service:
    """The listening server, its idle-free accept loop, and the shutdown sequence."""

    def __init__(self, app: SidecarApp) -> None:
        self.app = app
        bind = app.config.bind.value
        port = app.config.port.value
        if bind:
            family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        elif socket.has_dualstack_ipv6():
            family, bind = socket.AF_INET6, "::"
        else:
            family, bind = socket.AF_INET, "0.0.0.0"  # noqa: S104 - kubelet calls the pod IP
        try:
            self.httpd = _Server((bind, port), family, app)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {bind}:{port} ({exc.strerror}); set PRESTOP_SERVE_PORT") from None
        # Accept without blocking: a connection reset between select and accept must not stall the loop.
        self.httpd.socket.setblocking(False)
        self._wake_r, self._wake_w = socket.socketpair()
        self._stopping = threading.Event()

    @property
    def port(self) -> int:
        return int(self.httpd.server_address[1])

    def stop(self) -> None:
        """Ask the accept loop to end (any thread, or a signal handler)."""
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")

    def serve(self) -> None:
        """Accept until ``stop``; then close the listener and let in-flight work end."""
        try:
            with selectors.DefaultSelector() as selector:
                selector.register(self.httpd, selectors.EVENT_READ, "accept")
                selector.register(self._wake_r, selectors.EVENT_READ, "wake")
                while not self._stopping.is_set():
                    ready = [key.data for key, _ in selector.select()]  # blocks: nothing runs while idle
                    if "wake" in ready or self._stopping.is_set():
                        break
                    self.httpd.handle_request()
        finally:
            self.httpd.server_close()  # new connections are refused from here on
        self._finish_in_flight()

    def _finish_in_flight(self) -> None:
        linger_until = time.monotonic() + SHUTDOWN_LINGER_S

        def until() -> float:
            answer_by = self.app.sidecar.running_drain_answer_by()
            return max(linger_until, answer_by + 0.1) if answer_by is not None else linger_until

        draining = self.app.sidecar.running_drain_answer_by() is not None
        log.info("serve_stopping", drain_running=draining)
        finished = self.app.wait_idle(until)
        log.info("serve_stopped", in_flight_finished=finished)

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()


def run(service: Service, *, started: float) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly; the process's exit code."""
    signals = 0

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal signals
        signals += 1
        log.info("serve_signal", signal=signal.Signals(signum).name, count=signals)
        if signals > 1:  # asked twice: stop now, without waiting for in-flight work
            os._exit(0)
        service.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    cfg = service.app.config
    settings = service.app.sidecar.settings
    log.info(
        "serve_started",
        port=service.port,
        startup_ms=round((time.monotonic() - started) * 1000),
        endpoint=f"{settings.pod_ip.value}:{settings.port.value}",
        service=str(settings.key),
        budget_s=settings.budget.value,
        host_ip=settings.host_ip.value if settings.host_ip else None,
        **cfg.describe(),
    )
    try:
        service.serve()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        service.close()
    return 0
