"""Real Nacos servers for the integration tests: each (major, auth) combination starts once per session.

Outside CI a machine without Java or Maven skips these tests with the reason; in CI
(``CI=true``) that, and any server that fails to start, is a failure.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator

import pytest

from localnacos import SERVER_AUTH_SUPPORT, HarnessError, JavaInstance, NacosProcess, java_available

COMBINATIONS = [(2, False), (2, True), (3, False), (3, True)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs against a real Nacos server started on this machine")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI=true and the real Nacos tests cannot run: {reason}")
    pytest.skip(reason)


def _param(major: int, auth: bool) -> object:
    ident = f"nacos{major}-auth-{'on' if auth else 'off'}"
    impossible = SERVER_AUTH_SUPPORT[(major, auth)]
    if impossible:
        return pytest.param(
            (major, auth), id=ident, marks=pytest.mark.skip(reason=f"Nacos {major}.x auth: {impossible}")
        )
    return pytest.param((major, auth), id=ident)


@pytest.fixture(scope="session", params=[_param(major, auth) for major, auth in COMBINATIONS])
def nacos(request: pytest.FixtureRequest) -> Iterator[NacosProcess]:
    """A running real Nacos server; tests are grouped so each combination starts once."""
    major, auth = request.param
    reason = java_available()
    if reason:
        unavailable(reason)
    server = NacosProcess(major, auth=auth)
    try:
        server.start()
    except HarnessError as exc:
        unavailable(str(exc))
    try:
        yield server
    finally:
        server.stop()


_addresses = itertools.count(10)


def next_address() -> tuple[str, int]:
    """A loopback ip and a port no other test in this session uses as an instance address."""
    n = next(_addresses)
    return f"127.0.{n // 250}.{n % 250 + 2}", 20000 + n


@pytest.fixture
def grpc_instance(nacos: NacosProcess, request: pytest.FixtureRequest) -> Iterator[JavaInstance]:
    """An instance of a service named after the test, registered over gRPC by the real Java client."""
    ip, port = next_address()
    service = "it-" + request.node.originalname.removeprefix("test_").replace("_", "-")
    instance = JavaInstance(nacos, service, ip, port)
    try:
        instance.start()
    except HarnessError as exc:
        unavailable(str(exc))
    try:
        yield instance
    finally:
        instance.stop()
