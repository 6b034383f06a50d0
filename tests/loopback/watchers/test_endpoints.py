"""The endpoints watcher against a loopback server speaking the EndpointSlice list API, plus error shapes."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from prestop_agent.errors import ConfigError, WatcherError
from prestop_agent.source import Source
from prestop_agent.watchers import endpoints
from prestop_agent.watchers.base import PodTarget, Verdict
from prestop_agent.watchers.endpoints import EndpointsConfig, EndpointsWatcher, load_config
from tests.fakes import watch_context

NS = "shop"
POD_IP = "10.244.1.17"
TOKEN = "eyJhbGciOiJSUzI1NiJ9.secret-token-one"
TARGET = PodTarget(pod_ip=POD_IP, port=8080, host_ip="192.168.0.7")
LIST_PATH = f"/apis/discovery.k8s.io/v1/namespaces/{NS}/endpointslices"

READY = {"ready": True, "serving": True, "terminating": False}
TERMINATING = {"ready": False, "serving": True, "terminating": True}


def endpoint(ip: str, conditions: dict[str, Any] | None, pod: str = "web-7d9c8b6f5-x2k4p") -> dict[str, Any]:
    item: dict[str, Any] = {
        "addresses": [ip],
        "targetRef": {"kind": "Pod", "namespace": NS, "name": pod, "uid": "6f1c1b0e-0d1e-4a51-9b3c-1f5e2d3c4b5a"},
        "nodeName": "node-a",
        "zone": "zone-1",
    }
    if conditions is not None:
        item["conditions"] = conditions
    return item


def endpoint_slice(
    name: str, service: str, eps: list[dict[str, Any]] | None, address_type: str = "IPv4"
) -> dict[str, Any]:
    """One item as kube-apiserver returns it in an EndpointSliceList."""
    return {
        "metadata": {
            "name": name,
            "generateName": f"{service}-",
            "namespace": NS,
            "uid": "0b7c1a34-5d6e-4f70-8192-a3b4c5d6e7f8",
            "resourceVersion": "48213",
            "generation": 7,
            "creationTimestamp": "2025-03-02T10:11:12Z",
            "labels": {
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "kubernetes.io/service-name": service,
            },
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2025-03-02T10:20:00Z"},
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "name": service,
                    "uid": "9a8b7c6d-5e4f-4a3b-2c1d-0e9f8a7b6c5d",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "addressType": address_type,
        "endpoints": eps,
        "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
    }


def slice_list(items: list[dict[str, Any]], cont: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"resourceVersion": "48250"}
    if cont:
        metadata["continue"] = cont
        metadata["remainingItemCount"] = 3
    return {"kind": "EndpointSliceList", "apiVersion": "discovery.k8s.io/v1", "metadata": metadata, "items": items}


# ------------------------------------------------------------------- loopback API server


@dataclass
class FakeApi:
    """What the loopback server answers, and what it was asked."""

    token: str = TOKEN
    pages: dict[str, dict[str, Any]] = field(default_factory=dict)  # continue token ("" first) -> body
    status: int = 200
    error_body: dict[str, Any] | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    hang: threading.Event | None = None

    def single(self, *items: dict[str, Any]) -> None:
        self.pages = {"": slice_list(list(items))}


class Handler(BaseHTTPRequestHandler):
    api: FakeApi

    def do_GET(self) -> None:
        api = self.server.api  # type: ignore[attr-defined]
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        api.requests.append({"path": url.path, "query": query, "authorization": self.headers.get("Authorization")})
        if api.hang is not None:
            api.hang.wait(5)
            return None
        if self.headers.get("Authorization") != f"Bearer {api.token}":
            return self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
        if api.status != 200:
            return self._send(api.status, api.error_body or status_body(api.status, "InternalError", "boom"))
        if url.path != LIST_PATH:
            return self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))
        page = api.pages.get(query.get("continue", ""))
        if page is None:
            return self._send(410, status_body(410, "Expired", "continue token expired"))
        return self._send(200, page)

    def _send(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": reason, "code": code}  # fmt: skip


@dataclass
class Running:
    api: FakeApi
    url: str
    sa_dir: Path


def serve(api: FakeApi, sa_dir: Path, context: ssl.SSLContext | None = None) -> Iterator[Running]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    server.api = api  # type: ignore[attr-defined]
    scheme = "http"
    if context is not None:
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Running(api, f"{scheme}://127.0.0.1:{server.server_address[1]}", sa_dir)
    finally:
        if api.hang is not None:
            api.hang.set()
        server.shutdown()
        server.server_close()
        thread.join(2)


@pytest.fixture
def sa_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(TOKEN + "\n")
    (directory / "namespace").write_text(NS)
    return directory


@pytest.fixture
def running(sa_dir: Path) -> Iterator[Running]:
    yield from serve(FakeApi(), sa_dir)


def watcher_for(running: Running, **env: str) -> EndpointsWatcher:
    config = load_config(Source({"PRESTOP_KUBE_API": running.url, "PRESTOP_KUBE_SA_DIR": str(running.sa_dir), **env}))
    watcher = config.build(watch_context(TARGET))
    assert isinstance(watcher, EndpointsWatcher)
    return watcher


@pytest.fixture
def watcher(running: Running) -> Iterator[EndpointsWatcher]:
    built = watcher_for(running)
    yield built
    built.close()


# ---------------------------------------------------------------------------- verdicts


def test_ready_endpoint_is_present(running: Running, watcher: EndpointsWatcher) -> None:
    running.api.single(endpoint_slice("web-abcde", "web", [endpoint("10.244.2.9", READY), endpoint(POD_IP, READY)]))
    seen = watcher.poll(0.0, 2.0)
    assert (seen.verdict, seen.reason) == (Verdict.PRESENT, "ready")
    assert seen.details["slices"] == ["web-abcde"]
    assert seen.details["services"] == ["web"]
    assert seen.details["ready_in"] == ["web-abcde"]
    assert running.api.requests[0]["path"] == LIST_PATH
    assert running.api.requests[0]["query"] == {"limit": "500"}
    assert running.api.requests[0]["authorization"] == f"Bearer {TOKEN}"


def test_terminating_endpoint_is_gone(running: Running, watcher: EndpointsWatcher) -> None:
    running.api.single(endpoint_slice("web-abcde", "web", [endpoint(POD_IP, TERMINATING)]))
    seen = watcher.poll(0.0, 2.0)
    assert (seen.verdict, seen.reason) == (Verdict.GONE, "not_ready")
    assert seen.details["terminating"] is True
    assert seen.details["ready_in"] == []


@pytest.mark.parametrize("conditions", [{}, None, {"serving": True}])
def test_absent_ready_means_ready(
    running: Running, watcher: EndpointsWatcher, conditions: dict[str, Any] | None
) -> None:
    running.api.single(endpoint_slice("web-abcde", "web", [endpoint(POD_IP, conditions)]))
    assert watcher.poll(0.0, 2.0).verdict is Verdict.PRESENT


def test_pod_in_no_slice_is_gone_and_says_so(running: Running, watcher: EndpointsWatcher) -> None:
    running.api.single(
        endpoint_slice("web-abcde", "web", [endpoint("10.244.2.9", READY)]),
        endpoint_slice("empty-xyz12", "empty", None),  # a Service with no endpoints: "endpoints" is null
        endpoint_slice("ext-qwert", "ext", [{"addresses": ["db.example.com"]}], address_type="FQDN"),
    )
    seen = watcher.poll(0.0, 2.0)
    assert (seen.verdict, seen.reason) == (Verdict.GONE, "not_in_any_slice")
    assert seen.details["slices_listed"] == 3


def test_every_slice_must_be_done(running: Running, watcher: EndpointsWatcher) -> None:
    api = running.api
    api.single(
        endpoint_slice("web-abcde", "web", [endpoint(POD_IP, TERMINATING)]),
        endpoint_slice("web-internal-fghij", "web-internal", [endpoint(POD_IP, READY)]),
    )
    with capture_logs() as logs:
        first = watcher.poll(0.0, 2.0)
        assert (first.verdict, first.details["ready_in"]) == (Verdict.PRESENT, ["web-internal-fghij"])
        assert watcher.poll(1.0, 2.0).verdict is Verdict.PRESENT
        api.single(
            endpoint_slice("web-abcde", "web", [endpoint(POD_IP, TERMINATING)]),
            endpoint_slice("web-internal-fghij", "web-internal", [endpoint(POD_IP, {"ready": False})]),
        )
        gone = watcher.poll(2.0, 2.0)
    assert gone.verdict is Verdict.GONE
    assert gone.details["services"] == ["web", "web-internal"]
    assert [(e["event"], e["reason"]) for e in logs] == [("endpoints_state", "ready"), ("endpoints_state", "not_ready")]


def test_pagination_reads_every_page(running: Running, watcher: EndpointsWatcher) -> None:
    running.api.pages = {
        "": slice_list([endpoint_slice("a-00001", "a", [endpoint("10.244.2.1", READY)])], cont="tok-1"),
        "tok-1": slice_list([endpoint_slice("b-00002", "b", [endpoint("10.244.2.2", READY)])], cont="tok-2"),
        "tok-2": slice_list([endpoint_slice("web-abcde", "web", [endpoint(POD_IP, READY)])]),
    }
    seen = watcher.poll(0.0, 2.0)
    assert seen.verdict is Verdict.PRESENT
    assert seen.details["slices_listed"] == 3
    assert [r["query"].get("continue") for r in running.api.requests] == [None, "tok-1", "tok-2"]


def test_expired_continue_token_fails_the_poll(running: Running, watcher: EndpointsWatcher) -> None:
    running.api.pages = {"": slice_list([], cont="gone-token")}
    with pytest.raises(WatcherError, match="410"):
        watcher.poll(0.0, 2.0)


def test_services_narrow_the_list(running: Running) -> None:
    running.api.single(endpoint_slice("web-abcde", "web", [endpoint(POD_IP, READY)]))
    watcher = watcher_for(running, PRESTOP_ENDPOINTS_SERVICES="web,web-internal")
    try:
        watcher.poll(0.0, 2.0)
    finally:
        watcher.close()
    assert running.api.requests[0]["query"]["labelSelector"] == "kubernetes.io/service-name in (web,web-internal)"


def test_ipv6_pod_ip_matches_any_spelling(running: Running) -> None:
    running.api.single(endpoint_slice("web-v6", "web", [endpoint("fd00:10:244::11", READY)], address_type="IPv6"))
    config = load_config(Source({"PRESTOP_KUBE_API": running.url, "PRESTOP_KUBE_SA_DIR": str(running.sa_dir)}))
    watcher = config.build(watch_context(PodTarget(pod_ip="fd00:10:244:0:0:0:0:11", port=8080)))
    try:
        assert watcher.poll(0.0, 2.0).verdict is Verdict.PRESENT
    finally:
        assert isinstance(watcher, EndpointsWatcher)
        watcher.close()


def test_rotated_token_is_used_on_the_next_poll(running: Running, watcher: EndpointsWatcher) -> None:
    running.api.single(endpoint_slice("web-abcde", "web", [endpoint(POD_IP, READY)]))
    watcher.poll(0.0, 2.0)
    rotated = "eyJhbGciOiJSUzI1NiJ9.secret-token-two"
    (running.sa_dir / "token").write_text(rotated)
    running.api.token = rotated
    assert watcher.poll(1.0, 2.0).verdict is Verdict.PRESENT
    assert [r["authorization"] for r in running.api.requests] == [f"Bearer {TOKEN}", f"Bearer {rotated}"]


def test_forbidden_names_the_permission_and_never_the_token(running: Running, watcher: EndpointsWatcher) -> None:
    running.api.status = 403
    running.api.error_body = status_body(
        403,
        "Forbidden",
        'endpointslices.discovery.k8s.io is forbidden: User "system:serviceaccount:shop:web" cannot list '
        'resource "endpointslices" in API group "discovery.k8s.io" in the namespace "shop"',
    )
    with capture_logs() as logs, pytest.raises(WatcherError) as caught:
        watcher.poll(0.0, 2.0)
    message = str(caught.value)
    assert "403" in message
    assert "get, list and watch on endpointslices" in message
    assert "discovery.k8s.io" in message
    assert "namespace shop" in message
    assert "system:serviceaccount:shop:web" in message
    assert TOKEN not in message
    assert TOKEN not in repr(logs)


def test_rejected_token(running: Running, watcher: EndpointsWatcher) -> None:
    running.api.token = "something-else"
    with pytest.raises(WatcherError, match="401") as caught:
        watcher.poll(0.0, 2.0)
    assert TOKEN not in str(caught.value)


def test_unreadable_token_fails_the_poll(running: Running, watcher: EndpointsWatcher) -> None:
    (running.sa_dir / "token").unlink()
    with pytest.raises(WatcherError, match="token"):
        watcher.poll(0.0, 2.0)
    (running.sa_dir / "token").write_text("  \n")
    with pytest.raises(WatcherError, match="empty"):
        watcher.poll(0.0, 2.0)


def test_server_that_never_answers_is_bounded_by_the_poll_timeout(sa_dir: Path) -> None:
    api = FakeApi(hang=threading.Event())
    for running in serve(api, sa_dir):
        watcher = watcher_for(running)
        try:
            with pytest.raises(WatcherError, match=r"did not answer within 0\.2s"):
                watcher.poll(0.0, 0.2)
        finally:
            watcher.close()


def make_cert(directory: Path, name: str, *san: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    extra = ["-addext", "subjectAltName=" + ",".join(san)] if san else []
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", f"/CN={name}", *extra],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_https_trusts_only_the_cluster_ca(tmp_path: Path, sa_dir: Path) -> None:
    cert, key = make_cert(tmp_path, "kubernetes", "IP:127.0.0.1")
    unrelated, _ = make_cert(tmp_path, "unrelated")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    api = FakeApi()
    api.single(endpoint_slice("web-abcde", "web", [endpoint(POD_IP, TERMINATING)]))
    for running in serve(api, sa_dir, context):
        (sa_dir / "ca.crt").write_text("not a certificate")
        with pytest.raises(ConfigError, match=r"ca\.crt"):
            watcher_for(running)

        shutil.copy(unrelated, sa_dir / "ca.crt")
        untrusting = watcher_for(running)
        try:
            with pytest.raises(WatcherError, match="unreachable"):
                untrusting.poll(0.0, 2.0)
        finally:
            untrusting.close()

        shutil.copy(cert, sa_dir / "ca.crt")
        trusting = watcher_for(running)
        try:
            assert trusting.poll(0.0, 2.0).reason == "not_ready"
        finally:
            trusting.close()


# ---------------------------------------------------------------- error shapes (respx)

API = "https://10.96.0.1:443"


def respx_watcher(**kwargs: Any) -> EndpointsWatcher:
    kwargs.setdefault("monotonic", time.monotonic)
    return EndpointsWatcher(httpx.Client(base_url=API), namespace=NS, pod_ip=POD_IP, token=lambda: TOKEN, **kwargs)


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (httpx.Response(429, headers={"Retry-After": "3"}, json=status_body(429, "TooManyRequests", "slow down")),
         "429 Too Many Requests), server asks to retry after 3s: slow down"),
        (httpx.Response(500, json=status_body(500, "InternalError", "etcdserver: request timed out")),
         "failed (500): etcdserver: request timed out"),
        (httpx.Response(503, text="upstream connect error"), "failed (503): upstream connect error"),
        (httpx.Response(404, json=status_body(404, "NotFound", "the server could not find the requested resource")),
         "discovery.k8s.io/v1"),
        (httpx.Response(302, headers={"Location": "/login"}), "unexpected answer from the Kubernetes API (302)"),
        (httpx.Response(200, text="<html>proxy</html>"), "not JSON"),
        (httpx.Response(200, json=["not", "an", "object"]), "not a JSON object"),
        (httpx.Response(200, json={"kind": "EndpointSliceList", "items": {"oops": 1}}), "'items' is not a list"),
    ],
)  # fmt: skip
def test_error_shapes(response: httpx.Response, expected: str) -> None:
    with respx.mock(base_url=API) as mock:
        mock.get(LIST_PATH).mock(return_value=response)
        watcher = respx_watcher()
        with pytest.raises(WatcherError) as caught:
            watcher.poll(0.0, 2.0)
    assert expected in str(caught.value)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ReadTimeout("timed out"), "did not answer within 2.0s (ReadTimeout)"),
        (httpx.ConnectTimeout("timed out"), "did not answer"),
        (httpx.ConnectError("connection refused"), "unreachable: ConnectError: connection refused"),
        (httpx.RemoteProtocolError("peer closed"), "unreachable"),
    ],
)
def test_transport_errors(error: Exception, expected: str) -> None:
    with respx.mock(base_url=API) as mock:
        mock.get(LIST_PATH).mock(side_effect=error)
        watcher = respx_watcher()
        with pytest.raises(WatcherError) as caught:
            watcher.poll(0.0, 2.0)
    assert expected in str(caught.value)
    assert isinstance(caught.value.__cause__, httpx.HTTPError)


def test_request_timeout_is_capped_by_the_poll_timeout() -> None:
    with respx.mock(base_url=API) as mock:
        route = mock.get(LIST_PATH).mock(return_value=httpx.Response(200, json=slice_list([])))
        respx_watcher(monotonic=lambda: 5.0).poll(0.0, 0.7)
        respx_watcher(monotonic=lambda: 5.0).poll(0.0, 60.0)
    timeouts = [call.request.extensions["timeout"]["read"] for call in route.calls]
    assert timeouts == [pytest.approx(0.7), 10.0]


def test_pages_share_one_poll_timeout() -> None:
    clock = iter([0.0, 0.0, 0.6, 1.3])  # start, before page 1, before page 2, before page 3
    with respx.mock(base_url=API) as mock:
        mock.get(LIST_PATH).mock(return_value=httpx.Response(200, json=slice_list([], cont="more")))
        watcher = respx_watcher(monotonic=lambda: next(clock))
        with pytest.raises(WatcherError, match=r"took longer than 1\.0s"):
            watcher.poll(0.0, 1.0)
        assert len(mock.calls) == 2


# ------------------------------------------------------------------------------ config


@pytest.fixture
def with_ca(tmp_path: Path, sa_dir: Path) -> Path:
    """The service-account folder with a cluster CA certificate in it."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    cert, _ = make_cert(tmp_path, "cluster-ca")
    shutil.copy(cert, sa_dir / "ca.crt")
    return sa_dir


