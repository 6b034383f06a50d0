"""aliyun-alb with the real Alibaba Cloud SDK, signing its requests to a loopback HTTP server.

No emulator of ALB exists. The server here answers ListServerGroupServers (2020-06-16)
in the documented shapes: a JSON body with RequestId, Servers[] (ServerId, ServerIp,
Port, Status, ServerGroupId, ServerType, Weight, Description), NextToken, MaxResults
and TotalCount; errors as JSON with RequestId, HostId, Code, Message (and Recommend).
It checks each request's ACS3-HMAC-SHA256 signature the way the signature
documentation describes it, so a request the SDK would sign wrongly fails here too.
What the real service does beyond these shapes (timing of Removing, throttling limits,
the exact answer to an unknown server group ID) was not tried.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import socket
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("alibabacloud_alb20200616")
credentials_client = pytest.importorskip("alibabacloud_credentials.client")
credentials_models = pytest.importorskip("alibabacloud_credentials.models")

from prestop_agent.errors import ConfigError, WatcherError  # noqa: E402
from prestop_agent.source import Source  # noqa: E402
from prestop_agent.watchers import aliyun_alb  # noqa: E402
from prestop_agent.watchers.base import PodTarget, Verdict  # noqa: E402
from tests.fakes import watch_context  # noqa: E402

AK_ID = "LTAI-test-key-id"
AK_SECRET = "aliyun-secret-never-logged"
POD = PodTarget(pod_ip="172.16.3.21", port=8080, host_ip="172.16.0.5")
GROUP = "sgp-8ilqs4axp6abcd"
OTHER = "sgp-2ze4p1vxcb7qrs"


@pytest.fixture(autouse=True)
def _scrub_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith(("ALIBABA_", "ALICLOUD_", "PRESTOP_")) or name.lower().endswith("_proxy"):
            monkeypatch.delenv(name)


# --- the loopback ALB API ---------------------------------------------------------------------


def _encode(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


def expected_signature(method: str, path: str, query: str, headers: dict[str, str], signed: str) -> str:
    """ACS3-HMAC-SHA256 as documented: canonical request, string to sign, HMAC-SHA256."""
    pairs = sorted(urllib.parse.parse_qsl(query, keep_blank_values=True))
    canonical_query = "&".join(f"{_encode(k)}={_encode(v)}" for k, v in pairs)
    names = signed.split(";")
    canonical_headers = "".join(f"{name}:{headers[name].strip()}\n" for name in names)
    canonical = "\n".join([method, path, canonical_query, canonical_headers, signed, headers["x-acs-content-sha256"]])
    to_sign = "ACS3-HMAC-SHA256\n" + hashlib.sha256(canonical.encode()).hexdigest()
    return hmac.new(AK_SECRET.encode(), to_sign.encode(), hashlib.sha256).hexdigest()


def server(ip: str, port: int, status: str, *, group: str = GROUP, kind: str = "Eni", sid: str = "") -> dict[str, Any]:
    return {
        "ServerId": sid or f"eni-{abs(hash((ip, port))) % 10**12:012d}",
        "ServerIp": ip,
        "Port": port,
        "Status": status,
        "ServerGroupId": group,
        "ServerType": kind,
        "Weight": 100,
        "Description": "test",
        "RemoteIpEnabled": False,
    }


@dataclass
class FakeAlb:
    """What the loopback API holds and answers; tests change it between polls."""

    groups: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: dict[str, tuple[int, dict[str, Any], dict[str, str]]] = field(default_factory=dict)
    requests: list[dict[str, Any]] = field(default_factory=list)
    bad_signatures: list[str] = field(default_factory=list)
    url: str = ""


def _handler(fake: FakeAlb) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json;charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path, _, query = self.path.partition("?")
            headers = {k.lower(): v for k, v in self.headers.items()}
            params = dict(urllib.parse.parse_qsl(query))
            fake.requests.append({"headers": headers, "params": params})

            authorization = headers.get("authorization", "")
            fields = dict(
                part.strip().split("=", 1) for part in authorization.removeprefix("ACS3-HMAC-SHA256 ").split(",")
            )
            good = (
                authorization.startswith("ACS3-HMAC-SHA256 ")
                and fields.get("Credential") == AK_ID
                and headers.get("x-acs-content-sha256") == hashlib.sha256(body).hexdigest()
                and hmac.compare_digest(
                    fields.get("Signature", ""),
                    expected_signature("POST", path, query, headers, fields.get("SignedHeaders", "")),
                )
            )
            request_id = f"REQ-{len(fake.requests):04d}"
            if not good:
                fake.bad_signatures.append(authorization)
                self._reply(400, {"RequestId": request_id, "Code": "SignatureDoesNotMatch", "Message": "bad"})
                return
            if headers.get("x-acs-action") != "ListServerGroupServers" or headers.get("x-acs-version") != "2020-06-16":
                self._reply(400, {"RequestId": request_id, "Code": "InvalidAction.NotFound", "Message": "no such"})
                return
            group = params.get("ServerGroupId", "")
            if group in fake.errors:
                status, error, extra = fake.errors[group]
                self._reply(status, {"RequestId": request_id, "HostId": "alb.cn-hangzhou.aliyuncs.com", **error}, extra)
                return
            servers = fake.groups.get(group, [])
            size = int(params.get("MaxResults") or 20)
            start = int(params.get("NextToken") or 0)
            page = servers[start : start + size]
            reply: dict[str, Any] = {
                "RequestId": request_id,
                "Servers": page,
                "MaxResults": size,
                "TotalCount": len(servers),
            }
            if start + size < len(servers):
                reply["NextToken"] = str(start + size)
            self._reply(200, reply)

    return Handler


@pytest.fixture
def fake() -> Iterator[FakeAlb]:
    state = FakeAlb()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert state.bad_signatures == []


def _config(*groups: str, **env: str) -> aliyun_alb.AliyunAlbConfig:
    settings = {
        aliyun_alb.ENV_SERVER_GROUP_IDS: ",".join(groups or (GROUP,)),
        aliyun_alb.ENV_REGION: "cn-hangzhou",
        **env,
    }
    return aliyun_alb.load_config(Source(settings))


def _static_credential() -> Any:
    return credentials_client.Client(
        credentials_models.Config(type="access_key", access_key_id=AK_ID, access_key_secret=AK_SECRET)
    )


def _watcher(
    fake: FakeAlb, config: aliyun_alb.AliyunAlbConfig | None = None, **env: str
) -> aliyun_alb.AliyunAlbWatcher:
    config = config or _config(*(), PRESTOP_ALIYUN_ENDPOINT=fake.url, **env)
    client = aliyun_alb.make_client(config, credential=_static_credential())
    return aliyun_alb.AliyunAlbWatcher(config, POD, client=client, monotonic=time.monotonic)


# --- configuration --------------------------------------------------------------------------


def test_config_defaults_and_sources() -> None:
    config = aliyun_alb.load_config(
        Source({aliyun_alb.ENV_SERVER_GROUP_IDS: f"{GROUP}, {OTHER},{GROUP}", "ALIBABA_CLOUD_REGION_ID": "cn-beijing"})
    )
    assert config.server_group_ids == (GROUP, OTHER)
    assert config.region == "cn-beijing"
    assert config.sources["region"] == "env ALIBABA_CLOUD_REGION_ID"
    assert config.target_port is None
    assert config.wait_removed is False
    assert (config.endpoint, config.protocol) == (None, "HTTPS")


def test_config_prefers_its_own_region_and_reads_options() -> None:
    config = aliyun_alb.load_config(
        Source(
            {
                aliyun_alb.ENV_SERVER_GROUP_IDS: GROUP,
                "PRESTOP_ALIYUN_REGION": "cn-shanghai",
                "ALIBABA_CLOUD_REGION_ID": "cn-beijing",
                "PRESTOP_ALIYUN_TARGET_PORT": "9000",
                "PRESTOP_ALIYUN_WAIT_REMOVED": "yes",
                "PRESTOP_ALIYUN_ENDPOINT": "alb-vpc.cn-shanghai.aliyuncs.com",
            }
        )
    )
    assert config.region == "cn-shanghai"
    assert config.target_port == 9000
    assert config.wait_removed is True
    assert (config.endpoint, config.protocol) == ("alb-vpc.cn-shanghai.aliyuncs.com", "HTTPS")
    assert _config(PRESTOP_ALIYUN_ENDPOINT="http://127.0.0.1:8123").endpoint == "127.0.0.1:8123"
    assert _config(PRESTOP_ALIYUN_ENDPOINT="http://127.0.0.1:8123").protocol == "HTTP"


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({}, "PRESTOP_ALIYUN_SERVER_GROUP_IDS"),
        ({"PRESTOP_ALIYUN_SERVER_GROUP_IDS": "lb-123"}, "PRESTOP_ALIYUN_SERVER_GROUP_IDS"),
        ({"PRESTOP_ALIYUN_SERVER_GROUP_IDS": GROUP}, "PRESTOP_ALIYUN_REGION"),
        ({"PRESTOP_ALIYUN_SERVER_GROUP_IDS": GROUP, "ALIBABA_CLOUD_REGION_ID": "Hangzhou"}, "ALIBABA_CLOUD_REGION_ID"),
        (
            {
                "PRESTOP_ALIYUN_SERVER_GROUP_IDS": GROUP,
                "PRESTOP_ALIYUN_REGION": "cn-hangzhou",
                "PRESTOP_ALIYUN_TARGET_PORT": "70000",
            },
            "PRESTOP_ALIYUN_TARGET_PORT",
        ),
        (
            {
                "PRESTOP_ALIYUN_SERVER_GROUP_IDS": GROUP,
                "PRESTOP_ALIYUN_REGION": "cn-hangzhou",
                "PRESTOP_ALIYUN_ENDPOINT": "ftp://x",
            },
            "PRESTOP_ALIYUN_ENDPOINT",
        ),
    ],
)
def test_config_errors_name_the_variable(settings: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as caught:
        aliyun_alb.load_config(Source(settings))
    assert named in str(caught.value)
    assert "\n" not in str(caught.value)


def test_config_without_the_sdk_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "alibabacloud_alb20200616.client", None)
    with pytest.raises(ConfigError) as caught:
        _config()
    assert str(caught.value) == aliyun_alb.MISSING_SDK
    assert "pip install 'prestop-agent[aliyun]'" in str(caught.value)


# --- verdicts through the SDK -----------------------------------------------------------------


def test_available_backend_is_present_then_removing_is_gone(fake: FakeAlb) -> None:
    fake.groups[GROUP] = [server("172.16.3.9", 8080, "Available"), server(POD.pod_ip, POD.port, "Available")]
    watcher = _watcher(fake)
    assert watcher.name == "aliyun-alb"
    seen = watcher.poll(0.0, 5.0)
    assert (seen.verdict, seen.reason) == (Verdict.PRESENT, "backend_in_service")
    assert seen.details == {"backend": "172.16.3.21:8080", "server_groups": {GROUP: "Available"}}

    fake.groups[GROUP][1]["Status"] = "Removing"
    seen = watcher.poll(1.0, 5.0)
    assert (seen.verdict, seen.reason) == (Verdict.GONE, "removing")

    del fake.groups[GROUP][1]
    seen = watcher.poll(2.0, 5.0)
    assert (seen.verdict, seen.reason) == (Verdict.GONE, "not_listed")

    request = fake.requests[0]
    assert request["params"] == {"ServerGroupId": GROUP, "MaxResults": "100"}
    assert request["headers"]["x-acs-action"] == "ListServerGroupServers"
    assert request["headers"]["x-acs-version"] == "2020-06-16"


@pytest.mark.parametrize("status", ["Adding", "Available", "Configuring"])
def test_states_that_still_take_traffic(fake: FakeAlb, status: str) -> None:
    fake.groups[GROUP] = [server(POD.pod_ip, POD.port, status)]
    assert _watcher(fake).poll(0.0, 5.0).verdict is Verdict.PRESENT


@pytest.mark.parametrize(
    ("entry", "verdict"),
    [
        (server(POD.pod_ip, POD.port, "Available", kind="Eci", sid="eci-2zeabc"), Verdict.PRESENT),
        (server(POD.pod_ip, POD.port, "Available", kind="Ip", sid=POD.pod_ip), Verdict.PRESENT),
        ({**server("", POD.port, "Available", kind="Ip", sid=POD.pod_ip), "ServerIp": None}, Verdict.PRESENT),
        (server(POD.pod_ip, 9090, "Available"), Verdict.GONE),  # another port of the same pod
        (server("172.16.3.22", POD.port, "Available"), Verdict.GONE),  # another pod
    ],
)
def test_which_backend_is_this_pod(fake: FakeAlb, entry: dict[str, Any], verdict: Verdict) -> None:
    fake.groups[GROUP] = [entry]
    assert _watcher(fake).poll(0.0, 5.0).verdict is verdict


def test_target_port_override(fake: FakeAlb) -> None:
    fake.groups[GROUP] = [server(POD.pod_ip, 9090, "Available")]
    assert _watcher(fake, PRESTOP_ALIYUN_TARGET_PORT="9090").poll(0.0, 5.0).verdict is Verdict.PRESENT


def test_wait_removed_waits_past_removing(fake: FakeAlb) -> None:
    fake.groups[GROUP] = [server(POD.pod_ip, POD.port, "Removing")]
    watcher = _watcher(fake, PRESTOP_ALIYUN_WAIT_REMOVED="true")
    seen = watcher.poll(0.0, 5.0)
    assert (seen.verdict, seen.reason) == (Verdict.PRESENT, "still_listed")
    fake.groups[GROUP] = []
    assert watcher.poll(1.0, 5.0).verdict is Verdict.GONE


def test_pages_are_followed_by_next_token(fake: FakeAlb) -> None:
    others = [server(f"172.16.{i // 250}.{i % 250 + 1}", 8080, "Available") for i in range(230)]
    fake.groups[GROUP] = [*others, server(POD.pod_ip, POD.port, "Available")]
    assert _watcher(fake).poll(0.0, 5.0).verdict is Verdict.PRESENT
    assert [r["params"].get("NextToken") for r in fake.requests] == [None, "100", "200"]

    fake.groups[GROUP] = others
    fake.requests.clear()
    assert _watcher(fake).poll(1.0, 5.0).verdict is Verdict.GONE
    assert len(fake.requests) == 3


def test_every_group_must_agree(fake: FakeAlb) -> None:
    fake.groups[GROUP] = [server(POD.pod_ip, POD.port, "Removing")]
    fake.groups[OTHER] = [server(POD.pod_ip, POD.port, "Available", group=OTHER)]
    config = _config(GROUP, OTHER, PRESTOP_ALIYUN_ENDPOINT=fake.url)
    watcher = _watcher(fake, config)
    seen = watcher.poll(0.0, 5.0)
    assert seen.verdict is Verdict.PRESENT
    assert seen.details["server_groups"] == {GROUP: "Removing", OTHER: "Available"}
    fake.groups[OTHER] = []
    assert watcher.poll(1.0, 5.0).verdict is Verdict.GONE


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error", "headers", "expected"),
    [
        (
            403,
            {
                "Code": "Forbidden.RAM",
                "Message": "User not authorized to operate on the specified resource, or this API doesn't support RAM.",
                "AccessDeniedDetail": {"AuthAction": "alb:ListServerGroupServers", "NoPermissionType": "ImplicitDeny"},
            },
            {},
            "access denied (Forbidden.RAM); allow alb:ListServerGroupServers",
        ),
        (400, {"Code": "Throttling.User", "Message": "Request was denied due to user flow control."}, {}, "throttled"),
        (
            429,
            {"Code": "Throttling.Api", "Message": "Request was denied due to api flow control."},
            {"x-acs-retry-after": "2000"},
            "throttled (Throttling.Api)",
        ),
        (
            404,
            {"Code": "ResourceNotFound.ServerGroup", "Message": "The specified resource sgp-x is not found."},
            {},
            "server group not found (ResourceNotFound.ServerGroup)",
        ),
        (
            400,
            {"Code": "InvalidAccessKeyId.NotFound", "Message": "Specified access key is not found."},
            {},
            "credentials refused (InvalidAccessKeyId.NotFound)",
        ),
        (
            503,
            {"Code": "ServiceUnavailable", "Message": "The request has failed due to a temporary failure."},
            {},
            "server error 503",
        ),
        (500, {"Code": "InternalError", "Message": "The request processing has failed."}, {}, "server error 500"),
    ],
)
def test_service_errors_name_the_cause(
    fake: FakeAlb, status: int, error: dict[str, Any], headers: dict[str, str], expected: str
) -> None:
    fake.errors[GROUP] = (status, error, headers)
    with pytest.raises(WatcherError) as caught:
        _watcher(fake).poll(0.0, 5.0)
    assert expected in str(caught.value)
    assert GROUP in str(caught.value)
    assert caught.value.__cause__ is not None
    assert len(fake.requests) == 1  # no SDK retries


def test_a_server_that_never_answers_costs_one_poll_timeout() -> None:
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # accepts connections in the kernel, never answers
    try:
        config = _config(PRESTOP_ALIYUN_ENDPOINT=f"http://127.0.0.1:{silent.getsockname()[1]}")
        watcher = aliyun_alb.AliyunAlbWatcher(
            config,
            POD,
            client=aliyun_alb.make_client(config, credential=_static_credential()),
            monotonic=time.monotonic,
        )
        started = time.monotonic()
        with pytest.raises(WatcherError, match="timed out"):
            watcher.poll(0.0, 0.4)
        assert time.monotonic() - started < 1.0
    finally:
        silent.close()


def test_unreachable_endpoint() -> None:
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there now
    config = _config(PRESTOP_ALIYUN_ENDPOINT=f"http://127.0.0.1:{port}")
    watcher = aliyun_alb.AliyunAlbWatcher(
        config, POD, client=aliyun_alb.make_client(config, credential=_static_credential()), monotonic=time.monotonic
    )
    with pytest.raises(WatcherError, match="endpoint unreachable"):
        watcher.poll(0.0, 2.0)


def test_build_uses_the_sdk_default_chain(fake: FakeAlb, monkeypatch: pytest.MonkeyPatch) -> None:
    """The chain's first link, the access key variables; the library reads them when imported."""
    from alibabacloud_credentials.utils import auth_util

    monkeypatch.setattr(auth_util, "environment_access_key_id", AK_ID)
    monkeypatch.setattr(auth_util, "environment_access_key_secret", AK_SECRET)
    fake.groups[GROUP] = [server(POD.pod_ip, POD.port, "Available")]
    watcher = _config(PRESTOP_ALIYUN_ENDPOINT=fake.url).build(watch_context(POD))
    assert watcher.name == "aliyun-alb"
    assert watcher.poll(0.0, 5.0).verdict is Verdict.PRESENT
    assert fake.requests[0]["headers"]["authorization"].startswith(f"ACS3-HMAC-SHA256 Credential={AK_ID},")


def test_logs_and_errors_never_carry_the_secret(fake: FakeAlb) -> None:
    from structlog.testing import capture_logs

    fake.groups[GROUP] = [server(POD.pod_ip, POD.port, "Available")]
    fake.errors[OTHER] = (403, {"Code": "Forbidden.RAM", "Message": "denied"}, {})
    with capture_logs() as logs:
        _watcher(fake).poll(0.0, 5.0)
        with pytest.raises(WatcherError) as caught:
            _watcher(fake, _config(OTHER, PRESTOP_ALIYUN_ENDPOINT=fake.url)).poll(0.0, 5.0)
    assert logs[0]["event"] == "aliyun_alb_backend_status"
    assert AK_SECRET not in repr(logs) + str(caught.value)
