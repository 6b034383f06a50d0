"""``prestop-agent check``: timelines, one line per violated rule with its fix, exit codes 0/1/2."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prestop_agent.check import CheckReport, render, run_check
from prestop_agent.cli import EXIT_CONFIG, EXIT_OK, EXIT_VIOLATIONS, app
from prestop_agent.errors import ConfigError

runner = CliRunner()
EXAMPLES = Path(__file__).resolve().parents[2] / "k8s-examples"


def write(tmp_path: Path, text: str, name: str = "app.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


BASE_ENV = """
    - name: POD_IP
      valueFrom: {fieldRef: {fieldPath: status.podIP}}
    - {name: NACOS_SERVER_ADDR, value: "nacos-headless.nacos:8848"}
    - {name: NACOS_SERVICE_PORT, value: "8080"}
"""


def deployment(
    *,
    pre_stop: str,
    grace: int | None = None,
    env: str = "",
    kind: str = "Deployment",
    name: str = "web",
    extra_containers: str = "",
) -> str:
    """A workload whose one container has the given preStop block (YAML, indented for ``lifecycle:``).

    Its env holds what the agent needs (POD_IP, the Nacos address, the port), then ``env``.
    """
    grace_line = f"      terminationGracePeriodSeconds: {grace}\n" if grace is not None else ""
    env = textwrap.dedent(BASE_ENV).strip() + "\n" + textwrap.dedent(env).strip()
    env_block = f"          env:\n{textwrap.indent(env.strip(), ' ' * 12)}\n"
    return (
        f"apiVersion: apps/v1\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n"
        f"  selector:\n    matchLabels:\n      app: {name}\n"
        f"  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n"
        f"{grace_line}"
        f"      containers:\n        - name: {name}\n          image: example/{name}:1\n"
        f"{env_block}"
        f"          lifecycle:\n            preStop:\n{textwrap.indent(textwrap.dedent(pre_stop).strip(), ' ' * 14)}\n"
        f"{extra_containers}"
    )


AGENT = 'exec:\n  command: ["/opt/prestop-agent/prestop-agent", "deregister", "--wait"]'


def fails(report: CheckReport) -> list[str]:
    return [f"[{v.rule}] {v.message}" for _, v in report.violations]


def invoke(*paths: Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, ["check", *(str(p) for p in paths)])


# -- good manifests --------------------------------------------------------------------------------


def test_the_shipped_examples_hold_every_rule() -> None:
    report = run_check([EXAMPLES])
    assert report.ok, render(report)
    assert {c.workload for c in report.containers} >= {"Deployment shop/orders", "Deployment tea/tea"}
    result = invoke(EXAMPLES)
    assert result.exit_code == EXIT_OK, result.stdout
    assert "all timing rules hold" in result.stdout


def test_agent_with_defaults_fits_the_default_grace_period(tmp_path: Path) -> None:
    path = write(tmp_path, deployment(pre_stop=AGENT))
    report = run_check([path])
    assert report.ok, render(report)
    text = render(report)
    # Budget 30 - 10 = 20; evidence needs registry propagation 5 + traffic quiet 10.
    assert "t=15" in text
    assert "t=20" in text
    assert "t=30" in text
    assert "grace period ends: SIGKILL" in text


# -- the grace rule --------------------------------------------------------------------------------


def test_sleep_45_in_the_default_grace_period_is_cut_off(tmp_path: Path) -> None:
    # The Nacos preStop script's "sleep 45" with the default 30 s grace period.
    path = write(tmp_path, deployment(pre_stop='exec:\n  command: ["/bin/sh", "-c", "sleep 45"]'))
    result = invoke(path)
    assert result.exit_code == EXIT_VIOLATIONS
    fail_lines = [line for line in result.stdout.splitlines() if line.startswith("FAIL")]
    assert len(fail_lines) == 1
    assert fail_lines[0].startswith("FAIL [grace] Deployment web container web:")
    assert "terminationGracePeriodSeconds 30 < preStop wait 45 + shutdown reserve 10" in fail_lines[0]
    assert "raise terminationGracePeriodSeconds to 55" in fail_lines[0]
    assert "shorten the sleep to 20" in fail_lines[0]


def test_sleep_45_with_grace_60_holds(tmp_path: Path) -> None:
    path = write(tmp_path, deployment(pre_stop='exec:\n  command: ["/bin/sh", "-c", "sleep 45"]', grace=60))
    assert run_check([path]).ok


def test_budget_longer_than_the_grace_period(tmp_path: Path) -> None:
    env = """
        - name: PRESTOP_BUDGET_SECONDS
          value: "40"
    """
    report = run_check([write(tmp_path, deployment(pre_stop=AGENT, grace=30, env=env))])
    assert fails(report) == [
        "[grace] terminationGracePeriodSeconds 30 < preStop wait 40 + shutdown reserve 10: the kubelet kills the app "
        "before it has shut down; raise terminationGracePeriodSeconds to 50, or lower the budget to 20 "
        "(PRESTOP_BUDGET_SECONDS=20)"
    ]


def test_agent_grace_larger_than_the_pods_grace(tmp_path: Path) -> None:
    env = """
        - name: PRESTOP_GRACE_SECONDS
          value: "60"
    """
    report = run_check([write(tmp_path, deployment(pre_stop=AGENT, grace=45, env=env))])
    (line,) = fails(report)
    assert line.startswith("[grace] terminationGracePeriodSeconds 45 < preStop wait 50 + shutdown reserve 10")
    assert "set PRESTOP_GRACE_SECONDS=45 to match the pod's grace period" in line


# -- the budget rule -------------------------------------------------------------------------------


def test_registry_only_needs_the_consumer_cache_allowance(tmp_path: Path) -> None:
    env = """
        - name: PRESTOP_WAIT_FOR
          value: registry
    """
    report = run_check([write(tmp_path, deployment(pre_stop=AGENT, env=env))])
    (line,) = fails(report)
    # 5 s registry propagation + 35 s consumer caches > the default budget of 20 s.
    assert line.startswith("[budget] agent budget 20 < 40 needed")
    assert "(PRESTOP_BUDGET_SECONDS=40) and terminationGracePeriodSeconds to 50" in line


def test_flags_in_the_hook_win_over_env(tmp_path: Path) -> None:
    pre_stop = 'exec:\n  command: ["prestop-agent", "deregister", "--wait", "--budget=40", "--wait-for", "registry"]'
    env = """
        - name: PRESTOP_BUDGET_SECONDS
          value: "5"
    """
    report = run_check([write(tmp_path, deployment(pre_stop=pre_stop, grace=50, env=env))])
    assert report.ok, render(report)


def test_no_wait_does_not_wait(tmp_path: Path) -> None:
    pre_stop = 'exec:\n  command: ["prestop-agent", "deregister", "--no-wait"]'
    report = run_check([write(tmp_path, deployment(pre_stop=pre_stop))])
    assert [v.rule for _, v in report.violations] == ["budget"]
    assert "use `deregister --wait`" in fails(report)[0]


def test_invalid_timing_value_is_a_violation(tmp_path: Path) -> None:
    env = """
        - name: PRESTOP_SHUTDOWN_RESERVE_SECONDS
          value: ten
    """
    report = run_check([write(tmp_path, deployment(pre_stop=AGENT, env=env))])
    assert [v.rule for _, v in report.violations] == ["config"]
    assert "PRESTOP_SHUTDOWN_RESERVE_SECONDS='ten' is not a number of seconds" in fails(report)[0]


@pytest.mark.parametrize(("least", "violations"), [("2", []), ("10", []), ("12", ["config"])])
def test_quiet_floor_longer_than_the_quiet_time_is_a_violation(
    tmp_path: Path, least: str, violations: list[str]
) -> None:
    env = f"""
        - name: PRESTOP_QUIET_MIN_SECONDS
          value: "{least}"
    """
    report = run_check([write(tmp_path, deployment(pre_stop=AGENT, env=env))])
    assert [v.rule for _, v in report.violations] == violations
    if violations:
        assert "PRESTOP_QUIET_MIN_SECONDS=12 is longer than the quiet time of 10" in fails(report)[0]


def test_unresolvable_reference_is_reported_not_guessed(tmp_path: Path) -> None:
    env = """
        - name: PRESTOP_BUDGET_SECONDS
          valueFrom:
            secretKeyRef:
              name: timings
              key: budget
    """
    report = run_check([write(tmp_path, deployment(pre_stop=AGENT, env=env))])
    assert report.ok
    assert any("PRESTOP_BUDGET_SECONDS comes from secretKeyRef" in n for n in report.containers[0].notes)
    assert re.search(
        r"preStop wait +- +at most the agent budget: env PRESTOP_BUDGET_SECONDS \(unresolved\)", render(report)
    )


def test_config_map_values_are_resolved(tmp_path: Path) -> None:
    env = """
        - name: PRESTOP_BUDGET_SECONDS
          valueFrom:
            configMapKeyRef:
              name: timings
              key: budget
    """
    configmap = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: timings\ndata:\n  budget: '40'\n"
    path = write(tmp_path, deployment(pre_stop=AGENT, env=env) + "---\n" + configmap)
    report = run_check([path])
    assert [v.rule for _, v in report.violations] == ["grace"]
    assert "preStop wait 40" in fails(report)[0]


# -- load balancer rules ---------------------------------------------------------------------------

SERVICE = """
---
apiVersion: v1
kind: Service
metadata:
  name: web