def test_config_from_the_pod_environment(with_ca: Path) -> None:
    sa_dir = with_ca
    config = load_config(
        Source(
            {
                "KUBERNETES_SERVICE_HOST": "10.96.0.1",
                "KUBERNETES_SERVICE_PORT": "443",
                "PRESTOP_KUBE_SA_DIR": str(sa_dir),
            }
        )
    )
    assert config == EndpointsConfig(api_url="https://10.96.0.1:443", sa_dir=str(sa_dir), namespace=NS)


def test_config_defaults_to_the_standard_service_account_mount() -> None:
    with pytest.raises(ConfigError, match=r"/var/run/secrets/kubernetes\.io/serviceaccount/namespace"):
        load_config(Source({"KUBERNETES_SERVICE_HOST": "10.96.0.1"}))


def test_config_ipv6_api_host_and_default_port(with_ca: Path) -> None:
    sa_dir = with_ca
    config = load_config(Source({"KUBERNETES_SERVICE_HOST": "fd00:10:96::1", "PRESTOP_KUBE_SA_DIR": str(sa_dir)}))
    assert config.api_url == "https://[fd00:10:96::1]:443"


def test_config_overrides(sa_dir: Path) -> None:
    config = load_config(
        Source(
            {
                "KUBERNETES_SERVICE_HOST": "10.96.0.1",
                "PRESTOP_KUBE_API": "http://127.0.0.1:8001/",
                "PRESTOP_KUBE_SA_DIR": str(sa_dir),
                "POD_NAMESPACE": "shop",
                "PRESTOP_KUBE_NAMESPACE": "shop-canary",
                "PRESTOP_ENDPOINTS_SERVICES": "web, web-internal",
            }
        )
    )
    assert config == EndpointsConfig(
        api_url="http://127.0.0.1:8001", sa_dir=str(sa_dir), namespace="shop-canary", services=("web", "web-internal")
    )
    (sa_dir / "namespace").unlink()
    given = Source({"PRESTOP_KUBE_API": "http://h:8001", "PRESTOP_KUBE_SA_DIR": str(sa_dir), "POD_NAMESPACE": "shop"})
    assert load_config(given).namespace == "shop"


