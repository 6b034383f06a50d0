"""aws-alb against moto running as a real HTTP server on loopback, with boto3 pointed at it.

What moto (5.x) emulates and what it does not, as found by these tests:
- a registered ip target is ``healthy`` at once: there are no health checks, no ``initial``;
- ``DeregisterTargets`` removes the target at once: there is no ``draining`` phase and no
  deregistration delay, so "draining counts as gone" is shown with botocore's Stubber;
- asked about a target that is not registered, moto answers ``unused`` / ``Target.NotRegistered``
  for a target that was registered before and ``unavailable`` / ``Target.NotRegistered`` for
  one that never was (AWS documents ``unused`` with that reason);
- an unknown target group is ``TargetGroupNotFound``, as on AWS;
- it checks no IAM policy and never throttles: AccessDenied, Throttling and 5xx answers are
  produced with the Stubber, in the shapes AWS documents.
"""

from __future__ import annotations

import functools
import socket
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

boto3 = pytest.importorskip("boto3")
moto_server = pytest.importorskip("moto.server")
from botocore.stub import Stubber  # noqa: E402

from prestop_agent.errors import ConfigError, WatcherError  # noqa: E402
from prestop_agent.source import Source  # noqa: E402
from prestop_agent.watchers import aws_alb  # noqa: E402
from prestop_agent.watchers.base import PodTarget, Verdict  # noqa: E402
from tests.fakes import watch_context  # noqa: E402

SECRET = "moto-secret-key-never-logged"
POD = PodTarget(pod_ip="10.0.1.5", port=8080, host_ip="10.0.0.9")
FAKE_ARN = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/app/0123456789abcdef"


