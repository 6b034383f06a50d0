"""The installed `prestop-agent` against real Nacos servers, with the environment a pod would have.

Instances are registered the way applications register them (the Nacos Java client over gRPC),
and a subscribed client shows what consumers are pushed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

import pytest

from localnacos import JavaInstance, NacosProcess, free_port, wait_until

pytestmark = pytest.mark.integration


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def agent_command() -> list[str]:
    found = shutil.which("prestop-agent")
    return [found] if found else [sys.executable, "-m", "prestop_agent"]


def pod_env(
    nacos: NacosProcess,
    instance: JavaInstance,
    *,
    server_addr: str | None = None,
    service: str | None = "same",
    hostname: str | None = None,
    password: str | None = None,
    budget: int = 60,
) -> dict[str, str]:
    """A scrubbed environment with only what a pod of this instance would set."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "POD_IP": instance.ip,
        "HOSTNAME": hostname or f"{instance.service}-7d9c8b6f5d-x2k4q",
        "NACOS_SERVER_ADDR": server_addr or nacos.http_addr,
        "NACOS_SERVICE_PORT": str(instance.port),
        "PRESTOP_CONSUMER_CACHE_SECONDS": "1",
        "PRESTOP_BUDGET_SECONDS": str(budget),
        "PRESTOP_LOG_TO_PID1": "false",
    }
    if service == "same":
        env["NACOS_SERVICE_NAME"] = instance.service
    elif service is not None:
        env["NACOS_SERVICE_NAME"] = service
    if nacos.auth:
        env["NACOS_USERNAME"] = nacos.username or ""
        env["NACOS_PASSWORD"] = password if password is not None else (nacos.password or "")
    return env


def run_agent(args: list[str], env: Mapping[str, str], *, timeout: float = 120) -> Run:
    started = time.monotonic()
    result = subprocess.run(
        [*agent_command(), *args], env=dict(env), capture_output=True, text=True, timeout=timeout, check=False
    )
    return Run(result.returncode, result.stdout, result.stderr, time.monotonic() - started)


def served(nacos: NacosProcess, instance: JavaInstance) -> bool:
    return instance.has_self(nacos.served_hosts(instance.service))


def enabled_on_server(nacos: NacosProcess, instance: JavaInstance) -> bool | None:
    host = nacos.find_host(instance.service, instance.ip, instance.port)
    return None if host is None else bool(host["enabled"])


def wait_served(nacos: NacosProcess, instance: JavaInstance, expected: bool, timeout: float = 30) -> None:
    wait_until(lambda: served(nacos, instance) is expected, timeout=timeout, what=f"served={expected}")


def status_json(nacos: NacosProcess, instance: JavaInstance) -> Run:
    return run_agent(["status", "--json"], pod_env(nacos, instance))


def json_mentions(text: str, key: str, value: object) -> bool:
    """Whether any object in a JSON document has ``key`` equal to ``value``."""

    def walk(node: object) -> bool:
        if isinstance(node, dict):
            return node.get(key) == value or any(walk(child) for child in node.values())
        if isinstance(node, list):
            return any(walk(child) for child in node)
        return False

    return walk(json.loads(text))


