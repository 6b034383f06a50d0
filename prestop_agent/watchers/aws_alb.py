"""aws-alb: evidence from AWS Elastic Load Balancing that the pod's target no longer takes traffic.

An ALB (or NLB) target group of target type ``ip`` holds this pod as the target
``pod_ip:port`` (the AWS Load Balancer Controller registers pods so). When the pod is
deleted the controller deregisters it, the target turns ``draining`` for the
group's deregistration delay, and then it disappears. A target that is ``unused``
(for example a group no load balancer forwards to) takes no traffic either.

Gone, per target group: the target is ``draining``, ``unused`` or not registered.
With ``PRESTOP_AWS_WAIT_DEREGISTERED=true``: only "not registered" counts, so the wait
also covers the deregistration delay. The watcher is gone when every group says so.

Settings:

    PRESTOP_AWS_TARGET_GROUP_ARNS    comma-separated target group ARNs (required);
                                     the region of each comes from its ARN
    PRESTOP_AWS_TARGET_PORT          the target's port when it is not the pod's service port
    PRESTOP_AWS_WAIT_DEREGISTERED    true: wait until the target is no longer registered
    PRESTOP_AWS_ENDPOINT_URL         another endpoint for the ELBv2 API (tests, private endpoints)

Credentials come from the SDK's default chain (IRSA's web identity token, pod
identity, environment, profile, instance role). The one IAM action needed is
``elasticloadbalancing:DescribeTargetHealth`` on the target groups.

One poll makes one ``DescribeTargetHealth`` request per target group, without SDK
retries (the wait loop polls again). Each request gets connect and read timeouts of
a share of the poll's ``timeout``, rounded down to a few fixed steps so that at most
a handful of clients is ever made per region. A credential refresh (IRSA's
``AssumeRoleWithWebIdentity``) runs under the SDK's own timeouts.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from prestop_agent.errors import ConfigError, WatcherError
from prestop_agent.source import Source, parse_port
from prestop_agent.watchers.base import Observation, PodTarget, Verdict, WatchContext

NAME = "aws-alb"

ENV_TARGET_GROUP_ARNS = "PRESTOP_AWS_TARGET_GROUP_ARNS"
ENV_TARGET_PORT = "PRESTOP_AWS_TARGET_PORT"
ENV_WAIT_DEREGISTERED = "PRESTOP_AWS_WAIT_DEREGISTERED"
ENV_ENDPOINT_URL = "PRESTOP_AWS_ENDPOINT_URL"

MISSING_SDK = "aws-alb needs the AWS SDK: pip install 'prestop-agent[aws]', or use the executable's full variant"
IAM_ACTION = "elasticloadbalancing:DescribeTargetHealth"

# arn:PARTITION:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID
_ARN = re.compile(
    r"^arn:(?P<partition>aws[a-z-]*):elasticloadbalancing:(?P<region>[a-z]{2}(?:-[a-z0-9]+)+-\d+):"
    r"(?P<account>\d{12}):targetgroup/(?P<name>[A-Za-z0-9-]{1,32})/(?P<id>[0-9a-f]{16})$"
)
_ENDPOINT = re.compile(r"^https?://[^\s/]+(?:/\S*)?$")

# Per-request timeouts are rounded down to one of these, so clients can be reused.
TIMEOUT_STEPS: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 3.0, 5.0)

_NOT_REGISTERED = "not_registered"
_GONE_STATES = frozenset({"draining", "unused"})

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TargetGroupRef:
    """One target group, as named by its ARN."""

    arn: str
    region: str
    name: str


@dataclass(frozen=True)
class AwsAlbConfig:
    target_groups: tuple[TargetGroupRef, ...]
    target_port: int | None = None  # None: the pod's service port
    wait_deregistered: bool = False
    endpoint_url: str | None = None
    sources: Mapping[str, str] = field(default_factory=dict, compare=False)  # setting -> where it came from

    def build(self, context: WatchContext) -> AwsAlbWatcher:
        return AwsAlbWatcher(self, context.target, clients=Boto3Clients(endpoint_url=self.endpoint_url))


def parse_target_group_arn(name: str, value: str) -> TargetGroupRef:
    match = _ARN.match(value)
    if match is None:
        raise ConfigError(
            f"{name} has {value!r}, which is not a target group ARN; use the form "
            "arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID"
        )
    return TargetGroupRef(arn=value, region=match["region"], name=match["name"])


def _require_sdk() -> None:
    try:
        import boto3  # noqa: F401
        import botocore.config  # noqa: F401
    except ImportError:
        raise ConfigError(MISSING_SDK) from None


def load_config(src: Source, watched: Collection[str] = ()) -> AwsAlbConfig:
    if src.local:  # a manifest's image is not this machine's
        _require_sdk()
    sources: dict[str, str] = {}

    arns = src.items(ENV_TARGET_GROUP_ARNS)
    if arns is None or not arns.value:
        raise ConfigError(
            f"{ENV_TARGET_GROUP_ARNS} is not set; set it to the ARNs of the target groups "
            "that route to this pod (comma-separated)"
        )
    groups = tuple(dict.fromkeys(parse_target_group_arn(arns.name, arn) for arn in arns.value))
    sources["target_groups"] = arns.source

    target_port: int | None = None
    port = src.raw(ENV_TARGET_PORT)
    if port is not None:
        target_port = port.parsed(parse_port).value
        sources["target_port"] = port.source

    wait = src.boolean(ENV_WAIT_DEREGISTERED, default=False)
    sources["wait_deregistered"] = wait.source

    endpoint_url: str | None = None
    endpoint = src.raw(ENV_ENDPOINT_URL)
    if endpoint is not None:
        if _ENDPOINT.match(endpoint.value) is None:
            raise ConfigError(
                f"{endpoint.name}={endpoint.value!r} is not an http(s) URL; "
                "set it to a URL such as https://elasticloadbalancing.us-east-1.amazonaws.com or unset it"
            )
        endpoint_url = endpoint.value
        sources["endpoint_url"] = endpoint.source

    return AwsAlbConfig(
        target_groups=groups,
        target_port=target_port,
        wait_deregistered=wait.value,
        endpoint_url=endpoint_url,
        sources=sources,
    )


class TargetHealthClient(Protocol):
    """The one call of the boto3 ``elbv2`` client this watcher makes."""

    def describe_target_health(self, **kwargs: Any) -> Mapping[str, Any]: ...

    def close(self) -> None: ...


class ClientFactory(Protocol):
    """(region, longest time one request may take) -> a client; ``close`` closes every client it made."""

    def __call__(self, region: str, share: float, /) -> TargetHealthClient: ...

    def close(self) -> None: ...


def request_timeout(share: float) -> float:
    """The connect and read timeout for a request that may take ``share`` seconds in all."""
    fitting = [step for step in TIMEOUT_STEPS if step * 2 <= share]
    return fitting[-1] if fitting else TIMEOUT_STEPS[0]


class Boto3Clients:
    """boto3 ``elbv2`` clients from one session (one credential chain), made on demand and kept.

    SDK retries are off (one attempt per request); connect and read timeouts are a
    step of ``TIMEOUT_STEPS`` chosen from the time a request may take.
    """

    def __init__(self, *, endpoint_url: str | None = None, session: Any = None) -> None:
        import boto3

        self._session = session if session is not None else boto3.session.Session()
        self._endpoint_url = endpoint_url
        self._clients: dict[tuple[str, float], TargetHealthClient] = {}

    def __call__(self, region: str, share: float) -> TargetHealthClient:
        from botocore.config import Config

        seconds = request_timeout(share)
        key = (region, seconds)
        client = self._clients.get(key)
        if client is None:
            config = Config(
                connect_timeout=seconds,
                read_timeout=seconds,
                retries={"total_max_attempts": 1, "mode": "standard"},
                user_agent_extra="prestop-agent",
            )
            client = self._session.client("elbv2", region_name=region, endpoint_url=self._endpoint_url, config=config)
            self._clients[key] = client
        return client

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()


class AwsAlbWatcher:
    """Asks ``DescribeTargetHealth`` about this pod's ``ip:port`` in each target group."""

    def __init__(self, config: AwsAlbConfig, target: PodTarget, *, clients: ClientFactory) -> None:
        self._config = config
        self._ip = target.pod_ip
        self._port = config.target_port if config.target_port is not None else target.port
        self._clients = clients

    @property
    def name(self) -> str:
        return NAME

    def close(self) -> None:
        self._clients.close()

    def restart(self, at: float) -> None:
        """Nothing to forget: every poll reads the target groups' current state afresh."""

    def poll(self, now: float, timeout: float) -> Observation:
        groups = self._config.target_groups
        share = max(0.0, timeout) / len(groups)
        states: dict[str, str] = {}
        for group in groups:
            states[group.arn] = self._state_in(group, share)

        target = f"{self._ip}:{self._port}"
        details: dict[str, object] = {"target": target, "target_groups": states}
        if all(state == _NOT_REGISTERED for state in states.values()):
            return Observation(Verdict.GONE, "not_registered", details)
        if not self._config.wait_deregistered and all(
            state == _NOT_REGISTERED or state in _GONE_STATES for state in states.values()
        ):
            return Observation(Verdict.GONE, "draining", details)
        reason = "still_registered" if self._config.wait_deregistered else "target_in_service"
        return Observation(Verdict.PRESENT, reason, details)

    def _state_in(self, group: TargetGroupRef, share: float) -> str:
        """The target's state in one group, or ``not_registered``."""
        try:
            client = self._clients(group.region, share)
            answer = client.describe_target_health(
                TargetGroupArn=group.arn, Targets=[{"Id": self._ip, "Port": self._port}]
            )
        except Exception as exc:
            raise _convert(exc, group) from exc

        state = _NOT_REGISTERED
        for description in answer.get("TargetHealthDescriptions") or ():
            found = description.get("Target") or {}
            if found.get("Id") != self._ip or int(found.get("Port", self._port)) != self._port:
                continue
            health = description.get("TargetHealth") or {}
            # Asked about a target that is not registered, the API answers with an entry whose
            # reason is Target.NotRegistered (state "unused"; moto says "unavailable").
            if health.get("Reason") == "Target.NotRegistered":
                state = _NOT_REGISTERED
            else:
                state = str(health.get("State") or "unknown")
            break
        log.debug(
            "aws_alb_target_health",
            target_group=group.arn,
            target=f"{self._ip}:{self._port}",
            state=state,
        )
        return state


