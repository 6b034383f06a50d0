"""Fixtures of the watchers' loopback tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.loopback.watchers.traffic_peers import BUILT, LoopbackServer


@pytest.fixture
def server() -> Iterator[LoopbackServer]:
    srv = LoopbackServer()
    try:
        yield srv
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def _close_watchers() -> Iterator[None]:
    """Every watcher a test built is closed after it (each holds a socket listening for ended connections)."""
    yield
    while BUILT:
        BUILT.pop().close()
