"""Reply classification, on bodies recorded from real servers (see localnacos/RESPONSES.md)."""

from __future__ import annotations

import httpx
import pytest
import respx

from prestop_agent.clock import Deadline
from prestop_agent.errors import ServerError
from prestop_agent.nacos.api import APIS, ApiGone
from prestop_agent.nacos.model import ServerAddress, ServiceKey
from prestop_agent.nacos.registry import Registry
from prestop_agent.nacos.server import NacosServer
from tests.fakes import FakeClock

KEY = ServiceKey("public", "DEFAULT_GROUP", "demo")
SPRING_404 = {"timestamp": "2026-11-22T01:52:59.169+00:00", "status": 404, "error": "Not Found", "path": "/nacos/x"}


@pytest.fixture
def server() -> NacosServer:
    return NacosServer(ServerAddress("http", "nacos", 8848, "/nacos"), httpx.Client())


def deadline() -> Deadline:
    return Deadline.after(FakeClock(), 5.0)


@pytest.mark.parametrize(
    "body",
    ["service DEFAULT_GROUP@@nosuch is not found!", "cluster DEFAULT is not found!"],
)
def test_2x_catalog_not_found_texts_mean_empty(server: NacosServer, body: str) -> None:
    with respx.mock:
        respx.get("http://nacos:8848/nacos/v1/ns/catalog/instances").respond(404, text=body)
        assert APIS["v1"].list_all(server, KEY, "DEFAULT", deadline()) == []


def test_spring_404_is_a_missing_api(server: NacosServer) -> None:
    with respx.mock:
        respx.get("http://nacos:8848/nacos/v3/admin/ns/instance/list").respond(404, json=SPRING_404)
        with pytest.raises(ApiGone):
            APIS["v3"].list_all(server, KEY, "DEFAULT", deadline())


def test_410_on_write_is_a_missing_api(server: NacosServer) -> None:
    from prestop_agent.nacos.model import Instance

    inst = Instance("1.2.3.4", 80, "DEFAULT", True, True, 1.0, True)
    with respx.mock:
        respx.put("http://nacos:8848/nacos/v1/ns/instance").respond(410, text="Gone")
        with pytest.raises(ApiGone):
            APIS["v1"].update(server, KEY, inst, False, deadline())


def test_a_plain_404_that_is_not_a_route_is_an_error_not_a_switch(server: NacosServer) -> None:
    with respx.mock:
        respx.get("http://nacos:8848/nacos/v1/ns/instance/list").respond(
            404, text="no ips found for cluster DEFAULT in service DEFAULT_GROUP@@demo"
        )
        with pytest.raises(ServerError) as caught:
            APIS["v1"].list_served(server, KEY, deadline())
        assert not isinstance(caught.value, ApiGone)


def test_v3_envelope_error_code_is_an_error(server: NacosServer) -> None:
    with respx.mock:
        respx.get("http://nacos:8848/nacos/v3/client/ns/instance/list").respond(
            200, json={"code": 21000, "message": "parameter missing", "data": None}
        )
        with pytest.raises(ServerError, match="code 21000"):
            APIS["v3"].list_served(server, KEY, deadline())


def test_auto_probe_picks_v1_on_a_2x_server(server: NacosServer) -> None:
    registry = Registry([server], "auto", "127.0.0.3", 8080, "DEFAULT")
    with respx.mock:
        respx.get("http://nacos:8848/nacos/v3/admin/ns/instance/list").respond(404, json=SPRING_404)
        respx.get("http://nacos:8848/nacos/v1/ns/catalog/instances").respond(
            200,
            json={"list": [{"ip": "127.0.0.3", "port": 8080, "enabled": False, "clusterName": "DEFAULT"}], "count": 1},
        )
        found = registry.find(server, KEY, deadline())
    assert found is not None
    assert found.enabled is False
    assert registry.api(server, KEY, deadline()).name == "v1"


def test_3x_wrong_password_500s_are_a_refusal_not_a_retry() -> None:
    """Nacos 3.1 answers a wrong password with 500 on both login paths (localnacos/RESPONSES.md)."""
    from prestop_agent.errors import AuthError
    from prestop_agent.nacos.server import Credentials

    server = NacosServer(
        ServerAddress("http", "nacos", 8848, "/nacos"), httpx.Client(), credentials=Credentials("nacos", "wrong")
    )
    with respx.mock:
        v1 = respx.post("http://nacos:8848/nacos/v1/auth/login").respond(
            500, json={"code": 500, "message": "Handle API Compatibility failed"}
        )
        v3 = respx.post("http://nacos:8848/nacos/v3/auth/user/login").respond(500, text="No message available")
        with pytest.raises(AuthError, match="check NACOS_USERNAME and NACOS_PASSWORD"):
            server.call("GET", "/v3/admin/ns/instance/list", deadline(), params={"serviceName": "demo"})
        assert (v1.call_count, v3.call_count) == (1, 1)