@pytest.fixture(autouse=True)
def _scrub_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No ambient AWS settings; the SDK finds fake keys in the environment and never asks IMDS."""
    import os

    for name in list(os.environ):
        if name.startswith(("AWS_", "PRESTOP_")) or name.lower() in {"http_proxy", "https_proxy", "all_proxy"}:
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@functools.cache
def _session() -> Any:
    """One session with explicit fake keys (sessions load the service models once each)."""
    return boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key=SECRET)


@dataclass
class Cloud:
    """A VPC with an internet-facing ALB per region, in the moto server."""

    url: str
    _lbs: dict[str, tuple[Any, str, str]] = field(default_factory=dict)

    def _region(self, region: str) -> tuple[Any, str, str]:
        if region not in self._lbs:
            kw = {"region_name": region, "endpoint_url": self.url}
            ec2 = _session().client("ec2", **kw)
            elb = _session().client("elbv2", **kw)
            vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
            subnets = [
                ec2.create_subnet(VpcId=vpc, CidrBlock=f"10.0.{i}.0/24", AvailabilityZone=f"{region}{zone}")["Subnet"][
                    "SubnetId"
                ]
                for i, zone in ((1, "a"), (2, "b"))
            ]
            lb = elb.create_load_balancer(Name=f"lb-{uuid.uuid4().hex[:8]}", Subnets=subnets)["LoadBalancers"][0][
                "LoadBalancerArn"
            ]
            self._lbs[region] = (elb, vpc, lb)
        return self._lbs[region]

    def target_group(self, region: str = "us-east-1", port: int = 8080) -> str:
        elb, vpc, lb = self._region(region)
        arn: str = elb.create_target_group(
            Name=f"tg-{uuid.uuid4().hex[:12]}", Protocol="HTTP", Port=port, VpcId=vpc, TargetType="ip"
        )["TargetGroups"][0]["TargetGroupArn"]
        elb.create_listener(
            LoadBalancerArn=lb,
            Protocol="HTTP",
            Port=1024 + len(self._lbs) * 1000 + int(uuid.uuid4().int % 900),
            DefaultActions=[{"Type": "forward", "TargetGroupArn": arn}],
        )
        return arn

    def elb(self, arn: str) -> Any:
        return self._region(aws_alb.parse_target_group_arn("test", arn).region)[0]

    def register(self, arn: str, ip: str = POD.pod_ip, port: int = POD.port) -> None:
        self.elb(arn).register_targets(TargetGroupArn=arn, Targets=[{"Id": ip, "Port": port}])

    def deregister(self, arn: str, ip: str = POD.pod_ip, port: int = POD.port) -> None:
        self.elb(arn).deregister_targets(TargetGroupArn=arn, Targets=[{"Id": ip, "Port": port}])


@pytest.fixture(scope="module")
def cloud(moto_url: str) -> Cloud:
    return Cloud(moto_url)


def _config(*arns: str, **env: str) -> aws_alb.AwsAlbConfig:
    return aws_alb.load_config(Source({aws_alb.ENV_TARGET_GROUP_ARNS: ",".join(arns), **env}))


def _watcher(config: aws_alb.AwsAlbConfig, url: str, target: PodTarget = POD) -> aws_alb.AwsAlbWatcher:
    return aws_alb.AwsAlbWatcher(config, target, clients=aws_alb.Boto3Clients(endpoint_url=url, session=_session()))


# --- configuration --------------------------------------------------------------------------


def test_config_reads_arns_regions_and_defaults() -> None:
    other = "arn:aws-cn:elasticloadbalancing:cn-north-1:123456789012:targetgroup/k8s-web-1/fedcba9876543210"
    config = _config(FAKE_ARN, other)
    assert [(g.region, g.name) for g in config.target_groups] == [("us-east-1", "app"), ("cn-north-1", "k8s-web-1")]
    assert config.target_port is None
    assert config.wait_deregistered is False
    assert config.endpoint_url is None
    assert config.sources["target_groups"] == f"env {aws_alb.ENV_TARGET_GROUP_ARNS}"
    assert config.sources["wait_deregistered"] == "default"


def test_config_options() -> None:
    config = _config(
        FAKE_ARN,
        PRESTOP_AWS_TARGET_PORT="9090",
        PRESTOP_AWS_WAIT_DEREGISTERED="true",
        PRESTOP_AWS_ENDPOINT_URL="http://127.0.0.1:5000",
    )
    assert config.target_port == 9090
    assert config.wait_deregistered is True
    assert config.endpoint_url == "http://127.0.0.1:5000"


def test_config_missing_arns_names_the_variable() -> None:
    with pytest.raises(ConfigError, match=aws_alb.ENV_TARGET_GROUP_ARNS):
        aws_alb.load_config(Source({}))


@pytest.mark.parametrize(
    "bad",
    [
        "app",
        "arn:aws:elasticloadbalancing:us-east-1:123456789012:loadbalancer/app/web/0123456789abcdef",
        "arn:aws:elasticloadbalancing:us-east-1:1234:targetgroup/app/0123456789abcdef",
        "arn:aws:ec2:us-east-1:123456789012:targetgroup/app/0123456789abcdef",
    ],
)
def test_config_rejects_what_is_not_a_target_group_arn(bad: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _config(bad)
    message = str(caught.value)
    assert aws_alb.ENV_TARGET_GROUP_ARNS in message
    assert repr(bad) in message
    assert "targetgroup/NAME/ID" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PRESTOP_AWS_TARGET_PORT", "0"),
        ("PRESTOP_AWS_TARGET_PORT", "http"),
        ("PRESTOP_AWS_WAIT_DEREGISTERED", "maybe"),
        ("PRESTOP_AWS_ENDPOINT_URL", "127.0.0.1:5000"),
    ],
)
def test_config_rejects_bad_options(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        _config(FAKE_ARN, **{name: value})


def test_config_without_the_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "boto3", None)
    with pytest.raises(ConfigError) as caught:
        _config(FAKE_ARN)
    assert str(caught.value) == aws_alb.MISSING_SDK
    assert "pip install 'prestop-agent[aws]'" in str(caught.value)


def test_request_timeout_steps() -> None:
    assert aws_alb.request_timeout(0.1) == 0.25
    assert aws_alb.request_timeout(1.0) == 0.5
    assert aws_alb.request_timeout(4.5) == 2.0
    assert aws_alb.request_timeout(60.0) == 5.0


# --- against moto -----------------------------------------------------------------------------


def test_healthy_target_is_present_and_deregistered_target_is_gone(cloud: Cloud) -> None:
    arn = cloud.target_group()
    cloud.register(arn)
    watcher = _watcher(_config(arn), cloud.url)
    assert watcher.name == "aws-alb"

    seen = watcher.poll(0.0, 5.0)
    assert seen.verdict is Verdict.PRESENT
    assert seen.reason == "target_in_service"
    assert seen.details == {"target": "10.0.1.5:8080", "target_groups": {arn: "healthy"}}

    cloud.deregister(arn)  # moto: gone at once, no draining phase
    seen = watcher.poll(1.0, 5.0)
    assert seen.verdict is Verdict.GONE
    assert seen.reason == "not_registered"
    assert seen.details["target_groups"] == {arn: "not_registered"}


def test_target_never_registered_is_gone(cloud: Cloud) -> None:
    arn = cloud.target_group()
    cloud.register(arn, ip="10.0.1.77")  # another pod
    assert _watcher(_config(arn), cloud.url).poll(0.0, 5.0).verdict is Verdict.GONE


def test_other_port_of_the_same_ip_does_not_count(cloud: Cloud) -> None:
    arn = cloud.target_group()
    cloud.register(arn, port=9999)
    assert _watcher(_config(arn), cloud.url).poll(0.0, 5.0).verdict is Verdict.GONE


def test_target_port_override(cloud: Cloud) -> None:
    arn = cloud.target_group(port=9090)
    cloud.register(arn, port=9090)
    assert _watcher(_config(arn), cloud.url).poll(0.0, 5.0).verdict is Verdict.GONE  # asks about :8080
    watcher = _watcher(_config(arn, PRESTOP_AWS_TARGET_PORT="9090"), cloud.url)
    seen = watcher.poll(0.0, 5.0)
    assert seen.verdict is Verdict.PRESENT
    assert seen.details["target"] == "10.0.1.5:9090"


def test_every_group_must_agree_across_regions(cloud: Cloud) -> None:
    east, west = cloud.target_group("us-east-1"), cloud.target_group("eu-west-1")
    cloud.register(east)
    cloud.register(west)
    watcher = _watcher(_config(east, west), cloud.url)
    assert watcher.poll(0.0, 5.0).verdict is Verdict.PRESENT

    cloud.deregister(east)
    seen = watcher.poll(1.0, 5.0)
    assert seen.verdict is Verdict.PRESENT
    assert seen.details["target_groups"] == {east: "not_registered", west: "healthy"}

    cloud.deregister(west)
    assert watcher.poll(2.0, 5.0).verdict is Verdict.GONE


def test_wait_deregistered_with_moto(cloud: Cloud) -> None:
    arn = cloud.target_group()
    cloud.register(arn)
    watcher = _watcher(_config(arn, PRESTOP_AWS_WAIT_DEREGISTERED="true"), cloud.url)
    seen = watcher.poll(0.0, 5.0)
    assert (seen.verdict, seen.reason) == (Verdict.PRESENT, "still_registered")
    cloud.deregister(arn)
    assert watcher.poll(1.0, 5.0).verdict is Verdict.GONE


def test_unknown_target_group_is_a_watcher_error(cloud: Cloud) -> None:
    real = cloud.target_group()
    unknown = real.rsplit("/", 2)[0] + "/nosuchgroup/0000000000000000"
    watcher = _watcher(_config(real, unknown), cloud.url)
    with pytest.raises(WatcherError) as caught:
        watcher.poll(0.0, 5.0)
    message = str(caught.value)
    assert "target group not found" in message
    assert unknown in message
    assert aws_alb.ENV_TARGET_GROUP_ARNS in message
    assert caught.value.__cause__ is not None


def test_build_uses_the_default_credential_chain_and_the_endpoint(cloud: Cloud) -> None:
    """build() makes its own session: here the chain finds the fake keys in the environment."""
    arn = cloud.target_group()
    cloud.register(arn)
    watcher = _config(arn, PRESTOP_AWS_ENDPOINT_URL=cloud.url).build(watch_context(POD))
    assert watcher.name == "aws-alb"
    assert watcher.poll(0.0, 5.0).verdict is Verdict.PRESENT


def test_no_credentials_is_a_watcher_error_without_leaving_loopback(
    cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    watcher = _config(FAKE_ARN, PRESTOP_AWS_ENDPOINT_URL=cloud.url).build(watch_context(POD))
    with pytest.raises(WatcherError, match="no AWS credentials found"):
        watcher.poll(0.0, 5.0)


def test_clients_are_reused_per_region_and_timeout_step(cloud: Cloud) -> None:
    clients = aws_alb.Boto3Clients(endpoint_url=cloud.url, session=_session())
    first = clients("us-east-1", 2.0)
    assert clients("us-east-1", 2.2) is first  # both round down to 1.0 s
    assert clients("us-east-1", 10.0) is not first
    assert clients("eu-west-1", 2.0) is not first
    config: Any = first.meta.config  # type: ignore[attr-defined]  # a real boto3 client, typed narrowly
    assert config.read_timeout == 1.0
    assert config.connect_timeout == 1.0
    assert config.retries["total_max_attempts"] == 1


def test_a_server_that_never_answers_costs_one_poll_timeout() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections in the kernel, never answers
    try:
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        watcher = _watcher(_config(FAKE_ARN), url)
        started = time.monotonic()
        with pytest.raises(WatcherError, match="timed out"):
            watcher.poll(0.0, 0.6)
        assert time.monotonic() - started < 1.0
    finally:
        silent.close()


# --- error shapes moto cannot produce, and states it never reports ---------------------------


@dataclass
class _OneClient:
    """The same client for every region and timeout."""

    client: Any

    def __call__(self, region: str, share: float) -> Any:
        return self.client

    def close(self) -> None:
        self.client.close()


def _stubbed(config: aws_alb.AwsAlbConfig) -> tuple[aws_alb.AwsAlbWatcher, Stubber]:
    client = _session().client("elbv2", region_name="us-east-1")
    stubber = Stubber(client)
    stubber.activate()
    watcher = aws_alb.AwsAlbWatcher(config, POD, clients=_OneClient(client))
    return watcher, stubber


def _health(state: str, reason: str | None = None) -> dict[str, Any]:
    health: dict[str, Any] = {"State": state}
    if reason is not None:
        health["Reason"] = reason
    return {
        "TargetHealthDescriptions": [
            {"Target": {"Id": POD.pod_ip, "Port": POD.port}, "HealthCheckPort": "8080", "TargetHealth": health}
        ]
    }


EXPECTED = {"TargetGroupArn": FAKE_ARN, "Targets": [{"Id": POD.pod_ip, "Port": POD.port}]}


@pytest.mark.parametrize(
    ("state", "reason", "default", "waiting"),
    [
        ("initial", "Elb.RegistrationInProgress", Verdict.PRESENT, Verdict.PRESENT),
        ("healthy", None, Verdict.PRESENT, Verdict.PRESENT),
        ("unhealthy", "Target.Timeout", Verdict.PRESENT, Verdict.PRESENT),
        ("unavailable", "Elb.InternalError", Verdict.PRESENT, Verdict.PRESENT),
        ("draining", "Target.DeregistrationInProgress", Verdict.GONE, Verdict.PRESENT),
        ("unused", "Target.NotInUse", Verdict.GONE, Verdict.PRESENT),
        ("unused", "Target.NotRegistered", Verdict.GONE, Verdict.GONE),
    ],
)
def test_states_aws_reports(state: str, reason: str | None, default: Verdict, waiting: Verdict) -> None:
    for config, expected in (
        (_config(FAKE_ARN), default),
        (_config(FAKE_ARN, PRESTOP_AWS_WAIT_DEREGISTERED="1"), waiting),
    ):
        watcher, stubber = _stubbed(config)
        stubber.add_response("describe_target_health", _health(state, reason), EXPECTED)
        assert watcher.poll(0.0, 5.0).verdict is expected
        stubber.assert_no_pending_responses()


def test_draining_reason_word() -> None:
    watcher, stubber = _stubbed(_config(FAKE_ARN))
    stubber.add_response("describe_target_health", _health("draining", "Target.DeregistrationInProgress"), EXPECTED)
    seen = watcher.poll(0.0, 5.0)
    assert (seen.verdict, seen.reason) == (Verdict.GONE, "draining")
    assert seen.details["target_groups"] == {FAKE_ARN: "draining"}


def test_empty_answer_means_not_registered() -> None:
    watcher, stubber = _stubbed(_config(FAKE_ARN))
    stubber.add_response("describe_target_health", {"TargetHealthDescriptions": []}, EXPECTED)
    assert watcher.poll(0.0, 5.0).verdict is Verdict.GONE


@pytest.mark.parametrize(
    ("code", "status", "expected"),
    [
        ("AccessDenied", 403, "access denied (AccessDenied); allow elasticloadbalancing:DescribeTargetHealth"),
        ("Throttling", 400, "throttled (Throttling)"),
        ("ExpiredToken", 400, "credentials refused (ExpiredToken)"),
        ("ServiceUnavailable", 503, "server error 503 (ServiceUnavailable)"),
        ("InternalFailure", 500, "server error 500 (InternalFailure)"),
        ("ValidationError", 400, "ValidationError (HTTP 400)"),
    ],
)
def test_service_errors_name_the_cause(code: str, status: int, expected: str) -> None:
    watcher, stubber = _stubbed(_config(FAKE_ARN))
    stubber.add_client_error(
        "describe_target_health",
        service_error_code=code,
        service_message=f"{code} for the test",
        http_status_code=status,
        expected_params=EXPECTED,
    )
    with pytest.raises(WatcherError) as caught:
        watcher.poll(0.0, 5.0)
    assert expected in str(caught.value)
    assert FAKE_ARN in str(caught.value)
    assert caught.value.__cause__ is not None


def test_logs_and_errors_never_carry_the_secret(cloud: Cloud) -> None:
    from structlog.testing import capture_logs

    arn = cloud.target_group()
    cloud.register(arn)
    watcher = _watcher(_config(arn), cloud.url)
    with capture_logs() as logs:
        watcher.poll(0.0, 5.0)
        watcher_error = None
        try:
            _watcher(_config(FAKE_ARN), cloud.url).poll(0.0, 5.0)
        except WatcherError as exc:
            watcher_error = str(exc)
    assert logs
    assert logs[0]["event"] == "aws_alb_target_health"
    assert watcher_error is not None
    assert SECRET not in repr(logs) + watcher_error
