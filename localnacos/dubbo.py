"""A real Dubbo 3 provider registered in a real Nacos: interface-level and application-level (register-mode=all).

Dubbo registers the machine's own address (it refuses loopback ones), on a free port, and runs its
QoS server on another free port; ``host``, ``port`` and ``qos_port`` say which once it has started.
"""

from __future__ import annotations

from typing import Self

import httpx

from localnacos.jvm import JsonLinesProgram
from localnacos.machine import free_port
from localnacos.server import ADMIN_PASSWORD, ADMIN_USERNAME, NacosProcess

#: The interface the provider exports, and so its interface-level service in Nacos.
INTERFACE = "localnacos.dubbo.OrderApi"
INTERFACE_SERVICE = f"providers:{INTERFACE}::"


class DubboProvider(JsonLinesProgram):
    """The provider as a process; ``application`` is its Dubbo application name (its application-level service)."""

    label = "the Dubbo provider"

    def __init__(
        self,
        server: NacosProcess,
        application: str,
        *,
        register_mode: str = "all",
        namespace: str = "public",
        start_timeout: float = 120.0,
    ) -> None:
        super().__init__()
        self.server = server
        self.application = application
        self.register_mode = register_mode
        self.namespace = namespace
        self.start_timeout = start_timeout
        self.host = ""
        self.port = 0
        self.qos_port = 0

    def start(self) -> Self:
        self.port, self.qos_port = free_port(), free_port()
        args = [self.server.http_addr, self.namespace, self.application, str(self.port), str(self.qos_port)]
        args.append(self.register_mode)
        if self.server.auth:
            args += [ADMIN_USERNAME, ADMIN_PASSWORD]
        self._launch("dubbo-provider", "localnacos.dubbo.DubboProvider", args, heap="160m")
        try:
            self.wait_for(lambda: self.first("started") is not None, timeout=self.start_timeout, what="started")
        except BaseException:
            self.stop()
            raise
        self.host = str((self.first("started") or {})["host"])
        return self

    def qos(self, command: str) -> httpx.Response:
        """A QoS command over HTTP on 127.0.0.1 (the only address the QoS server answers by default)."""
        return httpx.get(f"http://127.0.0.1:{self.qos_port}/{command}", timeout=10.0)
