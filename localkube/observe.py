"""What the end-to-end tests and the benchmark see of the cluster while something happens in it.

- container logs with the runtime's own timestamps, followed from before an action until the
  container ends (a deleted pod's log is gone from the API afterwards);
- watch streams of API objects (pods, EndpointSlices), each change stamped on arrival;
- a container's process as the kernel sees it (user, capabilities, root mount), read on the node.

Times from all three come from this machine's clock (the node is this machine), so they compare.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from localkube.cluster import ctr
from localkube.errors import HarnessError
from localkube.kubectl import Kube, poll
from localkube.layout import Layout

Event = dict[str, Any]


def parse_stamp(stamp: str) -> dt.datetime:
    """An RFC 3339 time as the API and ``kubectl logs --timestamps`` write it (nanoseconds cut to micro)."""
    seconds, _, fraction = stamp.removesuffix("Z").partition(".")
    return dt.datetime.fromisoformat(f"{seconds}.{(fraction or '0')[:6]:0<6}+00:00")


def timestamped(text: str) -> list[tuple[dt.datetime, str]]:
    """``kubectl logs --timestamps`` lines as (time, text)."""
    lines = []
    for raw in text.splitlines():
        stamp, _, line = raw.partition(" ")
        if stamp.endswith("Z") and "T" in stamp:
            lines.append((parse_stamp(stamp), line))
    return lines


def agent_events(lines: list[tuple[dt.datetime, str]]) -> list[tuple[dt.datetime, Event]]:
    """The agent's JSON log lines among a container's lines."""
    events = []
    for moment, text in lines:
        if text.startswith("{"):
            try:
                event = json.loads(text)
            except ValueError:
                continue
            if isinstance(event, dict) and "event" in event:
                events.append((moment, event))
    return events


def first(lines: list[tuple[dt.datetime, str]], *markers: str) -> dt.datetime | None:
    """When the first line holding any of the markers was written."""
    return next((moment for moment, text in lines if any(marker in text for marker in markers)), None)


#: Lines a Spring Cloud Alibaba app writes only once the JVM got SIGTERM: Spring's context close
#: deregisters from Nacos (then waits 10 s by itself), then Tomcat's graceful shutdown starts.
SIGTERM_LINES = ("De-registering from Nacos Server now", "Commencing graceful shutdown", "Start destroying")


#: How long the kubelet may take to report a container's end after its log stream closed.
END_REPORT_S = 30.0


class LogTap:
    """``kubectl logs -f --timestamps`` of one container into a file, until that container ends.

    A stream can break while the container still runs (``rpc error: ... DeadlineExceeded`` on a busy
    node): it is then followed again from the last line's time, and lines already kept are skipped.
    """

    def __init__(self, kube: Kube, pod: str, *, namespace: str, into: Path, container: str | None = None) -> None:
        self.kube, self.pod, self.namespace, self.container, self.path = kube, pod, namespace, container, into
        self.breaks: list[str] = []  # what kubectl said when a stream ended early
        into.touch()
        self._container_id = self._status().get("containerID")
        self._ended = threading.Event()
        self._stopping = threading.Event()
        self._process: subprocess.Popen[str] | None = None
        self._thread = threading.Thread(target=self._follow, daemon=True)
        self._thread.start()

    def _status(self) -> dict[str, Any]:
        """The followed container's status; empty once the pod is gone."""
        result = self.kube.run("get", "pod", self.pod, "-n", self.namespace, "-o", "json", check=False)
        if result.returncode != 0:
            return {}
        status = json.loads(result.stdout).get("status", {})
        statuses = status.get("containerStatuses", []) + status.get("initContainerStatuses", [])
        for item in statuses:
            if self.container in (None, item["name"]):
                found: dict[str, Any] = item
                return found
        return {}

    def _over(self) -> bool:
        """Whether the container followed has ended: gone, terminated, or replaced by a restart."""
        status = self._status()
        return not status or status.get("containerID") != self._container_id or "terminated" in status.get("state", {})

    def _follow(self) -> None:
        seen: set[str] = set()
        since: str | None = None
        with self.path.open("a") as out:
            while not self._stopping.is_set():
                args = [str(self.kube.kubectl), f"--kubeconfig={self.kube.kubeconfig}", "logs", "-f", "--timestamps"]
                args += [self.pod, "-n", self.namespace] + (["-c", self.container] if self.container else [])
                args += [f"--since-time={since}"] if since else []
                self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
                if self._process.stdout is None:
                    raise HarnessError("kubectl logs -f has no output pipe")
                for line in self._process.stdout:
                    stamp = line.partition(" ")[0]
                    if not (stamp.endswith("Z") and "T" in stamp):
                        self.breaks.append(line.strip())
                    elif line not in seen:
                        seen.add(line)
                        since = stamp
                        out.write(line)
                        out.flush()
                clean = self._process.wait() == 0
                self._process.stdout.close()
                if self._stopping.is_set() or self._ended_by_now(clean):
                    break
        self._ended.set()

    def _ended_by_now(self, clean: bool) -> bool:
        """Whether the container followed is over, once the kubelet has had time to report it.

        A stream that ends cleanly is a container that exited; the kubelet reports that a little
        later, and after a restart ``kubectl logs`` would already follow the next container. So a
        clean end waits for the report (up to ``END_REPORT_S``) rather than following again at
        once; a broken stream (an error, a restarted API server) is followed again after a pause.
        """
        deadline = time.monotonic() + (END_REPORT_S if clean else 0.5)
        while True:
            if self._over():
                return True
            if time.monotonic() >= deadline or self._stopping.is_set():
                return False
            time.sleep(0.5)

    def attached(self, timeout: float = 60.0) -> LogTap:
        """Wait until the stream has delivered the log so far (every container here has logged by then)."""
        poll(lambda: self.path.stat().st_size > 0, timeout=timeout, what=f"kubectl logs -f {self.pod} attached")
        return self

    def ended(self) -> bool:
        return self._ended.is_set()

    def wait(self, timeout: float) -> None:
        """Wait until the container has ended."""
        if not self._ended.wait(timeout):
            raise HarnessError(f"{self.pod}/{self.container or ''}: still running after {timeout:.0f} s")

    def stop(self) -> None:
        self._stopping.set()
        process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
        self._thread.join(timeout=30)

    def text(self) -> str:
        return self.path.read_text(errors="replace")

    def lines(self) -> list[tuple[dt.datetime, str]]:
        return timestamped(self.text())

    def agent(self) -> list[tuple[dt.datetime, Event]]:
        return agent_events(self.lines())

    def named(self, name: str) -> list[tuple[dt.datetime, Event]]:
        return [(moment, event) for moment, event in self.agent() if event["event"] == name]


