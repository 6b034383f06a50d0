"""The budget holds against a real server that accepts connections and never answers."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest


@pytest.mark.parametrize("wait", ["--wait", "--no-wait"])
def test_exits_within_budget_plus_one_second(silent_server: int, wait: str) -> None:
    budget = 2.0
    env = {
        "PATH": os.environ.get("PATH", ""),
        "POD_IP": "10.0.0.7",
        "NACOS_SERVICE_PORT": "8080",
        "NACOS_SERVICE_NAME": "orders",
        "NACOS_SERVER_ADDR": f"127.0.0.1:{silent_server}",
        "PRESTOP_BUDGET_SECONDS": str(budget),
        "PRESTOP_REQUEST_TIMEOUT_SECONDS": "30",  # longer than the budget on purpose: the budget must cap it
        "PRESTOP_LOG_TO_PID1": "false",
    }
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "prestop_agent", "deregister", wait],
        env=env,
        capture_output=True,
        text=True,
        timeout=budget + 10,
        check=False,
    )
    took = time.monotonic() - started
    assert done.returncode == 3, done.stderr
    assert "timed out" in done.stderr
    # Invariant 1 (interpreter start-up included): never later than the budget plus one second.
    assert took < budget + 1.0, f"took {took:.2f}s"
