"""aliyun-alb: evidence from Alibaba Cloud ALB that the pod's backend no longer takes traffic.

The ALB Ingress controller of ACK (or whatever registers the pod) lists the pod in
ALB server groups as a backend server with ``ServerIp`` = pod IP and ``Port`` = the
container port (``ServerType`` ``Eni`` on Terway, ``Eci`` on ECI, ``Ip`` in IP server
groups). When the pod goes away the backend turns ``Removing`` and then is no longer
listed by ``ListServerGroupServers`` (API version 2020-06-16).

Gone, per server group: this pod's backend is ``Removing`` or not listed. With
``PRESTOP_ALIYUN_WAIT_REMOVED=true`` only "not listed" counts. The watcher is gone
when every server group says so.

Settings:

    PRESTOP_ALIYUN_SERVER_GROUP_IDS  comma-separated server group IDs, sgp-... (required)
    PRESTOP_ALIYUN_REGION            region ID such as cn-hangzhou; else ALIBABA_CLOUD_REGION_ID
    PRESTOP_ALIYUN_TARGET_PORT       the backend's port when it is not the pod's service port
    PRESTOP_ALIYUN_WAIT_REMOVED      true: wait until the backend is no longer listed
    PRESTOP_ALIYUN_ENDPOINT          another API endpoint: a host (alb-vpc.cn-hangzhou.aliyuncs.com)
                                     or a URL; http:// only for tests

Credentials come from the SDK's default chain (``alibabacloud_credentials``): the
``ALIBABA_CLOUD_ACCESS_KEY_ID``/``_SECRET`` variables, RRSA (``ALIBABA_CLOUD_ROLE_ARN``,
``ALIBABA_CLOUD_OIDC_PROVIDER_ARN``, ``ALIBABA_CLOUD_OIDC_TOKEN_FILE``), profile files,
then the ECS instance's RAM role. The chain reads those variables when the SDK is
first imported. The RAM action needed is ``alb:ListServerGroupServers``.

Each request gets connect and read timeouts from what is left of the poll's
``timeout``; SDK retries are off (the wait loop polls again). Fetching an RRSA
token from STS runs under the credentials library's own timeouts.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from prestop_agent.errors import ConfigError, WatcherError
from prestop_agent.source import Source, parse_port
from prestop_agent.watchers.base import Observation, PodTarget, Verdict, WatchContext

NAME = "aliyun-alb"

ENV_SERVER_GROUP_IDS = "PRESTOP_ALIYUN_SERVER_GROUP_IDS"
ENV_REGION = "PRESTOP_ALIYUN_REGION"
ENV_SDK_REGION = "ALIBABA_CLOUD_REGION_ID"
ENV_TARGET_PORT = "PRESTOP_ALIYUN_TARGET_PORT"
ENV_WAIT_REMOVED = "PRESTOP_ALIYUN_WAIT_REMOVED"
ENV_ENDPOINT = "PRESTOP_ALIYUN_ENDPOINT"

MISSING_SDK = (
    "aliyun-alb needs Alibaba Cloud's SDK: pip install 'prestop-agent[aliyun]', or use the executable's full variant"
)
RAM_ACTION = "alb:ListServerGroupServers"

PAGE_SIZE = 100  # the API's largest MaxResults
MAX_PAGES = 50  # a guard against a NextToken that never ends
MIN_REQUEST_MS = 100

_GROUP_ID = re.compile(r"^sgp-[a-z0-9]{6,40}$")
_REGION = re.compile(r"^[a-z]{2,}(?:-[a-z0-9]+)+$")
_ENDPOINT = re.compile(r"^(?:(?P<scheme>https?)://)?(?P<host>[A-Za-z0-9.-]+(?::\d{1,5})?)/?$")

_NOT_LISTED = "not_listed"
_REMOVING = "Removing"

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class AliyunAlbConfig:
    server_group_ids: tuple[str, ...]
    region: str
    target_port: int | None = None  # None: the pod's service port
    wait_removed: bool = False
    endpoint: str | None = None  # host[:port]; None: the SDK's endpoint for the region
    protocol: str = "HTTPS"
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # setting -> where it came from

    def build(self, context: WatchContext) -> AliyunAlbWatcher:
        return AliyunAlbWatcher(self, context.target, client=make_client(self), monotonic=context.clock.monotonic)


def _require_sdk() -> None:
    try:
        import alibabacloud_alb20200616.client  # noqa: F401
        import alibabacloud_credentials.client  # noqa: F401
        import alibabacloud_tea_openapi.utils_models  # noqa: F401
        import darabonba.runtime  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_SDK) from None


def load_config(src: Source, watched: Collection[str] = ()) -> AliyunAlbConfig:
    if src.local:  # a manifest's image is not this machine's
        _require_sdk()
    sources: dict[str, str] = {}

    groups = src.items(ENV_SERVER_GROUP_IDS)
    if groups is None or not groups.value:
        raise ConfigError(
            f"{ENV_SERVER_GROUP_IDS} is not set; set it to the IDs of the ALB server groups "
            "that route to this pod (comma-separated, sgp-...)"
        )
    for group in groups.value:
        if _GROUP_ID.match(group) is None:
            raise ConfigError(
                f"{groups.name} has {group!r}, which is not a server group ID; use IDs such as sgp-0a1b2c3d4e5f6g7h"
            )
    sources["server_group_ids"] = groups.source

    region = src.raw(ENV_REGION, ENV_SDK_REGION)
    if region is None:
        raise ConfigError(f"{ENV_REGION} is not set; set it to the region of the ALB, such as cn-hangzhou")
    if _REGION.match(region.value) is None:
        raise ConfigError(f"{region.name}={region.value!r} is not a region ID; use one such as cn-hangzhou")
    sources["region"] = region.source

    target_port: int | None = None
    port = src.raw(ENV_TARGET_PORT)
    if port is not None:
        target_port = port.parsed(parse_port).value
        sources["target_port"] = port.source

    wait = src.boolean(ENV_WAIT_REMOVED, default=False)
    sources["wait_removed"] = wait.source

    endpoint: str | None = None
    protocol = "HTTPS"
    given = src.raw(ENV_ENDPOINT)
    if given is not None:
        match = _ENDPOINT.match(given.value)
        if match is None:
            raise ConfigError(
                f"{given.name}={given.value!r} is not an endpoint; "
                "set it to a host such as alb-vpc.cn-hangzhou.aliyuncs.com, or unset it"
            )
        endpoint = match["host"]
        protocol = (match["scheme"] or "https").upper()
        sources["endpoint"] = given.source

    return AliyunAlbConfig(
        server_group_ids=tuple(dict.fromkeys(groups.value)),
        region=region.value,
        target_port=target_port,
        wait_removed=wait.value,
        endpoint=endpoint,
        protocol=protocol,
        sources=sources,
    )


class AlbClient(Protocol):
    """The one call of ``alibabacloud_alb20200616.client.Client`` this watcher makes."""

    def list_server_group_servers_with_options(self, request: Any, runtime: Any) -> Any: ...


def make_client(config: AliyunAlbConfig, *, credential: Any = None) -> AlbClient:
    """The SDK client; ``credential`` defaults to the SDK's default credential chain."""
    from alibabacloud_alb20200616.client import Client
    from alibabacloud_credentials.client import Client as CredentialClient
    from alibabacloud_tea_openapi.utils_models import Config

    client: AlbClient = Client(
        Config(
            credential=credential if credential is not None else CredentialClient(),
            region_id=config.region,
            endpoint=config.endpoint,
            protocol=config.protocol,
            user_agent="prestop-agent",
        )
    )
    return client


