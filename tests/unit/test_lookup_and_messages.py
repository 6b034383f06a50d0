"""Finding the instance when the pod name says nothing, and the messages when it cannot be found."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from prestop_agent.agent import Deps, run_deregister, run_status
from prestop_agent.config import Settings, load
from prestop_agent.errors import InstanceNotFound, RegistryError
from prestop_agent.source import Source
from tests.fakes import FakeClock, FakeInstance, FakeNacos

ENV = {
    "POD_IP": "10.0.0.7",
    "NACOS_SERVICE_PORT": "8080",
    "NACOS_SERVER_ADDR": "nacos:8848",
    "PRESTOP_WAIT_FOR": "registry",
    "PRESTOP_CONSUMER_CACHE_SECONDS": "0",
}
LONG_POD = "payment-reconciliation-service-eu-west-production-7d9c8b6fx2x9k"


def make(**env: str) -> Settings:
    return load(Source({**ENV, **env}))


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def served_by(nacos: FakeNacos, *, v3_404: str | None = None) -> respx.MockRouter:
    router = respx.mock(assert_all_called=False)
    if v3_404 is not None:  # something in front of Nacos answers every v3 path (routes match in order)
        router.route(host="nacos", path__startswith="/nacos/v3/").respond(404, text=v3_404)
    router.route(host="nacos").mock(side_effect=nacos)
    return router


@pytest.mark.parametrize("major", [2, 3])
@pytest.mark.parametrize("hostname", [LONG_POD, "standalone"])
def test_a_pod_name_that_names_no_service_is_looked_up_by_ip_and_port(
    major: int, hostname: str, http: httpx.Client
) -> None:
    nacos = FakeNacos(major=major)
    nacos.add("billing", FakeInstance("10.0.0.9", 8080))
    inst = nacos.add("payment-reconciliation", FakeInstance("10.0.0.7", 8080))
    with served_by(nacos), capture_logs() as logs:
        report = run_deregister(make(HOSTNAME=hostname), Deps(clock=FakeClock(), http=http), wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    assert inst.enabled is False
    hints = [e["hint"] for e in logs if "hint" in e]
    assert hints == ["set NACOS_SERVICE_NAME=payment-reconciliation"]


def test_status_looks_the_service_up_when_the_pod_name_names_none(http: httpx.Client) -> None:
    nacos = FakeNacos()
    nacos.add("payment-reconciliation", FakeInstance("10.0.0.7", 8080))
    with served_by(nacos):
        report = run_status(make(HOSTNAME="standalone"), Deps(clock=FakeClock(), http=http))
    assert report.error is None
    assert report.data["service_found_by_endpoint"] == "public/DEFAULT_GROUP@@payment-reconciliation"
    assert "disable 10.0.0.7:8080" in str(report.data["deregister_would"])


def test_not_found_names_every_variable_that_decides_where_to_look(http: httpx.Client) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.8", 8080))
    settings = make(
        NACOS_SERVICE_NAME="orders", NACOS_CLUSTER="BJ", PRESTOP_BUDGET_SECONDS="5", PRESTOP_DRAIN_SCOPE="service"
    )
    with served_by(nacos):
        report = run_deregister(settings, Deps(clock=FakeClock(), http=http), wait=False, dry_run=False)
    assert isinstance(report.error, InstanceNotFound)
    message = str(report.error)
    for name in ("NACOS_SERVICE_NAME", "NACOS_NAMESPACE", "NACOS_GROUP", "NACOS_CLUSTER", "POD_IP"):
        assert name in message
    assert "'BJ'" in message


@pytest.mark.parametrize(("scope", "names"), [("pod", "any port"), ("port", "port(s) 8080,9090")])
def test_not_found_in_scope_pod_or_port_says_where_it_looked(scope: str, names: str, http: httpx.Client) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.8", 8080))
    settings = make(PRESTOP_DRAIN_SCOPE=scope, PRESTOP_DRAIN_PORTS="9090", PRESTOP_BUDGET_SECONDS="5")
    with served_by(nacos):
        report = run_deregister(settings, Deps(clock=FakeClock(), http=http), wait=False, dry_run=False)
    assert isinstance(report.error, InstanceNotFound)
    message = str(report.error)
    assert f"10.0.0.7 on {names} in every group of namespace 'public'" in message
    for name in ("NACOS_NAMESPACE", "POD_IP", "PRESTOP_DRAIN_SCOPE"):
        assert name in message


GATEWAY_404 = "<html><head><title>404 Not Found</title></head><body><center><h1>404 Not Found</h1></center></body>"


def test_auto_behind_a_gateway_whose_404_is_not_nacos_says_to_set_the_api(http: httpx.Client) -> None:
    nacos = FakeNacos(major=2)
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    settings = make(NACOS_SERVICE_NAME="orders", PRESTOP_BUDGET_SECONDS="5")
    with served_by(nacos, v3_404=GATEWAY_404):
        report = run_deregister(settings, Deps(clock=FakeClock(), http=http), wait=False, dry_run=False)
    assert isinstance(report.error, RegistryError)
    assert "set NACOS_API=v1" in str(report.error)
    assert "404 Not Found" in str(report.error)
    assert "<h1>" not in str(report.error)  # the page's words, not its markup
    assert inst.enabled is True
    with served_by(nacos, v3_404=GATEWAY_404):
        report = run_deregister(
            make(NACOS_SERVICE_NAME="orders", NACOS_API="v1"),
            Deps(clock=FakeClock(), http=http),
            wait=False,
            dry_run=False,
        )
    assert (report.error, report.outcome) == (None, "disabled")


def test_a_password_with_spaces_logs_in_with_them(http: httpx.Client) -> None:
    nacos = FakeNacos(users={"nacos": "  pass word  "})
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    settings = make(NACOS_SERVICE_NAME="orders", NACOS_USERNAME="nacos", NACOS_PASSWORD="  pass word  ")
    with served_by(nacos):
        report = run_deregister(settings, Deps(clock=FakeClock(), http=http), wait=False, dry_run=False)
    assert (report.error, report.outcome) == (None, "disabled")
    assert inst.enabled is False
