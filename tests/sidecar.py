"""The sidecar's test settings and the production runner, for its unit and loopback tests."""

from __future__ import annotations

from collections.abc import Callable

from prestop_agent.agent import Deps, Report
from prestop_agent.cli import _run_command
from prestop_agent.clock import Clock
from prestop_agent.config import Settings, load
from prestop_agent.logs import Secrets
from prestop_agent.serve.operations import ThreadRunClock
from prestop_agent.source import Source

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