class AliyunAlbWatcher:
    """Lists each server group's backends and looks for this pod's ``ip:port``."""

    def __init__(
        self,
        config: AliyunAlbConfig,
        target: PodTarget,
        *,
        client: AlbClient,
        monotonic: Callable[[], float],
    ) -> None:
        self._config = config
        self._ip = target.pod_ip
        self._port = config.target_port if config.target_port is not None else target.port
        self._client = client
        self._monotonic = monotonic

    @property
    def name(self) -> str:
        return NAME

    def close(self) -> None:
        """Nothing to release: the SDK client keeps no connection open between requests."""

    def restart(self, at: float) -> None:
        """Nothing to forget: every poll reads the server groups' current state afresh."""

    def poll(self, now: float, timeout: float) -> Observation:
        ends = self._monotonic() + max(0.0, timeout)
        states = {group: self._status_in(group, ends) for group in self._config.server_group_ids}

        details: dict[str, object] = {"backend": f"{self._ip}:{self._port}", "server_groups": states}
        if all(state == _NOT_LISTED for state in states.values()):
            return Observation(Verdict.GONE, "not_listed", details)
        if not self._config.wait_removed and all(state in (_NOT_LISTED, _REMOVING) for state in states.values()):
            return Observation(Verdict.GONE, "removing", details)
        reason = "still_listed" if self._config.wait_removed else "backend_in_service"
        return Observation(Verdict.PRESENT, reason, details)

    def _status_in(self, group: str, ends: float) -> str:
        """This backend's Status in one server group, or ``not_listed``."""
        from alibabacloud_alb20200616 import models
        from darabonba.runtime import RuntimeOptions

        token: str | None = None
        pages = 0
        status = _NOT_LISTED
        while True:
            # connect and read may each take their timeout: give each half of what is left
            millis = max(MIN_REQUEST_MS, int((ends - self._monotonic()) * 500))
            request = models.ListServerGroupServersRequest(
                server_group_id=group, max_results=PAGE_SIZE, next_token=token
            )
            runtime = RuntimeOptions(autoretry=False, connect_timeout=millis, read_timeout=millis)
            try:
                body = self._client.list_server_group_servers_with_options(request, runtime).body.to_map()
            except Exception as exc:
                raise _convert(exc, group) from exc
            pages += 1
            for server in body.get("Servers") or ():
                if self._is_this_pod(server):
                    status = str(server.get("Status") or "unknown")
            token = body.get("NextToken") or None
            if status != _NOT_LISTED or token is None:
                break
            if pages >= MAX_PAGES:
                raise WatcherError(f"aliyun-alb: ListServerGroupServers on {group}: more than {MAX_PAGES} pages")
        log.debug("aliyun_alb_backend_status", server_group=group, backend=f"{self._ip}:{self._port}", status=status)
        return status

    def _is_this_pod(self, server: Mapping[str, Any]) -> bool:
        if server.get("ServerType") == "Fc":
            return False
        ip = server.get("ServerIp") or (server.get("ServerId") if server.get("ServerType") == "Ip" else None)
        try:
            port = int(server.get("Port") or 0)
        except (TypeError, ValueError):
            return False
        return ip == self._ip and port == self._port