def test_deregister_wait_drains_a_grpc_instance(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    wait_served(nacos, grpc_instance, True)
    grpc_instance.wait_for_push(grpc_instance.has_self, timeout=30)
    pushes_before = len(grpc_instance.pushes())

    run = run_agent(["deregister", "--wait"], pod_env(nacos, grpc_instance))

    assert run.returncode == 0, run.output
    assert not served(nacos, grpc_instance), "exit 0 but the server still serves the instance"
    assert enabled_on_server(nacos, grpc_instance) is False, "the server should hold the instance, disabled"
    grpc_instance.wait_for_push(lambda hosts: not grpc_instance.has_self(hosts), timeout=30, after=pushes_before)


def test_register_puts_it_back_and_status_tells_the_truth(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    wait_served(nacos, grpc_instance, True)
    before = status_json(nacos, grpc_instance)
    assert before.returncode == 0, before.output
    assert json_mentions(before.stdout, "enabled", True), before.stdout

    drained = run_agent(["deregister", "--wait"], pod_env(nacos, grpc_instance))
    assert drained.returncode == 0, drained.output
    during = status_json(nacos, grpc_instance)
    assert during.returncode == 0, during.output
    assert json_mentions(during.stdout, "enabled", False), during.stdout

    back = run_agent(["register"], pod_env(nacos, grpc_instance))
    assert back.returncode == 0, back.output
    wait_served(nacos, grpc_instance, True)
    assert enabled_on_server(nacos, grpc_instance) is True
    after = status_json(nacos, grpc_instance)
    assert after.returncode == 0, after.output
    assert json_mentions(after.stdout, "enabled", True), after.stdout


def test_wrong_derived_service_name_never_fakes_success(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    wait_served(nacos, grpc_instance, True)
    env = pod_env(nacos, grpc_instance, service=None, hostname="not-the-service-name-5456f59db7-hcdd7", budget=20)

    run = run_agent(["deregister", "--wait"], env)

    if run.returncode == 0:
        # It found the instance by ip:port in the real service and drained it there.
        assert not served(nacos, grpc_instance), "exit 0 but the instance is still served"
        assert enabled_on_server(nacos, grpc_instance) is False
        assert grpc_instance.service in run.output, "it should say which service it found"
    else:
        assert "NACOS_SERVICE_NAME" in run.output, run.output
        assert served(nacos, grpc_instance), "a failed run must not have changed the instance"


@pytest.mark.nacos_auth(True)
def test_wrong_password_exits_3_with_a_clear_message(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    wait_served(nacos, grpc_instance, True)
    budget = 8
    env = pod_env(nacos, grpc_instance, password="definitely-wrong", budget=budget)

    run = run_agent(["deregister", "--wait"], env)

    assert run.returncode == 3, run.output
    assert run.seconds < budget + 1 + 3, f"took {run.seconds:.1f} s for a {budget} s budget"  # +3 s interpreter start
    lowered = run.output.lower()
    assert any(word in lowered for word in ("password", "credential", "login", "auth")), run.output
    assert "definitely-wrong" not in run.output, "the password must never be printed"
    assert served(nacos, grpc_instance), "nothing should have changed"


def test_restart_trap_then_register_wait(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    wait_served(nacos, grpc_instance, True)
    drained = run_agent(["deregister", "--wait"], pod_env(nacos, grpc_instance))
    assert drained.returncode == 0, drained.output

    # The container restarts: the app deregisters on shutdown and registers the same ip:port again.
    grpc_instance.restart()
    wait_until(
        lambda: enabled_on_server(nacos, grpc_instance) is not None, timeout=30, what="instance registered again"
    )
    time.sleep(3)  # give a wrongly re-enabled instance time to show up in the served list
    assert enabled_on_server(nacos, grpc_instance) is False, "Nacos kept the enabled=false override"
    assert not served(nacos, grpc_instance)

    run = run_agent(["register", "--wait"], pod_env(nacos, grpc_instance))

    assert run.returncode == 0, run.output
    wait_served(nacos, grpc_instance, True)
    assert enabled_on_server(nacos, grpc_instance) is True


def test_fails_over_when_the_first_server_is_down(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    wait_served(nacos, grpc_instance, True)
    dead = f"127.0.0.1:{free_port()}"
    env = pod_env(nacos, grpc_instance, server_addr=f"{dead},{nacos.http_addr}")

    run = run_agent(["deregister", "--wait"], env)

    assert run.returncode == 0, run.output
    assert not served(nacos, grpc_instance)
    assert enabled_on_server(nacos, grpc_instance) is False


def test_dry_run_changes_nothing(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    wait_served(nacos, grpc_instance, True)
    run = run_agent(["deregister", "--dry-run", "--no-wait"], pod_env(nacos, grpc_instance))
    assert run.returncode == 0, run.output
    time.sleep(2)
    assert served(nacos, grpc_instance)
    assert enabled_on_server(nacos, grpc_instance) is True
