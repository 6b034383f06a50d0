"""A thin client over the real kubectl: what tests, the demo and the benchmark do with the cluster."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from localkube.errors import HarnessError


class Kube:
    """kubectl bound to one cluster's kubeconfig. Every call has a timeout; failures raise HarnessError."""

    def __init__(self, kubectl: Path, kubeconfig: Path) -> None:
        self.kubectl = kubectl
        self.kubeconfig = kubeconfig

    def run(
        self, *args: str, stdin: str | None = None, timeout: float = 120.0, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        command = [str(self.kubectl), f"--kubeconfig={self.kubeconfig}", *args]
        try:
            result = subprocess.run(command, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired as exc:
            raise HarnessError(f"kubectl {' '.join(args)} took longer than {timeout:.0f} s") from exc
        if check and result.returncode != 0:
            raise HarnessError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def apply(self, manifest: str | Path, *, namespace: str | None = None, server_dry_run: bool = False) -> str:
        """Apply YAML text, a file, a directory, or (a directory with kustomization.yaml) a kustomization."""
        args = ["apply"]
        if namespace:
            args += ["-n", namespace]
        if server_dry_run:
            args.append("--dry-run=server")
        if isinstance(manifest, Path):
            kustomized = manifest.is_dir() and (manifest / "kustomization.yaml").exists()
            args += ["-k" if kustomized else "-f", str(manifest)]
            return self.run(*args).stdout
        return self.run(*args, "-f", "-", stdin=manifest).stdout

    def delete(
        self, kind: str, name: str, *, namespace: str | None = None, wait: bool = True, timeout: float = 180.0
    ) -> None:
        args = [
            "delete",
            kind,
            name,
            "--ignore-not-found",
            f"--wait={'true' if wait else 'false'}",
            f"--timeout={timeout:.0f}s",
        ]
        if namespace:
            args += ["-n", namespace]
        self.run(*args, timeout=timeout + 30)

    def get(
        self, kind: str, name: str | None = None, *, namespace: str | None = None, selector: str | None = None
    ) -> Any:
        """The object (or, without a name, the list) as parsed JSON."""
        args = ["get", kind]
        if name:
            args.append(name)
        if namespace:
            args += ["-n", namespace]
        if selector:
            args += ["-l", selector]
        return json.loads(self.run(*args, "-o", "json").stdout)

    def pods(self, namespace: str, selector: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get("pods", namespace=namespace, selector=selector)["items"]
        return items

    def rollout_status(self, kind_name: str, *, namespace: str, timeout: float = 300.0) -> None:
        """Wait until a Deployment/StatefulSet/DaemonSet (``deployment/name``) has rolled out."""
        self.run("rollout", "status", kind_name, "-n", namespace, f"--timeout={timeout:.0f}s", timeout=timeout + 30)

    def wait(self, what: str, condition: str, *, namespace: str | None = None, timeout: float = 300.0) -> None:
        """``kubectl wait --for=<condition> <what>``."""
        args = ["wait", f"--for={condition}", what, f"--timeout={timeout:.0f}s"]
        if namespace:
            args += ["-n", namespace]
        self.run(*args, timeout=timeout + 30)

    def logs(self, pod: str, *, namespace: str, container: str | None = None, timestamps: bool = False) -> str:
        args = ["logs", pod, "-n", namespace]
        if container:
            args += ["-c", container]
        if timestamps:
            args.append("--timestamps")
        return self.run(*args).stdout

    def follow_logs(
        self, pod: str, *, namespace: str, into: Path, container: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Stream ``kubectl logs -f --timestamps`` into a file until the container ends (or ``terminate()``)."""
        args = [
            str(self.kubectl),
            f"--kubeconfig={self.kubeconfig}",
            "logs",
            "-f",
            "--timestamps",
            pod,
            "-n",
            namespace,
        ]
        if container:
            args += ["-c", container]
        with into.open("wb") as out:
            return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)

    def events(self, namespace: str, *, involving: str | None = None) -> list[dict[str, Any]]:
        args = ["get", "events", "-n", namespace, "-o", "json"]
        if involving:
            args += ["--field-selector", f"involvedObject.name={involving}"]
        items: list[dict[str, Any]] = json.loads(self.run(*args).stdout)["items"]
        return items


def poll(check: Callable[[], Any], *, timeout: float, interval: float = 0.5, what: str) -> Any:
    """Call ``check`` until it returns something truthy (returned) or ``timeout`` passes (HarnessError)."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
        except HarnessError as exc:
            last_error, result = exc, None
        if result:
            return result
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error})" if last_error else ""
            raise HarnessError(f"{what}: not reached within {timeout:.0f} s{detail}")
        time.sleep(interval)


def names(items: Sequence[dict[str, Any]]) -> list[str]:
    return [item["metadata"]["name"] for item in items]
