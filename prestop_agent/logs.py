"""Structured logs: JSON lines off a terminal, console lines on one, a copy for ``kubectl logs``, no secrets.

Kubernetes shows a preStop hook's own output only inside a FailedPreStopHook event, so the
agent can also write every line to PID 1's stdout (``/proc/1/fd/1``), which is what
``kubectl logs`` reads. Every event carries ``elapsed_ms`` and ``remaining_ms`` of the run.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any, TextIO

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.masking import MASK, Secrets

__all__ = ["MASK", "RunClock", "Secrets", "configure", "is_terminal", "open_pid1_stdout"]

SECRET_KEYS = re.compile(r"(password|passwd|secret|token|authorization|credential)", re.IGNORECASE)


@dataclass
class RunClock:
    """The deadline of the current run, once there is one (events carry its elapsed/remaining)."""

    deadline: Deadline | None = None


def _mask_keys(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    for key in list(event):
        if SECRET_KEYS.search(key) and event[key] is not None:
            event[key] = MASK
    return event


class _MaskValues:
    """The safety net over every value of an event (never its name, never a key); see ``masking``."""

    def __init__(self, secrets: Secrets) -> None:
        self._secrets = secrets

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key in list(event):
            if key != "event":
                event[key] = self._secrets.tree(event[key])
        return event


class _Timing:
    def __init__(self, run: RunClock) -> None:
        self._run = run

    def __call__(self, _: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        deadline = self._run.deadline
        if deadline is not None:
            event.setdefault("elapsed_ms", round(deadline.elapsed() * 1000))
            event.setdefault("remaining_ms", round(deadline.remaining() * 1000))
        return event


class _Render:
    """Render once as JSON (the copy for PID 1) and as the primary stream's format."""

    def __init__(self, *, console: bool, tee: TextIO | None) -> None:
        self._console = (
            structlog.dev.ConsoleRenderer(colors=False, exception_formatter=structlog.dev.plain_traceback)
            if console
            else None
        )
        self._tee = tee

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        line = json.dumps(event, default=str, sort_keys=False)
        if self._tee is not None:
            try:
                self._tee.write(line + "\n")
                self._tee.flush()
            except OSError:
                self._tee = None  # PID 1's stdout went away; keep logging to our own stream
        if self._console is not None:
            return self._console(logger, name, dict(event))
        return line


def open_pid1_stdout(mode: str, *, pid: int, path: str = "/proc/1/fd/1") -> TextIO | None:
    """PID 1's stdout when asked for (``true``) or when usable (``auto``); never when we are PID 1."""
    if mode == "false" or pid == 1:
        return None
    try:
        return open(path, "a", encoding="utf-8")  # kept open for the life of the process
    except OSError:
        if mode == "true":
            print(f"prestop-agent: cannot write to {path}; logs go to stderr only", file=sys.stderr)
        return None


def configure(*, stream: TextIO, console: bool, secrets: Secrets, run: RunClock, tee: TextIO | None = None) -> None:
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _Timing(run),
            _mask_keys,
            structlog.processors.format_exc_info,
            _MaskValues(secrets),
            _Render(console=console, tee=tee),
        ],
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
