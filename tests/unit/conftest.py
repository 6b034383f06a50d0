"""Unit tests run in this process only: a test that opens a socket or starts a process fails here.

Those belong in tests/loopback/ (real sockets and processes on this machine) or
tests/integration/ (real Nacos servers); keeping them out makes this folder fast and
deterministic anywhere.
"""

from __future__ import annotations

import socket
import subprocess
from typing import Any

import pytest


def _refuse(what: str) -> Any:
    def refused(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError(f"a unit test {what}; move it to tests/loopback/ or tests/integration/")

    return refused


@pytest.fixture(autouse=True)
def _in_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(socket.socket, "__init__", _refuse("opened a socket"))
    monkeypatch.setattr(subprocess.Popen, "__init__", _refuse("started a process"))
