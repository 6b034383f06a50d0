"""The harness itself: real servers come up, real clients register, subscribers get pushes, auth is enforced."""

from __future__ import annotations

import httpx
import pytest

from localnacos import HttpInstance, JavaInstance, NacosProcess, wait_until

from .conftest import next_address

pytestmark = pytest.mark.integration


def test_server_is_ready(nacos: NacosProcess) -> None:
    if nacos.major == 2:
        response = httpx.get(f"{nacos.base_url}/v1/ns/operator/metrics")
        assert response.json()["status"] == "UP"
    else:
        response = httpx.get(f"{nacos.base_url}/v3/admin/core/state/readiness")
        assert response.json()["code"] == 0


def test_grpc_instance_is_served_and_pushed(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    wait_until(
        lambda: grpc_instance.has_self(nacos.served_hosts(grpc_instance.service)),
        timeout=30,
        what="instance in the served list",
    )
    grpc_instance.wait_for_push(grpc_instance.has_self, timeout=30)
    host = nacos.find_host(grpc_instance.service, grpc_instance.ip, grpc_instance.port)
    assert host is not None
    assert host["enabled"] is True


def test_disabled_instance_is_pushed_away(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    grpc_instance.wait_for_push(grpc_instance.has_self, timeout=30)
    seen = len(grpc_instance.pushes())
    nacos.set_enabled(grpc_instance.service, grpc_instance.ip, grpc_instance.port, False)
    grpc_instance.wait_for_push(lambda hosts: not grpc_instance.has_self(hosts), timeout=30, after=seen)
    wait_until(
        lambda: not grpc_instance.has_self(nacos.served_hosts(grpc_instance.service)),
        timeout=30,
        what="instance gone from the served list",
    )
    host = nacos.find_host(grpc_instance.service, grpc_instance.ip, grpc_instance.port)
    assert host is not None
    assert host["enabled"] is False


def test_http_heartbeat_instance(nacos: NacosProcess) -> None:
    ip, port = next_address()
    with HttpInstance(nacos, "it-http-heartbeat", ip, port, beat_interval=1.0) as instance:
        wait_until(
            lambda: any(h["ip"] == ip and h["port"] == port for h in nacos.served_hosts("it-http-heartbeat")),
            timeout=30,
            what="HTTP instance served",
        )
        response = instance.beat()
        assert response.status_code == 200, response.text
        assert instance.beat_errors.empty()


@pytest.mark.nacos_auth(True)
def test_auth_on_rejects_calls_without_token(nacos: NacosProcess) -> None:
    response = httpx.get(f"{nacos.base_url}/v1/ns/instance/list", params={"serviceName": "anything"})
    assert response.status_code == 403
    admin = httpx.get(f"{nacos.base_url}/v3/admin/ns/instance/list", params={"serviceName": "anything"})
    assert admin.status_code == 403
