"""A grace period too short for the wait: what the kubelet does at its end, and the agent's budget.

Three copies of the nacos-spring-cloud example (each in its own Nacos namespace, with a smaller
CPU request: the node has two cores) with ``terminationGracePeriodSeconds: 35``, each
called without pause by a client that reaches the pod by its IP (so the traffic watcher never
sees 10 s of quiet and every wait runs to its end):

- ``grace-short`` keeps the example's ``PRESTOP_GRACE_SECONDS=75``: ``prestop-agent check``
  rejects it for the grace period (35 < 50 + 25). The kubelet stops waiting for the hook at the
  grace period, sends SIGTERM, and kills the container two seconds later, the agent with it.
- ``grace-matched`` sets ``PRESTOP_GRACE_SECONDS=35`` as the example says (equal to the pod's
  grace period): a 10 s budget, which ``check`` rejects only as too short for the evidence. The
  agent ends within its budget, long before the kubelet would kill it, and the app shuts down.
- ``grace-hung`` is ``grace-matched`` with a Nacos for the agent that accepts connections and
  never answers: the agent still ends within its budget (invariant 1, whatever the network does).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import functools
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from localkube import HarnessError, Kube, poll
from localkube.observe import SIGTERM_LINES, LogTap, first, parse_stamp

from . import examples
from .conftest import Scenarios, Stage

EXAMPLE = "nacos-spring-cloud/orders.yaml"
SERVICE = "orders"
SHORT, MATCHED, HUNG = "grace-short", "grace-matched", "grace-hung"
CALLERS = "grace-callers"
GRACE_S = 35
RESERVE_S = 25  # the example's
#: A client that calls the given URLs without pause, and a "Nacos" that accepts and never answers.
CALLER = """
import sys, time, urllib.request
while True:
    for url in sys.argv[1:]:
        try:
            urllib.request.urlopen(url, timeout=1).read()
        except Exception:
            pass
    time.sleep(0.2)
"""
SILENT_SERVER = """
import socket
server = socket.create_server(("", 8848), backlog=128)
held = []
while True:
    held.append(server.accept())
