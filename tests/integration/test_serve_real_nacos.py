"""Sidecar mode against a real Nacos: the kubelet's preStop httpGet drains a gRPC-registered instance."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from localnacos import JavaInstance, NacosProcess, free_port, wait_until
from tests.integration.test_agent_real_nacos import agent_command, pod_env, served, wait_served

pytestmark = pytest.mark.integration


@pytest.fixture
def sidecar(nacos: NacosProcess, grpc_instance: JavaInstance, tmp_path: Path) -> Iterator[str]:
    """``prestop-agent serve`` as a sidecar container of this instance's pod: its base URL."""
    port = free_port()
    env = {
        **pod_env(nacos, grpc_instance),
        "HOST_IP": "10.255.0.1",  # the node; the test calls from loopback, which is always allowed
        "PRESTOP_SERVE_PORT": str(port),
        "PRESTOP_SERVE_BIND": "127.0.0.1",
        "PRESTOP_WAIT_FOR": "registry",
    }
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen([*agent_command(), "serve"], env=env, stderr=log)
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            return httpx.get(f"{base}/healthz", timeout=1).status_code == 200
        except httpx.TransportError:
            return False

    try:
        wait_until(healthy, timeout=30, what="serve answering /healthz")
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            log.close()


def test_prestop_drains_then_register_puts_it_back(
    nacos: NacosProcess, grpc_instance: JavaInstance, sidecar: str
) -> None:
    wait_served(nacos, grpc_instance, True)

    first = httpx.get(f"{sidecar}/prestop", timeout=90)
    assert first.status_code == 200, first.text
    assert json.loads(first.text)["outcome"] == "drained"
    assert not served(nacos, grpc_instance), "200 but the server still serves the instance"

    again = httpx.get(f"{sidecar}/prestop", timeout=30)
    assert again.status_code == 200
    assert again.headers.get("X-Prestop-Drain") == "cached"

    back = httpx.post(f"{sidecar}/register", timeout=90)
    assert back.status_code == 200, back.text
    wait_served(nacos, grpc_instance, True)
