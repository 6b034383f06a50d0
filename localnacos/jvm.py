"""The harness's own Java programs as processes: one JSON event per line on stdout, a clean exit when stdin closes.

The gRPC client (``instances.JavaInstance``) and the Dubbo provider (``dubbo.DubboProvider``) are
run, read and stopped the same way; this holds that way once.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from localnacos.machine import HarnessError, Lifecycle, stop_process, tail, track
from localnacos.maven import build, classpath, java


class JsonLinesProgram(Lifecycle):
    """One of the Maven projects next to this package, run as a JVM; ``events`` holds what it printed, in order."""

    #: Names the program in messages ("gRPC client", "the Dubbo provider").
    label = "Java program"

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._events_changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._home: Path | None = None

    def _launch(
        self,
        project: str,
        main_class: str,
        args: Sequence[str],
        *,
        heap: str,
        properties: Mapping[str, str] | None = None,
    ) -> None:
        """Start the program (its own home, logs and session) and read its events in the background."""
        build_dir = build(project, properties)
        self._home = Path(tempfile.mkdtemp(prefix=f"localnacos-{project}-"))
        command = [
            java(),
            f"-Xmx{heap}",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Duser.home={self._home}",
            f"-DJM.LOG.PATH={self._home / 'logs'}",
            "-cp",
            classpath(build_dir),
            main_class,
            *args,
        ]
        with open(self._home / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
            )
        track(self.process)
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        if process.stdout is None:
            return
        for raw in process.stdout:
            with contextlib.suppress(ValueError), self._events_changed:
                self.events.append(json.loads(raw))
                self._events_changed.notify_all()
        with self._events_changed:
            self._events_changed.notify_all()

    def count(self, kind: str) -> int:
        """How many ``kind`` events the program printed so far."""
        with self._events_changed:
            return sum(1 for event in self.events if event.get("event") == kind)

    def first(self, kind: str) -> dict[str, Any] | None:
        """The first ``kind`` event the program printed, if any yet."""
        with self._events_changed:
            return next((event for event in self.events if event.get("event") == kind), None)

    def wait_for(self, check: Callable[[], bool], *, timeout: float, what: str = "event") -> None:
        """Wait until ``check`` (called as events arrive) is true; TimeoutError, or HarnessError when the JVM exited."""
        deadline = time.monotonic() + timeout
        with self._events_changed:
            while not check():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"{self.label}: {what} not seen within {timeout:.0f} s; events: {self.events}")
                if self.process is not None and self.process.poll() is not None and self._reader_done():
                    raise HarnessError(
                        f"{self.label} exited with {self.process.returncode}; events: {self.events}\n"
                        + self.stderr_tail()
                    )
                self._events_changed.wait(timeout=min(remaining, 0.5))

    def _reader_done(self) -> bool:
        return self._reader is None or not self._reader.is_alive()

    def stderr_tail(self) -> str:
        return "(no log)" if self._home is None else tail(self._home / "stderr.log")

    def stop(self, *, graceful: bool = True) -> None:
        """Let the program unregister and exit (``graceful``: stdin closes, as at an app's shutdown), or SIGKILL it."""
        process = self.process
        if process is None:
            return
        if graceful and process.poll() is None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=20)
        stop_process(process, grace=10.0 if graceful else 0.0)
        if self._reader is not None:
            self._reader.join(timeout=5)
        for stream in (process.stdin, process.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.process = None
        self._reader = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
