"""A real single-node Kubernetes cluster on this machine, started and stopped as a context manager.

``Cluster().start()`` takes the machine-wide lock, sweeps whatever a crashed run left, builds (or
reuses) the binaries and the pause image, and starts etcd, the control plane, containerd, the
kubelet, kube-proxy and CoreDNS in that order. It returns once a probe pod was scheduled, started
and its Service name resolved by the cluster's DNS through the kube-dns Service address.
``stop()`` deletes every pod (so the kubelet tears down their networks), stops every process,
sweeps the host and checks that nothing is left.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import IO, Self

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import httpx

from localkube import binaries, components, hostnet, images, pki
from localkube.errors import HarnessError
from localkube.kubectl import Kube, poll
from localkube.layout import CRI_NAMESPACE, DNS_SERVICE_IP, NODE_NAME, Layout

PROBE_NAMESPACE = "default"
PROBE_NAME = "localkube-probe"


def _say(message: str) -> None:
    print(f"localkube: {message}", file=sys.stderr, flush=True)


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def ctr(layout: Layout, *args: str, timeout: float = 600.0) -> subprocess.CompletedProcess[str]:
    """containerd's own client, on our socket and in the kubelet's namespace."""
    command = ["ctr", f"--address={layout.containerd_socket}", f"--namespace={CRI_NAMESPACE}", *args]
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"ctr {' '.join(args)} took longer than {timeout:.0f} s") from exc


def import_image(layout: Layout, tar: Path) -> None:
    """Load an image tar (docker-archive or OCI) into the running cluster's containerd."""
    if not layout.containerd_socket.exists():
        raise HarnessError(f"no cluster is running (no containerd socket at {layout.containerd_socket})")
    result = ctr(layout, "images", "import", str(tar))
    if result.returncode != 0:
        raise HarnessError(f"importing {tar} failed: {result.stderr.strip()}")
    # containerd's store outlives the cluster: older builds of the same image would pile up.
    imported = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("unpacking ")}
    _forget_older(layout, imported)


def _forget_older(layout: Layout, imported: set[str]) -> None:
    """Remove other tags of the imported localkube images, with the image-ID reference the CRI adds."""
    repositories = {ref.rsplit(":", 1)[0] for ref in imported if ref.startswith("localhost/localkube/")}
    for line in ctr(layout, "images", "ls").stdout.splitlines()[1:]:
        ref, _, manifest = line.split()[:3]
        if ref.rsplit(":", 1)[0] not in repositories or ref in imported:
            continue
        content = ctr(layout, "content", "get", manifest)
        ctr(layout, "images", "rm", ref)
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ctr(layout, "images", "rm", json.loads(content.stdout)["config"]["digest"])


