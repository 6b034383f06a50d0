"""Real Nacos servers and registering clients, started locally for integration tests and the demo.

In the order a test uses them: ``machine`` (cache directory, free ports, process groups),
``maven`` (cached builds of the Java programs), ``server`` (a Nacos server process),
``instances`` (instances registered over gRPC or HTTP), ``dubbo`` (a Dubbo 3 provider).
"""

from localnacos.dubbo import DubboProvider
from localnacos.instances import HttpInstance, JavaInstance
from localnacos.machine import HarnessError, Lifecycle, cache_dir, free_port, port_free, wait_until
from localnacos.maven import build, java_available
from localnacos.server import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    CLIENT_VERSIONS,
    SERVER_AUTH_SUPPORT,
    SERVER_VERSIONS,
    AuthUnavailableError,
    NacosProcess,
)

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USERNAME",
    "CLIENT_VERSIONS",
    "SERVER_AUTH_SUPPORT",
    "SERVER_VERSIONS",
    "AuthUnavailableError",
    "DubboProvider",
    "HarnessError",
    "HttpInstance",
    "JavaInstance",
    "Lifecycle",
    "NacosProcess",
    "build",
    "cache_dir",
    "free_port",
    "java_available",
    "port_free",
    "wait_until",
]