_ACCESS_DENIED = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"})
_THROTTLED = frozenset({"Throttling", "ThrottlingException", "RequestLimitExceeded", "TooManyRequestsException"})
_BAD_CREDENTIALS = frozenset(
    {
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
    }
)


def _convert(exc: Exception, group: TargetGroupRef) -> WatcherError:  # noqa: PLR0911 - one return per cause
    """One line that says what went wrong with which group, and what to do about it."""
    from botocore import exceptions as bx

    where = f"aws-alb: DescribeTargetHealth on {group.arn}"
    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or "")
        status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in _ACCESS_DENIED:
            return WatcherError(
                f"{where}: access denied ({code}); allow {IAM_ACTION} for the pod's IAM role: {message}"
            )
        if code in _THROTTLED:
            return WatcherError(f"{where}: throttled ({code}); polling again later")
        if code == "TargetGroupNotFound":
            return WatcherError(
                f"{where}: target group not found; check {ENV_TARGET_GROUP_ARNS} and the account of the credentials"
            )
        if code in _BAD_CREDENTIALS:
            return WatcherError(f"{where}: credentials refused ({code}); check the pod's IAM role (IRSA)")
        if isinstance(status, int) and status >= 500:
            return WatcherError(f"{where}: server error {status} ({code or 'no code'}): {message}")
        return WatcherError(f"{where}: {code or 'error'} (HTTP {status}): {message}")
    if isinstance(exc, bx.NoCredentialsError):
        return WatcherError(
            f"{where}: no AWS credentials found; give the service account an IAM role (IRSA) or pod identity"
        )
    if isinstance(exc, bx.ConnectTimeoutError | bx.ReadTimeoutError):
        return WatcherError(f"{where}: timed out ({type(exc).__name__})")
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionClosedError):
        return WatcherError(f"{where}: endpoint unreachable ({type(exc).__name__})")
    if isinstance(exc, bx.BotoCoreError):
        return WatcherError(f"{where}: {type(exc).__name__}: {exc}")
    return WatcherError(f"{where}: unexpected {type(exc).__name__}: {exc}")
