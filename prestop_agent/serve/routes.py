"""HTTP: routes, caller checks and responses; counts the requests in flight for a clean shutdown."""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, urlsplit

import structlog

from prestop_agent.agent import Report
from prestop_agent.errors import BudgetExhausted, ConfigError, RegistryError
from prestop_agent.logs import Secrets
from prestop_agent.serve.operations import Operations
from prestop_agent.serve.settings import ServeConfig
from prestop_agent.source import parse_bool

log = structlog.get_logger("prestop_agent.serve")


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


_Answer = tuple[int, dict[str, object], dict[str, str]]  # status, JSON body, extra headers


@dataclass(frozen=True)
class _Call:
    method: str
    path: str
    query: dict[str, str]
    source: str
    arrival: float
    header: Callable[[str], str | None]


class Routes:
    """Routes, caller checks and responses; counts active requests for a clean shutdown."""

    def __init__(self, operations: Operations, config: ServeConfig, secrets: Secrets) -> None:
        self.operations = operations
        self.clock = operations.clock
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
                left = until() - self.clock.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def handle(self, request: BaseHTTPRequestHandler, method: str) -> None:
        arrival = self.clock.monotonic()
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
                    took_ms=round((self.clock.monotonic() - arrival) * 1000),
                    user_agent=call.header("User-Agent"),
                )

    def _route(self, call: _Call) -> _Answer:
        if call.path == "/healthz":
            return 200, {"ok": True, "state": self.operations.drain_state()}, {}
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
        report, how = self.operations.drain(call.arrival)
        return status_code_for(report), report.as_dict(), {"X-Prestop-Drain": how}

    def _status(self, call: _Call) -> _Answer:
        if call.method != "GET":
            return 405, {"ok": False, "error": "use GET /status"}, {"Allow": "GET"}
        report = self.operations.status(call.arrival)
        return status_code_for(report), report.as_dict(), {}

    def _register(self, call: _Call) -> _Answer:
        if call.method == "GET" and not self.config.register_get.value:
            hint = "use POST /register, or set PRESTOP_SERVE_REGISTER_GET=true for a postStart httpGet hook"
            return 405, {"ok": False, "error": hint}, {"Allow": "POST"}
        try:
            wait = parse_bool("wait", call.query.get("wait", "false"))
        except ConfigError as exc:
            return 400, {"ok": False, "error": str(exc)}, {}
        report = self.operations.register(call.arrival, wait=wait)
        if report is None:
            return 409, {"ok": False, "error": "a drain or another register is running; try again when it ends"}, {}
        return status_code_for(report), report.as_dict(), {}

    def _refusal(self, call: _Call, *, check_token: bool) -> str | None:
        cfg = self.config
        host_ip = self.operations.settings.host_ip.value if self.operations.settings.host_ip else None
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

    def _respond(
        self, request: BaseHTTPRequestHandler, status: int, body: dict[str, object], headers: dict[str, str]
    ) -> None:
        payload = self.secrets.dumps(body).encode() + b"\n"
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
