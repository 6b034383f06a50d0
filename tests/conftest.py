"""Every test starts from a scrubbed environment and default logging."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import structlog

SCRUBBED_PREFIXES = ("NACOS_", "PRESTOP_", "SPRING_", "AWS_", "ALIBABA_CLOUD_", "KUBERNETES_")
SCRUBBED_NAMES = ("POD_IP", "PODIP", "HOSTNAME", "HOST_IP", "SERVER_PORT", "POD_NAMESPACE")


@pytest.fixture(autouse=True)
def _scrub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(SCRUBBED_PREFIXES) or name in SCRUBBED_NAMES:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _reset_logging() -> Iterator[None]:
    yield
    structlog.reset_defaults()
