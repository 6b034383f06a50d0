"""A rolling update of ``k8s-examples/nacos-spring-cloud/`` with callers, and the same without the agent.

The example runs as users copy it: through an overlay that changes only the image names, the
pull policy, the replica count (2, for time) and the example's site values (where Nacos is, and
empty credentials: this Nacos runs without auth). Two Spring Cloud consumers call it through Nacos
at a steady rate and record every call. ``kubectl rollout restart`` must then fail no call, and
every old pod's log must hold the agent's ``deregister_finished`` before the app got SIGTERM.

In the same run, a second copy of the example in its own namespace (and Nacos namespace) has
``sleep 10`` in place of the agent, the usual fix, and a smaller CPU request (the node has two
cores). Its identical rollout must fail calls: proof that this harness sees failures when there
are some (see ``traffic`` for why it always can).

The example's processes are read on the node: non-root, no new privileges, no capabilities, and
a read-only root filesystem, with the agent draining from inside them all the same. (The other
scenarios run the example in namespaces that enforce the "restricted" Pod Security Standard.)
"""

from __future__ import annotations

import concurrent.futures
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from localkube import poll, workloads
from localkube.observe import SIGTERM_LINES, LogTap, Process, container_process, first

from . import examples, traffic
from .conftest import Scenarios, Stage

EXAMPLE = "nacos-spring-cloud/orders.yaml"
SERVICE = "orders"
AGENT, SLEEP = "shop", "shop-sleep"
#: The example's own Nacos namespace for the agent's copy; the sleep copy registers in another one,
#: so that the two services' callers never meet.
NACOS_NAMESPACES = {AGENT: "6f1c2a9e-prod", SLEEP: "shop-sleep"}
REPLICAS = 2
GRACE_S = 75  # the example's terminationGracePeriodSeconds
#: After the last old pod ended, calls still in flight (the consumer's read timeout is 5 s) end.
SETTLE_S = 7.0


@dataclass
class OldPod:
    name: str
    ip: str
    log: LogTap
    process: Process


@dataclass
class Rollout:
    namespace: str
    changed: set[str]
    old: list[OldPod]
    new_ips: set[str]
    started_s: float
    ended_s: float
    calls: dict[str, list[traffic.Call]]
    stagger_s: float
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)


def overlay(namespace: str, images: dict[str, str]) -> examples.Overlay:
    nacos_namespace = NACOS_NAMESPACES[namespace]
    site = {"SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR": examples.NACOS_ADDR}
    patches = [
        examples.patch("Secret", "orders-nacos-credentials", "shop", {"stringData": {"username": "", "password": ""}}),
    ]
    if namespace == SLEEP:
        site["SPRING_CLOUD_NACOS_DISCOVERY_NAMESPACE"] = nacos_namespace
        sleep = {"name": "orders", "lifecycle": {"postStart": None, "preStop": {"exec": {"command": ["sleep", "10"]}}}}
        patches.append(examples.container_patch("orders", "shop", sleep))
        patches.append(examples.small_cpu("orders", "shop", "orders"))
    patches.append(examples.patch("ConfigMap", "orders-nacos", "shop", {"data": site}))
    return examples.Overlay(
        EXAMPLE,
        images,
        namespace=namespace if namespace != "shop" else None,
        replicas={"orders": REPLICAS},
        patches=patches,
    )


def _prepare(stage: Stage, namespace: str) -> tuple[set[str], list[str], traffic.Consumers]:
    kube = stage.kube
    stage.namespace(namespace)
    example = overlay(namespace, stage.images)
    rendered = example.apply(kube, stage.dir / namespace)
    changed = examples.changed_paths(example.documents(), rendered)
    stage.cluster.rollout(f"deployment/{SERVICE}", namespace=namespace)
    pods = kube.pods(namespace, f"app={SERVICE}")
    ips = {pod["status"]["podIP"] for pod in pods}
    poll(
        lambda: {(ip, 8080) for ip in ips} <= workloads.served(stage.nacos_ip, SERVICE, NACOS_NAMESPACES[namespace]),
        timeout=180,
        what=f"{namespace}: {sorted(ips)} served by Nacos",
    )
    consumers = traffic.Consumers(
        kube,
        namespace,
        stage.images["consumer"],
        nacos_namespace=NACOS_NAMESPACES[namespace],
        url=f"http://{SERVICE}/hello",
    )
    consumers.start(ips)
    stage.say(f"{namespace}: consumers call {sorted(ips)}, refreshes {consumers.stagger():.1f} s apart")
    return changed, [pod["metadata"]["name"] for pod in pods], consumers