"""


@dataclass
class Ending:
    namespace: str
    check_exit: int
    check_output: str
    pod: str
    deleted: dt.datetime
    log: LogTap
    terminated: dict[str, Any]  # the container's last state, from the pod watch
    events: list[dict[str, Any]]


def overlay(namespace: str, images: dict[str, str], silent_nacos: str | None) -> examples.Overlay:
    site = {
        "SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR": examples.NACOS_ADDR,
        "SPRING_CLOUD_NACOS_DISCOVERY_NAMESPACE": namespace,
    }
    container: dict[str, Any] = {"name": "orders", "env": []}
    if namespace != SHORT:
        container["env"] += examples.env(PRESTOP_GRACE_SECONDS=str(GRACE_S))
    if silent_nacos:  # the agent's own server setting wins over the app's Spring one
        container["env"] += examples.env(NACOS_SERVER_ADDR=silent_nacos)
        # Its postStart would wait for that Nacos too and, after its timeout, get the container killed.
        container["lifecycle"] = {"postStart": None}
    grace = {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": GRACE_S}}}}
    patches = [
        examples.patch("Secret", "orders-nacos-credentials", "shop", {"stringData": {"username": "", "password": ""}}),
        examples.patch("ConfigMap", "orders-nacos", "shop", {"data": site}),
        examples.patch("Deployment", "orders", "shop", grace),
        examples.container_patch("orders", "shop", container),
        examples.small_cpu("orders", "shop", "orders"),
    ]
    return examples.Overlay(EXAMPLE, images, namespace=namespace, replicas={"orders": 1}, patches=patches)


def _python_pod(name: str, image: str, script: str, *args: str) -> str:
    security = {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "runAsNonRoot": True,
        "runAsUser": 65534,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": CALLERS},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": name,
                    "image": image,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", script, *args],
                    "securityContext": security,
                }
            ],
        },
    }
    return yaml.safe_dump(pod, sort_keys=False)


def _check(rendered: list[dict[str, Any]], stage: Stage, namespace: str) -> tuple[int, str]:
    path = stage.dir / f"{namespace}.rendered.yaml"
    path.write_text(yaml.safe_dump_all(rendered, sort_keys=False))
    result = subprocess.run(
        [sys.executable, "-m", "prestop_agent", "check", str(path)], capture_output=True, text=True, check=False
    )
    return result.returncode, result.stdout + result.stderr


def _start(stage: Stage, namespace: str, silent_nacos: str | None) -> tuple[int, str, str, str]:
    applied, pod = stage.deploy(overlay(namespace, stage.images, silent_nacos), namespace, service=SERVICE)
    check_exit, check_output = _check(applied, stage, namespace)
    return check_exit, check_output, pod["metadata"]["name"], pod["status"]["podIP"]


def _end(stage: Stage, namespace: str, name: str) -> tuple[dt.datetime, LogTap, dict[str, Any]]:
    kube = stage.kube
    log = stage.tap(name, namespace=namespace)
    pods = stage.watch("pods", namespace=namespace)
    try:
        deleted = dt.datetime.now(dt.UTC)
        kube.delete("pod", name, namespace=namespace, wait=False)
        log.wait(timeout=GRACE_S + 60)
        change = pods.wait_for(
            lambda c: c.object.get("metadata", {}).get("name") == name and _terminated(c.object) is not None,
            timeout=60,
            what=f"{name}'s container terminated",
        )
    finally:
        pods.stop()
    terminated = _terminated(change.object)
    assert terminated is not None
    return deleted, log, terminated


def _terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    for status in pod.get("status", {}).get("containerStatuses") or []:
        state: dict[str, Any] | None = status.get("state", {}).get("terminated")
        if state:
            return state
    return None


def _failed_hook(kube: Kube, namespace: str, name: str) -> bool:
    return any(e["reason"] == "FailedPreStopHook" for e in kube.events(namespace, involving=name))


def grace(stage: Stage) -> dict[str, Ending]:
    kube = stage.kube
    for namespace in (SHORT, MATCHED, HUNG, CALLERS):
        stage.namespace(namespace, restricted=True)
    # The silent Nacos first: the hung copy's agent is pointed at it.
    kube.apply(_python_pod("silent-nacos", stage.images["python"], SILENT_SERVER))
    kube.wait("pod/silent-nacos", "condition=Ready", namespace=CALLERS, timeout=120)
    silent = f"{kube.get('pod', 'silent-nacos', namespace=CALLERS)['status']['podIP']}:8848"
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = {
            namespace: pool.submit(_start, stage, namespace, silent if namespace == HUNG else None)
            for namespace in (SHORT, MATCHED, HUNG)
        }
        started = {namespace: future.result() for namespace, future in futures.items()}
    # The caller reaches the pods at their own addresses, as Nacos consumers do (never through a Service).
    targets = [f"http://{ip}:8080/hello" for _, _, _, ip in started.values()]
    kube.apply(_python_pod("caller", stage.images["python"], CALLER, *targets))
    kube.wait("pod/caller", "condition=Ready", namespace=CALLERS, timeout=120)
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        ends = {namespace: pool.submit(_end, stage, namespace, started[namespace][2]) for namespace in started}
        results = {}
        for namespace, future in ends.items():
            deleted, log, terminated = future.result()
            check_exit, check_output, name, _ = started[namespace]
            # The kubelet records events on its own time: give the hook's a moment to arrive.
            with contextlib.suppress(HarnessError):
                poll(functools.partial(_failed_hook, kube, namespace, name), timeout=30, what="FailedPreStopHook")
            events = kube.events(namespace, involving=name)
            stage.say(f"{namespace}: {terminated}; events {[(e['reason'], e.get('message')) for e in events]}")
            results[namespace] = Ending(namespace, check_exit, check_output, name, deleted, log, terminated, events)
    return results


pytestmark = [pytest.mark.e2e, pytest.mark.scenario.with_args(grace)]


def _since(ending: Ending, moment: dt.datetime) -> float:
    return (moment - ending.deleted).total_seconds()


def test_check_rejects_the_short_grace_period(scenarios: Scenarios) -> None:
    results = scenarios.result(grace)
    short = results[SHORT]
    assert short.check_exit == 1, short.check_output
    assert "FAIL [grace]" in short.check_output, short.check_output
    for namespace in (MATCHED, HUNG):
        assert "FAIL [grace]" not in results[namespace].check_output, results[namespace].check_output


def test_at_the_grace_period_the_kubelet_stops_waiting_sends_sigterm_and_kills(scenarios: Scenarios) -> None:
    short: Ending = scenarios.result(grace)[SHORT]
    # The agent was still waiting (the caller never paused): it never wrote its last line.
    assert short.log.named("deregister_started"), short.log.text()
    assert not short.log.named("deregister_finished"), short.log.text()
    sigterm = first(short.log.lines(), *SIGTERM_LINES)
    assert sigterm is not None, short.log.text()
    assert GRACE_S - 1 <= _since(short, sigterm) <= GRACE_S + 3, _since(short, sigterm)
    # Two seconds later the container is killed (SIGKILL: 128 + 9), the app's own wait cut short.
    assert short.terminated["exitCode"] == 137, short.terminated
    finished = parse_stamp(short.terminated["finishedAt"])
    assert GRACE_S + 1 <= _since(short, finished) <= GRACE_S + 5, _since(short, finished)
    # The hook, killed with the container, is reported as failed, without its output.
    assert _failed_hook_messages(short) == ["PreStopHook failed"], short.events


def _failed_hook_messages(ending: Ending) -> list[str]:
    return [str(e.get("message")) for e in ending.events if e["reason"] == "FailedPreStopHook"]


@pytest.mark.parametrize("namespace", [MATCHED, HUNG])
def test_configured_as_the_example_says_the_agent_ends_within_its_budget(scenarios: Scenarios, namespace: str) -> None:
    ending: Ending = scenarios.result(grace)[namespace]
    budget_s = GRACE_S - RESERVE_S
    started = ending.log.named("deregister_started")[0][0]
    finished_at, report = ending.log.named("deregister_finished")[0]
    assert report["ok"] is False, report
    # Invariant 1: never later than the budget plus one second, from the agent's start.
    assert (finished_at - started).total_seconds() <= budget_s + 1, (started, finished_at)
    if namespace == HUNG:  # no Nacos answer, so nothing was written: it waited out the budget
        assert report["outcome"] == "failed", report
    sigterm = first(ending.log.lines(), *SIGTERM_LINES)
    assert sigterm is not None
    assert sigterm > finished_at
    # The agent's non-zero exit (4, 3) is a failed hook for the kubelet; the event holds no output.
    assert _failed_hook_messages(ending) == ["PreStopHook failed"], ending.events
    # The app then shut down by itself, well inside the grace period: no SIGKILL.
    assert ending.terminated["exitCode"] != 137, ending.terminated
    assert _since(ending, parse_stamp(ending.terminated["finishedAt"])) < GRACE_S, ending.terminated
