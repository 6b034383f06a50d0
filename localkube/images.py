"""Container images without a registry: built with buildah, saved as docker-archive tars, cached by inputs.

| image | what |
|---|---|
| ``pause`` | the pod sandbox: the ``pause`` binary from ``go/kube/pause`` on scratch |
| ``python`` | Debian bookworm (debootstrap) with python3.11: ``docker/Dockerfile``'s ``PYTHON_IMAGE`` |
| ``prestop-agent`` | ``docker/Dockerfile`` itself, built on ``python``: the executable folder on scratch |
| ``jre`` | Debian bookworm (debootstrap) with openjdk-17-jre-headless and curl |
| ``provider`` | the benchmark's Spring Boot provider plus the README's one-line ``COPY --from`` agent layer |
| ``consumer`` | the benchmark's Spring Cloud consumer |
| ``shop`` | ``tests/e2e/shop``, the app the examples run: actuator probes, Nacos, the agent layer |
| ``nacos2`` | the localnacos Nacos 2.0.4 server, standalone |

Each image is tagged ``localhost/localkube/<name>:<hash>``, the hash covering its own inputs and
its base images' tags, and saved as ``<cache>/localkube/images/<name>-<hash>.tar``. A cached tar
is used as it is; buildah only runs when an input changed. Storage is buildah's ``vfs`` driver
under the cache (no overlay mounts, no daemon); it copies whole layers, so every image here has
as few layers as it can.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from localkube import binaries
from localkube.errors import HarnessError
from localkube.layout import REPO, ROOT, Layout

CONTAINERFILES = ROOT / "images"
#: The Spring app the end-to-end tests deploy through the examples (a Maven project).
SHOP_PROJECT = "tests/e2e/shop"
DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: Packages added to debootstrap's minimal base for each Debian image. libpython3.11 and
#: python3-venv because packaging/build-binary makes a venv and PyInstaller needs the shared library;
#: curl because the preStop scripts people use today call Nacos with it (bench/seed001-prestop.sh).
DEBIAN_PACKAGES = {
    "python": ("python3", "python3-venv", "libpython3.11", "ca-certificates"),
    "jre": ("openjdk-17-jre-headless", "ca-certificates", "curl"),
}
#: Each image's base images: built first, and their tags are part of its hash.
BASES: dict[str, tuple[str, ...]] = {
    "pause": (),
    "python": (),
    "jre": (),
    "prestop-agent": ("python",),
    "provider": ("jre", "prestop-agent"),
    "consumer": ("jre",),
    "shop": ("jre", "prestop-agent"),
    "nacos2": ("jre",),
}
NAMES = tuple(BASES)
_BUILD_TIMEOUT = 1800.0
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


@dataclasses.dataclass(frozen=True)
class Image:
    name: str
    ref: str
    tar: Path


def _digest(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part + b"\0")
    return digest.hexdigest()[:16]


def _tree(root: Path, *relative: str) -> list[bytes]:
    """Names and contents of the files under some paths, caches and build output left out."""
    parts = []
    for rel in relative:
        path = root / rel
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            if {"__pycache__", "target"} & set(file.relative_to(root).parts):
                continue  # build output (Maven's target/ beside bench's sources), not an input
            parts += [str(file.relative_to(root)).encode(), file.read_bytes()]
    return parts


# -- the inputs of each image, and how it is made ---------------------------------------------


class Builder:
    """Builds images into buildah storage under the cache and saves them as tars."""

    def __init__(self, layout: Layout, say: Callable[[str], None]) -> None:
        self.layout = layout
        self.say = say
        self._hashes: dict[str, str] = {}

    # hashes ------------------------------------------------------------------------------------

    def inputs(self, name: str) -> list[bytes]:
        containerfile = CONTAINERFILES / f"{name}.Containerfile"
        own = [containerfile.read_bytes()] if containerfile.exists() else []
        if name == "pause":
            own += _tree(binaries.GO_DIR, "kube/pause", "kube/go.mod")
        elif name in DEBIAN_PACKAGES:
            own += [DEBIAN_SUITE.encode(), DEBIAN_MIRROR.encode(), " ".join(DEBIAN_PACKAGES[name]).encode()]
        elif name == "prestop-agent":
            own += _tree(REPO, "docker/Dockerfile", "pyproject.toml", "README.md", "prestop_agent", "packaging")
        elif name in ("provider", "consumer"):
            own += _tree(REPO, "bench/pom.xml", "bench/provider", "bench/consumer")
        elif name == "shop":
            own += _tree(REPO, SHOP_PROJECT)
        elif name == "nacos2":
            own += _tree(REPO, "localnacos/server-2x")
        return own

    def tag(self, name: str) -> str:
        if name not in self._hashes:
            bases = [self.ref(base).encode() for base in BASES[name]]
            self._hashes[name] = _digest(name.encode(), *bases, *self.inputs(name))
        return self._hashes[name]

    def ref(self, name: str) -> str:
        return f"localhost/localkube/{name}:{self.tag(name)}"

    def tar(self, name: str) -> Path:
        return self.layout.images / f"{name}-{self.tag(name)}.tar"

    # buildah -------------------------------------------------------------------------------------

    def buildah(self, *args: str, timeout: float = _BUILD_TIMEOUT, log: Path | None = None) -> str:
        command = [
            "buildah",
            f"--root={self.layout.buildah_root / 'storage'}",
            f"--runroot={self.layout.buildah_root / 'runroot'}",
            "--storage-driver=vfs",
            *args,
        ]
        with contextlib.ExitStack() as stack:
            out = stack.enter_context(log.open("ab")) if log else subprocess.PIPE
            try:
                result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False)
            except subprocess.TimeoutExpired as exc:
                raise HarnessError(f"buildah {args[0]} took longer than {timeout:.0f} s") from exc
        text = result.stdout.decode(errors="replace") if isinstance(result.stdout, bytes) else ""
        if result.returncode != 0:
            detail = _tail(log) if log else text[-3000:]
            raise HarnessError(f"buildah {' '.join(args[:3])} failed ({result.returncode}):\n{detail}")
        return text

    def in_storage(self, ref: str) -> bool:
        try:
            self.buildah("inspect", "--type=image", ref, timeout=60)
        except HarnessError:
            return False
        return True

    def ensure(self, name: str) -> Image:
        """The image's tar, built (with its bases) unless cached."""
        image = Image(name, self.ref(name), self.tar(name))
        if image.tar.exists():
            return image
        for base in BASES[name]:
            base_image = self.ensure(base)
            if not self.in_storage(base_image.ref):
                self.buildah("pull", "--quiet", f"docker-archive:{base_image.tar}")
        self.layout.images.mkdir(parents=True, exist_ok=True)
        log = self.layout.images / f"{name}-{self.tag(name)}.log"
        log.write_bytes(b"")
        self.say(f"building image {name} ({image.ref}); log {log}")
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"localkube-{name}-", dir=self.layout.home) as work:
            self._build(name, Path(work), log)
        partial = image.tar.with_suffix(".partial")
        partial.unlink(missing_ok=True)
        self.buildah("push", "--quiet", image.ref, f"docker-archive:{partial}:{image.ref}", log=log)
        partial.rename(image.tar)
        self._forget_older(name)
        self.say(f"built image {name} in {time.monotonic() - started:.0f} s")
        return image

    def _bud(self, containerfile: Path, context: Path, name: str, log: Path, *extra: str) -> None:
        build_args = [f"--build-arg={key.upper().replace('-', '_')}_IMAGE={self.ref(key)}" for key in BASES[name]]
        self.buildah(
            "bud",
            "--network=host",
            "--layers=false",
            *self._trust_mounts(),
            f"--file={containerfile}",
            f"--tag={self.ref(name)}",
            *build_args,
            *extra,
            str(context),
            log=log,
        )

    def _trust_mounts(self) -> list[str]:
        """The host's CA bundle, and pip told to use it, in every RUN step (never in the image).

        Where the host reaches package registries through a TLS proxy, its bundle holds the
        proxy's CA and the image's own bundle does not; pip would also use its vendored one.
        """
        if not HOST_CA_BUNDLE.is_file():
            return []
        pip_conf = self.layout.home / "pip.conf"
        pip_conf.write_text(f"[global]\ncert = {HOST_CA_BUNDLE}\n")
        return [f"--volume={HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro", f"--volume={pip_conf}:/etc/pip.conf:ro"]

    def _build(self, name: str, work: Path, log: Path) -> None:
        if name == "pause":
            bin_dir = binaries.build(self.layout)
            shutil.copy2(bin_dir / "pause", work / "pause")
        elif name in DEBIAN_PACKAGES:
            self._debootstrap(name, work / "rootfs", log)
            subprocess.run(["tar", "-C", str(work / "rootfs"), "-cf", str(work / "rootfs.tar"), "."], check=True)
            shutil.rmtree(work / "rootfs")
        elif name == "prestop-agent":
            self.buildah(
                "bud",
                "--network=host",
                "--layers=false",
                *self._trust_mounts(),
                f"--file={REPO / 'docker' / 'Dockerfile'}",
                f"--ignorefile={REPO / 'docker' / 'Dockerfile.dockerignore'}",
                f"--build-arg=PYTHON_IMAGE={self.ref('python')}",
                # No registry here: the glibc base the agent runs on is the same Debian root.
                f"--build-arg=RUNTIME_IMAGE={self.ref('python')}",
                f"--tag={self.ref(name)}",
                str(REPO),
                log=log,
            )
            return
        elif name in ("provider", "consumer"):
            provider, consumer = _bench_jars()
            shutil.copy2(provider if name == "provider" else consumer, work / "app.jar")
        elif name == "shop":
            shutil.copy2(_shop_jar(), work / "app.jar")
        elif name == "nacos2":
            _nacos_context(work)
        self._bud(CONTAINERFILES / f"{name}.Containerfile", work, name, log)

    def _debootstrap(self, name: str, rootfs: Path, log: Path) -> None:
        if shutil.which("debootstrap") is None:
            raise HarnessError("debootstrap is missing (apt-get install debootstrap): it makes the Debian images")
        packages = self.layout.home / "debootstrap-cache"
        packages.mkdir(parents=True, exist_ok=True)
        command = [
            "debootstrap",
            "--variant=minbase",
            f"--include={','.join(DEBIAN_PACKAGES[name])}",
            f"--cache-dir={packages}",
            DEBIAN_SUITE,
            str(rootfs),
            DEBIAN_MIRROR,
        ]
        with log.open("ab") as out:
            result = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, timeout=_BUILD_TIMEOUT, check=False)
        # debootstrap mounts /proc and /sys into the root while it configures packages.
        for mounted in ("proc", "sys"):
            subprocess.run(["umount", "-l", str(rootfs / mounted)], capture_output=True, check=False)
        if result.returncode != 0:
            raise HarnessError(f"debootstrap {name} failed ({result.returncode}):\n{_tail(log)}")
        # The image has no apt lists and no package cache; they are big and stale at once.
        for junk in ("var/lib/apt/lists", "var/cache/apt/archives"):
            for entry in (rootfs / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()

    def _forget_older(self, name: str) -> None:
        """Drop earlier builds of the same image: vfs layers are full copies and add up fast."""
        current = self.tag(name)
        for old in [*self.layout.images.glob(f"{name}-*.tar"), *self.layout.images.glob(f"{name}-*.log")]:
            if old.stem != f"{name}-{current}" and old.stem.removeprefix(f"{name}-").isalnum():
                old.unlink(missing_ok=True)
        images = self.buildah("images", "--noheading", "--format={{.Name}}:{{.Tag}}", timeout=60)
        for line in images.split():
            if line.startswith(f"localhost/localkube/{name}:") and line != self.ref(name):
                with contextlib.suppress(HarnessError):
                    self.buildah("rmi", "--force", line, timeout=120)


def _bench_jars() -> tuple[Path, Path]:
    """The benchmark's provider and consumer jars, built (and cached) by bench/rollout.py itself."""
    bench = REPO / "bench"
    spec = importlib.util.spec_from_file_location("localkube_bench_rollout", bench / "rollout.py")
    if spec is None or spec.loader is None:
        raise HarnessError("bench/rollout.py cannot be loaded")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))  # it imports its sibling modules as a script does
    spec.loader.exec_module(module)
    jars: tuple[Path, Path] = module.build_apps()
    return jars


