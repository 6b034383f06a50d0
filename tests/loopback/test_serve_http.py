"""The sidecar over real HTTP on loopback: in a thread of this process, and as its own process."""

from __future__ import annotations

import http.client
import ipaddress
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

import httpx
import pytest
from structlog.testing import capture_logs

from prestop_agent.agent import Deps, Report
from prestop_agent.clock import Clock, SystemClock
from prestop_agent.config import Settings
from prestop_agent.logs import Secrets
from prestop_agent.serve.listener import Listener
from prestop_agent.serve.operations import Operations
from prestop_agent.serve.routes import Routes
from prestop_agent.serve.settings import load_config
from prestop_agent.source import Resolved, Source
from tests.fakes import FakeInstance, FakeNacos
from tests.sidecar import ENV, TOKEN, Runner, nacos_router, real_runner, settings_for, wait_for


@contextmanager
def sidecar(
    settings: Settings, runner: Runner | None = None, *, bind: str = "127.0.0.1", **serve_env: str
) -> Iterator[tuple[int, Routes]]:
    """The sidecar listening on a free port in a thread of this process (respx then sees its Nacos calls)."""
    config = load_config(Source({**ENV, **serve_env}), settings)
    config = replace(config, port=Resolved(0, "test"), bind=Resolved(bind, "test"))
    secrets = Secrets()
    if config.token is not None:
        secrets.add(config.token.value)
    web = Routes(Operations(settings, runner or real_runner(settings), SystemClock()), config, secrets)
    service = Listener(web)
    thread = threading.Thread(target=service.serve, daemon=True)
    thread.start()
    try:
        yield service.port, web
    finally:
        service.stop()
        thread.join(5)
        service.close()
    assert not thread.is_alive()


def call(
    port: int, path: str, *, method: str = "GET", headers: dict[str, str] | None = None, host: str = "127.0.0.1"
) -> tuple[int, dict[str, object], dict[str, str]]:
    """A plain stdlib client (respx patches httpx only, so these calls really cross the socket)."""
    conn = http.client.HTTPConnection(host, port, timeout=30)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        body = json.loads(response.read())
        return response.status, body, dict(response.getheaders())
    finally:
        conn.close()


def test_prestop_drains_then_answers_the_same_result_again() -> None:
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080, weight=2.0))
    settings = settings_for()
    with nacos_router(nacos), sidecar(settings) as (port, _):
        status, body, headers = call(port, "/prestop")
        assert (status, body["ok"], body["outcome"]) == (200, True, "drained")
        assert headers["X-Prestop-Drain"] == "started"
        assert inst.enabled is False
        assert body["watchers"]["registry"]["verdict"] == "gone"  # type: ignore[index]
        again_status, again, again_headers = call(port, "/prestop")
    assert (again_status, again) == (200, body)
    assert again_headers["X-Prestop-Drain"] == "cached"
    assert len(nacos.writes) == 1


def test_a_second_call_during_a_drain_joins_it() -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    put_seen, release = threading.Event(), threading.Event()

    def slow_nacos(request: httpx.Request) -> httpx.Response:
        if request.method == "PUT":
            put_seen.set()
            release.wait(5)
        return nacos(request)

    results: dict[str, tuple[int, dict[str, object], dict[str, str]]] = {}
    with nacos_router(slow_nacos), sidecar(settings_for()) as (port, web):
        first = threading.Thread(target=lambda: results.update(first=call(port, "/prestop")))
        first.start()
        assert put_seen.wait(5)
        second = threading.Thread(target=lambda: results.update(second=call(port, "/prestop")))
        second.start()
        wait_for(lambda: web.active_requests == 2)  # both calls are inside the server now
        assert call(port, "/healthz")[1]["state"] == "draining"
        release.set()
        first.join(10)
        second.join(10)
    assert results["first"][0] == results["second"][0] == 200
    assert results["first"][1] == results["second"][1]
    assert {results["first"][2]["X-Prestop-Drain"], results["second"][2]["X-Prestop-Drain"]} == {"started", "joined"}
    assert len(nacos.writes) == 1  # one drain, one write