class Cluster:
    """The one local cluster. Use ``with Cluster() as cluster:``; ``cluster.kube`` runs kubectl on it."""

    def __init__(self, layout: Layout | None = None, *, say: Callable[[str], None] = _say) -> None:
        self.layout = layout or Layout.default()
        self.say = say
        self.bin: Path | None = None
        self._lock: IO[str] | None = None
        self._processes: list[tuple[str, subprocess.Popen[bytes]]] = []
        self._stopping = threading.Lock()
        self.startup_seconds = 0.0

    # -- public ------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.layout.kubeconfig

    @property
    def kube(self) -> Kube:
        if self.bin is None:
            raise HarnessError("the cluster is not started")
        return Kube(self.bin / "kubectl", self.kubeconfig)

    def import_image(self, tar: Path) -> None:
        import_image(self.layout, tar)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> Self:
        started = time.monotonic()
        self._take_lock()
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self) -> None:
        """Tear everything down; safe to call twice and from atexit. Raises if something is left."""
        if self._lock is None or not self._stopping.acquire(blocking=False):
            return
        try:
            self._stop()
            left = hostnet.leftovers(self.layout)
        finally:
            self._release_lock()
            self._stopping.release()
        if left:
            raise HarnessError("left on the host after stop:\n  " + "\n  ".join(left))

    # -- start -------------------------------------------------------------------------------

    def _take_lock(self) -> None:
        self.layout.home.mkdir(parents=True, exist_ok=True)
        handle = self.layout.lock.open("a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            raise HarnessError(
                f"another localkube cluster is running (pid {holder} holds {self.layout.lock}); "
                "one machine runs one cluster: stop that one first"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._lock = handle

    def _release_lock(self) -> None:
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def _start(self) -> None:
        layout = self.layout
        self.say("sweeping what an earlier run may have left")
        hostnet.sweep(layout)
        shutil.rmtree(layout.run, ignore_errors=True)
        layout.logs.mkdir(parents=True)
        if binaries.built(layout) is None:
            self.say("building etcd, Kubernetes and CoreDNS with go build (once per version; minutes)")
        self.bin = binaries.build(layout)
        pause = images.build("pause", layout, say=self.say)

        hostnet.prepare(layout)
        keys = pki.create(layout.run / "pki")
        shutil.copy(keys.kubeconfig("admin"), layout.kubeconfig)
        self._write_configs(keys, pause.ref)

        bin_ = self.bin
        self._spawn("etcd", components.etcd(bin_ / "etcd", layout.run / "etcd"))
        poll(self._etcd_healthy, timeout=60, what="etcd healthy")
        self._spawn("kube-apiserver", components.apiserver(bin_ / "kube-apiserver", keys))
        poll(self._apiserver_ready, timeout=180, interval=1.0, what="kube-apiserver ready")
        self._spawn("kube-controller-manager", components.controller_manager(bin_ / "kube-controller-manager", keys))
        self._spawn("kube-scheduler", components.scheduler(bin_ / "kube-scheduler", keys))
        self._spawn("containerd", ["containerd", f"--config={layout.run / 'containerd.toml'}"])
        poll(lambda: ctr(layout, "version", timeout=10).returncode == 0, timeout=60, what="containerd answering")
        self.import_image(pause.tar)
        self.kube.apply(components.cluster_objects())
        self._spawn("kubelet", components.kubelet(bin_ / "kubelet", layout, keys))
        self._spawn("kube-proxy", components.kube_proxy(bin_ / "kube-proxy", layout))
        self._spawn("coredns", components.coredns(bin_ / "coredns", layout))
        poll(self._node_ready, timeout=180, interval=1.0, what=f"node {NODE_NAME} Ready")
        poll(
            lambda: (
                self.kube.run("get", "serviceaccount", "default", "-n", PROBE_NAMESPACE, check=False).returncode == 0
            ),
            timeout=120,
            what="the default service account",
        )
        self._probe(pause.ref)

    def _write_configs(self, keys: pki.Pki, sandbox_image: str) -> None:
        run = self.layout.run
        (run / "cni" / "net.d").mkdir(parents=True)
        (run / "cni" / "net.d" / "10-localkube.conflist").write_text(components.cni_config(self.layout))
        (run / "containerd.toml").write_text(components.containerd_config(self.layout, sandbox_image))
        (run / "kubelet.yaml").write_text(components.kubelet_config(self.layout, keys))
        (run / "kube-proxy.yaml").write_text(components.kube_proxy_config(keys))
        (run / "Corefile").write_text(components.corefile(keys))
        (run / "resolv.conf").write_text("")

    def _spawn(self, name: str, command: list[str]) -> None:
        self._check_alive()
        log = self.layout.logs / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._processes.append((name, process))
        self.say(f"started {name} (pid {process.pid}, log {log})")

    def _check_alive(self) -> None:
        for name, process in self._processes:
            if process.poll() is not None:
                log = self.layout.logs / f"{name}.log"
                raise HarnessError(f"{name} exited with {process.returncode}; last lines of {log}:\n{_tail(log)}")

    def _etcd_healthy(self) -> bool:
        self._check_alive()
        with contextlib.suppress(httpx.HTTPError):
            health: object = httpx.get(f"{components.ETCD_URL}/health", timeout=2).json().get("health")
            return health == "true"
        return False

    def _apiserver_ready(self) -> bool:
        self._check_alive()
        return self.kube.run("get", "--raw", "/readyz", check=False, timeout=15).stdout.strip() == "ok"

    def _node_ready(self) -> bool:
        self._check_alive()
        result = self.kube.run("get", "node", NODE_NAME, "-o", "json", check=False, timeout=15)
        if result.returncode != 0:
            return False
        conditions = json.loads(result.stdout).get("status", {}).get("conditions", [])
        return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)

    def _probe(self, pause_ref: str) -> None:
        """Schedule a pod behind a headless Service and resolve its name through the kube-dns Service."""
        manifest = f"""
apiVersion: v1
kind: Service
metadata: {{name: {PROBE_NAME}, namespace: {PROBE_NAMESPACE}}}
spec:
  clusterIP: None
  selector: {{app: {PROBE_NAME}}}
  ports: [{{port: 80}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: {PROBE_NAME}, namespace: {PROBE_NAMESPACE}, labels: {{app: {PROBE_NAME}}}}}
spec:
  terminationGracePeriodSeconds: 0
  containers: [{{name: pause, image: "{pause_ref}", imagePullPolicy: Never}}]
"""
        kube = self.kube
        kube.apply(manifest)
        try:
            kube.wait(f"pod/{PROBE_NAME}", "condition=Ready", namespace=PROBE_NAMESPACE, timeout=180)
        except HarnessError as exc:
            events = kube.events(PROBE_NAMESPACE, involving=PROBE_NAME)
            said = "\n".join(f"  {e.get('reason')}: {e.get('message', '')[:400]}" for e in events[-5:])
            raise HarnessError(f"{exc}\nthe probe pod's last events:\n{said}") from exc
        pod_ip = kube.get("pod", PROBE_NAME, namespace=PROBE_NAMESPACE)["status"]["podIP"]
        name = f"{PROBE_NAME}.{PROBE_NAMESPACE}.svc.cluster.local."
        poll(lambda: pod_ip in self.resolve(name), timeout=60, what=f"{name} resolving to {pod_ip}")
        kube.delete("service", PROBE_NAME, namespace=PROBE_NAMESPACE)
        kube.delete("pod", PROBE_NAME, namespace=PROBE_NAMESPACE)

    def resolve(self, name: str) -> list[str]:
        """A records for ``name`` from the cluster's DNS, asked at the kube-dns Service address."""
        self._check_alive()
        query = dns.message.make_query(name, dns.rdatatype.A)
        try:
            answer = dns.query.udp(query, DNS_SERVICE_IP, timeout=2)
        except (OSError, dns.exception.DNSException):
            return []
        return [item.address for rrset in answer.answer for item in rrset if rrset.rdtype == dns.rdatatype.A]

    # -- stop --------------------------------------------------------------------------------

    def _running(self, name: str) -> subprocess.Popen[bytes] | None:
        for candidate, process in self._processes:
            if candidate == name and process.poll() is None:
                return process
        return None

    def _terminate(self, name: str, grace: float = 15.0) -> None:
        process = self._running(name)
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def _delete_pods(self) -> None:
        """Every pod goes through the kubelet, so sandboxes stop and their networks are torn down."""
        if self.bin is None or self._running("kube-apiserver") is None or self._running("kubelet") is None:
            return
        kube = self.kube
        with contextlib.suppress(HarnessError):
            kube.run("delete", "pods", "--all", "--all-namespaces", "--grace-period=1", "--wait=false", timeout=60)
            poll(lambda: not self._pods_left(), timeout=90, interval=1.0, what="every pod deleted")

    def _pods_left(self) -> bool:
        result = self.kube.run("get", "pods", "--all-namespaces", "-o", "name", check=False, timeout=15)
        return result.returncode != 0 or bool(result.stdout.strip())

    def _remove_containers(self) -> None:
        """Whatever the kubelet did not remove, removed through containerd (the shims then exit)."""
        if self._running("containerd") is None:
            return
        with contextlib.suppress(HarnessError):
            for task in ctr(self.layout, "tasks", "ls", "-q", timeout=30).stdout.split():
                ctr(self.layout, "tasks", "kill", "-s", "SIGKILL", task, timeout=30)
                time.sleep(0.2)
                ctr(self.layout, "tasks", "rm", "-f", task, timeout=30)
            for container in ctr(self.layout, "containers", "ls", "-q", timeout=30).stdout.split():
                ctr(self.layout, "containers", "rm", container, timeout=30)

    def _stop(self) -> None:
        self.say("stopping")
        # Nothing may recreate or reschedule pods while they are deleted.
        for name in ("kube-controller-manager", "kube-scheduler"):
            self._terminate(name)
        self._delete_pods()
        for name in ("kubelet", "kube-proxy", "coredns"):
            self._terminate(name)
        if self.bin is not None and (self.layout.run / "kube-proxy.yaml").exists():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [str(self.bin / "kube-proxy"), "--cleanup", f"--config={self.layout.run / 'kube-proxy.yaml'}"],
                    capture_output=True,
                    timeout=60,
                    check=False,
                )
        self._remove_containers()
        for name in ("containerd", "kube-apiserver", "etcd"):
            self._terminate(name)
        for name, _ in reversed(self._processes):
            self._terminate(name, grace=5.0)
        self._processes.clear()
        hostnet.sweep(self.layout)
        # The components' logs outlive the run, for whoever has to find out what went wrong.
        shutil.rmtree(self.layout.last_logs, ignore_errors=True)
        with contextlib.suppress(OSError):
            shutil.move(self.layout.logs, self.layout.last_logs)
        shutil.rmtree(self.layout.run, ignore_errors=True)
