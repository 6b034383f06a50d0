"""The sidecar without sockets: its settings, who may call it, status codes, and a drain cancelling a register."""

from __future__ import annotations

import ipaddress
import threading
import time

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from prestop_agent.agent import Report
from prestop_agent.cli import app
from prestop_agent.clock import SystemClock
from prestop_agent.errors import ConfigError
from prestop_agent.serve.operations import Operations, RegisterCancelled
from prestop_agent.serve.routes import source_allowed, status_code_for
from prestop_agent.serve.settings import load_config
from prestop_agent.source import Source
from tests.fakes import FakeInstance, FakeNacos
from tests.sidecar import ENV, TOKEN, nacos_router, real_runner, settings_for, wait_for


def test_a_drain_cancels_a_waiting_register() -> None:
    nacos = FakeNacos()  # the app has not registered yet: register --wait polls, sleeping between polls
    settings = settings_for()
    side = Operations(settings, real_runner(settings), SystemClock())
    registered: list[Report | None] = []
    with nacos_router(nacos), capture_logs() as logs:
        waiting = threading.Thread(target=lambda: registered.append(side.register(time.monotonic(), wait=True)))
        waiting.start()
        wait_for(lambda: any(e["event"] == "awaiting_registration" for e in list(logs)))
        nacos.add("orders", FakeInstance("10.0.0.7", 8080))
        report, how = side.drain(time.monotonic())
        waiting.join(5)
    assert (report.outcome, how) == ("drained", "started")
    assert isinstance(registered[0], Report)
    assert isinstance(registered[0].error, RegisterCancelled)
    assert [w["enabled"] for w in nacos.writes] == ["false"]  # the register never wrote
    events = [e["event"] for e in logs]
    assert events.index("register_cancelled") < events.index("deregister_started")


@pytest.mark.parametrize(
    ("report", "code"),
    [
        (Report("deregister", "drained"), 200),
        (Report("deregister", "failed", error=RegisterCancelled("x")), 502),
        (Report("deregister", "failed", error=ConfigError("x")), 500),
    ],
)
def test_status_codes(report: Report, code: int) -> None:
    assert status_code_for(report) == code


@pytest.mark.parametrize(
    ("source", "allowed"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("10.0.0.1", True),  # the node
        ("::ffff:10.0.0.1", True),  # the node, through a dual-stack socket
        ("10.0.0.9", False),  # another pod
        ("10.244.1.1", True),  # listed in allow_from
        ("fd00::1", False),
        ("not-an-ip", False),
    ],
)
def test_source_allowed(source: str, allowed: bool) -> None:
    networks = (ipaddress.ip_network("10.244.1.0/30"),)
    assert source_allowed(source, host_ip="10.0.0.1", allow_any=False, allow_from=networks) is allowed


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"PRESTOP_SERVE_PORT": "8080"}, "is the app's service port"),
        ({"HOST_IP": ""}, "HOST_IP is not set"),
        ({"PRESTOP_SERVE_ALLOW_FROM": "any"}, "set PRESTOP_SERVE_TOKEN too"),
        ({"PRESTOP_SERVE_ALLOW_FROM": "10.0.0.0/33"}, "not an IP address or CIDR"),
        # Every address, written as networks, is "any" too.
        ({"PRESTOP_SERVE_ALLOW_FROM": "0.0.0.0/0,::/0"}, r"100% of IPv4 \(0\.0\.0\.0/0\).*PRESTOP_SERVE_TOKEN"),
        ({"PRESTOP_SERVE_ALLOW_FROM": "0.0.0.0/1, 128.0.0.0/1"}, r"100% of IPv4 \(0\.0\.0\.0/0\)"),
        ({"PRESTOP_SERVE_ALLOW_FROM": "::/1,8000::/1"}, r"100% of IPv6 \(::/0\)"),
        ({"PRESTOP_SERVE_ALLOW_FROM": "2000::/3"}, r"12% of IPv6"),
        ({"PRESTOP_SERVE_ALLOW_FROM": "10.0.0.0/8,11.0.0.0/8,12.0.0.0/8"}, r"as good as 'any'"),
        ({"PRESTOP_SERVE_TOKEN": "short"}, "too short"),
        ({"PRESTOP_SERVE_PRESTOP_PATH": "/status"}, "must be a path"),
        ({"PRESTOP_SERVE_BIND": "pod"}, "not an IP address"),
    ],
)
def test_unsafe_or_useless_settings_are_refused(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(Source({**ENV, **env}), settings_for(**env))


def test_cli_refuses_the_app_port_with_exit_2_and_one_line() -> None:
    result = CliRunner().invoke(app, ["serve"], env={**ENV, "PRESTOP_SERVE_PORT": "8080"})
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "PRESTOP_SERVE_PORT=8080 is the app's service port" in lines[0]


def test_allow_any_with_a_token_admits_other_sources() -> None:
    config = load_config(
        Source({**ENV, "PRESTOP_SERVE_ALLOW_FROM": "any", "PRESTOP_SERVE_TOKEN": TOKEN}), settings_for()
    )
    assert config.allow_any is True
    assert source_allowed("10.9.9.9", host_ip=None, allow_any=True, allow_from=()) is True


@pytest.mark.parametrize(
    "allowed",
    [
        "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,100.64.0.0/10,fc00::/7",  # every private range
        "10.0.0.0/8,11.0.0.0/8",  # a /7
        "10.244.1.1,fd00:10:244::/48",
    ],
)
def test_private_networks_need_no_token(allowed: str) -> None:
    config = load_config(Source({**ENV, "PRESTOP_SERVE_ALLOW_FROM": allowed}), settings_for())
    assert config.allow_any is False
    assert len(config.allow_from) == len(allowed.split(","))


def test_every_address_with_a_token_is_accepted() -> None:
    env = {**ENV, "PRESTOP_SERVE_ALLOW_FROM": "0.0.0.0/0,::/0", "PRESTOP_SERVE_TOKEN": TOKEN}
    config = load_config(Source(env), settings_for())
    assert [str(n) for n in config.allow_from] == ["0.0.0.0/0", "::/0"]
