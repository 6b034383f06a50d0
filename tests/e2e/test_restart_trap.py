"""The restart trap, observed: a liveness failure restarts the container in the same pod, same IP.

The kubelet runs the preStop hook before it restarts a container whose liveness probe failed, so
the agent disables the instance in Nacos. The new container keeps the pod's IP, registers the same
ip:port again, and Nacos re-applies the ``enabled=false`` it still holds for it: the instance
comes back invisible. The nacos-spring-cloud example's postStart ``register --wait`` turns it on
again once the app has registered; a copy without that hook stays disabled.

Both copies are the example through an overlay that adds what an app with a liveness probe has
(Spring Boot's liveness probe, and a startup probe so that a restarting app is not killed while
it starts), gives each copy its own Nacos namespace and a smaller CPU request (the node has two
cores); the second copy also drops the postStart hook. Both run where the "restricted" Pod
Security Standard is enforced. The app's ``POST /liveness/broken`` makes its liveness probe fail, as a broken app would.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import functools
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from localkube import HarnessError, Kube, poll, workloads
from localkube.observe import LogTap, parse_stamp

from . import examples
from .conftest import Scenarios, Stage

EXAMPLE = "nacos-spring-cloud/orders.yaml"
SERVICE = "orders"
WITH_HOOK, WITHOUT_HOOK = "trap", "trap-bare"
#: How long the copy without the hook is watched after its app registered again.
WATCH_S = 60.0


@dataclass
class Restart:
    namespace: str
    changed: set[str]
    pod: str
    uid_before: str
    uid_after: str
    ip_before: str
    ip_after: str
    broken: dt.datetime
    left: dt.datetime | None
    served_again: dt.datetime | None
    registered_again: dt.datetime | None
    disabled_until: dt.datetime | None  # the copy without the hook: last time it was seen disabled
    restarts: int
    started_again: dt.datetime
    last_state: dict[str, Any]
    first_log: LogTap
    second_log: str
    events: list[dict[str, Any]]


def overlay(namespace: str, images: dict[str, str]) -> examples.Overlay:
    probe = {"httpGet": {"path": "/actuator/health/liveness", "port": "http"}}
    container: dict[str, Any] = {
        "name": "orders",
        # A broken app fails every probe; two in a row, each allowed 5 s, keep a slow answer on a
        # busy node from restarting a healthy container.
        "livenessProbe": {**probe, "periodSeconds": 2, "timeoutSeconds": 5, "failureThreshold": 2},
        "startupProbe": {**probe, "periodSeconds": 1, "failureThreshold": 120},
    }
    if namespace == WITHOUT_HOOK:
        container["lifecycle"] = {"postStart": None}
    site = {"SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR": examples.NACOS_ADDR}
    site["SPRING_CLOUD_NACOS_DISCOVERY_NAMESPACE"] = namespace
    patches = [
        examples.patch("Secret", "orders-nacos-credentials", "shop", {"stringData": {"username": "", "password": ""}}),
        examples.patch("ConfigMap", "orders-nacos", "shop", {"data": site}),
        examples.container_patch("orders", "shop", container),
        examples.small_cpu("orders", "shop", "orders"),
    ]
    return examples.Overlay(EXAMPLE, images, namespace=namespace, replicas={"orders": 1}, patches=patches)


def _restart(stage: Stage, namespace: str) -> Restart:
    kube = stage.kube
    example = overlay(namespace, stage.images)
    applied, pod = stage.deploy(example, namespace, service=SERVICE)
    changed = examples.changed_paths(example.documents(), applied)
    name, uid, ip = pod["metadata"]["name"], pod["metadata"]["uid"], pod["status"]["podIP"]
    endpoint = (ip, 8080)
    first_log = stage.tap(name, namespace=namespace)
    broken = dt.datetime.now(dt.UTC)
    httpx.post(f"http://{ip}:8080/liveness/broken", timeout=60).raise_for_status()
    stage.say(f"{namespace}: liveness broken")
    left = served_again = registered_again = disabled_until = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        now = dt.datetime.now(dt.UTC)
        try:
            served = endpoint in workloads.served(stage.nacos_ip, SERVICE, namespace)
            registered = workloads.registered(stage.nacos_ip, SERVICE, namespace)
        except HarnessError:  # a busy Nacos: ask again
            time.sleep(0.5)
            continue
        if left is None:
            left = now if not served else None
        elif served:
            served_again = now
            break
        elif first_log.ended() and endpoint in registered:
            registered_again = registered_again or now
            if registered[endpoint] is False:
                disabled_until = now
            if now - registered_again > dt.timedelta(seconds=WATCH_S):
                break
        time.sleep(0.5)
    stage.say(f"{namespace}: left {left}, served again {served_again}, disabled until {disabled_until}")
    # The kubelet reports the new container once its postStart hook has returned.
    pod = poll(functools.partial(_restarted, kube, name, namespace), timeout=120, what=f"{namespace}/{name} restarted")
    status = pod["status"]["containerStatuses"][0]
    second_log = kube.logs(name, namespace=namespace, timestamps=True)
    started_again = parse_stamp(status["state"]["running"]["startedAt"])
    if served_again:
        stage.say(f"{namespace}: served again {(served_again - started_again).total_seconds():.1f} s after the restart")
    return Restart(
        namespace=namespace,
        changed=changed,
        pod=name,
        uid_before=uid,
        uid_after=pod["metadata"]["uid"],
        ip_before=ip,
        ip_after=pod["status"]["podIP"],
        broken=broken,
        left=left,
        served_again=served_again,
        registered_again=registered_again,
        disabled_until=disabled_until,
        restarts=status["restartCount"],
        started_again=started_again,
        last_state=status["lastState"],
        first_log=first_log,
        second_log=second_log,
        events=kube.events(namespace, involving=name),
    )


def _restarted(kube: Kube, name: str, namespace: str) -> dict[str, Any] | None:
    """The pod once its container has restarted and runs again (a postStart hook still running shows as waiting)."""
    pod: dict[str, Any] = kube.get("pod", name, namespace=namespace)
    status = pod["status"]["containerStatuses"][0]
    return pod if status["restartCount"] and "running" in status["state"] else None


def restart_trap(stage: Stage) -> dict[str, Restart]:
    for namespace in (WITH_HOOK, WITHOUT_HOOK):
        stage.namespace(namespace, restricted=True)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        futures = {namespace: pool.submit(_restart, stage, namespace) for namespace in (WITH_HOOK, WITHOUT_HOOK)}
        return {namespace: future.result() for namespace, future in futures.items()}


pytestmark = [pytest.mark.e2e, pytest.mark.scenario.with_args(restart_trap)]


@pytest.mark.parametrize("namespace", [WITH_HOOK, WITHOUT_HOOK])
def test_a_failed_liveness_probe_runs_prestop_and_restarts_in_the_same_pod(
    scenarios: Scenarios, namespace: str
) -> None:
    result: Restart = scenarios.result(restart_trap)[namespace]
    assert result.restarts == 1, result
    assert result.uid_after == result.uid_before
    assert result.ip_after == result.ip_before
    killing = [e for e in result.events if e["reason"] == "Killing"]
    assert any("failed liveness probe, will be restarted" in e["message"] for e in killing), result.events
    # The kubelet ran the preStop hook before the restart: the agent drained the instance.
    finished = result.first_log.named("deregister_finished")
    assert len(finished) == 1, result.first_log.text()
    assert finished[0][1]["ok"] is True, finished
    assert result.left is not None
    assert result.left > result.broken


def test_with_the_examples_poststart_the_instance_is_served_again(scenarios: Scenarios) -> None:
    result: Restart = scenarios.result(restart_trap)[WITH_HOOK]
    assert result.served_again is not None, result
    assert result.served_again > result.started_again
    assert any('"register_finished"' in line and '"ok": true' in line for line in result.second_log.splitlines())


def test_without_it_the_instance_stays_disabled(scenarios: Scenarios) -> None:
    result: Restart = scenarios.result(restart_trap)[WITHOUT_HOOK]
    assert result.served_again is None, result
    assert result.registered_again is not None, "the app never registered again"
    assert result.disabled_until is not None
    # Registered again, by the new container, and disabled for the whole watch.
    assert result.disabled_until - result.registered_again >= dt.timedelta(seconds=WATCH_S - 1), result
