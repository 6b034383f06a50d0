"""This machine's side of the harness: the cache directory, free loopback ports, processes that never outlive us.

Every process started here runs in its own process group (``start_new_session``) and is
tracked: ``stop_process`` ends its whole group, and whatever is still tracked when the
interpreter exits is killed then.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, Self


class HarnessError(RuntimeError):
    """A Java program could not be built or started, or a server never became ready."""


class Lifecycle:
    """``with thing:`` starts it and always stops it; subclasses say how."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def cache_dir() -> Path:
    """The directory that survives between runs: Maven repository and build outputs."""
    configured = os.environ.get("PRESTOP_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "prestop-agent"


def port_free(port: int, ip: str = "127.0.0.1") -> bool:
    """Whether nothing listens on ``ip:port`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((ip, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---------------------------------------------------------------------------------------------
# Processes


_LIVE: set[subprocess.Popen[Any]] = set()
_LIVE_LOCK = threading.Lock()


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal the process group led by ``pid`` (gone already: nothing to do)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def track(process: subprocess.Popen[Any]) -> None:
    """Kill this process's group when the interpreter exits, unless ``stop_process`` ended it before."""
    with _LIVE_LOCK:
        _LIVE.add(process)


@atexit.register
def stop_all() -> None:
    """Kill the group of every tracked process not yet reaped, and reap them.

    A reaped leader's pid may belong to someone else's process by now, so only groups whose
    leader has not been waited for (alive, or a zombie holding its pid) are signalled.
    """
    with _LIVE_LOCK:
        processes = list(_LIVE)
        _LIVE.clear()
    for process in processes:
        if process.returncode is None:
            kill_group(process.pid)
    for process in processes:
        if process.returncode is None:
            with contextlib.suppress(subprocess.TimeoutExpired, ChildProcessError):
                process.wait(timeout=10)


def stop_process(process: subprocess.Popen[Any], *, grace: float) -> None:
    """SIGTERM the process group, then SIGKILL it when ``grace`` seconds pass."""
    if process.poll() is None:
        kill_group(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            kill_group(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
    # Children that outlived the leader still share its group.
    kill_group(process.pid, signal.SIGKILL)
    with _LIVE_LOCK:
        _LIVE.discard(process)


def tail(path: Path, lines: int = 60) -> str:
    """The last lines of a log, for an error message."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = 0.25, what: str = "condition") -> None:
    """Poll ``check`` until it is true or ``timeout`` seconds pass (then raise TimeoutError)."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:.0f} s")
        time.sleep(interval)
