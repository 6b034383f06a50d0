"""Failover spends the budget on the members that answer: hung, dripping and SYN-dropping members, for real."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest
import respx

from prestop_agent.agent import Deps, run_deregister
from prestop_agent.clock import Deadline, SystemClock
from prestop_agent.config import load
from prestop_agent.errors import ServerError
from prestop_agent.nacos.model import parse_server_addresses
from prestop_agent.nacos.server import NacosServer
from prestop_agent.source import Source
from tests import faults
from tests.fakes import FakeClock, FakeInstance, FakeNacos

BAD_MEMBERS: dict[str, Callable[[], AbstractContextManager[str]]] = {
    "silent": faults.silent,
    "drip": lambda: faults.drip(interval=0.25),
    "drip-body": lambda: faults.drip(head_first=True, interval=0.25),
    "syn-drop": faults.syn_drop,
}


def _server(address: str, request_timeout: float) -> NacosServer:
    (parsed,) = parse_server_addresses("NACOS_SERVER_ADDR", address)
    return NacosServer(parsed, httpx.Client(), request_timeout=request_timeout)


@pytest.mark.parametrize("kind", list(BAD_MEMBERS))
def test_one_request_is_capped_as_a_whole(kind: str) -> None:
    """A dripping member sends a byte every 0.25 s, so no single read of a 2 s cap ever times out."""
    outcome: list[BaseException | None] = []
    with BAD_MEMBERS[kind]() as address:
        server = _server(address, request_timeout=2.0)

        def call() -> None:
            try:
                server.call("GET", "/v1/ns/instance/list", Deadline.after(SystemClock(), 60.0))
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        caller = threading.Thread(target=call, daemon=True)
        caller.start()
        caller.join(timeout=15.0)  # the cap is 2 s; the drip alone would hold the request for 30 s
        assert not caller.is_alive(), f"a request to a {kind} member outlived its cap"
    (error,) = outcome
    assert isinstance(error, ServerError), error
    assert "timed out" in str(error)
    assert server.unresponsive, "the member that ran out a cap must be remembered"


@pytest.fixture
def healthy() -> Iterator[tuple[str, FakeNacos]]:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with faults.http_app(nacos) as address:
        yield address, nacos


def test_cli_drains_on_the_healthy_member_behind_hung_ones(healthy: tuple[str, FakeNacos]) -> None:
    healthy_address, nacos = healthy
    budget = 12.0
    with faults.silent() as silent, faults.drip(interval=0.25) as drip, faults.syn_drop() as syn_drop:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "POD_IP": "10.0.0.7",
            "NACOS_SERVICE_PORT": "8080",
            "NACOS_SERVICE_NAME": "orders",
            "NACOS_SERVER_ADDR": ",".join([silent, drip, syn_drop, healthy_address]),
            "PRESTOP_BUDGET_SECONDS": str(budget),
            "PRESTOP_REQUEST_TIMEOUT_SECONDS": "1",
            "PRESTOP_WAIT_FOR": "registry",
            "PRESTOP_CONSUMER_CACHE_SECONDS": "0",
            "PRESTOP_LOG_TO_PID1": "false",
        }
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "prestop_agent", "deregister", "--wait"],
            env=env,
            capture_output=True,
            text=True,
            timeout=budget + 20,
            check=False,
        )
        took = time.monotonic() - started
    assert done.returncode == 0, done.stderr
    assert nacos.services["DEFAULT_GROUP@@orders"][0].enabled is False
    assert took < budget + 1.0, f"took {took:.2f}s"  # invariant 1, interpreter start-up included


def test_a_member_that_timed_out_is_asked_once_and_then_last() -> None:
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    settings = load(
        Source(
            {
                "POD_IP": "10.0.0.7",
                "NACOS_SERVICE_PORT": "8080",
                "NACOS_SERVICE_NAME": "orders",
                "NACOS_SERVER_ADDR": "hung:8848,nacos-b:8848",
                "PRESTOP_BUDGET_SECONDS": "20",
                "PRESTOP_CONSUMER_CACHE_SECONDS": "3",
                "PRESTOP_WAIT_FOR": "registry",
            }
        )
    )
    with respx.mock(assert_all_called=False) as router, httpx.Client() as http:
        hung = router.route(host="hung").mock(side_effect=httpx.ReadTimeout("timed out"))
        router.route(host="nacos-b").mock(side_effect=nacos)
        report = run_deregister(settings, Deps(clock=FakeClock(), http=http), wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    assert inst.enabled is False
    # Found, written, proven and waited on through nacos-b; the hung member was asked once, not retried.
    assert hung.call_count == 1
