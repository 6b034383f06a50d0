"""An answer that is not a Nacos answer is never evidence: not of "unserved", not of "no such instance"."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx

from prestop_agent.agent import Deps, run_deregister
from prestop_agent.clock import Deadline
from prestop_agent.config import load
from prestop_agent.errors import ServerError
from prestop_agent.nacos.api import APIS
from prestop_agent.nacos.model import ServerAddress, ServiceKey
from prestop_agent.nacos.server import NacosServer
from prestop_agent.source import Source
from tests.fakes import FakeClock, FakeInstance, FakeNacos

KEY = ServiceKey("public", "DEFAULT_GROUP", "orders")

# What a proxy, a gateway or a half-broken server may answer with a 200.
NOT_NACOS = {
    "html": ("text/html", "<html><body><h1>Welcome to nginx!</h1></body></html>"),
    "empty": ("application/json", ""),
    "truncated": ("application/json", '{"name":"DEFAULT_GROUP@@orders","hosts":[{"ip":"10.0.0.7","po'),
    "null": ("application/json", "null"),
    "foreign-object": ("application/json", '{"status":"UP"}'),
    "foreign-list": ("application/json", '[{"name":"orders"}]'),
    "hosts-not-a-list": ("application/json", '{"hosts":"none"}'),
    "envelope-without-data": ("application/json", '{"code":0,"message":"success","data":null}'),
}

SERVED_PATHS = {
    "v1": "/nacos/v1/ns/instance/list",
    "v2": "/nacos/v2/ns/instance/list",
    "v3": "/nacos/v3/client/ns/instance/list",
}


@pytest.fixture
def server() -> Iterator[NacosServer]:
    with httpx.Client() as http:
        yield NacosServer(ServerAddress("http", "nacos", 8848, "/nacos"), http)


@pytest.mark.parametrize("api", list(SERVED_PATHS))
@pytest.mark.parametrize("kind", list(NOT_NACOS))
def test_a_served_list_that_is_not_nacos_is_an_error_not_an_empty_list(
    server: NacosServer, api: str, kind: str
) -> None:
    content_type, body = NOT_NACOS[kind]
    with respx.mock:
        respx.get(f"http://nacos:8848{SERVED_PATHS[api]}").respond(
            200, text=body, headers={"Content-Type": content_type}
        )
        with pytest.raises(ServerError, match="something other than"):
            APIS[api].list_served(server, KEY, Deadline.after(FakeClock(), 5.0))


@pytest.mark.parametrize(
    "body",
    [
        "<html><title>404</title><body>Service not found</body></html>",
        "The service you requested was not found.\nPlease try again later.",
        '{"error":"service not found"}',
    ],
)
def test_a_gateway_404_that_says_service_not_found_is_not_nacos_saying_it(server: NacosServer, body: str) -> None:
    with respx.mock:
        respx.get("http://nacos:8848/nacos/v1/ns/instance/list").respond(404, text=body)
        with pytest.raises(ServerError):
            APIS["v1"].list_served(server, KEY, Deadline.after(FakeClock(), 5.0))


def test_nacos_own_not_found_forms_still_mean_empty(server: NacosServer) -> None:
    """Recorded from real servers (localnacos/RESPONSES.md)."""
    deadline = Deadline.after(FakeClock(), 5.0)
    with respx.mock:
        respx.get("http://nacos:8848/nacos/v3/admin/ns/instance/list").respond(
            404, json={"code": 30000, "message": "server error", "data": "service DEFAULT_GROUP@@x is not found!"}
        )
        respx.get("http://nacos:8848/nacos/v1/ns/catalog/instances").respond(404, text="cluster DEFAULT is not found!")
        assert APIS["v3"].list_all(server, KEY, "DEFAULT", deadline) == []
        assert APIS["v1"].list_all(server, KEY, "DEFAULT", deadline) == []


@pytest.mark.parametrize("major", [2, 3])
@pytest.mark.parametrize("kind", list(NOT_NACOS))
def test_an_ignored_write_and_a_served_list_that_is_not_nacos_never_drain(major: int, kind: str) -> None:
    content_type, body = NOT_NACOS[kind]
    nacos = FakeNacos(major=major, ignore_writes=True)
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    served_path = "/nacos/v1/ns/instance/list" if major == 2 else "/nacos/v3/client/ns/instance/list"
    settings = load(
        Source(
            {
                "POD_IP": "10.0.0.7",
                "NACOS_SERVICE_PORT": "8080",
                "NACOS_SERVICE_NAME": "orders",
                "NACOS_SERVER_ADDR": "nacos:8848",
                "PRESTOP_BUDGET_SECONDS": "20",
                "PRESTOP_WAIT_FOR": "registry",
                "PRESTOP_CONSUMER_CACHE_SECONDS": "0",
            }
        )
    )
    clock = FakeClock()
    with respx.mock(assert_all_called=False) as router, httpx.Client() as http:
        router.get(f"http://nacos:8848{served_path}").respond(200, text=body, headers={"Content-Type": content_type})
        router.route(host="nacos").mock(side_effect=nacos)
        report = run_deregister(settings, Deps(clock=clock, http=http), wait=True, dry_run=False)
    assert report.outcome != "drained"
    assert report.error is not None
    assert inst.enabled is True  # the write was ignored: exit 0 would have been a lie
    assert clock.now - 1000.0 == pytest.approx(20.0)  # and the budget was waited out, like the sleep
