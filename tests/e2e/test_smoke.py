"""The agent as a real preStop hook: a real kubelet runs it inside the container of a deleted pod.

A real Nacos runs as a pod behind a headless Service; the benchmark's Spring Boot provider runs
as a Deployment whose pod spec is README.md's preStop snippet, in an image that adds the agent
with the README's one ``COPY --from`` line. ``kubectl delete pod`` must: run the agent, which
takes the instance out of Nacos (the served list, read from the Nacos pod); copy the agent's
lines into ``kubectl logs`` through PID 1; and only after the agent exits let the kubelet send
SIGTERM, after which the app's shutdown hooks log. The order is read from the container log's
own timestamps.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import pytest

from localkube import poll, workloads

from .conftest import LocalCluster

pytestmark = pytest.mark.e2e

NAMESPACE = "smoke"
#: Lines the app writes only once the JVM got SIGTERM: the Nacos client's own shutdown hooks, and
#: Spring's context close (it deregisters, waits 10 s by itself, then shuts Tomcat down gracefully).
SIGTERM_LINES = ("Start destroying", "De-registering from Nacos Server now", "Commencing graceful shutdown")


def _timestamped(path: Path) -> list[tuple[dt.datetime, str]]:
    """``kubectl logs --timestamps`` lines as (time, text); RFC 3339 with nanoseconds cut to micro."""
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        stamp, _, text = raw.partition(" ")
        if not stamp.endswith("Z") or "T" not in stamp:
            continue
        seconds, _, fraction = stamp.removesuffix("Z").partition(".")
        moment = dt.datetime.fromisoformat(f"{seconds}.{(fraction or '0')[:6]:0<6}+00:00")
        lines.append((moment, text))
    return lines


def _agent_events(lines: list[tuple[dt.datetime, str]]) -> list[tuple[dt.datetime, dict[str, Any]]]:
    events = []
    for moment, text in lines:
        if text.startswith("{"):
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append((moment, event))
    return events


def test_delete_pod_runs_the_agent_before_sigterm(cluster: LocalCluster, nacos_ip: str, tmp_path: Path) -> None:
    kube = cluster.kube
    kube.apply(workloads.provider(cluster.image("provider"), NAMESPACE))
    cluster.rollout(f"deployment/{workloads.PROVIDER_SERVICE}", namespace=NAMESPACE)
    pod = kube.pods(NAMESPACE, f"app={workloads.PROVIDER_SERVICE}")[0]
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    poll(
        lambda: (ip, 8080) in workloads.served(nacos_ip, workloads.PROVIDER_SERVICE),
        timeout=180,
        what=f"{ip}:8080 served by Nacos",
    )

    log = tmp_path / f"{name}.log"
    follower = kube.follow_logs(name, namespace=NAMESPACE, into=log)
    try:
        poll(lambda: log.stat().st_size > 0, timeout=30, what="kubectl logs -f attached")
        kube.delete("pod", name, namespace=NAMESPACE, wait=False)
        left_nacos = poll(
            lambda: (ip, 8080) not in workloads.served(nacos_ip, workloads.PROVIDER_SERVICE) and time.time(),
            timeout=60,
            interval=0.2,
            what=f"{ip}:8080 gone from Nacos's served list",
        )
        follower.wait(timeout=180)
    finally:
        if follower.poll() is None:
            follower.terminate()
            follower.wait(timeout=10)

    lines = _timestamped(log)
    events = _agent_events(lines)
    names = [event["event"] for _, event in events]
    assert "instance_disabled" in names, f"the agent's lines are not in kubectl logs:\n{log.read_text()}"
    finished = [(moment, event) for moment, event in events if event["event"] == "deregister_finished"]
    assert len(finished) == 1, names
    finished_at, report = finished[0]
    assert report["ok"] is True, report
    sigterm = [moment for moment, text in lines if any(marker in text for marker in SIGTERM_LINES)]
    assert sigterm, f"the app never logged its shutdown (no SIGTERM?):\n{log.read_text()}"
    # The kubelet sends SIGTERM only when the hook has exited; the agent's last line comes first.
    assert finished_at < sigterm[0], (finished_at, sigterm[0])
    # The instance left the registry because of the agent, before the app was told to stop.
    assert dt.datetime.fromtimestamp(left_nacos, dt.UTC) < sigterm[0], (left_nacos, sigterm[0])
    failed_hooks = [e for e in kube.events(NAMESPACE, involving=name) if e.get("reason") == "FailedPreStopHook"]
    assert not failed_hooks, failed_hooks
