"""The rolling-update benchmark in a real Kubernetes cluster (``bench/run --kube``).

The same comparison as the simulated benchmark, with the kubelet, the Deployment controller and
the runtime doing their own part: a real Nacos pod (``nacos-headless.nacos``), the provider as a
Deployment (README.md's preStop snippet, ``maxSurge: 1``, ``maxUnavailable: 0``) and the Spring
Cloud consumer as a pod calling it through Nacos. Each roll is a rollout of that Deployment, and
the pods it replaces run the roll's preStop hook, the one in the pod template they were started
with. So the rollout of one roll is started by putting the next roll's hook in the template (or,
when the next roll keeps the hook, by ``kubectl rollout restart``): the replaced pods run this
roll's hook, the replacements the next one's.

What is recorded per old pod comes from the cluster: when the pod was marked for deletion (the
watch event), when the app got SIGTERM (its first shutdown line, with the runtime's own log
timestamp), when the container ended and with which code, whether the kubelet reported the hook
as failed (a ``FailedPreStopHook`` event: the kubelet reports no exit code), and the agent's own
``deregister_finished`` line from the container log.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime as dt
import functools
import random
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import yaml
from consumers import CONSUMERS, PUSH_SETTLE_S
from pods import NACOS_CLIENT_FLAGS, nacos_version
from summary import Outcome, Phase, Strategy, Termination, machine, read_outcomes, versions, write_results

from localkube import KUBERNETES_VERSION, Cluster, HarnessError, Kube, build_image, poll, workloads
from localkube.observe import SIGTERM_LINES, Change, LogTap, Watch, first
from localnacos.server import SERVER_VERSIONS

NAMESPACE = "bench"
#: The Nacos namespace the benchmark's service registers in, apart from anything else in the cluster.
NACOS_NAMESPACE = "bench"
SERVICE = workloads.PROVIDER_SERVICE
PORT = 8080
SEED001_SCRIPT = Path(__file__).resolve().parent / "seed001-prestop.sh"
SEED001_MOUNT = "/opt/seed001"
#: The benchmark's JVM settings (bench/pods.py), given through the environment the JVM reads itself.
JAVA_TOOL_OPTIONS = " ".join(("-Xmx128m", "-XX:CICompilerCount=1", *NACOS_CLIENT_FLAGS))
ROLLOUT_TIMEOUT_S = 900.0
START_TIMEOUT_S = 300.0

Say = Callable[[str], None]


def hook_command(strategy: Strategy) -> list[str] | None:
    """The preStop command of a strategy, inside the provider's container."""
    if strategy.hook is None:
        return None
    if strategy.name == "seed001":
        # bash, as in the simulated benchmark: the script's `==` fails under Debian's dash.
        return ["/bin/bash", f"{SEED001_MOUNT}/prestop.sh"]
    if strategy.name.startswith("agent"):
        command: list[str] = workloads.readme_prestop_snippet()["containers"][0]["lifecycle"]["preStop"]["exec"][
            "command"
        ]
        return command
    return list(strategy.hook)


