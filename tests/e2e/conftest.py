"""One real Kubernetes cluster for the whole session (``python -m localkube serve``), and its images.

The cluster runs as a child process exactly as a developer runs it: the fixture waits for
``# ready``, and at the end sends SIGTERM and checks that no process, mount, link, network
namespace or iptables rule of the cluster is left on the host. Outside CI a machine that cannot
run it (not root, missing tools) skips these tests with the reason; under ``CI=true`` that is a
failure, as is any build or start-up error.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pytest
import yaml

from localkube import HarnessError, Kube, Layout, build_image, hostnet, import_image, poll, workloads
from localkube.layout import REPO
from localkube.observe import LogTap, Watch

from . import examples

#: Everything the cluster and its images need from the machine (Debian packages, Go, the JDK).
REQUIRED_TOOLS = {
    "go": "Go 1.21+",
    "containerd": "apt-get install containerd",
    "ctr": "apt-get install containerd",
    "runc": "apt-get install runc",
    "buildah": "apt-get install buildah",
    "debootstrap": "apt-get install debootstrap",
    "iptables": "apt-get install iptables",
    "conntrack": "apt-get install conntrack",
    "java": "a JDK 17",
    "mvn": "apt-get install maven",
}
#: Images every e2e session needs; issue-specific tests add theirs through ``LocalCluster.image``.
SESSION_IMAGES = ("nacos2", "provider")
READY_TIMEOUT_S = 3600.0  # a cold machine builds every binary first
STOP_TIMEOUT_S = 300.0


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: runs in a real Kubernetes cluster started on this machine")
    config.addinivalue_line(
        "markers",
        "scenario(fn, alone=False): the test asserts on what fn(stage) observed; selected scenarios run side by side",
    )


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI=true and the real-cluster tests cannot run: {reason}")
    pytest.skip(reason)


def missing_requirements() -> str | None:
    if os.geteuid() != 0:
        return "the local cluster needs root (kubelet, containerd, bridge and iptables)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "the CNI plugins are missing (apt-get install containernetworking-plugins)"
    missing = [f"{tool} ({how})" for tool, how in REQUIRED_TOOLS.items() if shutil.which(tool) is None]
    if missing:
        return "missing: " + ", ".join(missing) + "; bash scripts/setup installs them as root"
    return None


class LocalCluster:
    """The session's cluster: kubectl on it, and images built and imported once each."""

    def __init__(self, layout: Layout, kube: Kube, log: Path) -> None:
        self.layout = layout
        self.kube = kube
        self.log = log
        self._imported: dict[str, str] = {}

    def image(self, name: str) -> str:
        """The reference of a localkube image (``provider``, ``nacos2``, ...), built if needed and imported."""
        if name not in self._imported:
            image = build_image(name, self.layout, say=lambda message: print(f"localkube: {message}", file=sys.stderr))
            import_image(self.layout, image.tar)
            self._imported[name] = image.ref
        return self._imported[name]

    def rollout(self, kind_name: str, *, namespace: str, timeout: float = 600.0) -> None:
        """Wait for a rollout; on failure, say why with the pods, events and container logs."""
        try:
            self.kube.rollout_status(kind_name, namespace=namespace, timeout=timeout)
        except HarnessError as exc:
            pytest.fail(f"{exc}\n{self.diagnose(namespace)}")

    def diagnose(self, namespace: str) -> str:
        """Pods, recent events and the tail of every container's log (and its previous run's)."""
        kube = self.kube
        parts = [kube.run("get", "pods", "-n", namespace, "-o", "wide", check=False).stdout]
        parts.append(kube.run("get", "events", "-n", namespace, "--sort-by=.lastTimestamp", check=False).stdout[-4000:])
        for pod in kube.get("pods", namespace=namespace)["items"]:
            for container in pod["spec"]["containers"]:
                for previous in ("false", "true"):
                    result = kube.run(
                        "logs",
                        pod["metadata"]["name"],
                        "-n",
                        namespace,
                        "-c",
                        container["name"],
                        f"--previous={previous}",
                        "--tail=40",
                        check=False,
                    )
                    label = f"--- {pod['metadata']['name']}/{container['name']} (previous={previous})"
                    parts.append(f"{label}\n{result.stdout or result.stderr}")
        return "\n".join(parts)


def _pump(stream: IO[str], into: IO[str], seen: list[str], changed: threading.Condition) -> None:
    for line in stream:
        into.write(line)
        into.flush()
        with changed:
            seen.append(line.rstrip("\n"))
            changed.notify_all()