def test_register_puts_the_instance_back_and_a_later_prestop_drains_again() -> None:
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with nacos_router(nacos), sidecar(settings_for()) as (port, _):
        assert call(port, "/prestop")[0] == 200
        assert inst.enabled is False
        status, body, _ = call(port, "/register", method="POST")
        assert (status, body["outcome"]) == (200, "enabled")
        assert inst.enabled is True
        status, body, headers = call(port, "/prestop")
        assert (status, headers["X-Prestop-Drain"]) == (200, "started")
    assert inst.enabled is False
    assert [w["enabled"] for w in nacos.writes] == ["false", "true", "false"]


def test_get_register_needs_opting_in() -> None:
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080, enabled=False))
    with nacos_router(nacos):
        with sidecar(settings_for()) as (port, _):
            status, body, headers = call(port, "/register")
            assert (status, headers["Allow"]) == (405, "POST")
            assert "PRESTOP_SERVE_REGISTER_GET=true" in str(body["error"])
            assert inst.enabled is False
        with sidecar(settings_for(), PRESTOP_SERVE_REGISTER_GET="true") as (port, _):
            assert call(port, "/register?wait=true")[0] == 200
    assert inst.enabled is True


def test_status_over_http_shows_settings_without_secrets() -> None:
    nacos = FakeNacos(users={"nacos": "hunter2-password"})
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    settings = settings_for(NACOS_USERNAME="nacos", NACOS_PASSWORD="hunter2-password")
    with nacos_router(nacos), sidecar(settings, PRESTOP_SERVE_TOKEN=TOKEN) as (port, _):
        status, body, _ = call(port, "/status")
    assert status == 200
    assert body["settings"]["service"]["value"] == "orders"  # type: ignore[index]
    text = json.dumps(body)
    assert "hunter2-password" not in text
    assert TOKEN not in text
    assert "secretvalue" not in text  # the Nacos access token


def test_unknown_paths_and_methods() -> None:
    with sidecar(settings_for()) as (port, _):
        assert call(port, "/nope")[0] == 404
        assert call(port, "/prestop", method="POST")[0] == 405
        assert call(port, "/register?wait=maybe", method="POST")[0] == 400
        status, body, _ = call(port, "/healthz")
    assert (status, body) == (200, {"ok": True, "state": "idle"})