def test_service_account_files_are_checked_when_the_settings_are_loaded(tmp_path: Path, with_ca: Path) -> None:
    # Before anything is written: a watcher that cannot be built after the write would leave the
    # instance disabled and the run crashed.
    sa_dir = with_ca
    env = {"PRESTOP_KUBE_API": "https://10.96.0.1:443", "PRESTOP_KUBE_SA_DIR": str(sa_dir)}
    shutil.copy(sa_dir / "ca.crt", tmp_path / "saved.crt")
    (sa_dir / "ca.crt").unlink()
    with pytest.raises(ConfigError, match=r"cluster CA from .*ca\.crt"):
        load_config(Source(env))
    (sa_dir / "ca.crt").write_text("not a certificate")
    with pytest.raises(ConfigError, match=r"ca\.crt"):
        load_config(Source(env))
    shutil.copy(tmp_path / "saved.crt", sa_dir / "ca.crt")
    assert load_config(Source(env)).namespace == NS
    (sa_dir / "namespace").write_text("Not_A_Namespace")
    with pytest.raises(ConfigError, match="is not a namespace name"):
        load_config(Source(env))
    (sa_dir / "namespace").unlink()
    with pytest.raises(ConfigError, match=r"namespace from .*POD_NAMESPACE"):
        load_config(Source(env))
    (sa_dir / "token").unlink()
    with pytest.raises(ConfigError, match="automountServiceAccountToken"):
        load_config(Source({**env, "POD_NAMESPACE": NS}))


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, ["KUBERNETES_SERVICE_HOST", "PRESTOP_KUBE_API"]),
        ({"PRESTOP_KUBE_API": "10.96.0.1:443"}, ["PRESTOP_KUBE_API", "10.96.0.1:443", "https://"]),
        ({"PRESTOP_KUBE_API": "https://host:99999"}, ["PRESTOP_KUBE_API"]),
        ({"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "https"}, ["KUBERNETES_SERVICE_PORT"]),
        (
            {"KUBERNETES_SERVICE_HOST": "h", "POD_NAMESPACE": "Shop_1"},
            ["POD_NAMESPACE", "Shop_1", "metadata.namespace"],
        ),
        ({"KUBERNETES_SERVICE_HOST": "h", "PRESTOP_ENDPOINTS_SERVICES": "web,Web!"}, ["PRESTOP_ENDPOINTS_SERVICES"]),
    ],
)
def test_bad_config(env: dict[str, str], words: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(Source(env))
    assert "\n" not in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_build_reads_namespace_and_needs_token_and_ca(sa_dir: Path) -> None:
    http = EndpointsConfig(api_url="http://127.0.0.1:1", sa_dir=str(sa_dir))
    built = http.build(watch_context(TARGET))
    assert isinstance(built, EndpointsWatcher)
    built.close()
    with pytest.raises(ConfigError, match=r"ca\.crt"):
        EndpointsConfig(api_url="https://10.96.0.1:443", sa_dir=str(sa_dir)).build(watch_context(TARGET))
    (sa_dir / "namespace").unlink()
    with pytest.raises(ConfigError, match="POD_NAMESPACE"):
        http.build(watch_context(TARGET))
    named = EndpointsConfig(api_url="http://127.0.0.1:1", sa_dir=str(sa_dir), namespace=NS)
    given = named.build(watch_context(TARGET))
    assert isinstance(given, EndpointsWatcher)
    given.close()
    (sa_dir / "token").unlink()
    with pytest.raises(ConfigError, match="automountServiceAccountToken"):
        named.build(watch_context(TARGET))


def test_free_port_is_refused_quickly(sa_dir: Path) -> None:
    # a closed port on loopback: the watcher reports it as a failed poll, not a crash
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    watcher = EndpointsConfig(api_url=f"http://127.0.0.1:{port}", sa_dir=str(sa_dir)).build(watch_context(TARGET))
    assert isinstance(watcher, EndpointsWatcher)
    try:
        with pytest.raises(WatcherError, match="unreachable"):
            watcher.poll(0.0, 1.0)
    finally:
        watcher.close()


def test_name() -> None:
    assert endpoints.NAME == "endpoints"
