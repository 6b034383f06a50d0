"""``prestop-agent check`` as the command line runs it, for the tests that call the check directly."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import typer

from prestop_agent.check import CheckReport, run_check
from prestop_agent.cli import app

COMMANDS = typer.main.get_command(app).commands  # type: ignore[attr-defined]


def check_paths(paths: Sequence[Path]) -> CheckReport:
    """The check of ``paths``, the hooks' arguments read by the program's own commands."""
    return run_check(paths, COMMANDS)
