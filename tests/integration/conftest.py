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

#: The servers the tests run against. Nacos 2.x with auth on cannot run here (SERVER_AUTH_SUPPORT says
#: why): it is left out rather than reported as skipped at every run.
COMBINATIONS = [combination for combination, impossible in SERVER_AUTH_SUPPORT.items() if impossible is None]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "integration: runs against a real Nacos server started on this machine")
    config.addinivalue_line(
        "markers", "nacos_auth(on): the test is about a server with auth on (True) or off (False) only"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave out a test's runs on servers its ``nacos_auth`` mark says it is not about (instead of skips)."""
    kept: list[pytest.Item] = []
    left_out: list[pytest.Item] = []
    for item in items:
        mark = item.get_closest_marker("nacos_auth")
        callspec = getattr(item, "callspec", None)
        server = callspec.params.get("nacos") if callspec is not None else None
        if mark is not None and server is not None and server[1] != mark.args[0]:
            left_out.append(item)
        else:
            kept.append(item)
    if left_out:
        config.hook.pytest_deselected(items=left_out)
        items[:] = kept


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI=true and the real Nacos tests cannot run: {reason}")
    pytest.skip(reason)


@pytest.fixture(
    scope="session",
    params=COMBINATIONS,
    ids=[f"nacos{major}-auth-{'on' if auth else 'off'}" for major, auth in COMBINATIONS],
)
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
