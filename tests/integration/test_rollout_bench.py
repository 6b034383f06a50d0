"""The rolling-update benchmark, reduced: one roll of real Spring apps, the agent as the preStop hook.

Two provider instances (Spring Boot, registered over gRPC) behind one consumer (Spring Cloud
LoadBalancer, default 35 s cache) at 50 requests/s; one provider is replaced the way the kubelet
does it, with ``prestop-agent deregister --wait`` as its preStop hook. Every request must succeed.
Timings are reported by the benchmark, never asserted here.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from localnacos import NacosProcess

from .conftest import unavailable

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("nacos", [(2, False)], ids=["nacos2-auth-off"], indirect=True)
def test_one_roll_with_the_agent_fails_no_request(nacos: NacosProcess, tmp_path: Path) -> None:
    if shutil.which("mvn") is None:
        unavailable("mvn is needed to build the benchmark's Spring apps")
    if not (Path(sys.executable).parent / "prestop-agent").exists():
        unavailable("prestop-agent is not installed in this interpreter's environment")
    command = [
        sys.executable,
        str(REPO / "bench" / "rollout.py"),
        "--nacos",
        nacos.http_addr,
        "--strategies",
        "agent",
        "--consumers",
        "cached",
        "--agent-rolls",
        "1",
        "--providers",
        "2",
        "--rolls",
        "1",
        "--settle",
        "36",  # longer than the consumer's cache: late failures still count
        "--jitter",
        "0",
        "--no-chart",
        "--results",
        str(tmp_path),
        "--name",
        "ci",
    ]
    run = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900, check=False)
    assert run.returncode == 0, run.stdout + run.stderr

    result = json.loads((tmp_path / "ci.json").read_text())
    [row] = result["strategies"]
    assert row["strategy"] == "agent"
    assert row["requests"] > 0
    assert row["ok"] > 0
    [termination] = row["terminations"]
    assert termination["hook_exit"] == 0, f"the agent did not confirm the drain; see {result['run_dir']}"
    assert not termination["sigkilled"]
    assert row["failed"] == 0, row["errors_by_kind"]
