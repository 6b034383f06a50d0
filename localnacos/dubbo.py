"""A real Dubbo 3 provider registered in a real Nacos: interface-level and application-level (register-mode=all).

Dubbo registers the machine's own address (it refuses loopback ones), on a free port, and runs its
QoS server on another free port; ``host``, ``port`` and ``qos_port`` say which once it has started.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Self

import httpx

from localnacos.machine import HarnessError, Lifecycle, free_port, stop_process, tail, track
from localnacos.maven import build, classpath, java
from localnacos.server import ADMIN_PASSWORD, ADMIN_USERNAME, NacosProcess

#: The interface the provider exports, and so its interface-level service in Nacos.
INTERFACE = "localnacos.dubbo.OrderApi"
INTERFACE_SERVICE = f"providers:{INTERFACE}::"


class DubboProvider(Lifecycle):
    """The provider as a process; ``application`` is its Dubbo application name (its application-level service)."""

    def __init__(
        self,
        server: NacosProcess,
        application: str,
        *,
        register_mode: str = "all",
        namespace: str = "public",
        start_timeout: float = 120.0,
    ) -> None:
        self.server = server
        self.application = application
        self.register_mode = register_mode
        self.namespace = namespace
        self.start_timeout = start_timeout
        self.host = ""
        self.port = 0
        self.qos_port = 0
        self.events: list[dict[str, Any]] = []
        self.process: subprocess.Popen[bytes] | None = None
        self._changed = threading.Condition()
        self._reader: threading.Thread | None = None
        self._home: Path | None = None

    def start(self) -> Self:
        build_dir = build("dubbo-provider")
        self._home = Path(tempfile.mkdtemp(prefix="localnacos-dubbo-"))
        self.port, self.qos_port = free_port(), free_port()
        args = [self.server.http_addr, self.namespace, self.application, str(self.port), str(self.qos_port)]
        args.append(self.register_mode)
        if self.server.auth:
            args += [ADMIN_USERNAME, ADMIN_PASSWORD]
        command = [
            java(),
            "-Xmx160m",
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            f"-Duser.home={self._home}",
            f"-DJM.LOG.PATH={self._home / 'logs'}",
            "-cp",
            classpath(build_dir),
            "localnacos.dubbo.DubboProvider",
            *args,
        ]
        with open(self._home / "stderr.log", "wb") as stderr:
            self.process = subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, start_new_session=True
            )
        track(self.process)
        self._reader = threading.Thread(target=self._read, args=(self.process,), daemon=True)
        self._reader.start()
        try:
            started = self._wait_for("started")
        except BaseException:
            self.stop()
            raise
        self.host = str(started["host"])
        return self

    def _read(self, process: subprocess.Popen[bytes]) -> None:
        if process.stdout is None:
            return
        for raw in process.stdout:
            with contextlib.suppress(ValueError), self._changed:
                self.events.append(json.loads(raw))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def _wait_for(self, kind: str) -> dict[str, Any]:
        deadline = time.monotonic() + self.start_timeout
        with self._changed:
            while True:
                found = next((e for e in self.events if e.get("event") == kind), None)
                if found is not None:
                    return found
                if self.process is not None and self.process.poll() is not None:
                    raise HarnessError(f"the Dubbo provider exited with {self.process.returncode}:\n{self.log_tail()}")
                if time.monotonic() > deadline:
                    raise HarnessError(f"the Dubbo provider did not start within {self.start_timeout:.0f} s")
                self._changed.wait(timeout=0.5)

    def log_tail(self) -> str:
        return "(no log)" if self._home is None else tail(self._home / "stderr.log")

    def qos(self, command: str) -> httpx.Response:
        """A QoS command over HTTP on 127.0.0.1 (the only address the QoS server answers by default)."""
        return httpx.get(f"http://127.0.0.1:{self.qos_port}/{command}", timeout=10.0)

    def stop(self) -> None:
        """Unregister and exit (stdin closes, as when the app shuts down), then make sure the JVM is gone."""
        process = self.process
        if process is not None:
            if process.poll() is None and process.stdin is not None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=20)
            stop_process(process, grace=10.0)
            if self._reader is not None:
                self._reader.join(timeout=5)
            for stream in (process.stdin, process.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
            self.process = None
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)
            self._home = None
