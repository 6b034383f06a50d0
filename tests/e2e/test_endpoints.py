"""The ``endpoints`` watcher in the cluster: the pod's own service account, the example's RBAC, the
real EndpointSlice controller.

``k8s-examples/rbac-endpoints-watcher.yaml`` is applied as users apply it, moved into this test's
namespace by kustomize (which moves the RoleBinding's subject with it). A pod of the Spring app
runs as its ServiceAccount ``web`` with ``PRESTOP_WAIT_FOR=endpoints``, behind a Service that
first has ``publishNotReadyAddresses: true``: the EndpointSlice controller then keeps even a
terminating pod ``ready``. After the pod is deleted, the test turns that off at a moment it
notes; only then does the real slice mark the pod not ready, and the agent must say "gone" only
after it. A second pod with the namespace's default ServiceAccount (no Role) must log a clear
403 with the fix and wait out its budget.
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from localkube import poll, workloads
from localkube.observe import SIGTERM_LINES, Change, LogTap, first

from . import examples
from .conftest import Scenarios, Stage

NAMESPACE = "endpoints"
WITH_RBAC, WITHOUT = "web", "web-norbac"
#: Budgets: long enough for the test to hold the slice "ready" a while; short for the refused one.
GRACE_S = {WITH_RBAC: 60, WITHOUT: 25}
RESERVE_S = 15
HOLD_S = 3.0  # how long the slice is kept "ready" once the agent has seen it so


@dataclass
class Watched:
    pod: str
    ip: str
    deleted: dt.datetime
    log: LogTap


@dataclass
class Endpoints:
    rbac_changed: set[str]
    web: Watched
    norbac: Watched
    flipped: dt.datetime
    slices: list[Change]


def workload(name: str, image: str, *, service_account: str) -> list[dict[str, Any]]:
    """A Service and a one-pod Deployment of the Spring app whose preStop waits on EndpointSlices."""
    labels = {"app": name}
    env = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        {"name": "HOST_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.hostIP"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        *examples.env(
            SPRING_APPLICATION_NAME=name,
            SERVER_PORT="8080",
            SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR=workloads.NACOS_ADDR,
            PRESTOP_WAIT_FOR="endpoints",
            PRESTOP_GRACE_SECONDS=str(GRACE_S[name]),
            PRESTOP_SHUTDOWN_RESERVE_SECONDS=str(RESERVE_S),
        ),
    ]
    container = {
        "name": "app",
        "image": image,
        "imagePullPolicy": "Never",
        "env": env,
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/actuator/health/readiness", "port": "http"}, "periodSeconds": 2},
        "lifecycle": {"preStop": {"exec": {"command": ["/opt/prestop-agent/prestop-agent", "deregister", "--wait"]}}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    pod_spec = {
        "serviceAccountName": service_account,
        "terminationGracePeriodSeconds": GRACE_S[name],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 10001,
            "runAsGroup": 10001,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    return [
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "selector": labels,
                "ports": [{"name": "http", "port": 8080, "targetPort": "http"}],
                # Keeps a terminating pod "ready" in the slice until the test turns it off.
                "publishNotReadyAddresses": True,
            },
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {
                "replicas": 1,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": pod_spec},
            },
        },
    ]


def _ready(change: Change, ip: str) -> bool | None:
    """Whether a slice change lists ``ip`` as ready (None: not listed)."""
    for endpoint in change.object.get("endpoints") or []:
        if ip in endpoint.get("addresses", []):
            return bool(endpoint.get("conditions", {}).get("ready", True))
    return None


def _terminating(change: Change, ip: str) -> bool:
    endpoint = next(e for e in change.object.get("endpoints") or [] if ip in e.get("addresses", []))
    return bool(endpoint.get("conditions", {}).get("terminating"))


def _agent_saw_ready(log: LogTap) -> bool:
    return any(e["event"] == "endpoints_state" and e["verdict"] == "present" for _, e in log.agent())


def _served(nacos_ip: str, service: str, ip: str) -> bool:
    return (ip, 8080) in workloads.served(nacos_ip, service)


def endpoints(stage: Stage) -> Endpoints:
    kube = stage.kube
    stage.namespace(NAMESPACE, restricted=True)
    rbac = examples.Overlay("rbac-endpoints-watcher.yaml", stage.images, namespace=NAMESPACE)
    rbac_changed = examples.changed_paths(rbac.documents(), rbac.apply(kube, stage.dir / "rbac"))
    objects = workload(WITH_RBAC, stage.images["shop"], service_account="web")
    objects += workload(WITHOUT, stage.images["shop"], service_account="default")
    kube.apply(yaml.safe_dump_all(objects, sort_keys=False))
    watched = {}
    for name in (WITH_RBAC, WITHOUT):
        stage.cluster.rollout(f"deployment/{name}", namespace=NAMESPACE)
        pod = kube.pods(NAMESPACE, f"app={name}")[0]
        pod_name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
        poll(functools.partial(_served, stage.nacos_ip, name, ip), timeout=180, what=f"{ip}:8080 served as {name}")
        log = stage.tap(pod_name, namespace=NAMESPACE)
        watched[name] = Watched(pod_name, ip, dt.datetime.now(dt.UTC), log)
    web = watched[WITH_RBAC]
    slices = stage.watch("endpointslices", namespace=NAMESPACE, selector=f"kubernetes.io/service-name={WITH_RBAC}")
    try:
        slices.wait_for(lambda c: _ready(c, web.ip) is True, timeout=60, what=f"{web.ip} ready in the slice")
        for item in watched.values():
            item.deleted = dt.datetime.now(dt.UTC)
            kube.delete("pod", item.pod, namespace=NAMESPACE, wait=False)
        stage.say(f"deleted {web.pod} and {watched[WITHOUT].pod}")
        # The agent starts, disables the instance and polls the slice, which still says ready.
        slices.wait_for(
            lambda c: _ready(c, web.ip) is True and _terminating(c, web.ip),
            timeout=60,
            what=f"{web.ip} terminating but ready in the slice",
        )
        # ... and holds the pod until the agent has read it so with the pod's own token.
        poll(functools.partial(_agent_saw_ready, web.log), timeout=90, what=f"{web.pod}: the agent reading the slice")
        time.sleep(HOLD_S)
        flipped = dt.datetime.now(dt.UTC)
        kube.run("patch", "service", WITH_RBAC, "-n", NAMESPACE, "-p", '{"spec":{"publishNotReadyAddresses":false}}')
        stage.say("publishNotReadyAddresses turned off")
        slices.wait_for(lambda c: _ready(c, web.ip) is False, timeout=60, what=f"{web.ip} not ready in the slice")
        for item in watched.values():
            item.log.wait(timeout=GRACE_S[WITH_RBAC] + 60)
    finally:
        slices.stop()
    return Endpoints(
        rbac_changed, web, watched[WITHOUT], flipped, [c for c in slices.changes if _ready(c, web.ip) is not None]
    )


pytestmark = [pytest.mark.e2e, pytest.mark.scenario.with_args(endpoints)]


def _verdicts(log: LogTap, watcher: str) -> list[tuple[dt.datetime, dict[str, Any]]]:
    return [(moment, event) for moment, event in log.named("watcher_verdict") if event["watcher"] == watcher]


def test_the_rbac_example_is_applied_as_written(scenarios: Scenarios) -> None:
    changed = scenarios.result(endpoints).rbac_changed
    assert changed, "the namespace moved, nothing else"
    assert all(path.endswith(".metadata.namespace") or path.endswith("subjects[web].namespace") for path in changed), (
        changed
    )


def test_gone_only_after_the_real_slice_marks_the_pod_not_ready(scenarios: Scenarios) -> None:
    result: Endpoints = scenarios.result(endpoints)
    log = result.web.log
    verdicts = _verdicts(log, "endpoints")
    present = [moment for moment, event in verdicts if event["verdict"] == "present"]
    gone = [(moment, event) for moment, event in verdicts if event["verdict"] == "gone"]
    # While the slice still said ready, the watcher polled with the pod's token and said present.
    assert present, log.text()
    assert present[0] < result.flipped
    assert gone, log.text()
    gone_at, event = gone[0]
    assert event["reason"] == "not_ready", event
    assert gone_at > result.flipped, (gone_at, result.flipped)
    # What the watch saw: ready (terminating) before the flip, not ready only after it.
    assert all(_ready(c, result.web.ip) for c in result.slices if c.at < result.flipped)
    assert any(_ready(c, result.web.ip) is False and c.at > result.flipped for c in result.slices)
    finished = log.named("deregister_finished")[0][1]
    assert finished["ok"] is True, finished
    assert finished["outcome"] == "drained", finished
    sigterm = first(log.lines(), *SIGTERM_LINES)
    assert sigterm is not None
    assert sigterm > gone_at


def test_without_the_rbac_it_says_why_and_waits_out_the_budget(scenarios: Scenarios) -> None:
    result: Endpoints = scenarios.result(endpoints)
    log = result.norbac.log
    errors = [event["error"] for _, event in log.named("watcher_error") if event["watcher"] == "endpoints"]
    assert errors, log.text()
    assert "forbidden (403)" in errors[0], errors[0]
    assert "system:serviceaccount:endpoints:default" in errors[0], errors[0]
    assert "rbac-endpoints-watcher.yaml" in errors[0], errors[0]
    assert not [event for _, event in _verdicts(log, "endpoints") if event["verdict"] == "gone"]
    finished = log.named("deregister_finished")[0][1]
    assert finished["ok"] is False, finished
    assert finished["outcome"] == "budget_exhausted", finished
    budget_ms = (GRACE_S[WITHOUT] - RESERVE_S) * 1000
    assert budget_ms - 1000 <= finished["elapsed_ms"] <= budget_ms + 1000, finished