spec:
  selector:
    app: web
  ports:
    - port: 80
"""


def aws_ingress(*annotations: str) -> str:
    lines = "".join(f"    {a}\n" for a in ("alb.ingress.kubernetes.io/target-type: ip", *annotations))
    return (
        "---\napiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: web\n  annotations:\n"
        f"{lines}spec:\n  ingressClassName: alb\n  rules:\n    - http:\n        paths:\n          - path: /\n"
        "            pathType: Prefix\n            backend:\n              service:\n                name: web\n"
        "                port:\n                  number: 80\n"
    )


def test_keepalive_not_longer_than_the_idle_timeout(tmp_path: Path) -> None:
    env = """
        - name: SERVER_TOMCAT_KEEP_ALIVE_TIMEOUT
          value: 60s
    """
    ingress = aws_ingress(
        "alb.ingress.kubernetes.io/load-balancer-attributes: idle_timeout.timeout_seconds=60",
        "alb.ingress.kubernetes.io/target-group-attributes: deregistration_delay.timeout_seconds=10",
    )
    manifest = deployment(pre_stop="sleep:\n  seconds: 25", grace=40, env=env) + SERVICE + ingress
    report = run_check([write(tmp_path, manifest)])
    (line,) = fails(report)
    assert line.startswith("[keepalive] app keep-alive 60 <= LB idle timeout 60")
    assert "at least 61 (e.g. SERVER_TOMCAT_KEEP_ALIVE_TIMEOUT=61s)" in line


def test_keepalive_from_our_annotation_in_milliseconds_env(tmp_path: Path) -> None:
    env = """
        - name: SERVER_TOMCAT_KEEPALIVETIMEOUT
          value: "75000"
    """
    attributes = "alb.ingress.kubernetes.io/target-group-attributes: deregistration_delay.timeout_seconds=10"
    manifest = deployment(pre_stop="sleep:\n  seconds: 25", grace=40, env=env) + SERVICE + aws_ingress(attributes)
    report = run_check([write(tmp_path, manifest)])
    assert report.ok, render(report)
    assert "app keep-alive                75 s  env SERVER_TOMCAT_KEEPALIVETIMEOUT" in render(report)


def test_prestop_shorter_than_the_deregistration_delay(tmp_path: Path) -> None:
    attributes = "alb.ingress.kubernetes.io/target-group-attributes: deregistration_delay.timeout_seconds=30"
    manifest = deployment(pre_stop='exec:\n  command: ["sleep", "20"]', grace=30) + SERVICE + aws_ingress(attributes)
    report = run_check([write(tmp_path, manifest)])
    (line,) = fails(report)
    assert line.startswith("[lb-drain] preStop wait 20 < LB propagation 10 + deregistration delay 30")
    assert "raise the sleep to 40 and terminationGracePeriodSeconds to 50" in line
    assert "lower the deregistration delay to 10" in line
    assert "deregistration_delay.timeout_seconds=10" in line


def test_service_annotation_wins_over_the_ingress(tmp_path: Path) -> None:
    service = SERVICE.replace(
        "  name: web\n",
        "  name: web\n  annotations:\n"
        "    alb.ingress.kubernetes.io/target-group-attributes: deregistration_delay.timeout_seconds=5\n",
    )
    attributes = "alb.ingress.kubernetes.io/target-group-attributes: deregistration_delay.timeout_seconds=300"
    manifest = deployment(pre_stop='exec:\n  command: ["sleep", "20"]', grace=30) + service + aws_ingress(attributes)
    report = run_check([write(tmp_path, manifest)])
    assert report.ok, render(report)


def test_aws_default_deregistration_delay_applies_when_unstated(tmp_path: Path) -> None:
    env = """
        - name: PRESTOP_AWS_TARGET_GROUP_ARNS
          value: arn:aws:elasticloadbalancing:eu-west-1:111122223333:targetgroup/web/0123456789abcdef
    """
    report = run_check([write(tmp_path, deployment(pre_stop=AGENT, grace=30, env=env))])
    (line,) = fails(report)
    assert line.startswith("[lb-drain] preStop wait 20 < LB propagation 10 + deregistration delay 300")
    assert "AWS default (not stated)" in render(report)


def test_aliyun_connection_draining(tmp_path: Path) -> None:
    ingress = aws_ingress(
        'alb.ingress.kubernetes.io/connection-drain-enabled: "true"',
        'alb.ingress.kubernetes.io/connection-drain-timeout: "30"',
    ).replace("    alb.ingress.kubernetes.io/target-type: ip\n", "")
    manifest = deployment(pre_stop='exec:\n  command: ["/bin/sh", "-c", "sleep 10"]', grace=45) + SERVICE + ingress
    report = run_check([write(tmp_path, manifest)])
    (line,) = fails(report)
    assert "Alibaba Cloud ALB via Ingress web" in render(report)
    assert line.startswith("[lb-drain] preStop wait 10 < LB propagation 10 + deregistration delay 30")
    assert "or lower the deregistration delay" not in line  # 10 - 10 leaves nothing to lower it to


def test_our_annotations_state_the_lb(tmp_path: Path) -> None:
    manifest = deployment(pre_stop="sleep:\n  seconds: 30", grace=45).replace(
        "    metadata:\n      labels:\n",
        "    metadata:\n      annotations:\n"
        '        prestop-agent.io/lb-deregistration-delay-seconds: "15"\n'
        '        prestop-agent.io/lb-propagation-seconds: "5"\n'
        '        prestop-agent.io/lb-idle-timeout-seconds: "60"\n'
        '        prestop-agent.io/app-keepalive-seconds: "30"\n'
        "      labels:\n",
    )
    report = run_check([write(tmp_path, manifest)])
    assert [v.rule for _, v in report.violations] == ["keepalive"]


# -- what is read ----------------------------------------------------------------------------------


def test_multi_document_with_a_service_and_a_deployment(tmp_path: Path) -> None:
    manifest = SERVICE.lstrip("\n-") + "---\n" + deployment(pre_stop='exec:\n  command: ["sleep", "45"]')
    report = run_check([write(tmp_path, manifest)])
    assert [c.workload for c in report.containers] == ["Deployment web"]
    assert [v.rule for _, v in report.violations] == ["grace"]


@pytest.mark.parametrize("kind", ["StatefulSet", "DaemonSet"])
def test_statefulset_and_daemonset(tmp_path: Path, kind: str) -> None:
    report = run_check([write(tmp_path, deployment(pre_stop='exec:\n  command: ["sleep", "45"]', kind=kind))])
    assert [c.workload for c in report.containers] == [f"{kind} web"]
    assert "raise terminationGracePeriodSeconds to 55" in fails(report)[0]


def test_kind_list(tmp_path: Path) -> None:
    good = deployment(pre_stop='exec:\n  command: ["sleep", "5"]', name="good")
    bad = deployment(pre_stop='exec:\n  command: ["sleep", "45"]', name="bad")
    items = "".join(f"  - {textwrap.indent(doc, '    ').lstrip()}" for doc in (good, bad))
    manifest = f"apiVersion: v1\nkind: List\nitems:\n{items}"
    report = run_check([write(tmp_path, manifest)])
    assert [c.workload for c in report.containers] == ["Deployment good", "Deployment bad"]
    assert [c.workload for c, _ in report.violations] == ["Deployment bad"]


@pytest.mark.parametrize(
    ("command", "seconds"),
    [
        ('["/bin/sh", "-c", "sleep 45"]', "45"),
        ('["sh", "-c", "echo stopping && sleep 100s"]', "100"),
        ('["/bin/bash", "-c", "sleep 1m; true"]', "60"),
        ('["/bin/sleep", "45"]', "45"),
    ],
)
def test_shell_and_plain_sleeps(tmp_path: Path, command: str, seconds: str) -> None:
    report = run_check([write(tmp_path, deployment(pre_stop=f"exec:\n  command: {command}"))])
    assert f"preStop wait {seconds} + shutdown reserve 10" in fails(report)[0]


def test_native_sleep_action(tmp_path: Path) -> None:
    report = run_check([write(tmp_path, deployment(pre_stop="sleep:\n  seconds: 45", grace=50))])
    assert "preStop sleep action 45 s" in render(report)
    assert "raise terminationGracePeriodSeconds to 55" in fails(report)[0]


def test_agent_inside_sh_c(tmp_path: Path) -> None:
    pre_stop = 'exec:\n  command: ["sh", "-c", "/opt/prestop-agent/prestop-agent deregister --wait --budget 50"]'
    report = run_check([write(tmp_path, deployment(pre_stop=pre_stop))])
    assert "preStop wait 50" in fails(report)[0]


def test_http_get_to_a_sidecar_reads_the_sidecars_env(tmp_path: Path) -> None:
    sidecar = textwrap.indent(
        textwrap.dedent(
            """
            - name: prestop-agent
              image: example/prestop-agent:1
              args: ["serve", "--listen-port", "9901"]
              ports:
                - name: prestop
                  containerPort: 9901
              env:
                - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
                - {name: HOST_IP, valueFrom: {fieldRef: {fieldPath: status.hostIP}}}
                - {name: NACOS_SERVER_ADDR, value: "nacos:8848"}
                - {name: NACOS_SERVICE_PORT, value: "8080"}
                - name: PRESTOP_BUDGET_SECONDS
                  value: "45"
            """
        ).strip(),
        " " * 8,
    )
    pre_stop = "httpGet:\n  path: /prestop\n  port: prestop"
    manifest = deployment(pre_stop=pre_stop, grace=50, extra_containers=sidecar + "\n")
    report = run_check([write(tmp_path, manifest)])
    assert [c.container for c in report.containers] == ["web"]
    assert "preStop httpGet /prestop port prestop" in render(report)
    assert fails(report)[0].startswith("[grace] terminationGracePeriodSeconds 50 < preStop wait 45 + shutdown reserve")


def test_other_hooks_and_kinds_are_skipped_with_a_note(tmp_path: Path) -> None:
    script = deployment(pre_stop='exec:\n  command: ["/tmp/preStop.sh"]', name="scripted")
    good = deployment(pre_stop='exec:\n  command: ["sleep", "5"]')
    job = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\nspec: {}\n"
    report = run_check([write(tmp_path, script + "---\n" + good + "---\n" + job)])
    assert [c.workload for c in report.containers] == ["Deployment web"]
    assert any("'/tmp/preStop.sh', neither prestop-agent nor a plain sleep" in n for n in report.notes)


def test_directories_are_read_recursively(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    write(tmp_path / "a", deployment(pre_stop='exec:\n  command: ["sleep", "45"]'), "web.yml")
    (tmp_path / "README.md").write_text("not a manifest", encoding="utf-8")
    result = invoke(tmp_path)
    assert result.exit_code == EXIT_VIOLATIONS
    assert "FAIL [grace]" in result.stdout


# -- invalid input: exit 2, one line ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message", "starts"),
    [
        ("apiVersion: v1\nkind: [unclosed\n", "not valid YAML at line", "{path}: "),
        ("- just\n- a list\n", "document 1 is not a Kubernetes object", "{path}: "),
        (
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n",
            "no Deployment, StatefulSet or DaemonSet found",
            "no Deployment, StatefulSet or DaemonSet found in {path}; nothing to check",
        ),
    ],
)
def test_invalid_input_exits_2_with_one_line(tmp_path: Path, text: str, message: str, starts: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message):
        run_check([path])
    result = invoke(path)
    assert result.exit_code == EXIT_CONFIG
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("prestop-agent: " + starts.format(path=path))
    assert message in lines[0]


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = invoke(tmp_path / "nope.yaml")
    assert result.exit_code == EXIT_CONFIG
    assert (
        result.stderr.strip() == f"prestop-agent: {tmp_path / 'nope.yaml'}: cannot read it: No such file or directory"
    )


def test_bad_grace_period_exits_2(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        deployment(pre_stop='exec:\n  command: ["sleep", "5"]').replace(
            "    spec:\n", "    spec:\n      terminationGracePeriodSeconds: soon\n", 1
        ),
    )
    result = invoke(path)
    assert result.exit_code == EXIT_CONFIG
    assert "terminationGracePeriodSeconds='soon' is not a whole number of seconds" in result.stderr