def rollout(stage: Stage) -> dict[str, Rollout]:
    kube = stage.kube
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        prepared = dict(zip((AGENT, SLEEP), pool.map(lambda ns: _prepare(stage, ns), (AGENT, SLEEP)), strict=True))
    old: dict[str, list[OldPod]] = {}
    for namespace, (_, names, _) in prepared.items():
        old[namespace] = []
        for name in names:
            pod = kube.get("pod", name, namespace=namespace)
            log = stage.tap(name, namespace=namespace)
            process = container_process(stage.cluster.layout, pod["status"]["containerStatuses"][0]["containerID"])
            old[namespace].append(OldPod(name, pod["status"]["podIP"], log, process))
    time.sleep(5)  # steady calls before the rollout
    started = time.time()
    for namespace in prepared:
        kube.run("rollout", "restart", f"deployment/{SERVICE}", "-n", namespace)
    stage.say("rollout restart of both copies")
    for namespace in prepared:
        stage.cluster.rollout(f"deployment/{SERVICE}", namespace=namespace)
    for pods in old.values():
        for pod in pods:
            pod.log.wait(timeout=GRACE_S + 120)
    time.sleep(SETTLE_S)
    ended = time.time()
    stage.say("old pods gone")
    results = {}
    for namespace, (changed, _, consumers) in prepared.items():
        new_ips = {pod["status"]["podIP"] for pod in kube.pods(namespace, f"app={SERVICE}")}
        calls = consumers.record()
        result = Rollout(namespace, changed, old[namespace], new_ips, started, ended, calls, consumers.stagger())
        result.summaries = {name: traffic.summary(record, started, ended) for name, record in calls.items()}
        stage.say(f"{namespace}: {result.summaries}")
        results[namespace] = result
    return results


pytestmark = [pytest.mark.e2e, pytest.mark.scenario.with_args(rollout, alone=True)]


def test_the_overlay_changes_only_images_pull_policy_and_site_values(scenarios: Scenarios) -> None:
    changed = scenarios.result(rollout)[AGENT].changed
    allowed = {
        "Deployment/orders.spec.replicas",
        "Deployment/orders.spec.template.spec.containers[orders].image",
        "Deployment/orders.spec.template.spec.containers[orders].imagePullPolicy",
        "ConfigMap/orders-nacos.data.SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR",
        "Secret/orders-nacos-credentials.stringData.username",
        "Secret/orders-nacos-credentials.stringData.password",
    }
    assert changed <= allowed, changed - allowed
    assert "Deployment/orders.spec.template.spec.containers[orders].image" in changed


def test_a_rollout_with_the_agent_fails_no_call(scenarios: Scenarios) -> None:
    result: Rollout = scenarios.result(rollout)[AGENT]
    old_ips = {pod.ip for pod in result.old}
    for name, summary in result.summaries.items():
        # Calls all along (no pause over 3 s, most of those due at the rate), none lost from the record.
        assert summary["calls"] >= 0.6 * traffic.RATE * (result.ended_s - result.started_s), (name, summary)
        assert summary["longest_pause_s"] <= 3, (name, summary)
        assert not summary["lost"], (name, summary["lost"][:20])
        # The calls moved from the old pods to the new ones.
        assert old_ips <= set(summary["hosts"]), (name, summary["hosts"])
        assert result.new_ips <= set(summary["hosts"]), (name, summary["hosts"])
        assert summary["failed"] == 0, (name, summary["failures"])


def test_every_old_pod_logged_deregister_finished_before_sigterm(scenarios: Scenarios) -> None:
    result: Rollout = scenarios.result(rollout)[AGENT]
    assert len(result.old) == REPLICAS
    for pod in result.old:
        finished = pod.log.named("deregister_finished")
        assert len(finished) == 1, f"{pod.name}: the agent's lines are not in kubectl logs:\n{pod.log.text()}"
        finished_at, report = finished[0]
        assert report["ok"] is True, (pod.name, report)
        assert report["outcome"] == "drained", (pod.name, report)
        sigterm = first(pod.log.lines(), *SIGTERM_LINES)
        assert sigterm is not None, f"{pod.name}: the app never logged its shutdown:\n{pod.log.text()}"
        assert finished_at < sigterm, (pod.name, finished_at, sigterm)


def test_the_same_rollout_with_sleep_10_fails_calls(scenarios: Scenarios) -> None:
    result: Rollout = scenarios.result(rollout)[SLEEP]
    old_ips = {pod.ip for pod in result.old}
    failed = {name: summary["failures"] for name, summary in result.summaries.items() if summary["failed"]}
    assert failed, f"sleep 10 failed no call (consumers' refreshes {result.stagger_s:.1f} s apart)"
    for failures in failed.values():
        # Only calls to the pods being replaced failed: the callers still held them.
        assert {key.split()[0] for key in failures} <= old_ips, failures
    for pod in result.old:
        assert not pod.log.named("deregister_finished"), "the sleep copy ran the agent"


def test_the_example_runs_non_root_with_a_read_only_root(scenarios: Scenarios) -> None:
    result: Rollout = scenarios.result(rollout)[AGENT]
    for pod in result.old:
        process = pod.process
        assert (process.uid, process.gid) == (10001, 10001), process
        assert process.root_read_only, process
        assert process.no_new_privs, process
        assert process.effective_capabilities == 0, process
        # ... and the agent drained from inside that container (read-only root, no capabilities).
        assert pod.log.named("deregister_finished")[0][1]["ok"] is True
