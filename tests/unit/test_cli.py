"""The command line: exit codes, one-line errors, JSON output, no secrets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import respx
from typer.testing import CliRunner

from prestop_agent import __version__, flags
from prestop_agent.cli import EXIT_CODES, app, exit_code_for
from prestop_agent.errors import (
    AuthError,
    BudgetExhausted,
    ConfigError,
    InstanceNotFound,
    PrestopError,
    ServerError,
    WatcherError,
)
from tests.fakes import FakeInstance, FakeNacos

ENV = {
    "POD_IP": "10.0.0.7",
    "NACOS_SERVICE_PORT": "8080",
    "NACOS_SERVER_ADDR": "nacos-a:8848",
    "NACOS_SERVICE_NAME": "orders",
    "PRESTOP_CONSUMER_CACHE_SECONDS": "0",
    "PRESTOP_WAIT_FOR": "registry",
    "PRESTOP_LOG_TO_PID1": "false",
}

runner = CliRunner()


def invoke(args: list[str], **env: str):  # type: ignore[no-untyped-def]
    return runner.invoke(app, args, env={**ENV, **env})


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"prestop-agent {__version__}"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (None, 0),
        (ConfigError("x"), 2),
        (ServerError("x"), 3),
        (AuthError("x"), 3),
        (InstanceNotFound("x"), 3),
        (BudgetExhausted("x"), 4),
        (WatcherError("x"), 3),
        (PrestopError("x"), 3),
    ],
)
def test_exit_code_table(error: PrestopError | None, code: int) -> None:
    assert exit_code_for(error) == code
    assert [c for _, c in EXIT_CODES] == [2, 4, 3, 3]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"POD_IP": "not-an-ip"}, "POD_IP='not-an-ip' is not an IP address"),
        ({"NACOS_SERVICE_PORT": "0"}, "NACOS_SERVICE_PORT='0' is out of range"),
        ({"NACOS_SERVER_ADDR": "nacos:port"}, "unparsable server address 'nacos:port'"),
        ({"PRESTOP_BUDGET_SECONDS": "-1"}, "PRESTOP_BUDGET_SECONDS='-1'"),
        ({"NACOS_API": "v4"}, "NACOS_API='v4' is not a known API"),
        ({"PRESTOP_WAIT_FOR": "registry,magic"}, "unknown watcher 'magic'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_nothing_sent(env: dict[str, str], message: str) -> None:
    with respx.mock(assert_all_called=False) as router:
        result = invoke(["deregister", "--wait"], **env)
        assert not router.calls
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert message in lines[0]


def test_unreadable_service_account_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    # The endpoints watcher needs the pod's namespace: without its file it used to be found
    # missing only after the instance was disabled, and the run ended in a traceback.
    (tmp_path / "token").write_text("t0ken")
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos-a").mock(side_effect=nacos)
        result = invoke(
            ["deregister", "--wait"],
            PRESTOP_WAIT_FOR="registry,endpoints",
            PRESTOP_KUBE_API="http://kubernetes.test:6443",
            PRESTOP_KUBE_SA_DIR=str(tmp_path),
            PRESTOP_BUDGET_SECONDS="1",
        )
        assert not router.calls
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"cannot read the pod's namespace from {tmp_path / 'namespace'}" in lines[0]
    assert "POD_NAMESPACE" in lines[0]
    assert nacos.writes == []


def test_flag_overrides_environment() -> None:
    with respx.mock(assert_all_called=False) as router:
        result = invoke(["deregister", "--pod-ip", "bad"], POD_IP="10.0.0.7")
        assert not router.calls
    assert result.exit_code == 2
    assert "--pod-ip='bad'" in result.stderr


def test_deregister_json_reports_the_drain() -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos-a").mock(side_effect=nacos)
        result = invoke(["deregister", "--wait", "--json"])
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["ok"] is True
    assert report["outcome"] == "drained"
    assert report["watchers"]["registry"]["verdict"] == "gone"
    # Every log line is a JSON object with the run's timing (stderr is not a terminal here).
    events = [json.loads(line) for line in result.stderr.splitlines()]
    assert all("elapsed_ms" in e and "remaining_ms" in e for e in events if e["event"] != "deregister_started")
    assert events[-1]["event"] == "deregister_finished"


def test_wrong_password_exits_3_and_never_prints_it() -> None:
    nacos = FakeNacos(users={"nacos": "right-password"})
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos-a").mock(side_effect=nacos)
        result = invoke(
            ["deregister", "--no-wait", "--json"], NACOS_USERNAME="nacos", NACOS_PASSWORD="wrong-password-123"
        )
    assert result.exit_code == 3
    assert "check NACOS_USERNAME and NACOS_PASSWORD" in result.stdout
    assert "wrong-password-123" not in result.stdout + result.stderr


def test_token_never_printed() -> None:
    nacos = FakeNacos(users={"nacos": "pw-123456"})
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos-a").mock(side_effect=nacos)
        result = invoke(["status", "--json"], NACOS_USERNAME="nacos", NACOS_PASSWORD="pw-123456")
    assert result.exit_code == 0, result.stderr
    assert "secretvalue" not in result.stdout + result.stderr
    assert "pw-123456" not in result.stdout + result.stderr


def test_dry_run_sends_no_write_and_exits_0() -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos-a").mock(side_effect=nacos)
        result = invoke(["deregister", "--dry-run"])
    assert result.exit_code == 0
    assert nacos.writes == []
    assert "deregister: dry_run" in result.stdout


def test_status_text_shows_sources() -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos-a").mock(side_effect=nacos)
        result = invoke(["status"])
    assert result.exit_code == 0
    assert "(env NACOS_SERVICE_NAME)" in result.stdout
    assert "deregister would: disable 10.0.0.7:8080" in result.stdout


def test_register_puts_it_back() -> None:
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080, enabled=False))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos-a").mock(side_effect=nacos)
        result = invoke(["register"])
    assert result.exit_code == 0, result.stderr
    assert inst.enabled is True


def test_trust_store_is_loaded_only_when_a_server_speaks_tls() -> None:
    import ssl

    from prestop_agent.cli import _tls
    from prestop_agent.config import load
    from prestop_agent.source import Source

    plain = _tls(load(Source(ENV)))
    assert plain.verify_mode is ssl.CERT_REQUIRED
    assert plain.check_hostname
    assert plain.cert_store_stats()["x509_ca"] == 0  # refuses any certificate: https could only fail closed
    secure = _tls(load(Source({**ENV, "NACOS_SERVER_ADDR": "https://nacos.example:8848"})))
    assert secure.verify_mode is ssl.CERT_REQUIRED
    assert secure.cert_store_stats()["x509_ca"] == ssl.create_default_context().cert_store_stats()["x509_ca"]


@pytest.mark.parametrize("command", ["deregister", "register", "status", "serve"])
def test_help_shows_the_variable_behind_each_flag(command: str) -> None:
    # Help text once was rendered as rich markup: "[env POD_IP]" was taken for a tag and vanished.
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.split())  # the help is wrapped to the terminal's width
    declared = [flag for flag in vars(flags).values() if isinstance(flag, flags.Flag)]
    shown = [flag for flag in declared if f"--{flag.name} " in result.stdout]
    assert len(shown) >= 3
    for flag in shown:
        assert flag.help in text, f"--{flag.name}: {flag.help!r} not shown"
        assert "env " in flag.help