def _shop_jar() -> Path:
    """The examples' app, built with Maven into the cache (never into the checkout), once per source hash."""
    from localnacos.machine import cache_dir
    from localnacos.maven import made_once, maven, project_files, sources_hash

    source = REPO / SHOP_PROJECT
    target = cache_dir() / "build" / f"shop-{sources_hash(source, project_files(source))}"

    def make(directory: Path) -> None:
        maven(
            f"-Dshop.buildDir={directory / 'target'}",
            "-DskipTests",
            "-f",
            str(source / "pom.xml"),
            "package",
            what="the examples' app (tests/e2e/shop)",
            jvm_options="-XX:TieredStopAtLevel=1 -Xmx512m",
        )

    return made_once(target, make) / "target" / "shop.jar"


def _nacos_context(work: Path) -> None:
    """The compiled server, its jars in Maven's classpath order, and a java argfile naming them."""
    from localnacos import build as build_nacos

    built = build_nacos("server-2x")
    (work / "nacos" / "lib").mkdir(parents=True)
    shutil.copytree(built / "classes", work / "nacos" / "classes")
    classpath = ["/opt/nacos/classes"]
    for index, jar in enumerate(p for p in (built / "classpath.txt").read_text().strip().split(":") if p):
        # Numbered, because Hessian 4 must stay ahead of JRaft's Hessian fork on the classpath.
        target = f"{index:03d}-{Path(jar).name}"
        shutil.copy2(jar, work / "nacos" / "lib" / target)
        classpath.append(f"/opt/nacos/lib/{target}")
    (work / "nacos" / "classpath.args").write_text(f"-cp {':'.join(classpath)}\n")


def _tail(path: Path | None, lines: int = 40) -> str:
    if path is None:
        return ""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    layout.images.mkdir(parents=True, exist_ok=True)
    with (layout.images / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def build(name: str, layout: Layout | None = None, *, say: Callable[[str], None] = print) -> Image:
    """Build ``name`` (and its bases) unless cached; one builder at a time per machine."""
    if name not in BASES:
        raise HarnessError(f"no image named {name!r}; known: {', '.join(NAMES)}")
    if shutil.which("buildah") is None:
        raise HarnessError("buildah is missing (apt-get install buildah): it builds the cluster's images")
    chosen = layout or Layout.default()
    with _locked(chosen):
        return Builder(chosen, say).ensure(name)
