"""A tiny loopback stand-in for a Nacos 2.0.x server, for the packaging smoke test and benchmark.

The smoke test and benchmark prefer ``python -m localnacos serve`` (a real Nacos); this is the
fallback where that cannot run (no JDK), with the same interface: ``export NAME=value`` lines with
the agent's settings, a line ``# ready``, then it serves until killed. It knows one service with
one registered instance and answers the v1 naming calls the agent makes, in the reply shapes of
localnacos/RESPONSES.md: the catalog list (disabled instances included), the served list (enabled
ones only), the service list, the scan of services with their instances (2.0.x has no client
list: 404) and the instance update. Standard library only; binds 127.0.0.1.

    python3 packaging/fake_nacos.py [--port N] [--service NAME] [--ip IP] [--instance-port N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shlex
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

GROUP = "DEFAULT_GROUP"
CLUSTER = "DEFAULT"


class Registry:
    def __init__(self, service: str, ip: str, port: int) -> None:
        self.service = service
        self.ip = ip
        self.port = port
        self.enabled = True
        self.lock = threading.Lock()

    def host(self) -> dict[str, Any]:
        full = f"{GROUP}@@{self.service}"
        return {
            "instanceId": f"{self.ip}#{self.port}#{CLUSTER}#{full}",
            "ip": self.ip,
            "port": self.port,
            "weight": 1.0,
            "healthy": True,
            "enabled": self.enabled,
            "ephemeral": True,
            "clusterName": CLUSTER,
            "serviceName": full,
            "metadata": {},
        }


def make_handler(reg: Registry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            sys.stderr.write("fake-nacos: " + (format % args) + "\n")

        def _params(self) -> dict[str, str]:
            split = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(split.query).items()}
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                body = self.rfile.read(length).decode()
                query.update({k: v[-1] for k, v in parse_qs(body).items()})
            return query

        def _reply(self, status: int, body: str, ctype: str = "application/json") -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _text(self, status: int, body: str) -> None:
            self._reply(status, body, "text/plain;charset=UTF-8")

        def _ours(self, params: dict[str, str]) -> bool:
            return params.get("serviceName") == reg.service and params.get("groupName", GROUP) == GROUP

        def do_GET(self) -> None:
            path = urlsplit(self.path).path
            params = self._params()
            with reg.lock:
                if path == "/nacos/v1/ns/operator/metrics":
                    self._reply(200, json.dumps({"status": "UP"}))
                elif path == "/nacos/v1/ns/catalog/instances":
                    if not self._ours(params):
                        self._text(404, f"service {GROUP}@@{params.get('serviceName')} is not found!")
                    else:
                        self._reply(200, json.dumps({"list": [reg.host()], "count": 1}))
                elif path == "/nacos/v1/ns/instance/list":
                    name = f"{GROUP}@@{params.get('serviceName')}"
                    hosts = [reg.host()] if self._ours(params) and reg.enabled else []
                    self._reply(
                        200, json.dumps({"name": name, "groupName": GROUP, "cacheMillis": 10000, "hosts": hosts})
                    )
                elif path == "/nacos/v1/ns/service/list":
                    self._reply(200, json.dumps({"count": 1, "doms": [reg.service]}))
                elif path == "/nacos/v1/ns/catalog/services" and params.get("withInstances") == "true":
                    first = params.get("pageNo", "1") == "1" and params.get("namespaceId", "public") == "public"
                    hosts = {CLUSTER: {"hosts": [reg.host()]}}
                    found = [{"serviceName": reg.service, "groupName": GROUP, "clusterMap": hosts}] if first else []
                    self._reply(200, json.dumps(found))
                else:
                    self._not_found(path)

        def do_PUT(self) -> None:
            path = urlsplit(self.path).path
            params = self._params()
            with reg.lock:
                if path != "/nacos/v1/ns/instance":
                    self._not_found(path)
                    return
                if not self._ours(params):
                    self._text(400, f"service not found, namespace: public, service: {params.get('serviceName')}")
                    return
                if params.get("ip") == reg.ip and params.get("port") == str(reg.port) and "enabled" in params:
                    reg.enabled = params["enabled"] == "true"
                self._text(200, "ok")

        def _not_found(self, path: str) -> None:
            body = {"timestamp": "1970-01-01T00:00:00.000+00:00", "status": 404, "error": "Not Found", "path": path}
            self._reply(404, json.dumps(body))

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port to listen on (default: any free one)")
    parser.add_argument("--service", default="demo")
    parser.add_argument("--ip", default="127.0.0.3", help="the registered instance's IP (the pod's POD_IP)")
    parser.add_argument("--instance-port", type=int, default=8080)
    args = parser.parse_args()

    reg = Registry(args.service, args.ip, args.instance_port)
    httpd = ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(reg))
    exports = {
        "POD_IP": reg.ip,
        "NACOS_SERVER_ADDR": f"127.0.0.1:{httpd.server_address[1]}",
        "NACOS_SERVICE_NAME": reg.service,
        "NACOS_SERVICE_PORT": str(reg.port),
        "NACOS_API": "v1",
    }
    for name, value in exports.items():
        print(f"export {name}={shlex.quote(value)}")
    print("# ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        httpd.serve_forever()


if __name__ == "__main__":
    main()
