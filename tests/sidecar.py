"""The sidecar's test settings, the production runner and small helpers, for its unit and loopback tests."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import respx

from prestop_agent.agent import Deps, Report
from prestop_agent.cli import _run_command
from prestop_agent.clock import Clock
from prestop_agent.config import Settings, load
from prestop_agent.logs import Secrets
from prestop_agent.serve.operations import ThreadRunClock
from prestop_agent.source import Source
from tests.fakes import FakeNacos

ENV = {
    "POD_IP": "10.0.0.7",
    "HOST_IP": "10.0.0.1",
    "NACOS_SERVICE_PORT": "8080",
    "NACOS_SERVER_ADDR": "nacos-a:8848",
    "NACOS_SERVICE_NAME": "orders",
    "PRESTOP_CONSUMER_CACHE_SECONDS": "0",
    "PRESTOP_WAIT_FOR": "registry",
    "PRESTOP_BUDGET_SECONDS": "5",
    "PRESTOP_LOG_TO_PID1": "false",
}
TOKEN = "s3cr3t-shared-header-value"

Runner = Callable[[Callable[[Settings, Deps], Report], float, Clock, bool], Report]


def settings_for(**env: str) -> Settings:
    return load(Source({**ENV, **env}))


def real_runner(settings: Settings) -> Runner:
    """The production runner (one httpx client per operation), as ``prestop-agent serve`` builds it."""
    secrets, run = Secrets(), ThreadRunClock()

    def runner(command: Callable[[Settings, Deps], Report], started: float, clock: Clock, wait: bool) -> Report:
        return _run_command(settings, command, clock, secrets, run, started, wait_out_on_crash=wait)

    return runner


def nacos_router(nacos: FakeNacos | Callable[[httpx.Request], httpx.Response]) -> respx.MockRouter:
    router = respx.mock(assert_all_called=False)
    router.route(host="nacos-a").mock(side_effect=nacos)
    return router


def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.01)
