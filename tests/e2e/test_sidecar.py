"""``k8s-examples/sidecar/``, both forms, under a real kubelet; and what it does with a 5xx.

Each example runs as users copy it, through an overlay that changes the images, the pull policy,
the namespace, the replica count (1), where Nacos is (the sidecar's ``NACOS_SERVER_ADDR`` and the
empty credentials of the Secret: this Nacos runs without auth), lowers the app's CPU request (the
node has two cores), and gives the app container the Nacos settings of its own that the example
leaves to the app. Deleting the pod must drain it
through the kubelet's ``httpGet`` to ``/prestop``: the instance leaves Nacos, the sidecar logs the
call and the drain, and the app gets SIGTERM only after the answer.

Then a third copy with a budget too short for any evidence (5 s) makes ``/prestop`` answer 504,
and a pod whose preStop ``httpGet`` finds no listener shows the other case: what the kubelet
records for each is the observation README.md and the sidecar README report.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from localkube import HarnessError, workloads
from localkube.observe import SIGTERM_LINES, LogTap, Process, container_process, first

from . import examples
from .conftest import Scenarios, Stage

SERVICE = "inventory"
NACOS_NAMESPACE = "6f1c2a9e-prod"  # the example's
NATIVE, CLASSIC, FAILING = "sidecar-native", "sidecar-classic", "sidecar-5xx"
FILES = {
    NATIVE: "sidecar/native-sidecar.yaml",
    CLASSIC: "sidecar/classic-sidecar.yaml",
    FAILING: "sidecar/native-sidecar.yaml",
}
#: The failing copy: a budget of 20 - 15 = 5 s, shorter than the traffic watcher's 10 s of quiet.
FAILING_GRACE_S = 20
REFUSED_POD = "no-listener"


@dataclass
class Drain:
    namespace: str
    changed: set[str]
    pod: str
    ip: str
    deleted: dt.datetime
    left_nacos: dt.datetime | None
    sidecar: LogTap
    app: LogTap
    process: Process
    events: list[dict[str, Any]]


@dataclass
class Refused:
    deleted: dt.datetime
    ended: dt.datetime
    events: list[dict[str, Any]]


def overlay(namespace: str, images: dict[str, str]) -> examples.Overlay:
    init = namespace != CLASSIC
    sidecar_env = examples.env(NACOS_SERVER_ADDR=examples.NACOS_ADDR)
    if namespace == FAILING:
        sidecar_env += examples.env(PRESTOP_GRACE_SECONDS=str(FAILING_GRACE_S))
    app_env = examples.env(
        SPRING_APPLICATION_NAME=SERVICE,
        SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR=examples.NACOS_ADDR,
        SPRING_CLOUD_NACOS_DISCOVERY_NAMESPACE=NACOS_NAMESPACE,
    )
    patches = [
        examples.patch(
            "Secret", "inventory-prestop", "shop", {"stringData": {"nacos-username": "", "nacos-password": ""}}
        ),
        examples.container_patch(SERVICE, "shop", {"name": "prestop", "env": sidecar_env}, init=init),
        examples.container_patch(SERVICE, "shop", {"name": SERVICE, "env": app_env}),
    ]
    if init:  # the native example asks 250m CPU for the app; the classic one asks nothing
        patches.append(examples.small_cpu(SERVICE, "shop", SERVICE))
    if namespace == FAILING:
        grace = {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": FAILING_GRACE_S}}}}
        patches.append(examples.patch("Deployment", SERVICE, "shop", grace))
    return examples.Overlay(FILES[namespace], images, namespace=namespace, replicas={SERVICE: 1}, patches=patches)


def _drain(stage: Stage, namespace: str) -> Drain:
    kube = stage.kube
    example = overlay(namespace, stage.images)
    applied, pod = stage.deploy(example, namespace, service=SERVICE, nacos_namespace=NACOS_NAMESPACE)
    changed = examples.changed_paths(example.documents(), applied)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    statuses = pod["status"].get("initContainerStatuses", []) + pod["status"]["containerStatuses"]
    sidecar_id = next(s["containerID"] for s in statuses if s["name"] == "prestop")
    process = container_process(stage.cluster.layout, sidecar_id)
    sidecar = stage.tap(name, namespace=namespace, container="prestop")
    app = stage.tap(name, namespace=namespace, container=SERVICE)
    deleted = dt.datetime.now(dt.UTC)
    kube.delete("pod", name, namespace=namespace, wait=False)
    stage.say(f"{namespace}: deleted {name}")
    left: dt.datetime | None = None
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and left is None:
        with contextlib.suppress(HarnessError):  # a busy Nacos: ask again
            if (ip, 8080) not in workloads.served(stage.nacos_ip, SERVICE, NACOS_NAMESPACE):
                left = dt.datetime.now(dt.UTC)
        time.sleep(0.2)
    app.wait(timeout=180)
    sidecar.wait(timeout=180)
    events = kube.events(namespace, involving=name)
    stage.say(f"{namespace}: events {[(e['reason'], e.get('message')) for e in events]}")
    return Drain(namespace, changed, name, ip, deleted, left, sidecar, app, process, events)


def _refused(stage: Stage) -> Refused:
    """A preStop httpGet that finds nothing listening: the pause image, nothing else in the pod."""
    kube = stage.kube
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": REFUSED_POD, "namespace": FAILING},
        "spec": {
            "terminationGracePeriodSeconds": 10,
            "containers": [
                {
                    "name": "pause",
                    "image": stage.images["pause"],
                    "imagePullPolicy": "Never",
                    "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": 9911}}},
                }
            ],
        },
    }
    kube.apply(yaml.safe_dump(pod))
    kube.wait(f"pod/{REFUSED_POD}", "condition=Ready", namespace=FAILING, timeout=120)
    deleted = dt.datetime.now(dt.UTC)
    kube.delete("pod", REFUSED_POD, namespace=FAILING, wait=True, timeout=60)
    ended = dt.datetime.now(dt.UTC)
    events = kube.events(FAILING, involving=REFUSED_POD)
    stage.say(f"{REFUSED_POD}: events {[(e['reason'], e.get('message')) for e in events]}")
    return Refused(deleted, ended, events)


def sidecars(stage: Stage) -> dict[str, Any]:
    for namespace in (NATIVE, CLASSIC, FAILING):
        stage.namespace(namespace)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        drains = {namespace: pool.submit(_drain, stage, namespace) for namespace in (NATIVE, CLASSIC, FAILING)}
        refused = pool.submit(_refused, stage)
        results: dict[str, Any] = {}
        for namespace, future in drains.items():
            try:
                results[namespace] = future.result()
            except HarnessError as exc:
                raise HarnessError(f"{namespace}: {exc}") from exc
        results[REFUSED_POD] = refused.result()
    return results


# Alone: the native sidecar's postStart ``/register`` waits for the app's first registration, and
# with a dozen JVMs starting beside it the first app container once never registered within
# the hook's 180 s (Nacos was answering in seconds); the kubelet then restarted it and a second
# /register followed.
pytestmark = [pytest.mark.e2e, pytest.mark.scenario.with_args(sidecars, alone=True)]


def _requests(tap: LogTap, path: str) -> list[tuple[dt.datetime, dict[str, Any]]]:
    return [(moment, event) for moment, event in tap.named("serve_request") if event["path"] == path]


def _from_the_node(event: dict[str, Any]) -> bool:
    return str(event["source"]).removeprefix("::ffff:") == "10.213.0.1"


@pytest.mark.parametrize("namespace", [NATIVE, CLASSIC])
def test_the_overlay_keeps_the_example(scenarios: Scenarios, namespace: str) -> None:
    drain: Drain = scenarios.result(sidecars)[namespace]
    allowed_prefixes = (
        "Deployment/inventory.spec.template.spec.containers[inventory].image",
        "Deployment/inventory.spec.template.spec.containers[inventory].imagePullPolicy",
        "Deployment/inventory.spec.template.spec.containers[inventory].env",
        "Deployment/inventory.spec.template.spec.containers[inventory].resources.requests.cpu",
        "Deployment/inventory.spec.template.spec.containers[prestop].image",
        "Deployment/inventory.spec.template.spec.containers[prestop].imagePullPolicy",
        "Deployment/inventory.spec.template.spec.containers[prestop].env[NACOS_SERVER_ADDR]",
        "Deployment/inventory.spec.template.spec.initContainers[prestop].image",
        "Deployment/inventory.spec.template.spec.initContainers[prestop].imagePullPolicy",
        "Deployment/inventory.spec.template.spec.initContainers[prestop].env[NACOS_SERVER_ADDR]",
        "Deployment/inventory.spec.replicas",
        "Secret/inventory-prestop.stringData.nacos-username",
        "Secret/inventory-prestop.stringData.nacos-password",
    )
    unexpected = {
        path
        for path in drain.changed
        if not path.startswith(allowed_prefixes) and not path.endswith(".metadata.namespace")
    }
    assert not unexpected, unexpected


@pytest.mark.parametrize("namespace", [NATIVE, CLASSIC])
def test_delete_pod_drains_through_the_kubelets_http_get(scenarios: Scenarios, namespace: str) -> None:
    drain: Drain = scenarios.result(sidecars)[namespace]
    calls = _requests(drain.sidecar, "/prestop")
    # Classic: both containers' hooks call; the second joins the first's drain.
    assert len(calls) == (1 if namespace == NATIVE else 2), calls
    for _, call in calls:
        assert call["status"] == 200, call
        assert _from_the_node(call), call
        assert str(call["user_agent"]).startswith("kube-lifecycle/"), call
    finished = drain.sidecar.named("deregister_finished")
    assert len(finished) == 1, drain.sidecar.text()
    finished_at, report = finished[0]
    assert report["ok"] is True, report
    assert drain.left_nacos is not None
    assert drain.left_nacos < finished_at + dt.timedelta(seconds=1)
    sigterm = first(drain.app.lines(), *SIGTERM_LINES)
    assert sigterm is not None, drain.app.text()
    # The kubelet held the app's SIGTERM until /prestop answered (both calls get the one drain's answer).
    assert finished_at <= sigterm, (finished_at, sigterm)
    # A request's line is written after its answer (which lets the kubelet go on): it arrived took_ms earlier.
    arrived = min(moment - dt.timedelta(milliseconds=call["took_ms"]) for moment, call in calls)
    assert arrived <= sigterm, (calls, sigterm)
    assert drain.left_nacos < sigterm
    assert not [e for e in drain.events if e["reason"] == "FailedPreStopHook"], drain.events


def test_the_native_sidecar_registers_at_start_and_stops_after_the_app(scenarios: Scenarios) -> None:
    drain: Drain = scenarios.result(sidecars)[NATIVE]
    registers = _requests(drain.sidecar, "/register")
    assert [call["status"] for _, call in registers] == [200], registers
    assert _from_the_node(registers[0][1])
    assert drain.sidecar.named("register_finished")[0][1]["ok"] is True
    signalled = drain.sidecar.named("serve_signal")
    assert signalled, drain.sidecar.text()
    app_last = drain.app.lines()[-1][0]
    assert signalled[0][0] > app_last, (signalled[0][0], app_last)


@pytest.mark.parametrize("namespace", [NATIVE, CLASSIC])
def test_the_sidecar_runs_non_root_with_a_read_only_root(scenarios: Scenarios, namespace: str) -> None:
    process = scenarios.result(sidecars)[namespace].process
    assert process.uid == 65532, process
    assert process.root_read_only, process
    assert process.no_new_privs, process
    assert process.effective_capabilities == 0, process


def test_a_5xx_from_prestop_is_no_failed_hook_for_the_kubelet(scenarios: Scenarios) -> None:
    drain: Drain = scenarios.result(sidecars)[FAILING]
    calls = _requests(drain.sidecar, "/prestop")
    # 504 when the budget ran out; 502 when, on a busy node, Nacos did not answer within it.
    assert [call["status"] for _, call in calls] in ([504], [502]), calls
    report = drain.sidecar.named("deregister_finished")[0][1]
    assert report["ok"] is False, report
    assert report["outcome"] == ("budget_exhausted" if calls[0][1]["status"] == 504 else "failed"), report
    reasons = [event["reason"] for event in drain.events]
    assert "FailedPreStopHook" not in reasons, drain.events
    # SIGTERM came right after the answer, not at the end of the grace period.
    sigterm = first(drain.app.lines(), *SIGTERM_LINES)
    assert sigterm is not None
    assert sigterm - calls[0][0] < dt.timedelta(seconds=3), (calls[0][0], sigterm)


def test_a_refused_prestop_call_is_a_failed_hook(scenarios: Scenarios) -> None:
    refused: Refused = scenarios.result(sidecars)[REFUSED_POD]
    failed = [event for event in refused.events if event["reason"] == "FailedPreStopHook"]
    assert failed, refused.events
    assert failed[0]["type"] == "Warning"
