"""Real Nacos servers and registering clients, started locally for integration tests and the demo."""

from localnacos.server import (
    ADMIN_PASSWORD,
    ADMIN_USERNAME,
    CLIENT_VERSIONS,
    SERVER_AUTH_SUPPORT,
    SERVER_VERSIONS,
    AuthUnavailableError,
    HarnessError,
    HttpInstance,
    JavaInstance,
    NacosServer,
    build,
    cache_dir,
    free_port,
    java_available,
    wait_until,
)

__all__ = [
    "ADMIN_PASSWORD",
    "ADMIN_USERNAME",
    "CLIENT_VERSIONS",
    "SERVER_AUTH_SUPPORT",
    "SERVER_VERSIONS",
    "AuthUnavailableError",
    "HarnessError",
    "HttpInstance",
    "JavaInstance",
    "NacosServer",
    "build",
    "cache_dir",
    "free_port",
    "java_available",
    "wait_until",
]