def _own_address() -> str | None:
    """A non-loopback address of this machine (the routing table picks it; no packet is sent)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("10.255.255.255", 1))
        address = str(probe.getsockname()[0])
    except OSError:
        return None
    finally:
        probe.close()
    return None if ipaddress.ip_address(address).is_loopback else address


def test_a_call_from_another_source_is_refused_and_logged() -> None:
    own = _own_address()
    if own is None:
        pytest.skip("this machine has no non-loopback IPv4 address to call from")
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with nacos_router(nacos), capture_logs() as logs, sidecar(settings_for(), bind=own) as (port, _):
        status, body, _ = call(port, "/prestop", host=own)  # our source is `own`, neither loopback nor HOST_IP
        assert (status, body["error"]) == (403, "refused: source not allowed")
        assert call(port, "/status", host=own)[0] == 403
        assert call(port, "/healthz", host=own)[0] == 200  # harmless, for probes
    assert inst.enabled is True
    assert nacos.writes == []
    refused = [e for e in logs if e["event"] == "serve_refused"]
    assert refused[0]["source"] == own
    assert "PRESTOP_SERVE_ALLOW_FROM" in refused[0]["hint"]
    with nacos_router(nacos), sidecar(settings_for(), bind=own, PRESTOP_SERVE_ALLOW_FROM=own) as (port, _):
        assert call(port, "/prestop", host=own)[0] == 200
    assert inst.enabled is False


def test_the_shared_header_is_required_when_set_and_never_logged() -> None:
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with nacos_router(nacos), capture_logs() as logs, sidecar(settings_for(), PRESTOP_SERVE_TOKEN=TOKEN) as (port, _):
        assert call(port, "/prestop")[0] == 403
        wrong = call(port, "/prestop", headers={"X-Prestop-Token": TOKEN[:-1] + "x"})
        assert (wrong[0], wrong[1]["error"]) == (403, "refused: header X-Prestop-Token does not match")
        assert call(port, "/register", method="POST")[0] == 403
        assert inst.enabled is True
        assert call(port, "/status")[0] == 200  # read-only: the source check is enough
        assert call(port, "/prestop", headers={"X-Prestop-Token": TOKEN})[0] == 200
    assert inst.enabled is False
    assert [e["reason"] for e in logs if e["event"] == "serve_refused"] == [
        "header X-Prestop-Token missing",
        "header X-Prestop-Token does not match",
        "header X-Prestop-Token missing",
    ]
    assert TOKEN not in json.dumps(logs, default=str)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def serve_process(env: dict[str, str]) -> Iterator[tuple[subprocess.Popen[str], int, list[str]]]:
    """``python -m prestop_agent serve`` on a free loopback port; yields once it listens."""
    port = free_port()
    full_env = {
        "PATH": os.environ.get("PATH", ""),
        **ENV,
        "PRESTOP_SERVE_PORT": str(port),
        "PRESTOP_SERVE_BIND": "127.0.0.1",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "prestop_agent", "serve"],
        env=full_env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if '"serve_started"' in line:
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(10), "".join(lines)
        yield proc, port, lines
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(5)
        reader.join(5)
        if proc.stderr is not None:
            proc.stderr.close()


def test_prestop_answers_within_the_budget_when_the_registry_hangs(silent_server: int) -> None:
    budget = 2.0
    env = {
        "NACOS_SERVER_ADDR": f"127.0.0.1:{silent_server}",
        "PRESTOP_BUDGET_SECONDS": str(budget),
        "PRESTOP_REQUEST_TIMEOUT_SECONDS": "30",  # longer than the budget on purpose: the budget must cap it
    }
    with serve_process(env) as (_proc, port, lines):
        sent = time.monotonic()
        status, body, _ = call(port, "/prestop")
        took = time.monotonic() - sent
    assert status == 502, "".join(lines)
    assert "timed out" in str(body["error"])
    # The invariant: never answered later than the budget plus one second (counted from the call).
    assert took < budget + 1.0, f"took {took:.2f}s"
    assert took >= budget - 0.2  # and, like the sleep it replaces, the budget was waited out


def test_prestop_answers_by_the_budget_even_if_the_drain_is_stuck() -> None:
    settings = settings_for(PRESTOP_BUDGET_SECONDS="1")
    stuck = threading.Event()

    def never_returns(command: Callable[[Settings, Deps], Report], started: float, clock: Clock, w: bool) -> Report:
        stuck.wait(10)  # e.g. a DNS lookup with no timeout of its own
        return Report("deregister", "drained")

    with capture_logs() as logs, sidecar(settings, never_returns) as (port, _):
        sent = time.monotonic()
        status, body, _ = call(port, "/prestop")
        took = time.monotonic() - sent
        again = call(port, "/prestop")
        stuck.set()
    assert status == 504
    assert "did not finish within the budget" in str(body["error"])
    assert took < 1.0 + 1.0
    assert again[1] == body  # the answer given stays the answer
    assert any(e["event"] == "drain_watchdog" for e in logs)


def test_sigterm_when_idle_exits_0_at_once() -> None:
    with serve_process({}) as (proc, port, lines):
        assert call(port, "/healthz")[0] == 200
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(5)
        took = time.monotonic() - sent
    assert code == 0, "".join(lines)
    assert took < 1.0
    started = json.loads(next(line for line in lines if '"serve_started"' in line))
    assert started["startup_ms"] < 5000  # measured properly by packaging/measure-serve


def test_sigterm_during_a_drain_lets_it_answer_then_exits_0(silent_server: int) -> None:
    budget = 2.0
    env = {"NACOS_SERVER_ADDR": f"127.0.0.1:{silent_server}", "PRESTOP_BUDGET_SECONDS": str(budget)}
    answer: list[tuple[int, dict[str, object], dict[str, str]]] = []
    with serve_process(env) as (proc, port, lines):
        sent = time.monotonic()
        caller = threading.Thread(target=lambda: answer.append(call(port, "/prestop")))
        caller.start()
        wait_for(lambda: any('"deregister_started"' in line for line in lines))
        proc.send_signal(signal.SIGTERM)
        wait_for(lambda: any('"serve_stopping"' in line for line in lines))
        with pytest.raises(ConnectionRefusedError):  # no new calls once stopping
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        code = proc.wait(budget + 5)
        exited = time.monotonic() - sent
        caller.join(5)
    assert code == 0, "".join(lines)
    # The running drain was not abandoned: its caller (the kubelet) got the answer, within the budget.
    assert answer[0][0] == 502
    assert exited < budget + 1.0, f"exited after {exited:.2f}s"
