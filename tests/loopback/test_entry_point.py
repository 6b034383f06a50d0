"""The command as a process: what it loads, and how it answers bad usage."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

from prestop_agent import __version__
from tests import faults
from tests.fakes import FakeInstance, FakeNacos

# What a drain with the default watchers must never load: the cloud SDKs, YAML, the manifest
# linter, the sidecar, the watchers it was not asked for, and what launch keeps out.
NOT_FOR_A_DRAIN = (
    "boto3",
    "botocore",
    "alibabacloud_alb20200616",
    "alibabacloud_tea_openapi",
    "Tea",
    "yaml",
    "prestop_agent.check",
    "prestop_agent.serve",
    "prestop_agent.watchers.aws_alb",
    "prestop_agent.watchers.aliyun_alb",
    "prestop_agent.watchers.endpoints",
    "rich",
    "pygments",
    "anyio",
)

DRAIN_PROBE = """\
import gc, json, sys
names = json.loads(sys.argv[1])
sys.argv = ["prestop-agent", "deregister", "--wait"]
from prestop_agent.launch import main
try:
    main()
except SystemExit as exit:
    code = exit.code
print(json.dumps({
    "exit": code,
    "loaded": sorted(name for name in names if sys.modules.get(name)),
    "traffic_watched": "prestop_agent.watchers.traffic.watcher" in sys.modules,
    "gc_enabled": gc.isenabled(),
    "frozen": gc.get_freeze_count(),
}))
"""


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "prestop_agent", *args], capture_output=True, text=True, timeout=60, check=False
    )


def test_version_loads_no_dependency() -> None:
    probe = (
        "import sys; sys.argv = ['prestop-agent', '--version']\n"
        "from prestop_agent.launch import main; main()\n"
        "print(sorted(m for m in ('httpx', 'typer', 'structlog', 'click') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.splitlines() == [f"prestop-agent {__version__}", "[]"]


def test_a_run_never_loads_rich() -> None:
    probe = (
        "import sys; sys.argv = ['prestop-agent', 'check', '--help']\n"
        "from prestop_agent.launch import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('rich loaded' if sys.modules.get('rich') else 'no rich')"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert "Usage: prestop-agent check" in done.stdout
    assert done.stdout.splitlines()[-1] == "no rich"


def test_bad_usage_is_a_plain_usage_error_exit_2() -> None:
    done = run("deregister", "--bogus")
    assert done.returncode == 2
    assert "No such option '--bogus'" in done.stderr
    assert "Traceback" not in done.stderr


def test_a_drain_loads_nothing_it_does_not_need_and_collects_garbage_again() -> None:
    with socket.socket() as probe:  # a port nobody calls: the traffic watcher watches it
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", port))
    with faults.http_app(nacos) as address:
        env = {
            "PATH": os.environ.get("PATH", ""),
            "POD_IP": "10.0.0.7",
            "NACOS_SERVICE_PORT": str(port),
            "NACOS_SERVICE_NAME": "orders",
            "NACOS_SERVER_ADDR": address,
            "PRESTOP_QUIET_SECONDS": "1",  # the default watchers (registry, traffic), waiting briefly
            "PRESTOP_CONSUMER_CACHE_SECONDS": "0",
            "PRESTOP_BUDGET_SECONDS": "60",
            "PRESTOP_GRACE_SECONDS": "70",
            "PRESTOP_LOG_TO_PID1": "false",
        }
        done = subprocess.run(
            [sys.executable, "-c", DRAIN_PROBE, json.dumps(NOT_FOR_A_DRAIN)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.splitlines()[-1])
    assert report["loaded"] == []
    assert report["traffic_watched"], "the probe did not run the default watchers"
    assert report["exit"] == 0, done.stderr
    assert nacos.services["DEFAULT_GROUP@@orders"][0].enabled is False
    assert report["gc_enabled"] is True
    assert report["frozen"] > 10_000, "what the start-up loaded should be frozen out of collections"