def provider_objects(image: str, strategy: Strategy, replicas: int) -> list[dict[str, Any]]:
    """The seed 001 script's ConfigMap, and the provider Deployment with the strategy's hook and grace period."""
    seed001 = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "seed001-prestop", "namespace": NAMESPACE},
        "data": {"prestop.sh": SEED001_SCRIPT.read_text()},
    }
    namespace, deployment = workloads.provider_objects(image, NAMESPACE, replicas=replicas)
    deployment["spec"]["strategy"] = {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    template = deployment["spec"]["template"]
    template["metadata"]["annotations"] = {"bench/strategy": strategy.name}
    pod = template["spec"]
    container = pod["containers"][0]
    pod["terminationGracePeriodSeconds"] = int(strategy.grace_s)
    env: list[dict[str, Any]] = container["env"]
    for item in env:
        if item["name"] == "PRESTOP_GRACE_SECONDS":
            item["value"] = str(int(strategy.grace_s))
    env += [
        {"name": "NACOS_NAMESPACE", "value": NACOS_NAMESPACE},
        {"name": "SPRING_CLOUD_NACOS_DISCOVERY_NAMESPACE", "value": "$(NACOS_NAMESPACE)"},
        {"name": "JAVA_TOOL_OPTIONS", "value": JAVA_TOOL_OPTIONS},
        *({"name": name, "value": value} for name, value in strategy.env),
    ]
    command = hook_command(strategy)
    if command is None:
        container.pop("lifecycle", None)
    else:
        container["lifecycle"] = {"preStop": {"exec": {"command": command}}}
    if strategy.name == "seed001":
        # The seed's own variables: PODIP, and the server and namespace it names.
        env.append({"name": "PODIP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}})
        container["volumeMounts"] = [{"name": "seed001", "mountPath": SEED001_MOUNT, "readOnly": True}]
        pod["volumes"] = [{"name": "seed001", "configMap": {"name": "seed001-prestop", "defaultMode": 0o555}}]
    return [namespace, seed001, deployment]


@dataclasses.dataclass
class Consumer:
    kind: str
    pod: str
    tap: LogTap
    jsonl: Path

    def outcomes(self) -> list[Outcome]:
        """Every call recorded so far, also written as ``consumer-<kind>.jsonl`` (the simulated benchmark's file)."""
        with self.jsonl.open("w") as out:
            for _, line in self.tap.lines():
                if line.startswith('{"'):
                    out.write(line + "\n")
        return read_outcomes(self.jsonl)


class KubeBench:
    """The provider Deployment and its consumers in one cluster, rolled strategy after strategy."""

    def __init__(
        self, kube: Kube, images: dict[str, str], nacos_ip: str, run_dir: Path, *, replicas: int, say: Say
    ) -> None:
        self.kube = kube
        self.images = images
        self.nacos_ip = nacos_ip
        self.run_dir = run_dir
        self.replicas = replicas
        self.say = say

    # -- set-up -----------------------------------------------------------------------------------

    def apply(self, strategy: Strategy) -> None:
        objects = provider_objects(self.images["provider"], strategy, self.replicas)
        self.kube.apply(yaml.safe_dump_all(objects, sort_keys=False))

    def deploy(self, strategy: Strategy) -> None:
        self.apply(strategy)
        self.kube.rollout_status(f"deployment/{SERVICE}", namespace=NAMESPACE, timeout=ROLLOUT_TIMEOUT_S)
        ips = self.wait_served()
        self.say(f"{len(ips)} providers ready and served by Nacos: {', '.join(sorted(ips))}")

    def pods(self) -> list[dict[str, Any]]:
        """The provider's pods that are not terminating."""
        pods = self.kube.pods(NAMESPACE, f"app={SERVICE}")
        return [pod for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def wait_served(self) -> set[str]:
        """Every running provider pod served by Nacos; their IPs."""

        def served() -> set[str] | None:
            ips = {pod["status"].get("podIP") for pod in self.pods()}
            got = workloads.served(self.nacos_ip, SERVICE, NACOS_NAMESPACE)
            wanted = {(ip, PORT) for ip in ips if ip}
            return {ip for ip, _ in wanted} if len(wanted) == self.replicas and wanted <= got else None

        found: set[str] = poll(served, timeout=START_TIMEOUT_S, interval=1.0, what=f"{SERVICE} served by Nacos")
        return found

    def start_consumer(self, kind: str, rate: int) -> Consumer:
        name = f"consumer-{kind}"
        env = {"SPRING_CLOUD_LOADBALANCER_CACHE_ENABLED": "false"} if kind == "push" else {}
        manifest = workloads.consumer(
            name,
            NAMESPACE,
            self.images["consumer"],
            nacos_namespace=NACOS_NAMESPACE,
            url=f"http://{SERVICE}/hello",
            rate=rate,
            env=env,
        )
        self.kube.delete("pod", name, namespace=NAMESPACE)
        self.kube.apply(manifest)
        self.kube.wait(f"pod/{name}", "condition=Ready", namespace=NAMESPACE, timeout=START_TIMEOUT_S)
        tap = LogTap(self.kube, name, namespace=NAMESPACE, into=self.run_dir / f"{name}.log")
        consumer = Consumer(kind, name, tap.attached(timeout=START_TIMEOUT_S), self.run_dir / f"{name}.jsonl")
        ips = {pod["status"]["podIP"] for pod in self.pods()}

        def calling() -> bool:
            recent = [o for o in consumer.outcomes()[-5 * rate :] if o.kind == "ok"]
            return ips <= {o.host for o in recent}

        poll(calling, timeout=START_TIMEOUT_S, interval=1.0, what=f"the {kind} consumer calling {sorted(ips)}")
        return consumer

    def stop_consumer(self, consumer: Consumer) -> list[Outcome]:
        outcomes = consumer.outcomes()
        self.kube.delete("pod", consumer.pod, namespace=NAMESPACE)
        consumer.tap.stop()
        return outcomes

    # -- one roll ---------------------------------------------------------------------------------

    def roll(self, strategy: Strategy, then: Strategy | None, consumer: str) -> Rolled:
        """Roll every pod (they run ``strategy``'s hook); the replacements get ``then``'s template."""
        old = {pod["metadata"]["name"]: pod["status"]["podIP"] for pod in self.pods()}
        taps = {
            name: LogTap(self.kube, name, namespace=NAMESPACE, into=self.run_dir / f"{name}.log").attached()
            for name in old
        }
        watch = Watch(self.kube, "pods", namespace=NAMESPACE, selector=f"app={SERVICE}")
        try:
            time.sleep(1.0)  # the watch has listed the pods as they are
            started = time.time()
            if then is not None and then.name != strategy.name:
                self.apply(then)
            else:
                self.kube.run("rollout", "restart", f"deployment/{SERVICE}", "-n", NAMESPACE)
            self.kube.rollout_status(f"deployment/{SERVICE}", namespace=NAMESPACE, timeout=ROLLOUT_TIMEOUT_S)
            for name, tap in taps.items():
                tap.wait(timeout=strategy.grace_s + 120)
                watch.wait_for(functools.partial(_deleted, name), timeout=120, what=f"{name} deleted")
        finally:
            watch.stop()
            for tap in taps.values():
                tap.stop()
        phase = Phase(strategy, started, consumer=consumer)
        for name, ip in old.items():
            phase.terminations.append(_termination(name, ip, watch, taps[name]))
        phase.ended = max(t.exited for t in phase.terminations)
        phase.starts = _replacements(watch, set(old))
        self.wait_served()
        return Rolled(phase, taps)

    def finish(self, rolled: Rolled) -> None:
        """After the settle time: what the kubelet reported about each hook, and the agent's own report."""
        for term in rolled.phase.terminations:
            failed = [
                str(event.get("message"))
                for event in self.kube.events(NAMESPACE, involving=term.pod)
                if event.get("reason") == "FailedPreStopHook"
            ]
            finished = rolled.taps[term.pod].named("deregister_finished")
            term.agent_outcome = str(finished[-1][1].get("outcome")) if finished else None
            term.hook_events = failed
            if rolled.phase.strategy.hook is not None:
                # The kubelet reports a hook that exited non-zero, or ran out the grace period, as failed.
                term.hook_exit = None if failed else 0
                term.hook_timed_out = bool(failed) and term.prestop_s >= rolled.phase.strategy.grace_s - 1


@dataclasses.dataclass
class Rolled:
    phase: Phase
    taps: dict[str, LogTap]


def _name(obj: dict[str, Any]) -> str:
    return str(obj.get("metadata", {}).get("name"))


def _deleted(pod: str, change: Change) -> bool:
    return change.type == "DELETED" and _name(change.object) == pod


def _terminated(obj: dict[str, Any]) -> dict[str, Any] | None:
    for status in obj.get("status", {}).get("containerStatuses") or []:
        state: dict[str, Any] | None = status.get("state", {}).get("terminated")
        if state:
            return state
    return None


def _termination(name: str, ip: str, watch: Watch, tap: LogTap) -> Termination:
    changes = list(watch.of(name))
    marked = next((c for c in changes if c.object.get("metadata", {}).get("deletionTimestamp")), None)
    ended = next((c for c in changes if _terminated(c.object) or c.type == "DELETED"), None)
    if marked is None or ended is None:
        raise HarnessError(f"{name}: its deletion was not seen in the watch")
    term = Termination(name, ip, PORT, marked.at.timestamp())
    state = _terminated(ended.object)
    term.exited = ended.at.timestamp()
    term.sigkilled = bool(state and state.get("exitCode") == 137)
    sigterm = first(tap.lines(), *SIGTERM_LINES)
    # No shutdown line: the app was killed before it logged one (then its end is the SIGTERM bound).
    term.sigterm = sigterm.timestamp() if sigterm else term.exited
    term.prestop_s = term.sigterm - term.deleted
    term.exit_code = state.get("exitCode") if state else None
    return term


def _replacements(watch: Watch, old: set[str]) -> list[tuple[str, float, float]]:
    """New pods: when each was created (first seen) and when it was first Ready."""
    first_seen: dict[str, float] = {}
    ready: dict[str, float] = {}
    for change in watch.seen():
        name = _name(change.object)
        if name in old:
            continue
        first_seen.setdefault(name, change.at.timestamp())
        conditions = change.object.get("status", {}).get("conditions") or []
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            ready.setdefault(name, change.at.timestamp())
    return [(name, at, ready.get(name, at)) for name, at in sorted(first_seen.items(), key=lambda item: item[1])]


# -- the whole run --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Roll:
    consumer: str
    strategy: Strategy


def run(
    bench: KubeBench,
    plan: Sequence[Roll],
    *,
    rate: int,
    settle: Callable[[str], float],
    first_wait: Callable[[str], float],
) -> tuple[list[Phase], dict[str, list[Outcome]]]:
    """Deploy with the first roll's hook, then every roll of the plan, each consumer in turn."""
    phases: list[Phase] = []
    outcomes: dict[str, list[Outcome]] = {}
    bench.deploy(plan[0].strategy)
    consumer: Consumer | None = None
    try:
        for index, step in enumerate(plan):
            if consumer is None or consumer.kind != step.consumer:
                if consumer is not None:
                    outcomes[consumer.kind] = bench.stop_consumer(consumer)
                consumer = bench.start_consumer(step.consumer, rate)
                bench.say(f"{step.consumer} consumer calls every provider at {rate}/s")
                time.sleep(first_wait(step.consumer))
            then = plan[index + 1].strategy if index + 1 < len(plan) else None
            bench.say(f"rolling with: {step.strategy.label} ({step.consumer} consumer)")
            rolled = bench.roll(step.strategy, then, step.consumer)
            for term in rolled.phase.terminations:
                bench.say(
                    f"  {term.pod} gone: preStop {term.prestop_s:.1f} s, "
                    f"exited {term.exited - term.sigterm:.1f} s after SIGTERM (code {term.exit_code})"
                )
            wait = settle(step.consumer)
            bench.say(f"  rollout took {rolled.phase.ended - rolled.phase.started:.1f} s; settling {wait:.0f} s")
            time.sleep(wait)
            rolled.phase.settled = time.time()
            bench.finish(rolled)
            phases.append(rolled.phase)
    finally:
        if consumer is not None:
            with contextlib.suppress(HarnessError, OSError):
                outcomes[consumer.kind] = bench.stop_consumer(consumer)
    return phases, outcomes


def java_version(kube: Kube) -> str:
    """``java -version`` inside a provider pod (the image's JRE, not this machine's)."""
    with contextlib.suppress(HarnessError, subprocess.SubprocessError):
        # Without the pods' JAVA_TOOL_OPTIONS: one compiler thread is refused without the entrypoint's flags.
        command = ("env", "-u", "JAVA_TOOL_OPTIONS", "java", "-version")
        result = kube.run("exec", f"deployment/{SERVICE}", "-n", NAMESPACE, "--", *command, check=False)
        lines = result.stderr.splitlines()
        if lines:
            return lines[0]
    return "unknown"


# -- bench/run --kube -----------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"[{dt.datetime.now():%H:%M:%S}] {message}", file=sys.stderr, flush=True)


def plan_of(
    args: argparse.Namespace, strategies: dict[str, Strategy], rolls_of: Callable[[Strategy, int], int]
) -> list[Roll]:
    chosen = [strategies[name] for name in args.strategies.split(",")]
    return [
        Roll(kind, strategy)
        for kind in args.consumers.split(",")
        for strategy in chosen
        for _ in range(rolls_of(strategy, args.agent_rolls))
    ]


def main(args: argparse.Namespace, strategies: dict[str, Strategy], rolls_of: Callable[[Strategy, int], int]) -> int:
    """Start the cluster, build and import the images, run Nacos, roll, stop the cluster, write the results."""
    plan = plan_of(args, strategies, rolls_of)
    jitter = random.Random(args.seed)  # noqa: S311 - not security relevant
    stem = args.name or f"{dt.date.today().isoformat()}-kube"
    run_dir = args.results / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S-kube")
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"run directory {run_dir}")
    began = time.time()
    with Cluster(say=log) as cluster:
        log(f"Kubernetes {KUBERNETES_VERSION} ready in {cluster.startup_seconds:.0f} s")
        images = {}
        for name in ("nacos2", "provider", "consumer"):
            image = build_image(name, cluster.layout, say=log)
            cluster.import_image(image.tar)
            images[name] = image.ref
        cluster.kube.apply(workloads.nacos(images["nacos2"]))
        cluster.kube.rollout_status("deployment/nacos", namespace=workloads.NACOS_NAMESPACE, timeout=600)
        nacos_ip: str = cluster.kube.pods(workloads.NACOS_NAMESPACE, "app=nacos")[0]["status"]["podIP"]
        # The image's server has no console module to ask: its version is the harness's.
        nacos = nacos_version(f"{nacos_ip}:8848") or SERVER_VERSIONS[2]
        log(f"Nacos {nacos} at {nacos_ip}:8848 ({workloads.NACOS_ADDR} in the cluster)")
        bench = KubeBench(cluster.kube, images, nacos_ip, run_dir, replicas=args.providers, say=log)

        def settle(kind: str) -> float:
            if kind == "cached":
                return float(args.settle + jitter.uniform(0.0, args.jitter))
            return PUSH_SETTLE_S + jitter.uniform(0.0, 5.0)

        def first_wait(kind: str) -> float:
            return 5.0 + (jitter.uniform(0.0, args.jitter) if kind == "cached" else 0.0)

        phases, outcomes = run(bench, plan, rate=args.rate, settle=settle, first_wait=first_wait)
        java = java_version(cluster.kube)
    log("cluster stopped; nothing of it left on this machine")
    found = versions(nacos)
    found |= {"java": f"{java} (the images' JRE)", "kubernetes": KUBERNETES_VERSION}
    settings = {
        "mode": "kube",
        "providers": args.providers,
        "rolls_per_strategy": args.providers,
        "rate_per_s": args.rate,
        "settle_s": args.settle,
        "settle_jitter_s": args.jitter,
        "seed": args.seed,
        "java_tool_options": JAVA_TOOL_OPTIONS,
        "consumers": {kind: CONSUMERS[kind] for kind in args.consumers.split(",")},
        "agent_rolls": args.agent_rolls,
        "deployment": {"maxSurge": 1, "maxUnavailable": 0},
    }
    write_results(
        phases,
        outcomes,
        machine=machine(),
        versions=found,
        settings=settings,
        total_s=time.time() - began,
        run_dir=run_dir,
        results=args.results,
        stem=stem,
        chart=not args.no_chart,
    )
    return 0