@dataclass(frozen=True)
class Change:
    """One watch event: when it arrived, its type (ADDED, MODIFIED, DELETED) and the object."""

    at: dt.datetime
    type: str
    object: dict[str, Any]


class Watch:
    """``kubectl get KIND -w --output-watch-events -o json`` in the background; every change kept."""

    def __init__(self, kube: Kube, kind: str, *, namespace: str, selector: str | None = None) -> None:
        args = [str(kube.kubectl), f"--kubeconfig={kube.kubeconfig}", "get", kind, "-n", namespace]
        if selector:
            args += ["-l", selector]
        args += ["--watch", "--output-watch-events", "-o", "json"]
        self.what = f"{kind} in {namespace}"
        self.changes: list[Change] = []
        self._changed = threading.Condition()
        self._process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        if self._process.stdout is None:
            raise HarnessError("kubectl get --watch has no output pipe")
        decoder = json.JSONDecoder()
        buffer = ""
        for line in self._process.stdout:
            buffer += line
            while buffer.strip():
                try:
                    item, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break  # an object still arriving
                buffer = buffer.lstrip()[end:]
                change = Change(dt.datetime.now(dt.UTC), str(item.get("type")), item.get("object") or {})
                with self._changed:
                    self.changes.append(change)
                    self._changed.notify_all()

    def wait_for(self, test: Callable[[Change], bool], *, timeout: float, what: str) -> Change:
        """The first change (already seen or arriving) that passes ``test``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = next((change for change in self.changes if test(change)), None)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise HarnessError(f"{what}: not seen in the {self.what} watch within {timeout:.0f} s")
                self._changed.wait(timeout=min(left, 1.0))

    def seen(self) -> list[Change]:
        """Every change so far, in order of arrival."""
        with self._changed:
            return list(self.changes)

    def of(self, name: str) -> Iterator[Change]:
        return (change for change in self.seen() if change.object.get("metadata", {}).get("name") == name)

    def stop(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=10)
        self._reader.join(timeout=10)
        if self._process.stdout is not None:
            self._process.stdout.close()


@dataclass(frozen=True)
class Process:
    """A container's main process as the kernel sees it."""

    pid: int
    uid: int
    gid: int
    no_new_privs: bool
    effective_capabilities: int
    root_read_only: bool


def container_process(layout: Layout, container_id: str) -> Process:
    """Read ``/proc`` on the node for a container (``containerd://<id>`` as the pod status gives it)."""
    task_id = container_id.removeprefix("containerd://")
    listing = ctr(layout, "tasks", "ls").stdout.splitlines()
    pids = [line.split()[1] for line in listing[1:] if line.split()[:1] == [task_id]]
    if not pids:
        raise HarnessError(f"container {task_id} is not running in containerd")
    pid = int(pids[0])
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    root_options = next(
        line.split()[5].split(",")
        for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines()
        if line.split()[4] == "/"
    )
    return Process(
        pid=pid,
        uid=int(status["Uid"].split()[0]),
        gid=int(status["Gid"].split()[0]),
        no_new_privs=status["NoNewPrivs"].strip() == "1",
        effective_capabilities=int(status["CapEff"].strip(), 16),
        root_read_only="ro" in root_options,
    )
