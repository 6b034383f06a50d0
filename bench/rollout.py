"""Rolling-update benchmark: the preStop strategies people use today against prestop-agent.

On one machine, with real processes only: a real Nacos server (the localnacos harness), three
instances of a Spring Boot provider registered over gRPC, and a Spring Cloud consumer that
calls them through Nacos discovery and Spring Cloud LoadBalancer at a steady rate and records
every outcome. Two consumers, one after the other (``--consumers``): ``cached``, the
LoadBalancer's defaults (instance lists cached 35 s), and ``push``, the same app with the
LoadBalancer cache off, so every call picks from the Nacos client's own list, which the server
updates by push (as Dubbo consumers and Spring Cloud apps without the cache do). For each
strategy the providers are rolled one at a time the way a Deployment with maxSurge 1 /
maxUnavailable 0 and the kubelet do it:

1. start a replacement (new loopback IP, new port) and wait until it is registered and answers;
2. delete one old pod: run its preStop hook to completion or until the grace period, then
   SIGTERM, then SIGKILL when the grace period is over (at least 2 s after a hook that used
   all of it);
3. go on with the next replacement at once: a terminating pod no longer counts as a replica,
   so its termination overlaps the next replacement's start, as in a real rollout.

After the last old pod is gone the benchmark waits ``--settle`` seconds (longer than the
consumer's cache) so that failures caused by a strategy are counted against it, plus a random
part (``--jitter``) so that no roll starts at the same point of the consumer's cache cycle as
the one before, then rolls again with the next strategy. Strategies that run the agent roll
``--agent-rolls`` times (default 3) so that their medians can be compared. Run
``bench/run --help`` for the options.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import random
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))  # the localnacos harness lives next to the package, not in it

from consumers import CONSUMERS, PUSH_SETTLE_S, start_consumer, stop_consumer, wait_consumer_sees  # noqa: E402
from pods import (  # noqa: E402
    JVM_FLAGS,
    STARTUP_TIMEOUT_S,
    Cluster,
    Nacos,
    Pod,
    nacos_version,
)
from summary import (  # noqa: E402
    Outcome,
    Phase,
    Strategy,
    machine,
    read_outcomes,
    versions,
    write_results,
)

from localnacos.machine import cache_dir, stop_all  # noqa: E402
from localnacos.maven import made_once, maven, project_files, sources_hash  # noqa: E402
from localnacos.server import NacosProcess  # noqa: E402


def agent_hook() -> tuple[str, ...]:
    return ("prestop-agent", "deregister", "--wait")


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy("none", "no preStop hook (grace 30)", 30.0, None),
        Strategy("sleep10", "sleep 10, seed 000 (grace 45)", 45.0, ("/bin/sh", "-c", "sleep 10")),
        Strategy(
            "seed001",
            "curl PUT enabled=false; sleep 45, seed 001 (grace 60)",
            60.0,
            ("/bin/bash", str(BENCH / "seed001-prestop.sh")),
        ),
        Strategy("agent", "prestop-agent deregister --wait (grace 60)", 60.0, agent_hook()),
        Strategy(
            "agent-traffic",
            "prestop-agent, PRESTOP_WAIT_FOR=traffic (grace 60)",
            60.0,
            agent_hook(),
            (("PRESTOP_WAIT_FOR", "traffic"),),
        ),
        Strategy(
            "agent-registry",
            "prestop-agent, PRESTOP_WAIT_FOR=registry, 35 s (grace 60)",
            60.0,
            agent_hook(),
            (("PRESTOP_WAIT_FOR", "registry"),),
        ),
    )
}
DEFAULT_STRATEGIES = ",".join(STRATEGIES)


def _on_signal(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def log(msg: str) -> None:
    stamp = dt.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", file=sys.stderr, flush=True)


# -- the Spring apps: built once per pom/source hash, cached ---------------------------------------


def build_apps() -> tuple[Path, Path]:
    """The provider and consumer jars, built with Maven unless this source hash is cached."""
    files = [BENCH / "pom.xml"]
    for module in ("provider", "consumer"):
        files.extend(project_files(BENCH / module))
    target = cache_dir() / "bench" / f"apps-{sources_hash(BENCH, files)}"

    def make(directory: Path) -> None:
        log("building the provider and consumer jars with Maven (once per source change)")
        maven(
            "-DskipTests",
            "package",
            what="the benchmark's apps",
            cwd=BENCH,
            jvm_options="-XX:TieredStopAtLevel=1 -Xmx512m",
        )
        shutil.copy2(BENCH / "provider" / "target" / "demo-provider.jar", directory / "demo-provider.jar")
        shutil.copy2(BENCH / "consumer" / "target" / "demo-consumer.jar", directory / "demo-consumer.jar")

    made = made_once(target, make)
    return made / "demo-provider.jar", made / "demo-consumer.jar"


# -- Nacos ------------------------------------------------------------------------------------------


@contextlib.contextmanager
def nacos_server(existing: str | None, major: str) -> Iterator[Nacos]:
    if existing:
        yield Nacos(existing, nacos_version(existing) or "unknown (external)")
        return
    with NacosProcess(int(major)) as server:
        yield Nacos(server.http_addr, server.version)


# -- one roll per strategy --------------------------------------------------------------------------


def roll(cluster: Cluster, pods: list[Pod], strategy: Strategy, rolls: int, consumer: str) -> tuple[Phase, list[Pod]]:
    phase = Phase(strategy, time.time(), consumer=consumer)
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []
    old = list(pods)
    current = list(pods)

    def delete(pod: Pod) -> None:
        try:
            rec = cluster.delete(pod, strategy)
            phase.terminations.append(rec)
            log(
                f"  {pod.name} gone: preStop {rec.prestop_s:.1f} s (exit {rec.hook_exit}), "
                f"exited {rec.exited - rec.sigterm:.1f} s after SIGTERM{' (SIGKILL)' if rec.sigkilled else ''}"
            )
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    for victim in old[:rolls]:
        new = cluster.start(strategy)
        cluster.wait_ready(new)
        ready = new.ready or time.time()
        phase.starts.append((new.name, new.started, ready))
        log(f"  {new.name} ({new.ip}:{new.port}) ready in {ready - new.started:.1f} s; deleting {victim.name}")
        current.remove(victim)
        current.append(new)
        thread = threading.Thread(target=delete, args=(victim,), name=f"delete-{victim.name}", daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    phase.ended = time.time()
    return phase, current


# -- main -------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/run", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--strategies",
        default=DEFAULT_STRATEGIES,
        help=f"comma-separated, in order (default: {DEFAULT_STRATEGIES})",
    )
    p.add_argument("--providers", type=int, default=3, help="provider replicas (default 3)")
    p.add_argument("--rolls", type=int, default=0, help="old pods replaced per strategy (default: all)")
    p.add_argument("--rate", type=int, default=50, help="consumer requests per second (default 50)")
    p.add_argument(
        "--consumers",
        default=",".join(CONSUMERS),
        help="comma-separated, in order: cached (35 s LoadBalancer cache), push (cache off; follows Nacos pushes)",
    )
    p.add_argument(
        "--agent-rolls",
        type=int,
        default=3,
        help="rolls of each strategy that runs the agent, per consumer, for medians (default 3; others roll once)",
    )
    p.add_argument(
        "--settle",
        type=float,
        default=40.0,
        help="seconds after each roll before the next (default 40: longer than the consumer's 35 s cache)",
    )
    p.add_argument(
        "--jitter",
        type=float,
        default=35.0,
        help="add a random 0..JITTER seconds to each settle time (default 35, the consumer's cache time-to-live),\n"
        "so a roll does not start at the same point of the consumer's cache cycle every time",
    )
    p.add_argument("--seed", type=int, help="seed for the jitter, pod names and ports")
    p.add_argument("--nacos", metavar="HOST:PORT", help="use this running Nacos instead of starting one")
    p.add_argument("--nacos-major", default="2", choices=("2", "3"), help="Nacos server the harness starts")
    p.add_argument("--results", type=Path, default=BENCH / "results", help="where the JSON and PNG go")
    p.add_argument("--name", help="file name stem for the results (default: today's date)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG")
    p.add_argument(
        "--kube",
        action="store_true",
        help="roll a real Deployment in a local Kubernetes cluster (localkube/, root), started and stopped\n"
        "by the run: Nacos, the providers and the consumer run as pods (--nacos, --rolls: not with --kube)",
    )
    args = p.parse_args(argv)
    if args.kube and (args.nacos or args.rolls or args.nacos_major != "2"):
        p.error("--kube runs its own Nacos 2.x pod and rolls every replica: drop --nacos, --nacos-major and --rolls")
    unknown = [s for s in args.strategies.split(",") if s not in STRATEGIES]
    if unknown:
        p.error(f"unknown strategies {unknown}; known: {DEFAULT_STRATEGIES}")
    strange = [c for c in args.consumers.split(",") if c not in CONSUMERS]
    if strange:
        p.error(f"unknown consumers {strange}; known: {', '.join(CONSUMERS)}")
    return args


def rolls_of(strategy: Strategy, agent_rolls: int) -> int:
    return agent_rolls if strategy.hook == agent_hook() else 1


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0915 - the run, top to bottom
    args = parse_args(argv)
    if args.kube:
        from kube import main as in_cluster

        return in_cluster(args, STRATEGIES, rolls_of)
    strategies = [STRATEGIES[s] for s in args.strategies.split(",")]
    rolls = args.rolls or args.providers
    stem = args.name or dt.date.today().isoformat()
    run_dir = args.results / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    agent_bin = Path(sys.executable).parent
    if not (agent_bin / "prestop-agent").exists():
        raise SystemExit(f"prestop-agent is not installed next to {sys.executable}; run bench/run")

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGHUP, _on_signal)

    jitter = random.Random(args.seed)  # noqa: S311 - not security relevant
    if args.seed is not None:
        random.seed(args.seed)
    provider_jar, consumer_jar = build_apps()
    began = time.time()
    phases: list[Phase] = []
    outcomes: dict[str, list[Outcome]] = {}
    try:
        log(f"run directory {run_dir}")
        with nacos_server(args.nacos, args.nacos_major) as nacos:
            log(f"Nacos {nacos.version} at {nacos.addr}")
            cluster = Cluster(jar=provider_jar, nacos=nacos, run_dir=run_dir, agent_bin=agent_bin)
            first = strategies[0]
            pods = [cluster.start(first) for _ in range(args.providers)]
            for pod in pods:
                cluster.wait_ready(pod)
            log(f"{len(pods)} providers ready: {', '.join(f'{p.ip}:{p.port}' for p in pods)}")
            for kind in args.consumers.split(","):
                consumer, out = start_consumer(consumer_jar, nacos, run_dir, args.rate, kind)
                wait_consumer_sees(out, pods, consumer, timeout=STARTUP_TIMEOUT_S)
                log(f"{kind} consumer calls every provider at {args.rate}/s")
                time.sleep(5.0 + (jitter.uniform(0.0, args.jitter) if kind == "cached" else 0.0))
                for strategy in strategies:
                    for attempt in range(rolls_of(strategy, args.agent_rolls)):
                        log(f"rolling with: {strategy.label} ({kind} consumer, roll {attempt + 1})")
                        for pod in pods:  # the hook a pod runs is the one in the spec it was started with
                            pod.env = cluster.pod_env(pod.name, pod.ip, pod.port, strategy)
                        phase, pods = roll(cluster, pods, strategy, rolls, kind)
                        if kind == "cached":
                            settle = args.settle + jitter.uniform(0.0, args.jitter)
                        else:
                            settle = PUSH_SETTLE_S + jitter.uniform(0.0, 5.0)
                        log(f"  rollout took {phase.ended - phase.started:.1f} s; settling {settle:.0f} s")
                        time.sleep(settle)
                        phase.settled = time.time()
                        phases.append(phase)
                        if consumer.poll() is not None:
                            raise RuntimeError(f"the {kind} consumer exited with {consumer.returncode}")
                stop_consumer(consumer)
                outcomes[kind] = read_outcomes(out)
    finally:
        stop_all()

    settings = {
        "providers": args.providers,
        "rolls_per_strategy": rolls,
        "rate_per_s": args.rate,
        "settle_s": args.settle,
        "settle_jitter_s": args.jitter,
        "seed": args.seed,
        "jvm_flags": list(JVM_FLAGS),
        "consumers": {kind: CONSUMERS[kind] for kind in args.consumers.split(",")},
        "agent_rolls": args.agent_rolls,
    }
    write_results(
        phases,
        outcomes,
        machine=machine(),
        versions=versions(nacos.version),
        settings=settings,
        total_s=time.time() - began,
        run_dir=run_dir,
        results=args.results,
        stem=stem,
        chart=not args.no_chart,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
