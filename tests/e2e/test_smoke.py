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
import time
from pathlib import Path

import pytest

from localkube import poll, workloads
from localkube.observe import SIGTERM_LINES, agent_events, first, timestamped

from .conftest import LocalCluster

pytestmark = pytest.mark.e2e

NAMESPACE = "smoke"


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

    lines = timestamped(log.read_text(errors="replace"))
    events = agent_events(lines)
    names = [event["event"] for _, event in events]
    assert "instance_disabled" in names, f"the agent's lines are not in kubectl logs:\n{log.read_text()}"
    finished = [(moment, event) for moment, event in events if event["event"] == "deregister_finished"]
    assert len(finished) == 1, names
    finished_at, report = finished[0]
    assert report["ok"] is True, report
    sigterm = first(lines, *SIGTERM_LINES)
    assert sigterm is not None, f"the app never logged its shutdown (no SIGTERM?):\n{log.read_text()}"
    # The kubelet sends SIGTERM only when the hook has exited; the agent's last line comes first.
    assert finished_at < sigterm, (finished_at, sigterm)
    # The instance left the registry because of the agent, before the app was told to stop.
    assert dt.datetime.fromtimestamp(left_nacos, dt.UTC) < sigterm, (left_nacos, sigterm)
    failed_hooks = [e for e in kube.events(NAMESPACE, involving=name) if e.get("reason") == "FailedPreStopHook"]
    assert not failed_hooks, failed_hooks
