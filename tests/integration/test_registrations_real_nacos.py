"""Every registration of a pod, held out until the end, on real Nacos 2.0.4 and 3.1.0 servers.

A pod with four registrations (two over gRPC by the real Java client, in two groups; one over HTTP
with heartbeats; one persistent), an instance enabled again mid-drain, and a real Dubbo 3 provider.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from localnacos import DubboProvider, HarnessError, HttpInstance, JavaInstance, NacosProcess, wait_until
from localnacos.dubbo import INTERFACE_SERVICE
from tests.integration.conftest import next_address, unavailable
from tests.integration.test_agent_real_nacos import Run, agent_command, run_agent

pytestmark = pytest.mark.integration

MARK = "prestop-agent.disabled"


@dataclass(frozen=True)
class Reg:
    service: str
    port: int
    group: str = "DEFAULT_GROUP"


def env_for(nacos: NacosProcess, ip: str, port: int, **extra: str) -> dict[str, str]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "POD_IP": ip,
        "NACOS_SERVER_ADDR": nacos.http_addr,
        "NACOS_SERVICE_PORT": str(port),
        "PRESTOP_WAIT_FOR": "registry",
        "PRESTOP_CONSUMER_CACHE_SECONDS": "1",
        "PRESTOP_BUDGET_SECONDS": "60",
        "PRESTOP_LOG_TO_PID1": "false",
        **extra,
    }
    if nacos.auth:
        env["NACOS_USERNAME"] = nacos.username or ""
        env["NACOS_PASSWORD"] = nacos.password or ""
    return env


def events(run: Run | str, name: str) -> list[dict[str, object]]:
    text = run if isinstance(run, str) else run.stderr
    found = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    return [e for e in found if e.get("event") == name]


def host(nacos: NacosProcess, reg: Reg, ip: str) -> dict[str, object] | None:
    return nacos.find_host(reg.service, ip, reg.port, group=reg.group)


def served(nacos: NacosProcess, reg: Reg, ip: str) -> bool:
    hosts = nacos.served_hosts(reg.service, group=reg.group)
    return any(h.get("ip") == ip and h.get("port") == reg.port for h in hosts)


def wait_served(nacos: NacosProcess, reg: Reg, ip: str, *, timeout: float) -> None:
    wait_until(lambda: served(nacos, reg, ip), timeout=timeout, what=f"{reg.group}@@{reg.service} {ip} served")


# -- a pod with several registrations -----------------------------------------------------------------


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Something listening where the persistent instance is, so that Nacos's TCP health check passes."""
    with socket.socket() as sock:
        yield sock


