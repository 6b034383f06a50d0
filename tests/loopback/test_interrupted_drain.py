"""A manual drain stopped with Ctrl-C or SIGTERM says what it left behind; absurd budgets are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest

from tests import faults
from tests.fakes import FakeInstance, FakeNacos


def agent_env(server_addr: str, **extra: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "POD_IP": "10.0.0.7",
        "NACOS_SERVICE_PORT": "8080",
        "NACOS_SERVICE_NAME": "orders",
        "NACOS_SERVER_ADDR": server_addr,
        "PRESTOP_WAIT_FOR": "registry",
        "PRESTOP_CONSUMER_CACHE_SECONDS": "60",  # the drain waits here, where the signal arrives
        "PRESTOP_BUDGET_SECONDS": "90",
        "PRESTOP_GRACE_SECONDS": "100",
        "PRESTOP_LOG_TO_PID1": "false",
        **extra,
    }


class Running:
    """The agent as a child process, its stderr collected as it comes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "prestop_agent", "deregister", "--wait"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self._lines.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._lines)

    def finish(self, timeout: float) -> int:
        code = self.process.wait(timeout=timeout)
        self._reader.join(timeout=5)
        return code

    def __enter__(self) -> Running:
        return self

    def __exit__(self, *_: object) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


@pytest.fixture
def nacos() -> Iterator[tuple[str, FakeNacos]]:
    fake = FakeNacos()
    fake.add("orders", FakeInstance("10.0.0.7", 8080))
    with faults.http_app(fake) as address:
        yield address, fake


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_drain_says_the_instance_is_left_disabled(
    nacos: tuple[str, FakeNacos], signum: signal.Signals
) -> None:
    address, fake = nacos
    with Running(agent_env(address)) as running:
        faults.wait_for_line(lambda: running.stderr, '"event": "instance_unserved"', timeout=30)
        running.process.send_signal(signum)
        code = running.finish(timeout=30)
    assert fake.services["DEFAULT_GROUP@@orders"][0].enabled is False
    assert code == 128 + signum, running.stderr
    last = running.stderr.strip().splitlines()[-1]
    assert last.startswith("prestop-agent: interrupted by SIG"), last
    assert "10.0.0.7:8080" in last
    assert "left disabled" in last
    assert "prestop-agent register" in last
    assert "Traceback" not in running.stderr


def test_an_interrupt_before_the_write_says_nothing_was_changed() -> None:
    with faults.silent() as hung, Running(agent_env(hung, PRESTOP_REQUEST_TIMEOUT_SECONDS="30")) as running:
        faults.wait_for_line(lambda: running.stderr, '"event": "deregister_started"', timeout=30)
        running.process.send_signal(signal.SIGTERM)
        code = running.finish(timeout=30)
    assert code == 128 + signal.SIGTERM, running.stderr
    assert (
        running.stderr.strip().splitlines()[-1] == "prestop-agent: interrupted by SIGTERM before anything was written"
    )


@pytest.mark.parametrize("variable", ["PRESTOP_BUDGET_SECONDS", "PRESTOP_GRACE_SECONDS"])
def test_a_huge_budget_is_one_line_and_exit_2(variable: str) -> None:
    env = agent_env("127.0.0.1:9", PRESTOP_BUDGET_SECONDS="", PRESTOP_GRACE_SECONDS="")
    env[variable] = "1e10"
    done = subprocess.run(
        [sys.executable, "-m", "prestop_agent", "deregister", "--wait"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        f"prestop-agent: {variable}='1e10' is longer than a day (86400 s); set it to the seconds it should be"
    )
