"""The entry point's start-up: what it keeps out and how it leaves the garbage collector."""

from __future__ import annotations

import gc
import sys
from collections.abc import Iterator

import pytest

from prestop_agent import __version__, launch


@pytest.fixture
def clean_start(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Undo what main() does to this process: the names it marks unavailable and the frozen objects."""
    for name in launch._NEVER_USED:
        if name not in sys.modules:
            monkeypatch.setitem(sys.modules, name, None)
            monkeypatch.delitem(sys.modules, name)
    yield
    gc.unfreeze()
    gc.enable()


def test_version_touches_neither_the_collector_nor_the_modules(
    clean_start: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(sys, "argv", ["prestop-agent", "--version"])
    launch.main()
    assert capsys.readouterr().out == f"prestop-agent {__version__}\n"
    assert gc.isenabled()
    assert gc.get_freeze_count() == 0
    assert all(name not in sys.modules or sys.modules[name] is not None for name in launch._NEVER_USED)


def test_the_collector_runs_again_when_the_command_line_cannot_load(
    clean_start: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "argv", ["prestop-agent", "status"])
    monkeypatch.setitem(sys.modules, "prestop_agent.cli", None)
    absent = [name for name in launch._NEVER_USED if name not in sys.modules]  # pytest's plugins load anyio
    with pytest.raises(ImportError):
        launch.main()
    assert gc.isenabled()
    assert gc.get_freeze_count() > 0
    assert [sys.modules[name] for name in absent] == [None] * len(absent)