def test_every_registration_of_the_pod_leaves_the_served_list_and_register_puts_them_back(
    nacos: NacosProcess, listener: socket.socket
) -> None:
    ip, app_port = next_address()
    regs = {
        "grpc": Reg("it-regs-app", app_port),
        "grpc-other-group": Reg("providers:com.example.OrderApi::", next_address()[1], group="DUBBO"),
        "http": Reg("it-regs-admin", next_address()[1]),
        "persistent": Reg("it-regs-dns", next_address()[1]),
    }
    neighbour_ip, _ = next_address()
    listener.bind((ip, regs["persistent"].port))
    listener.listen(8)
    persistent: dict[str, str | int] = {
        "serviceName": regs["persistent"].service,
        "ip": ip,
        "port": regs["persistent"].port,
    }
    apps: list[JavaInstance | HttpInstance] = [
        JavaInstance(nacos, regs["grpc"].service, ip, regs["grpc"].port),
        JavaInstance(nacos, regs["grpc-other-group"].service, ip, regs["grpc-other-group"].port, group="DUBBO"),
        HttpInstance(nacos, regs["http"].service, ip, regs["http"].port),
        HttpInstance(nacos, regs["grpc"].service, neighbour_ip, app_port),  # another pod of the same app
    ]
    try:
        for app in apps:
            app.start()
        answer = nacos.request("POST", "/v1/ns/instance", {**persistent, "ephemeral": "false"})
        assert answer.status_code == 200, answer.text
        for reg in regs.values():
            wait_served(nacos, reg, ip, timeout=60)
        env = env_for(nacos, ip, app_port, NACOS_SERVICE_NAME=regs["grpc"].service)

        drained = run_agent(["deregister", "--wait"], env)

        assert drained.returncode == 0, drained.output
        for name, reg in regs.items():
            assert not served(nacos, reg, ip), f"{name} is still served after exit 0"
            found = host(nacos, reg, ip)
            assert found is not None, f"{name} should still be registered, disabled"
            assert found["enabled"] is False, name
            assert found["metadata"] == {MARK: "true"}, name
        assert served(nacos, Reg(regs["grpc"].service, app_port), neighbour_ip), "another pod's instance stays"
        found_event = events(drained, "registrations_found")[0]
        assert found_event["count"] == 4
        sources = found_event["sources"]
        assert isinstance(sources, dict)
        if nacos.major == 2:
            assert events(drained, "client_list_unavailable"), "2.0.4 has no client list"
        else:
            # The HTTP and persistent instances are clients named ip:port#ephemeral; the gRPC ones connect from
            # 127.0.0.1 here (not the pod's address), so the scan finds the one outside the named service.
            assert sources == {"client_list": 2, "scan": 1}, sources

        status = run_agent(["status", "--json"], env)
        assert status.returncode == 0, status.output
        listed = json.loads(status.stdout)["registrations"]
        assert len(listed) == 4
        assert all(r["enabled"] is False and r["marked"] and r["served_by"] == [] for r in listed), listed

        back = run_agent(["register"], env)

        assert back.returncode == 0, back.output
        for name, reg in regs.items():
            wait_served(nacos, reg, ip, timeout=30)
            found = host(nacos, reg, ip)
            assert found is not None
            assert found["enabled"] is True, name
            assert MARK not in found["metadata"], name  # type: ignore[operator]
    finally:
        for app in apps:
            app.stop()
        nacos.request("DELETE", "/v1/ns/instance", {**persistent, "ephemeral": "false"})


# -- an instance enabled again mid-drain ---------------------------------------------------------------


