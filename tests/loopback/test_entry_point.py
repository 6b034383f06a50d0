"""The command as a process: what it loads, and how it answers bad usage."""

from __future__ import annotations

import subprocess
import sys

from prestop_agent import __version__


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
