"""``prestop-agent check``: do a workload's shutdown timings fit together?

Most 502s during rollouts come from numbers that contradict each other: a preStop wait
longer than ``terminationGracePeriodSeconds``, an agent budget too short for the
consumer caches, an ALB that keeps draining after the pod is gone, an app that closes
keep-alive connections the load balancer still reuses. This reads Deployment,
StatefulSet and DaemonSet manifests (``manifests``), finds each container whose preStop
hook is the agent or a plain ``sleep`` (``hooks``), resolves its environment
(``environment``), runs the agent's own settings validation on it (``settings``), finds
the load balancer in front of it (``balancers``, ``annotations``),
derives the shutdown timeline and checks the rules (``rules``), and reports (``report``).
It reads files only; it never talks to a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prestop_agent.check.arguments import Commands
from prestop_agent.check.balancers import find_load_balancer, lb_from_env
from prestop_agent.check.environment import container_env
from prestop_agent.check.hooks import find_hook, runs_serve
from prestop_agent.check.manifests import Directory, Doc, mapping, read_manifests
from prestop_agent.check.report import CheckReport, ContainerCheck, Value
from prestop_agent.check.rules import KUBERNETES_DEFAULT_GRACE_SECONDS, evaluate
from prestop_agent.check.settings import Pod, validate
from prestop_agent.errors import ConfigError


def run_check(paths: Sequence[Path], commands: Commands) -> CheckReport:
    """Check every Deployment/StatefulSet/DaemonSet in ``paths`` (files or directories).

    Services, Ingresses, IngressClasses and ConfigMaps are matched to the workloads of files in
    the same directory: one directory holds one application's manifests (as in k8s-examples/).
    ``commands``: the program's commands (its command line's), which read the hooks' arguments.
    Raises ConfigError for unreadable or invalid input, or when no workload is found.
    """
    found = read_manifests(paths)
    if not found.files and not found.notes:
        raise ConfigError("no manifest files given; pass YAML files or directories holding them")
    groups: dict[Path, Directory] = {}
    for path, docs in found.files:
        inputs = groups.setdefault(path.parent, Directory())
        for doc in docs:
            inputs.add(doc)
    if not any(inputs.workloads for inputs in groups.values()):
        shown = ", ".join(str(p) for p in paths)
        skipped = f" (passed over as not manifests: {len(found.notes)})" if found.notes else ""
        raise ConfigError(f"no Deployment, StatefulSet or DaemonSet found in {shown}{skipped}; nothing to check")
    report = CheckReport(notes=list(found.notes))
    for inputs in groups.values():
        for workload in inputs.workloads:
            report.containers.extend(_check_workload(workload, inputs, report, commands))
    return report


def _check_workload(workload: Doc, inputs: Directory, report: CheckReport, commands: Commands) -> list[ContainerCheck]:
    label = f"{workload.kind} {workload.namespace + '/' if workload.namespace else ''}{workload.name}"
    template = mapping(mapping(workload.obj.get("spec")).get("template"))
    pod_spec = mapping(template.get("spec"))
    containers = pod_spec.get("containers")
    if not isinstance(containers, list) or not containers:
        raise ConfigError(f"{workload.file}: {label} has no spec.template.spec.containers")
    grace_raw = pod_spec.get("terminationGracePeriodSeconds")
    if grace_raw is None:
        grace = Value(KUBERNETES_DEFAULT_GRACE_SECONDS, "Kubernetes default")
    elif isinstance(grace_raw, int) and not isinstance(grace_raw, bool) and grace_raw >= 0:
        grace = Value(float(grace_raw), "terminationGracePeriodSeconds")
    else:
        raise ConfigError(
            f"{workload.file}: {label}: terminationGracePeriodSeconds={grace_raw!r} is not a whole number of seconds"
        )
    labels = mapping(mapping(template.get("metadata")).get("labels"))
    annotation_sources = [
        ("pod template", mapping(mapping(template.get("metadata")).get("annotations"))),
        (label, workload.annotations),
    ]
    lb = find_load_balancer(workload, labels, inputs, annotation_sources)
    checks: list[ContainerCheck] = []
    for container in containers:
        item = mapping(container)
        name = str(item.get("name", "?"))
        try:
            hook, why_not = find_hook(commands, item, pod_spec)
        except ConfigError as exc:
            raise ConfigError(f"{workload.file}: {label} container {name}: {exc}") from None
        if hook is None:
            if runs_serve(item):
                continue
            if lb is not None or why_not != "no preStop hook":
                report.notes.append(f"{label} container {name}: not checked: {why_not}")
            continue
        check = ContainerCheck(workload.file, label, name, hook.text)
        env_source = hook.settings_from if hook.settings_from is not None else item
        env = container_env(env_source, workload.namespace, inputs.configmaps)
        if hook.kind == "agent" and hook.command == "serve" and hook.settings_from is None:
            check.notes.append("no container of the pod runs `prestop-agent serve`: the agent's settings not checked")
        elif hook.kind == "agent":
            hostname = pod_spec.get("hostname")
            pod = Pod(workload.kind, workload.name, workload.namespace, str(hostname) if hostname else None)
            validate(check, hook, env, pod)
        app_env = container_env(item, workload.namespace, inputs.configmaps)
        container_lb = lb_from_env(lb, env, hook, annotation_sources) if hook.kind == "agent" else lb
        evaluate(check, hook, grace=grace, env=env, app_env=app_env, lb=container_lb, sources=annotation_sources)
        checks.append(check)
    return checks