class Agent:
    """``deregister --wait`` as a child process, its stderr read as it comes."""

    def __init__(self, env: dict[str, str]) -> None:
        self.started = time.monotonic()
        self.process = subprocess.Popen(
            [*agent_command(), "deregister", "--wait"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()

    def wait_for_event(self, name: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._changed:
            while not events("".join(self.lines), name):
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"no {name} event; stderr:\n{''.join(self.lines)}")
                self._changed.wait(0.2)

    def finish(self, timeout: float) -> tuple[int, str, float]:
        code = self.process.wait(timeout=timeout)
        seconds = time.monotonic() - self.started
        self.close()
        return code, "".join(self.lines), seconds

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        for stream in (self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def test_an_instance_enabled_again_mid_drain_is_taken_out_again_and_ends_drained(
    nacos: NacosProcess, grpc_instance: JavaInstance
) -> None:
    if nacos.auth:
        pytest.skip("the re-assertion writes as the drain does; auth is covered by the other tests")
    reg = Reg(grpc_instance.service, grpc_instance.port)
    ip = grpc_instance.ip
    wait_until(lambda: served(nacos, reg, ip), timeout=30, what="served")
    budget = 45
    env = env_for(
        nacos,
        ip,
        reg.port,
        NACOS_SERVICE_NAME=reg.service,
        PRESTOP_WAIT_FOR="registry,traffic",
        PRESTOP_CONSUMER_CACHE_SECONDS="6",
        PRESTOP_QUIET_SECONDS="3",
        PRESTOP_BUDGET_SECONDS=str(budget),
    )
    agent = Agent(env)
    try:
        agent.wait_for_event("instance_unserved", timeout=40)
        # An operator (or a node that lost the override, nacos#11890) puts the instance back mid-drain.
        nacos.set_enabled(reg.service, ip, reg.port, True)
        code, stderr, seconds = agent.finish(timeout=budget + 30)
    finally:
        agent.close()

    assert code == 0, stderr
    assert seconds < budget + 1 + 3, f"took {seconds:.1f} s for a {budget} s budget"  # +3 s interpreter start
    reasserted = events(stderr, "drain_reasserted")
    assert [e["count"] for e in reasserted] == [1], stderr
    restarted = events(stderr, "evidence_restarted")
    assert restarted, stderr
    finished = events(stderr, "deregister_finished")[0]
    assert finished["outcome"] == "drained"
    assert finished["reasserted"] == 1
    watchers = finished["watchers"]
    assert isinstance(watchers, dict)
    restart_ms = restarted[0]["at_ms"]
    assert isinstance(restart_ms, int)
    assert watchers["traffic"]["at_ms"] >= restart_ms + 3000, "the quiet time started over"
    assert watchers["registry"]["at_ms"] >= restart_ms + 6000, "the consumer-cache allowance started over"
    found = host(nacos, reg, ip)
    assert found is not None
    assert found["enabled"] is False
    assert not served(nacos, reg, ip)


# -- a real Dubbo 3 provider ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dubbo(nacos: NacosProcess) -> Iterator[DubboProvider]:
    """One Dubbo provider per server major (auth off): interface-level and application-level registrations."""
    if nacos.auth:
        pytest.skip("one Dubbo provider per server major: the auth-off servers")
    provider = DubboProvider(nacos, f"it-dubbo-orders-{nacos.major}")
    try:
        provider.start()
    except HarnessError as exc:
        unavailable(str(exc))
    try:
        yield provider
    finally:
        provider.stop()


def dubbo_regs(dubbo: DubboProvider) -> dict[str, Reg]:
    return {"interface": Reg(INTERFACE_SERVICE, dubbo.port), "application": Reg(dubbo.application, dubbo.port)}


def dubbo_env(nacos: NacosProcess, dubbo: DubboProvider, **extra: str) -> dict[str, str]:
    # The pod name names the Dubbo application, as a Deployment's pod would; no service name is set.
    return env_for(nacos, dubbo.host, dubbo.port, HOSTNAME=f"{dubbo.application}-7d9c8b6f5d-x2k4q", **extra)


def test_a_dubbo_provider_leaves_no_registration_served(nacos: NacosProcess, dubbo: DubboProvider) -> None:
    regs = dubbo_regs(dubbo)
    for reg in regs.values():
        wait_served(nacos, reg, dubbo.host, timeout=30)
    env = dubbo_env(nacos, dubbo)

    drained = run_agent(["deregister", "--wait"], env)

    assert drained.returncode == 0, drained.output
    for name, reg in regs.items():
        assert not served(nacos, reg, dubbo.host), f"the {name}-level registration is still served"
        found = host(nacos, reg, dubbo.host)
        assert found is not None
        assert found["enabled"] is False
    assert {e["endpoint"] for e in events(drained, "instance_disabled")} == {f"{dubbo.host}:{dubbo.port}"}
    assert len(events(drained, "instance_disabled")) == 2

    back = run_agent(["register"], env)
    assert back.returncode == 0, back.output
    for reg in regs.values():
        wait_served(nacos, reg, dubbo.host, timeout=30)


def test_dubbo_qos_offline_is_proven_in_nacos_and_register_brings_it_online(
    nacos: NacosProcess, dubbo: DubboProvider
) -> None:
    regs = dubbo_regs(dubbo)
    for reg in regs.values():
        wait_served(nacos, reg, dubbo.host, timeout=30)
    env = dubbo_env(nacos, dubbo, PRESTOP_DUBBO_QOS="true", PRESTOP_DUBBO_QOS_PORT=str(dubbo.qos_port))

    drained = run_agent(["deregister", "--wait"], env)

    assert drained.returncode == 0, drained.output
    [command] = events(drained, "dubbo_qos_command")
    assert (command["command"], command["ok"], command["answer"]) == ("offline", True, "200 OK")
    offline = events(drained, "dubbo_offline")[0]
    assert offline["still_served"] == []
    assert len(offline["unregistered"]) == 2  # type: ignore[arg-type]
    assert not events(drained, "instance_disabled"), "Dubbo took them out: nothing to write"
    for name, reg in regs.items():
        assert not served(nacos, reg, dubbo.host), f"the {name}-level registration is still served"
        assert host(nacos, reg, dubbo.host) is None, "QoS offline unregisters; it does not disable"

    back = run_agent(["register", "--wait"], env)

    assert back.returncode == 0, back.output
    assert [e["command"] for e in events(back, "dubbo_qos_command")] == ["online"]
    for reg in regs.values():
        wait_served(nacos, reg, dubbo.host, timeout=30)
