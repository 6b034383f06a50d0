"""``python -m localkube``: run the local cluster, build what it needs, load images into it.

    serve                  start the cluster; print ``export KUBECONFIG=...`` then ``# ready``;
                           run until SIGTERM/SIGINT, then stop and leave nothing behind
                           (--stop-on-stdin-eof: also when stdin closes, i.e. the parent died)
    build [--images A,B]   build (or find cached) the binaries and the named images, print the tars
    image build NAME...    build (or find cached) images; print ``NAME REF TAR`` per image
    image import TAR...    load image tars into the running cluster
    leftovers              list anything of a cluster still on the host (exit 1 if there is)

Only ``export`` lines and ``# ready`` go to stdout from ``serve``; progress goes to stderr.
Exit codes: 0 done, 1 the cluster or a build failed (the message says why), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import select
import shlex
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from localkube import binaries, hostnet, images
from localkube.cluster import Cluster, import_image
from localkube.errors import HarnessError
from localkube.layout import KUBERNETES_VERSION, Layout


def _say(message: str) -> None:
    print(f"localkube: {message}", file=sys.stderr, flush=True)


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localkube", description=f"a local Kubernetes {KUBERNETES_VERSION}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_command = commands.add_parser("serve", help="run the cluster until SIGTERM")
    serve_command.add_argument(
        "--stop-on-stdin-eof", action="store_true", help="also stop when standard input closes (the parent died)"
    )
    build = commands.add_parser("build", help="build the binaries and, optionally, images")
    build.add_argument("--images", default="", help=f"comma-separated, from: {', '.join(images.NAMES)}")
    image = commands.add_parser("image", help="build images, or import image tars into the running cluster")
    actions = image.add_subparsers(dest="action", required=True)
    image_build = actions.add_parser("build")
    image_build.add_argument("names", nargs="+", choices=images.NAMES)
    image_import = actions.add_parser("import")
    image_import.add_argument("tars", nargs="+", type=Path)
    commands.add_parser("leftovers", help="list what a cluster left on the host")
    return parser.parse_args(argv)


class _Interrupted(Exception):
    """SIGTERM or SIGINT arrived while the cluster was still starting."""


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signal.Signals(signum).name)


def _stdin_closed(timeout: float) -> bool:
    """Whether standard input reached its end; waits up to ``timeout`` seconds for news."""
    readable, _, _ = select.select([sys.stdin.fileno()], [], [], timeout)
    return bool(readable) and not os.read(sys.stdin.fileno(), 4096)


def serve(*, stop_on_stdin_eof: bool = False) -> int:
    stop = threading.Event()
    # Until ready, a signal aborts the start (which stops whatever already runs).
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)
    cluster = Cluster(say=_say)
    try:
        cluster.start()
    except _Interrupted as exc:
        _say(f"{exc} while starting: stopped")
        return 1
    except HarnessError as exc:
        _say(str(exc))
        return 1

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    try:
        _say(f"Kubernetes {KUBERNETES_VERSION} is up after {cluster.startup_seconds:.0f} s")
        print(f"export KUBECONFIG={shlex.quote(str(cluster.kubeconfig))}", flush=True)
        print(f"export LOCALKUBE_BIN={shlex.quote(str(cluster.bin))}", flush=True)
        print("# ready", flush=True)
        # A signal only sets the event. With --stop-on-stdin-eof, a closed stdin means the parent
        # that holds it died and nobody will send SIGTERM. (Polled here: a thread blocked reading
        # stdin would abort the interpreter at exit.)
        while not stop.is_set():
            if stop_on_stdin_eof:
                if _stdin_closed(1.0):
                    break
            else:
                stop.wait(1.0)
    finally:
        clean = _stop(cluster)
    return 0 if clean else 1


def _stop(cluster: Cluster) -> bool:
    try:
        cluster.stop()
    except HarnessError as exc:
        _say(str(exc))
        return False
    _say("stopped; nothing left on the host")
    return True


def _run(args: argparse.Namespace, layout: Layout) -> int:
    if args.command == "serve":
        return serve(stop_on_stdin_eof=args.stop_on_stdin_eof)
    if args.command == "build":
        print(binaries.build(layout), flush=True)
        for name in filter(None, args.images.split(",")):
            print(images.build(name.strip(), layout, say=_say).tar, flush=True)
    elif args.command == "image" and args.action == "build":
        for name in args.names:
            image = images.build(name, layout, say=_say)
            print(image.name, image.ref, image.tar, flush=True)
    elif args.command == "image" and args.action == "import":
        for tar in args.tars:
            if not tar.is_file():
                _say(f"{tar}: no such file (give the path of an image tar)")
                return 2
            import_image(layout, tar)
    elif args.command == "leftovers":
        left = hostnet.leftovers(layout)
        for line in left:
            print(line)
        return 1 if left else 0
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    try:
        return _run(args, Layout.default())
    except HarnessError as exc:
        _say(str(exc))
        return 1


if __name__ == "__main__":
    sys.exit(main())