@pytest.fixture(scope="session")
def cluster() -> Iterator[LocalCluster]:
    reason = missing_requirements()
    if reason:
        unavailable(reason)
    layout = Layout.default()
    try:
        for name in SESSION_IMAGES:
            build_image(name, layout, say=lambda message: print(f"localkube: {message}", file=sys.stderr))
    except HarnessError as exc:
        unavailable(f"building the images failed: {exc}")

    # Beside the cache, not in pytest's temporary directories, which later runs on the machine prune.
    log = layout.home / "last-serve.log"
    process = subprocess.Popen(
        # Never written to: if this process dies, the pipe closes and the cluster stops by itself.
        [sys.executable, "-m", "localkube", "serve", "--stop-on-stdin-eof"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    changed = threading.Condition()
    with log.open("w") as out:
        reader = threading.Thread(target=_pump, args=(process.stdout, out, lines, changed), daemon=True)
        reader.start()
        try:
            exports = _wait_ready(process, lines, changed, log)
            kube = Kube(Path(exports["LOCALKUBE_BIN"]) / "kubectl", Path(exports["KUBECONFIG"]))
            local = LocalCluster(layout, kube, log)
            for name in SESSION_IMAGES:
                local.image(name)
            yield local
        finally:
            _stop(process, log)
            reader.join(timeout=10)
            process.stdout.close()
            if process.stdin is not None:
                process.stdin.close()
    left = hostnet.leftovers(layout)
    assert not left, "the cluster left this on the host:\n" + "\n".join(left)
    assert process.returncode == 0, f"localkube serve exited {process.returncode}; see {log}"


def _wait_ready(
    process: subprocess.Popen[str], lines: list[str], changed: threading.Condition, log: Path
) -> dict[str, str]:
    deadline = time.monotonic() + READY_TIMEOUT_S
    with changed:
        while "# ready" not in lines:
            if process.poll() is not None and "# ready" not in lines:
                time.sleep(0.5)  # let the reader drain what the process printed last
                tail = "\n".join(log.read_text().splitlines()[-40:])
                unavailable(f"localkube serve exited {process.returncode} before it was ready:\n{tail}")
            if time.monotonic() > deadline:
                unavailable(f"localkube serve was not ready within {READY_TIMEOUT_S:.0f} s; see {log}")
            changed.wait(timeout=1.0)
        exports = {}
        for line in lines:
            if line.startswith("export "):
                name, _, value = line.removeprefix("export ").partition("=")
                exports[name] = value.strip("'")
    return exports


def _stop(process: subprocess.Popen[str], log: Path) -> None:
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
            pytest.fail(f"localkube serve did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM; see {log}")


@pytest.fixture(scope="session")
def nacos_ip(cluster: LocalCluster) -> str:
    """A real Nacos 2.0.4 pod behind the headless Service ``nacos-headless.nacos``; its pod IP."""
    from localkube import workloads

    kube = cluster.kube
    kube.apply(workloads.nacos(cluster.image("nacos2")))
    cluster.rollout("deployment/nacos", namespace=workloads.NACOS_NAMESPACE)
    ip: str = kube.pods(workloads.NACOS_NAMESPACE, "app=nacos")[0]["status"]["podIP"]
    return ip


# -- scenarios: everything that happens in the cluster, run side by side --------------------------

#: Images the scenarios deploy besides the session's: the examples' app, the agent's own image
#: (the sidecar), the benchmark's consumer, the sandbox image as a container that does nothing, and
#: Debian's python for small helpers (a client, a silent server).
SCENARIO_IMAGES = ("shop", "prestop-agent", "consumer", "pause", "python")
#: A scenario that has not finished by then is reported as hung (each has its own, shorter waits).
SCENARIO_TIMEOUT_S = 1500.0
T = TypeVar("T")


class Stage:
    """What one scenario gets: the cluster, Nacos, image references and a directory of its own."""

    def __init__(self, name: str, cluster: LocalCluster, nacos_ip: str, images: dict[str, str], directory: Path):
        self.name = name
        self.cluster = cluster
        self.kube = cluster.kube
        self.nacos_ip = nacos_ip
        self.images = images
        self.dir = directory
        self.namespaces: list[str] = []
        self._running: list[LogTap | Watch] = []
        self._log = directory / "progress.log"

    def namespace(self, name: str, *, restricted: bool = False) -> str:
        """Create a namespace for this scenario; ``restricted``: Pod Security "restricted" enforced."""
        labels = {"pod-security.kubernetes.io/enforce": "restricted"} if restricted else {}
        namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}}
        self.kube.apply(yaml.safe_dump(namespace))
        self.namespaces.append(name)
        return name

    def deploy(
        self, example: examples.Overlay, namespace: str, *, service: str, nacos_namespace: str | None = None
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """Apply a one-replica overlay, wait for its rollout and until Nacos serves its pod on 8080.

        Returns the objects as applied and the pod. ``nacos_namespace``: where the app registers,
        when not in a Nacos namespace named like the Kubernetes one.
        """
        applied = example.apply(self.kube, self.dir / namespace)
        self.cluster.rollout(f"deployment/{service}", namespace=namespace)
        pod = self.kube.pods(namespace, f"app={service}")[0]
        ip = pod["status"]["podIP"]
        poll(
            lambda: (ip, 8080) in workloads.served(self.nacos_ip, service, nacos_namespace or namespace),
            timeout=180,
            what=f"{namespace}: {ip}:8080 served by Nacos",
        )
        return applied, pod

    def tap(self, pod: str, *, namespace: str, container: str | None = None) -> LogTap:
        """Follow a container's log into this scenario's directory until it ends (stopped at the end anyway)."""
        name = f"{namespace}.{pod}" + (f".{container}" if container else "")
        tap = LogTap(self.kube, pod, namespace=namespace, container=container, into=self.dir / f"{name}.log")
        self._running.append(tap)
        return tap.attached()

    def watch(self, kind: str, *, namespace: str, selector: str | None = None) -> Watch:
        watch = Watch(self.kube, kind, namespace=namespace, selector=selector)
        self._running.append(watch)
        return watch

    def close(self) -> None:
        """Stop every log follower and watch still running (a scenario that failed leaves some)."""
        for running in self._running:
            running.stop()

    def say(self, message: str) -> None:
        line = f"{dt.datetime.now(dt.UTC):%H:%M:%S.%f}"[:-3] + f" {self.name}: {message}"
        with self._log.open("a") as log:
            log.write(line + "\n")
        print(line, file=sys.stderr, flush=True)

    def diagnose(self) -> str:
        return "\n".join(self.cluster.diagnose(namespace) for namespace in self.namespaces)


class Scenarios:
    """The selected scenarios, started together; a test waits for the one it asserts on."""

    def __init__(self, futures: dict[str, concurrent.futures.Future[Any]], stages: dict[str, Stage]) -> None:
        self._futures = futures
        self._stages = stages

    def result(self, scenario: Callable[[Stage], T]) -> T:
        future = self._futures[scenario.__name__]
        try:
            result: T = future.result(timeout=SCENARIO_TIMEOUT_S)
        except concurrent.futures.TimeoutError:
            stage = self._stages[scenario.__name__]
            hung = f"scenario {scenario.__name__} still running after {SCENARIO_TIMEOUT_S:.0f} s"
            pytest.fail(f"{hung}\n{stage.diagnose()}")
        except HarnessError as exc:
            stage = self._stages[scenario.__name__]
            pytest.fail(f"scenario {scenario.__name__}: {exc}\nfiles: {stage.dir}\n{stage.diagnose()}")
        return result

    def stage(self, scenario: Callable[[Stage], Any]) -> Stage:
        return self._stages[scenario.__name__]


@pytest.fixture(scope="session")
def scenarios(
    request: pytest.FixtureRequest, cluster: LocalCluster, nacos_ip: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Scenarios]:
    """Run the selected scenarios: those marked ``alone=True`` first, one at a time, then the rest at once.

    Java apps start slowly on two cores, and a dozen at once starve each other and Nacos (a start
    took three minutes): the rollout, whose callers' timing matters, gets the machine to itself.
    """
    wanted: dict[str, Callable[[Stage], Any]] = {}
    alone: list[str] = []
    for item in request.session.items:
        for marker in item.iter_markers("scenario"):
            name = marker.args[0].__name__
            wanted[name] = marker.args[0]
            if marker.kwargs.get("alone") and name not in alone:
                alone.append(name)
    images = {name: cluster.image(name) for name in SCENARIO_IMAGES}
    stages = {
        name: Stage(name, cluster, nacos_ip, images, tmp_path_factory.mktemp(name, numbered=False)) for name in wanted
    }
    turns = {name: threading.Event() for name in alone}
    together = threading.Event()
    if not alone:
        together.set()
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(wanted)), thread_name_prefix="scenario") as pool:
        futures = {}
        for index, name in enumerate(alone):
            after = turns[alone[index - 1]] if index else None
            done = turns[name] if index + 1 < len(alone) else together
            futures[name] = pool.submit(_play, wanted[name], stages[name], after, done)
        for name, run in wanted.items():
            if name not in alone:
                futures[name] = pool.submit(_play, run, stages[name], together, None)
        yield Scenarios(futures, stages)
        # Leaving waits for every scenario: none may still act on the cluster while it stops.


def _play(
    scenario: Callable[[Stage], T], stage: Stage, after: threading.Event | None, done: threading.Event | None
) -> T:
    if after is not None:
        after.wait()
    try:
        return scenario(stage)
    finally:
        stage.close()
        if done is not None:
            done.set()
