"""Java programs built with Maven into the cache directory, once per hash of their sources.

The Maven repository lives in ``<cache>/m2``; a build directory is made under a lock beside it
and marked complete only at the end, so a second run (or a parallel one) uses it at once.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from localnacos.machine import HarnessError, cache_dir

ROOT = Path(__file__).resolve().parent


def java_available() -> str | None:
    """Why Java programs cannot be built or run here, or None when they can."""
    for tool in ("java", "mvn"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not on PATH (Java 17 and Maven are needed for the real Nacos tests)"
    return None


def java() -> str:
    """The ``java`` on PATH."""
    found = shutil.which("java")
    if found is None:
        raise HarnessError("`java` is not on PATH")
    return found


def sources_hash(root: Path, files: Iterable[Path], properties: Mapping[str, str] | None = None) -> str:
    """A short hash of the files (by their path below ``root`` and their bytes) and the build properties."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    for key in sorted(properties or {}):
        digest.update(f"{key}={(properties or {})[key]}\0".encode())
    return digest.hexdigest()[:16]


def project_files(project: Path) -> list[Path]:
    """A Maven project's pom and sources, in a stable order."""
    return [project / "pom.xml", *sorted(p for p in (project / "src").rglob("*") if p.is_file())]


def made_once(target: Path, make: Callable[[Path], None]) -> Path:
    """``target``, made by ``make(target)`` unless a complete one is there; one maker at a time."""
    done_marker = target / ".complete"
    if done_marker.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if done_marker.exists():
            return target
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        make(target)
        done_marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
    return target


def maven(
    *arguments: str, what: str, cwd: Path | None = None, timeout: float = 1200.0, jvm_options: str | None = None
) -> None:
    """Run ``mvn`` quietly with the cached repository; HarnessError with the output's tail if it fails."""
    reason = java_available()
    if reason:
        raise HarnessError(reason)
    command = ["mvn", "-B", "-q", f"-Dmaven.repo.local={cache_dir() / 'm2'}", *arguments]
    env = dict(os.environ, MAVEN_OPTS=jvm_options) if jvm_options is not None else None
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"maven build of {what} took longer than {timeout:.0f} s") from exc
    if result.returncode != 0:
        output = "\n".join((result.stdout + result.stderr).splitlines()[-40:])
        raise HarnessError(f"maven build of {what} failed ({result.returncode}):\n{output}")


def build(project: str, properties: Mapping[str, str] | None = None, *, timeout: float = 1200.0) -> Path:
    """Build one of the Maven projects next to this file (cached) and return its build directory.

    The directory holds ``classes/`` and ``classpath.txt`` (the runtime classpath in Maven's
    resolution order, pointing into the cached Maven repository).
    """
    reason = java_available()
    if reason:
        raise HarnessError(reason)
    props = dict(properties or {})
    source = ROOT / project
    target = cache_dir() / "build" / f"{project}-{sources_hash(source, project_files(source), props)}"

    def make(directory: Path) -> None:
        maven(
            f"-Dlocalnacos.buildDir={directory}",
            "-DskipTests",
            *(f"-D{key}={value}" for key, value in sorted(props.items())),
            "-f",
            str(source / "pom.xml"),
            "package",
            what=project,
            timeout=timeout,
        )

    return made_once(target, make)


def classpath(build_dir: Path) -> str:
    """The Java classpath of a build directory made by :func:`build`."""
    libraries = (build_dir / "classpath.txt").read_text().strip()
    return f"{build_dir / 'classes'}{os.pathsep}{libraries}"