def _convert(exc: Exception, group: str) -> WatcherError:  # noqa: PLR0911 - one return per cause
    """One line that says what went wrong with which group, and what to do about it."""
    from alibabacloud_credentials.exceptions import CredentialException
    from alibabacloud_tea_openapi.exceptions import (
        AlibabaCloudException,
        ThrottlingException,
    )
    from darabonba.exceptions import UnretryableException

    where = f"aliyun-alb: ListServerGroupServers on {group}"
    cause: BaseException = exc
    if isinstance(exc, UnretryableException) and exc.inner_exception is not None:
        cause = exc.inner_exception

    if isinstance(cause, AlibabaCloudException):
        code = str(cause.code or "")
        status = cause.status_code
        message = str(cause.message or "")
        if isinstance(cause, ThrottlingException) or code.startswith("Throttling"):
            return WatcherError(f"{where}: throttled ({code}); polling again later")
        if code.startswith(("Forbidden", "NoPermission")) or status == 403:
            return WatcherError(
                f"{where}: access denied ({code or status}); allow {RAM_ACTION} for the pod's RAM role (RRSA)"
            )
        if code.startswith(
            ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidSecurityToken", "IncompleteSignature")
        ):
            return WatcherError(f"{where}: credentials refused ({code}); check the pod's RAM role or access key")
        if code.startswith("ResourceNotFound") or status == 404:
            return WatcherError(
                f"{where}: server group not found ({code or status}); check {ENV_SERVER_GROUP_IDS} and {ENV_REGION}"
            )
        if isinstance(status, int) and status >= 500:
            return WatcherError(f"{where}: server error {status} ({code or 'no code'}): {message}")
        return WatcherError(f"{where}: {code or 'error'} (HTTP {status}): {message}")
    if isinstance(cause, CredentialException):
        return WatcherError(
            f"{where}: no usable credentials ({type(cause).__name__}); set up RRSA for the service account "
            "or the ALIBABA_CLOUD_ACCESS_KEY_ID/SECRET variables"
        )
    text = str(getattr(cause, "message", None) or cause)
    if "timed out" in text.lower() or "timeout" in text.lower():
        return WatcherError(f"{where}: timed out")
    if isinstance(exc, UnretryableException):
        return WatcherError(f"{where}: endpoint unreachable or bad answer: {text}")
    return WatcherError(f"{where}: unexpected {type(cause).__name__}: {text}")
