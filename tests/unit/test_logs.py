"""Logs: JSON lines with timing, a copy for PID 1's stdout, and no secret in either."""

from __future__ import annotations

import io
import json
from pathlib import Path

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.logs import RunClock, Secrets, configure, open_pid1_stdout
from tests.fakes import FakeClock


def test_json_lines_carry_timing_and_reach_the_pid1_copy_scrubbed() -> None:
    stream, tee = io.StringIO(), io.StringIO()
    secrets = Secrets()
    secrets.add("hunter2-pw")
    clock = FakeClock()
    run = RunClock(Deadline.after(clock, 20))
    clock.advance(1.5)
    configure(stream=stream, console=False, secrets=secrets, run=run, tee=tee)
    structlog.get_logger().info("nacos_login", detail="login with hunter2-pw failed", password="x", accessToken="y")
    line = json.loads(stream.getvalue())
    assert (line["elapsed_ms"], line["remaining_ms"]) == (1500, 18500)
    assert line["password"] == "***"
    assert line["accessToken"] == "***"
    assert "hunter2-pw" not in stream.getvalue()
    assert json.loads(tee.getvalue()) == line


def test_console_lines_on_a_terminal_are_scrubbed_too() -> None:
    stream = io.StringIO()
    secrets = Secrets()
    secrets.add("t0ken-abc")
    configure(stream=stream, console=True, secrets=secrets, run=RunClock())
    structlog.get_logger().warning("odd", body="got t0ken-abc back")
    assert "odd" in stream.getvalue()
    assert "t0ken-abc" not in stream.getvalue()


def test_pid1_copy_modes(tmp_path: Path) -> None:
    target = tmp_path / "fd1"
    target.write_text("")
    assert open_pid1_stdout("false", pid=42, path=str(target)) is None
    assert open_pid1_stdout("auto", pid=1, path=str(target)) is None  # we are PID 1: stdout already is it
    opened = open_pid1_stdout("auto", pid=42, path=str(target))
    assert opened is not None
    opened.close()
    assert open_pid1_stdout("auto", pid=42, path=str(tmp_path / "missing" / "fd1")) is None
