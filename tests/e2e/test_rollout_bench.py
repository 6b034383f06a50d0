"""The benchmark in the real cluster, reduced: ``bench/run --kube``'s roll of the agent's strategy.

Two provider pods (the benchmark's Spring Boot app, README.md's preStop snippet, ``maxSurge: 1``,
``maxUnavailable: 0``) behind the benchmark's cached consumer (Spring Cloud LoadBalancer's 35 s
cache) at 50 calls/s, in the session's cluster and Nacos; one ``kubectl rollout restart``, then the
benchmark's settle time, longer than the consumer's cache, so late failures still count. Every call
must succeed, and every old pod's hook must have ended well: the agent's ``deregister_finished``
says drained, and the kubelet reported no failed hook. Timings are the benchmark's, never asserted.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest

from localkube.layout import REPO

from .conftest import Scenarios, Stage

sys.path.insert(0, str(REPO / "bench"))  # the benchmark's modules import each other as scripts do

import kube as bench_kube
from rollout import STRATEGIES
from summary import summarize

REPLICAS = 2
RATE = 50
SETTLE_S = 36.0  # longer than the consumer's 35 s cache


def bench_roll(stage: Stage) -> dict[str, Any]:
    stage.namespace(bench_kube.NAMESPACE)
    images = {"provider": stage.cluster.image("provider"), "consumer": stage.images["consumer"]}
    bench = bench_kube.KubeBench(stage.kube, images, stage.nacos_ip, stage.dir, replicas=REPLICAS, say=stage.say)
    plan = [bench_kube.Roll("cached", STRATEGIES["agent"])]
    phases, outcomes = bench_kube.run(bench, plan, rate=RATE, settle=lambda _: SETTLE_S, first_wait=lambda _: 5.0)
    row = summarize(phases[0], outcomes["cached"])
    row["all_hosts"] = sorted({o.host for o in outcomes["cached"] if o.host and o.kind == "ok"})
    stage.say(f"rollout {row['rollout_s']} s, {row['requests']} calls, {row['failed']} failed")
    # Its JVMs would only take CPU from the scenarios that follow.
    stage.kube.delete("namespace", bench_kube.NAMESPACE, wait=False)
    return row


pytestmark = [pytest.mark.e2e, pytest.mark.scenario.with_args(bench_roll, alone=True)]


def test_the_benchmark_roll_with_the_agent_fails_no_request(scenarios: Scenarios) -> None:
    row = scenarios.result(bench_roll)
    files = scenarios.stage(bench_roll).dir
    old = {term["ip"] for term in row["terminations"]}
    new = set(row["all_hosts"]) - old
    assert len(row["terminations"]) == REPLICAS, row["terminations"]
    # The consumer called all along, the old pods first and their replacements after.
    assert row["requests"] >= 0.5 * RATE * (row["settled"] - row["started"]), row["requests"]
    assert old <= set(row["all_hosts"]), (old, row["all_hosts"])
    assert len(new) == REPLICAS, (new, row["all_hosts"])
    assert row["failed"] == 0, (row["errors_by_kind"], f"see {files}")


def test_every_old_pods_agent_drained_and_exited_0(scenarios: Scenarios) -> None:
    row = scenarios.result(bench_roll)
    for term in row["terminations"]:
        assert term["agent_outcome"] == "drained", term
        # No FailedPreStopHook event: the kubelet saw the hook exit 0 within the grace period.
        assert term["hook_events"] == [], term
        assert term["hook_exit"] == 0, term
        assert not term["sigkilled"], term
