"""The budget holds against a real server that accepts connections and never answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A loopback TCP server that accepts every connection, reads, and never replies."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            held.append(conn)

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    listener.close()


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
