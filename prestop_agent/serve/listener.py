"""The listening socket, its accept loop that sleeps while idle, and the shutdown on SIGTERM or SIGINT."""

from __future__ import annotations

import contextlib
import os
import selectors
import signal
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any

import structlog

from prestop_agent.errors import ConfigError
from prestop_agent.nacos.model import format_endpoint
from prestop_agent.serve.routes import Routes

log = structlog.get_logger("prestop_agent.serve")

# On SIGTERM, requests other than a running drain get this long to finish.
SHUTDOWN_LINGER_S = 1.0
REQUEST_READ_TIMEOUT_S = 10.0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], family: socket.AddressFamily, routes: Routes) -> None:
        self.address_family = family
        self.routes = routes
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
        self.server.routes.handle(self, "GET")

    def do_POST(self) -> None:
        self.server.routes.handle(self, "POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Requests are logged by the app as structured events; the stdlib's stderr lines are not wanted."""


class Listener:
    """The listening server, its idle-free accept loop, and the shutdown sequence."""

    def __init__(self, routes: Routes) -> None:
        self.routes = routes
        bind = routes.config.bind.value
        port = routes.config.port.value
        if bind:
            family = socket.AF_INET6 if ":" in bind else socket.AF_INET
        elif socket.has_dualstack_ipv6():
            family, bind = socket.AF_INET6, "::"
        else:
            family, bind = socket.AF_INET, "0.0.0.0"  # noqa: S104 - kubelet calls the pod IP
        try:
            self.httpd = _Server((bind, port), family, routes)
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
        linger_until = self.routes.clock.monotonic() + SHUTDOWN_LINGER_S

        def until() -> float:
            answer_by = self.routes.operations.running_drain_answer_by()
            return max(linger_until, answer_by + 0.1) if answer_by is not None else linger_until

        draining = self.routes.operations.running_drain_answer_by() is not None
        log.info("serve_stopping", drain_running=draining)
        finished = self.routes.wait_idle(until)
        log.info("serve_stopped", in_flight_finished=finished)

    def close(self) -> None:
        self._wake_r.close()
        self._wake_w.close()


def run(service: Listener, *, started: float) -> int:
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
    cfg = service.routes.config
    settings = service.routes.operations.settings
    log.info(
        "serve_started",
        port=service.port,
        startup_ms=round((service.routes.clock.monotonic() - started) * 1000),
        endpoint=format_endpoint(settings.pod_ip.value, settings.port.value),
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
