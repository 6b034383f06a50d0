"""The cluster's programs, built with ``go build`` from the Go module proxy and cached by version.

``go/kube`` pins Kubernetes (every component and kubectl, plus the sandbox's ``pause``), ``go/etcd``
and ``go/coredns`` pin etcd and CoreDNS. The binaries land in
``<cache>/localkube/<kubernetes version>-<hash of go/>/bin``; Go's module and build caches live in
``<cache>/go`` so that a machine with a warm cache rebuilds nothing.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from localkube.errors import HarnessError
from localkube.layout import KUBERNETES_VERSION, ROOT, Layout

GO_DIR = ROOT / "go"
_VERSION_PACKAGE = "k8s.io/component-base/version"
_MAJOR, _MINOR = KUBERNETES_VERSION.removeprefix("v").split(".")[:2]

#: Go module directory -> (package, binary name); each module builds in one ``go build``, and each
#: name is its package's (or, for ".", its module's) last path element, as ``go build -o dir/`` names it.
BUILDS: dict[str, tuple[tuple[str, str], ...]] = {
    "kube": (
        ("./pause", "pause"),
        *(
            (f"k8s.io/kubernetes/cmd/{name}", name)
            for name in (
                "kube-apiserver",
                "kube-controller-manager",
                "kube-scheduler",
                "kubelet",
                "kube-proxy",
                "kubectl",
            )
        ),
    ),
    "etcd": ((".", "etcd"),),
    "coredns": ((".", "coredns"),),
}
BINARIES = tuple(name for outputs in BUILDS.values() for _, name in outputs)


def sources_hash() -> str:
    """A hash of every file under go/: a new pin or a changed main rebuilds."""
    digest = hashlib.sha256()
    for path in sorted(p for p in GO_DIR.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(GO_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def bin_dir(layout: Layout) -> Path:
    return layout.home / f"{KUBERNETES_VERSION}-{sources_hash()}" / "bin"


def built(layout: Layout) -> Path | None:
    """The directory holding every binary, or None when something is missing."""
    directory = bin_dir(layout)
    if all((directory / name).is_file() for name in BINARIES) and (directory / ".complete").exists():
        return directory
    return None


def go_environment(layout: Layout) -> dict[str, str]:
    """Go's caches under the project's cache; no cgo (static binaries, no compiler needed).

    etcd v3.6.16 needs Go 1.26: an older local Go fetches that toolchain from the module proxy
    (``GOTOOLCHAIN=auto``) instead of failing.
    """
    return {
        **os.environ,
        "GOMODCACHE": str(layout.go_modules),
        "GOCACHE": str(layout.go_build_cache),
        "GOFLAGS": "-modcacherw -mod=readonly -buildvcs=false",
        "GOTOOLCHAIN": "auto",
        "CGO_ENABLED": "0",
    }


def _ldflags(module: str) -> str:
    flags = ["-s", "-w"]
    if module == "kube":
        # Without these the components report v0.0.0 and kubectl warns about version skew.
        flags += [
            f"-X {_VERSION_PACKAGE}.gitVersion={KUBERNETES_VERSION}",
            f"-X {_VERSION_PACKAGE}.gitMajor={_MAJOR}",
            f"-X {_VERSION_PACKAGE}.gitMinor={_MINOR}",
            f"-X {_VERSION_PACKAGE}.gitTreeState=clean",
        ]
    return " ".join(flags)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(layout: Layout, *, log: Path | None = None, timeout: float = 3600.0) -> Path:
    """Build every binary unless this version is cached; return their directory.

    The three modules build at the same time: most of a cold build is downloading and linking,
    which one ``go build`` does not spread over both cores.
    """
    if (done := built(layout)) is not None:
        return done
    go = shutil.which("go")
    if go is None:
        raise HarnessError("`go` is not on PATH: Go 1.21 or newer (it fetches 1.26 if older) builds the binaries")
    target = bin_dir(layout)
    with _locked(layout.home / "build.lock"):
        if (done := built(layout)) is not None:
            return done
        staging = target.with_name("bin.partial")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        log_path = log or (target.parent / "build.log")
        env = go_environment(layout)
        started = time.monotonic()
        with log_path.open("w") as out:
            running = {
                module: subprocess.Popen(
                    [go, "build", "-trimpath", "-ldflags", _ldflags(module), "-o", f"{staging}/"]
                    + [package for package, _ in outputs],
                    cwd=GO_DIR / module,
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
                for module, outputs in BUILDS.items()
            }
            failed = []
            try:
                for module, process in running.items():
                    code = process.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
                    if code != 0:
                        failed.append(module)
            except subprocess.TimeoutExpired:
                raise HarnessError(f"go build took longer than {timeout:.0f} s; see {log_path}") from None
            finally:
                for process in running.values():
                    if process.poll() is None:
                        process.kill()
                        process.wait()
        if failed:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-30:])
            raise HarnessError(f"go build of {', '.join(failed)} failed (full log: {log_path}):\n{tail}")
        # `go build -o dir/` names each binary after its package (or module) path's last element,
        # which BUILDS' names are.
        (staging / ".complete").write_text(f"{time.monotonic() - started:.0f} s\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)
    return target
