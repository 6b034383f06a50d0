"""``python -m localnacos serve --major 2|3 [--auth]``: a real Nacos and one registered instance, until stopped.

Prints the environment a pod of the demo service would have, as ``export`` lines on stdout (and
nothing else there), then a line ``# ready`` once everything is up; progress goes to stderr.
SIGTERM or SIGINT stops the instance and the server.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import threading
import time
from types import FrameType

from localnacos import HarnessError, JavaInstance, NacosProcess

DEMO_SERVICE = "demo-provider"
DEMO_IP = "127.0.0.1"
DEMO_PORT = 18080
DEMO_POD = "demo-provider-7d9c8b6f5d-x2k4q"


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m localnacos")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run a real Nacos server and one gRPC-registered instance")
    serve.add_argument("--major", type=int, choices=(2, 3), default=3, help="Nacos major version (default 3)")
    serve.add_argument("--auth", action="store_true", help="turn Nacos auth on (3.x only)")
    serve.add_argument("--service", default=DEMO_SERVICE, help=f"service name (default {DEMO_SERVICE})")
    serve.add_argument("--ip", default=DEMO_IP, help=f"instance ip (default {DEMO_IP})")
    serve.add_argument("--port", type=int, default=DEMO_PORT, help=f"instance port (default {DEMO_PORT})")
    return parser.parse_args(argv)


def _say(message: str) -> None:
    print(f"localnacos: {message}", file=sys.stderr, flush=True)


def serve(args: argparse.Namespace) -> int:
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)

    server = NacosProcess(args.major, auth=args.auth)
    _say(f"starting Nacos {server.version} (auth {'on' if args.auth else 'off'}); the first run downloads it")
    started = time.monotonic()
    try:
        with server:
            _say(f"Nacos is up on {server.base_url} after {time.monotonic() - started:.0f} s")
            with JavaInstance(server, args.service, args.ip, args.port):
                _say(f"{args.service} {args.ip}:{args.port} registered over gRPC by the Java client")
                env = {
                    "POD_IP": args.ip,
                    "HOSTNAME": DEMO_POD if args.service == DEMO_SERVICE else f"{args.service}-0",
                    "NACOS_SERVER_ADDR": server.http_addr,
                    "NACOS_SERVICE_NAME": args.service,
                    "NACOS_SERVICE_PORT": str(args.port),
                }
                if args.auth:
                    env["NACOS_USERNAME"] = server.username or ""
                    env["NACOS_PASSWORD"] = server.password or ""
                for name, value in env.items():
                    print(f"export {name}={shlex.quote(value)}", flush=True)
                print("# ready", flush=True)
                stop.wait()
                _say("stopping")
    except HarnessError as exc:
        _say(str(exc))
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if args.command == "serve":
        return serve(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
