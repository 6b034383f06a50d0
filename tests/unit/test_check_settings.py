"""``check`` runs the agent's own settings validation: it never passes what the hook would refuse with exit 2."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from prestop_agent.check import CheckReport, render, run_check
from prestop_agent.check.settings import Pod
from prestop_agent.cli import EXIT_OK, EXIT_VIOLATIONS, app
from prestop_agent.config import derive_service
from prestop_agent.errors import ConfigError
from prestop_agent.watchers import aws_alb

runner = CliRunner()

POD_ENV = """
- {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
- {name: NACOS_SERVER_ADDR, value: "nacos-headless.nacos:8848"}
- {name: NACOS_SERVICE_PORT, value: "8080"}
"""


def manifest(
    *,
    command: str = '["prestop-agent", "deregister", "--wait"]',
    env: str = "",
    grace: int = 60,
    kind: str = "Deployment",
    name: str = "web",
    pod_env: str = POD_ENV,
    containers: str = "",
    pre_stop: str | None = None,
) -> str:
    entries = textwrap.dedent(pod_env).strip() + "\n" + textwrap.dedent(env).strip()
    hook = pre_stop or f"exec: {{command: {command}}}"
    return (
        f"apiVersion: apps/v1\nkind: {kind}\nmetadata: {{name: {name}}}\nspec:\n  template:\n    spec:\n"
        f"      terminationGracePeriodSeconds: {grace}\n      containers:\n"
        f"        - name: app\n          image: example/app:1\n"
        f"          env:\n{textwrap.indent(entries.strip(), ' ' * 12)}\n"
        f"          lifecycle:\n            preStop:\n{textwrap.indent(hook, ' ' * 14)}\n"
        f"{containers}"
    )


def check(tmp_path: Path, text: str) -> CheckReport:
    path = tmp_path / "app.yaml"
    path.write_text(text, encoding="utf-8")
    return run_check([path])


def violations(report: CheckReport) -> list[str]:
    return [f"[{v.rule}] {v.message}" for _, v in report.violations]


def refused(report: CheckReport) -> str:
    """The one config violation: what the agent would say before exiting 2."""
    config = [v.message for _, v in report.violations if v.rule == "config"]
    assert len(config) == 1, render(report)
    return config[0]


# -- what the agent refuses, check refuses -----------------------------------------------------------


def test_a_good_manifest_is_accepted_and_says_what_stood_in(tmp_path: Path) -> None:
    report = check(tmp_path, manifest())
    assert report.ok, render(report)
    text = render(report)
    assert "accepted by the agent's own validation; as in the running pod: POD_IP from the downward API" in text
    assert "web (namespace public, group DEFAULT_GROUP; derived from the pod name)" in text


@pytest.mark.parametrize(
    ("env", "command", "message"),
    [
        # The budget is longer than the grace period: through the variable, then through --budget.
        (
            '- {name: PRESTOP_GRACE_SECONDS, value: "30"}\n- {name: PRESTOP_BUDGET_SECONDS, value: "40"}',
            None,
            "PRESTOP_BUDGET_SECONDS=40 is longer than PRESTOP_GRACE_SECONDS=30",
        ),
        (
            '- {name: PRESTOP_GRACE_SECONDS, value: "30"}',
            '["prestop-agent", "deregister", "--wait", "--budget", "40"]',
            "--budget=40 is longer than PRESTOP_GRACE_SECONDS=30",
        ),
        (
            "- {name: PRESTOP_WAIT_FOR, value: 'registry,traffic,endpoint'}",
            None,
            "PRESTOP_WAIT_FOR names an unknown watcher 'endpoint'",
        ),
        (
            "- {name: PRESTOP_TRAFFIC_IGNORE_LOOPBACK, value: 'maybe'}",
            None,
            "PRESTOP_TRAFFIC_IGNORE_LOOPBACK='maybe' is not a boolean",
        ),
        # The minimum values.
        (
            '- {name: PRESTOP_BUDGET_SECONDS, value: "0"}',
            None,
            "PRESTOP_BUDGET_SECONDS='0' must be a number of seconds",
        ),
        ('- {name: PRESTOP_QUIET_SECONDS, value: "0"}', None, "PRESTOP_QUIET_SECONDS='0' must be a number of seconds"),
        ('- {name: PRESTOP_GRACE_SECONDS, value: "0"}', None, "PRESTOP_GRACE_SECONDS='0' must be a number of seconds"),
        ('- {name: NACOS_SERVICE_PORT, value: "8_080"}', None, "NACOS_SERVICE_PORT='8_080' is not a port number"),
        ("- {name: NACOS_USERNAME, value: nacos}", None, "NACOS_PASSWORD is not set but its partner is"),
    ],
    ids=[
        "budget-over-grace",
        "budget-flag-over-grace",
        "unknown-watcher",
        "invalid-boolean",
        "budget-0",
        "quiet-0",
        "grace-0",
        "port-underscore",
        "username-alone",
    ],
)
def test_what_the_agent_refuses_is_a_violation(tmp_path: Path, env: str, command: str | None, message: str) -> None:
    text = manifest(env=env, command=command) if command else manifest(env=env)
    report = check(tmp_path, text)
    said = refused(report)
    assert said.startswith("the agent would refuse its settings and exit 2 without draining: ")
    assert message in said
    result = runner.invoke(app, ["check", str(tmp_path / "app.yaml")])
    assert result.exit_code == EXIT_VIOLATIONS
    assert f"FAIL [config] Deployment web container app: {said}" in result.stdout


def test_what_the_manifest_lacks_is_a_violation(tmp_path: Path) -> None:
    report = check(tmp_path, manifest(pod_env='- {name: NACOS_SERVER_ADDR, value: "nacos:8848"}'))
    assert "POD_IP is not set; add it from the downward API" in refused(report)


@pytest.mark.parametrize(
    ("command", "message"),
    [
        ('["prestop-agent", "deregister", "--wait", "--grace", "40"]', "No such option '--grace'"),
        ('["prestop-agent", "deregister", "--budget"]', "Option '--budget' requires an argument"),
        ('["prestop-agent", "deregister", "now"]', "unexpected extra argument"),
        ('["sh", "-c", "prestop-agent deregister --wait-for"]', "Option '--wait-for' requires an argument"),
        ('["prestop-agent", "deregister", "--help"]', "`--help` prints the help and exits 0 without draining"),
    ],
)
def test_arguments_the_command_line_refuses_are_a_violation(tmp_path: Path, command: str, message: str) -> None:
    said = refused(check(tmp_path, manifest(command=command)))
    assert said.startswith("the agent would not drain: ")
    assert message in said


def test_dry_run_never_takes_the_pod_out(tmp_path: Path) -> None:
    said = refused(check(tmp_path, manifest(command='["prestop-agent", "deregister", "--dry-run"]')))
    assert "`--dry-run` reads and reports but writes nothing" in said


def test_shell_redirections_and_following_commands_are_not_arguments(tmp_path: Path) -> None:
    script = "exec /opt/prestop-agent/prestop-agent deregister --wait --budget 25 >/proc/1/fd/1 2>&1 || true"
    report = check(tmp_path, manifest(command=f'["/bin/sh", "-c", "{script}"]'))
    assert report.ok, render(report)
    assert "at most the agent budget: --budget" in render(report)


# -- how long the hook takes ---------------------------------------------------------------------------


def test_a_sleep_after_the_agent_adds_to_the_wait(tmp_path: Path) -> None:
    # Budget 30 - 10 = 20, then 30 s more of sleep: 50 + reserve 10 > 30.
    report = check(tmp_path, manifest(command='["sh", "-c", "prestop-agent deregister --wait; sleep 30"]', grace=30))
    assert violations(report) == [
        "[grace] terminationGracePeriodSeconds 30 < preStop wait 50 + shutdown reserve 10: the kubelet kills the "
        "app before it has shut down; raise terminationGracePeriodSeconds to 60, or drop the sleep of 30 beside "
        "the agent, which waits on evidence itself"
    ]
    assert "at most the agent budget: agent default grace 30 - shutdown reserve, plus sleep 30 in the same script" in (
        render(report)
    )


@pytest.mark.parametrize(
    ("command", "seconds"),
    [
        ('["sh", "-c", "sleep 1m 30s"]', "90"),
        ('["sleep", "1m", "30s"]', "90"),
        ('["sh", "-c", "sleep 0.5m 15 && echo done"]', "45"),
    ],
)
def test_sleep_adds_up_its_arguments(tmp_path: Path, command: str, seconds: str) -> None:
    report = check(tmp_path, manifest(command=command, grace=30))
    assert f"preStop wait {seconds} + shutdown reserve 10" in violations(report)[0]


# -- what only the running pod knows ---------------------------------------------------------------------


def test_credentials_from_a_secret_stand_in_as_set(tmp_path: Path) -> None:
    env = """
        - {name: NACOS_USERNAME, value: nacos}
        - name: NACOS_PASSWORD
          valueFrom: {secretKeyRef: {name: nacos, key: password}}
    """
    report = check(tmp_path, manifest(env=env))
    assert report.ok, render(report)
    assert "NACOS_PASSWORD from a Secret" in render(report)


def test_a_refusal_that_depends_on_an_unreadable_value_is_a_note(tmp_path: Path) -> None:
    # NACOS_SERVER_ADDR may well be in the ConfigMap from elsewhere: the check cannot tell.
    pod_env = """
        - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
        - {name: NACOS_SERVICE_PORT, value: "8080"}
    """
    containers = "          envFrom:\n            - configMapRef: {name: nacos-settings}\n"
    text = manifest(pod_env=pod_env).replace("          lifecycle:\n", containers + "          lifecycle:\n", 1)
    report = check(tmp_path, text)
    assert report.ok, render(report)
    notes = report.containers[0].notes
    assert any(
        n.startswith("agent settings not fully checked: NACOS_SERVER_ADDR is not set")
        and n.endswith(
            "but NACOS_SERVER_ADDR, SPRING_CLOUD_NACOS_DISCOVERY_SERVER_ADDR, SPRING_CLOUD_NACOS_SERVER_ADDR "
            "cannot be known from the files"
        )
        for n in notes
    ), notes


def test_a_literal_mistake_is_a_violation_even_beside_unreadable_values(tmp_path: Path) -> None:
    env = """
        - {name: PRESTOP_WAIT_FOR, value: "registry,trafic"}
        - name: NACOS_PASSWORD
          valueFrom: {secretKeyRef: {name: nacos, key: password}}
        - name: NACOS_USERNAME
          valueFrom: {secretKeyRef: {name: nacos, key: username}}
    """
    assert "unknown watcher 'trafic'" in refused(check(tmp_path, manifest(env=env)))


def test_a_flag_the_shell_fills_in_is_not_guessed(tmp_path: Path) -> None:
    command = '["sh", "-c", "prestop-agent deregister --wait --budget $BUDGET"]'
    report = check(tmp_path, manifest(command=command))
    assert report.ok, render(report)
    text = render(report)
    assert "taken as unset, not known from the files: --budget" in text
    assert "--budget $BUDGET is filled in at run time" in text


def test_a_variable_in_an_exec_hook_reaches_the_agent_unexpanded(tmp_path: Path) -> None:
    env = '- {name: BUDGET, value: "25"}'
    said = refused(
        check(tmp_path, manifest(env=env, command='["prestop-agent", "deregister", "--budget", "$(BUDGET)"]'))
    )
    assert "--budget='$(BUDGET)' is not a number of seconds" in said
    assert "the kubelet does not expand $(VAR) or $VAR in a lifecycle hook's exec command" in said


def test_the_endpoints_watcher_needs_nothing_of_this_machine(tmp_path: Path) -> None:
    # KUBERNETES_SERVICE_HOST is set by Kubernetes, and the service-account mount is the pod's.
    report = check(tmp_path, manifest(env="- {name: PRESTOP_WAIT_FOR, value: 'registry,traffic,endpoints'}"))
    assert report.ok, render(report)
    assert "HOSTNAME, KUBERNETES_SERVICE_HOST, KUBERNETES_SERVICE_PORT set by Kubernetes" in render(report)


@pytest.mark.parametrize(
    ("kind", "name", "derived"),
    [
        ("Deployment", "orders", "orders"),
        ("StatefulSet", "web", "web"),
        ("DaemonSet", "node-agent", "node-agent"),
        (
            "Deployment",
            "payment-reconciliation-service-eu-west-production",
            "payment-reconciliation-service-eu-west-production",
        ),
    ],
)
def test_the_pod_name_stands_in_as_kubernetes_makes_it(kind: str, name: str, derived: str) -> None:
    pod = Pod(kind, name, None)
    assert len(pod.name) <= 63
    assert derive_service(pod.name) == derived


def test_the_sidecars_own_settings_are_checked(tmp_path: Path) -> None:
    sidecar = textwrap.indent(
        textwrap.dedent(
            """
            - name: prestop
              image: example/prestop-agent:1
              args: ["serve"]
              ports: [{name: prestop, containerPort: 9911}]
              env:
                - {name: POD_IP, valueFrom: {fieldRef: {fieldPath: status.podIP}}}
                - {name: NACOS_SERVER_ADDR, value: "nacos:8848"}
                - {name: NACOS_SERVICE_PORT, value: "8080"}
                - {name: PRESTOP_SERVE_ALLOW_FROM, value: "0.0.0.0/0,::/0"}
            """
        ).strip(),
        " " * 8,
    )
    pre_stop = "httpGet: {path: /prestop, port: prestop}"
    text = manifest(pre_stop=pre_stop, containers=sidecar + "\n")
    assert "PRESTOP_SERVE_ALLOW_FROM=0.0.0.0/0,::/0 lets callers from 100% of IPv4" in refused(check(tmp_path, text))
    # The token from a Secret: the check cannot tell if the value is long enough, and says so.
    token = "            - name: PRESTOP_SERVE_TOKEN\n              valueFrom: {secretKeyRef: {name: t, key: t}}\n"
    report = check(tmp_path, text + token)
    assert report.ok, render(report)
    assert any("but PRESTOP_SERVE_TOKEN cannot be known from the files" in n for n in report.containers[0].notes)


def test_the_shipped_examples_pass_the_agents_validation() -> None:
    examples = Path(__file__).resolve().parents[2] / "k8s-examples"
    result = runner.invoke(app, ["check", str(examples)])
    assert result.exit_code == EXIT_OK, result.stdout
    assert result.stdout.count("accepted by the agent's own validation") == 6


def test_no_wait_then_a_sleep_is_a_fixed_wait_not_a_failure(tmp_path: Path) -> None:
    report = check(tmp_path, manifest(command='["sh", "-c", "prestop-agent deregister --no-wait && sleep 40"]'))
    assert report.ok, render(report)
    assert "preStop wait                  40 s  at most the agent budget: --no-wait, plus sleep 40" in render(report)
    assert any("a fixed wait, not evidence" in n for n in report.containers[0].notes)


def test_a_cloud_sdk_missing_here_is_the_images_business(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def missing() -> None:
        raise ConfigError(aws_alb.MISSING_SDK)

    monkeypatch.setattr(aws_alb, "_require_sdk", missing)
    env = """
        - {name: PRESTOP_WAIT_FOR, value: "registry,traffic,aws-alb"}
        - name: PRESTOP_AWS_TARGET_GROUP_ARNS
          value: arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/orders/0123456789abcdef
    """
    report = check(tmp_path, manifest(env=env))
    assert not [v for _, v in report.violations if v.rule == "config"], render(report)
