"""Which registrations are the pod's (scope, hostNetwork, groups) and how they are found (client list, paged scan)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from prestop_agent.agent import Deps, run_deregister
from prestop_agent.clock import Deadline
from prestop_agent.config import Settings, load
from prestop_agent.nacos import discovery, inventory
from prestop_agent.nacos.discovery import Scope, discover
from prestop_agent.nacos.model import Instance, ServiceKey
from prestop_agent.run import make_registry, scope_of
from prestop_agent.source import Source
from tests.fakes import FakeClock, FakeInstance, FakeNacos

ENV = {
    "POD_IP": "10.0.0.7",
    "NACOS_SERVICE_PORT": "8080",
    "NACOS_SERVER_ADDR": "nacos:8848",
    "HOSTNAME": "orders-6d9f7c8b5d-x7k2p",
    "PRESTOP_WAIT_FOR": "registry",
    "PRESTOP_CONSUMER_CACHE_SECONDS": "0",
    "PRESTOP_BUDGET_SECONDS": "20",
}
ORDERS = ServiceKey("public", "DEFAULT_GROUP", "orders")


def make(**env: str) -> Settings:
    return load(Source({**ENV, **env}))


def instance(ip: str = "10.0.0.7", port: int = 8080) -> Instance:
    return Instance(ip, port, "DEFAULT", enabled=True, healthy=True, weight=1.0, ephemeral=True)


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


def served_by(nacos: FakeNacos) -> respx.MockRouter:
    router = respx.mock(assert_all_called=False)
    router.route(host="nacos").mock(side_effect=nacos)
    return router


# -- the selection rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scope", "key", "inst", "admitted"),
    [
        ("pod", ORDERS, instance(), True),
        ("pod", ServiceKey("public", "DUBBO", "providers:com.x.OrderApi::"), instance(port=20880), True),
        ("pod", ORDERS, instance(ip="10.0.0.8"), False),
        ("pod", ServiceKey("staging", "DEFAULT_GROUP", "orders"), instance(), False),
        ("pod", ORDERS, instance(ip="[0:0:0:0:0:ffff:a00:7]"), True),  # 10.0.0.7 written as IPv4-mapped IPv6
        ("port", ServiceKey("public", "DEFAULT_GROUP", "orders-admin"), instance(port=8080), True),
        ("port", ServiceKey("public", "DUBBO", "dubbo-orders"), instance(port=20880), True),  # PRESTOP_DRAIN_PORTS
        ("port", ORDERS, instance(port=9090), False),
        ("service", ORDERS, instance(), True),
        ("service", ORDERS, instance(port=20880), True),
        ("service", ServiceKey("public", "DEFAULT_GROUP", "orders-admin"), instance(), False),
        ("service", ServiceKey("public", "OTHER", "orders"), instance(), False),
    ],
)
def test_scope_admits(scope: str, key: ServiceKey, inst: Instance, admitted: bool) -> None:
    rules = Scope(scope, "10.0.0.7", frozenset({8080, 20880}), ORDERS)
    assert rules.admits(key, inst) is admitted


def test_a_host_network_pod_is_narrowed_to_its_ports() -> None:
    """POD_IP = HOST_IP: the node and every hostNetwork pod on it share that IP."""
    settings = make(HOST_IP="10.0.0.7", PRESTOP_DRAIN_PORTS="20880")
    rules = scope_of(settings)
    assert rules.host_network
    assert rules.by_port
    assert rules.admits(ORDERS, instance(port=8080))
    assert rules.admits(ORDERS, instance(port=20880))
    assert not rules.admits(ORDERS, instance(port=9100)), "another hostNetwork pod's exporter on the same node"
    assert "hostNetwork" in rules.describe()
    assert not scope_of(make(HOST_IP="192.168.0.1")).by_port


def test_scope_settings_are_checked_at_the_edge() -> None:
    from prestop_agent.errors import ConfigError

    with pytest.raises(ConfigError, match=r"PRESTOP_DRAIN_SCOPE='node' is not known; set it to pod, port, service"):
        make(PRESTOP_DRAIN_SCOPE="node")
    with pytest.raises(ConfigError, match="PRESTOP_DRAIN_PORTS='8O80'"):
        make(PRESTOP_DRAIN_PORTS="9090,8O80")
    with pytest.raises(ConfigError, match="PRESTOP_LAST_INSTANCE"):
        make(PRESTOP_LAST_INSTANCE="refuse")
    assert make(PRESTOP_DRAIN_SCOPE="PORT").scope.value == "port"
    assert make().scope.value == "pod", "the default: every registration of the pod"
    assert load(Source({k: v for k, v in ENV.items() if k != "HOSTNAME"})).service.value == "", (
        "scope pod needs no service name"
    )


# -- finding them -----------------------------------------------------------------------------------


def a_pod_with_several_registrations(nacos: FakeNacos) -> dict[str, FakeInstance]:
    ours = {
        "orders": nacos.add("orders", FakeInstance("10.0.0.7", 8080, client_id="1700000000000_10.0.0.7_41396")),
        "admin": nacos.add("orders-admin", FakeInstance("10.0.0.7", 8081)),  # HTTP-registered: ip:port#true
        "dubbo": nacos.add(
            "providers:com.x.OrderApi::", FakeInstance("10.0.0.7", 20880, metadata={"dubbo": "2.0.2"}), group="DUBBO"
        ),
        "persistent": nacos.add("orders-dns", FakeInstance("10.0.0.7", 8082, ephemeral=False, cluster="BJ")),
    }
    nacos.add("orders", FakeInstance("10.0.0.8", 8080, client_id="1700000000001_10.0.0.8_41400"))
    nacos.add("billing", FakeInstance("10.0.0.9", 8080))
    return ours


@pytest.mark.parametrize(("major", "client_list"), [(2, False), (2, True), (3, True), (3, False)])
def test_every_registration_is_found_across_groups_clusters_and_kinds(
    major: int, client_list: bool, http: httpx.Client
) -> None:
    nacos = FakeNacos(major=major, client_list=client_list)
    ours = a_pod_with_several_registrations(nacos)
    settings = make()
    deadline = Deadline.after(FakeClock(), 20)
    with served_by(nacos), capture_logs() as logs:
        found = discover(make_registry(settings, Deps(FakeClock(), http)), scope_of(settings), deadline)
    assert sorted(str(r) for r in found.registrations) == [
        "DEFAULT_GROUP@@orders 10.0.0.7:8080",
        "DEFAULT_GROUP@@orders-admin 10.0.0.7:8081",
        "DEFAULT_GROUP@@orders-dns 10.0.0.7:8082",
        "DUBBO@@providers:com.x.OrderApi:: 10.0.0.7:20880",
    ]
    assert found.complete
    persistent = next(r for r in found.registrations if r.instance.port == 8082)
    assert (persistent.instance.cluster, persistent.instance.ephemeral) == ("BJ", False)
    assert ours["dubbo"].metadata == {"dubbo": "2.0.2"}
    assert [i.ip for i in found.listings[ORDERS]] == ["10.0.0.7", "10.0.0.8"], "kept for the last-instance rule"
    if not client_list:
        assert any(e["event"] == "client_list_unavailable" for e in logs)


def test_the_client_list_finds_what_a_cut_scan_misses(monkeypatch: pytest.MonkeyPatch, http: httpx.Client) -> None:
    monkeypatch.setattr(inventory, "SCAN_PAGE_SIZE", 10)
    monkeypatch.setattr(discovery, "MAX_SCAN_PAGES", 2)
    nacos = FakeNacos(major=3)
    for n in range(40):
        nacos.add(f"svc-{n:02d}", FakeInstance("10.0.1.1", 8080))
    nacos.add("zz-last", FakeInstance("10.0.0.7", 8080, client_id="1700000000000_10.0.0.7_41396"))
    nacos.add("zz-snat", FakeInstance("10.0.0.7", 9090, client_id="1700000000000_10.0.9.9_41396"))
    settings = make()
    with served_by(nacos), capture_logs() as logs:
        found = discover(
            make_registry(settings, Deps(FakeClock(), http)), scope_of(settings), Deadline.after(FakeClock(), 20)
        )
    assert [str(r) for r in found.registrations] == ["DEFAULT_GROUP@@zz-last 10.0.0.7:8080"], (
        "found by its client; the one behind NAT needed the pages the scan did not reach"
    )
    assert not found.complete
    assert any(e["event"] == "registrations_search_incomplete" and "more than 20" in e["reason"] for e in logs)


def test_the_scan_pages_through_the_namespace(monkeypatch: pytest.MonkeyPatch, http: httpx.Client) -> None:
    monkeypatch.setattr(inventory, "SCAN_PAGE_SIZE", 10)
    nacos = FakeNacos(major=2)
    for n in range(35):
        nacos.add(f"svc-{n:02d}", FakeInstance("10.0.1.1", 8080))
    nacos.add("zz-ours", FakeInstance("10.0.0.7", 8080))
    settings = make()
    with served_by(nacos) as router:
        found = discover(
            make_registry(settings, Deps(FakeClock(), http)), scope_of(settings), Deadline.after(FakeClock(), 20)
        )
        scans = [c.request.url for c in router.calls if c.request.url.path.endswith("/catalog/services")]
    assert [r.key.service for r in found.registrations] == ["zz-ours"]
    assert found.complete
    pages = [url.params["pageNo"] for url in scans]
    assert pages == ["1", "2", "3", "4"], "a bare list has no total: a short page is the last"


def test_an_answer_that_is_not_nacos_cuts_the_search_short_and_says_so(http: httpx.Client) -> None:
    nacos = FakeNacos(major=2)
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    nacos.add("orders-admin", FakeInstance("10.0.0.7", 8081))
    router = respx.mock(assert_all_called=False)
    router.get(host="nacos", path="/nacos/v1/ns/catalog/services").respond(200, text="<html>maintenance</html>")
    router.route(host="nacos").mock(side_effect=nacos)
    settings = make(NACOS_SERVICE_NAME="orders")
    with router, capture_logs() as logs:
        found = discover(
            make_registry(settings, Deps(FakeClock(), http)), scope_of(settings), Deadline.after(FakeClock(), 20)
        )
    assert [str(r) for r in found.registrations] == ["DEFAULT_GROUP@@orders 10.0.0.7:8080"], "the named service still"
    assert not found.complete
    assert any("something other than" in str(e.get("reason")) for e in logs)


def test_a_host_network_pod_drains_only_its_ports(http: httpx.Client) -> None:
    nacos = FakeNacos()
    ours = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    neighbour = nacos.add("node-exporter", FakeInstance("10.0.0.7", 9100))
    settings = make(HOST_IP="10.0.0.7")
    with served_by(nacos):
        report = run_deregister(settings, Deps(FakeClock(), http), wait=False, dry_run=False)
    assert (report.error, report.outcome) == (None, "disabled")
    assert (ours.enabled, neighbour.enabled) == (False, True)


@pytest.mark.parametrize(
    ("scope", "disabled"),
    [
        ("pod", {8080, 8081, 8082, 20880}),
        ("port", {8080, 20880}),
        ("service", {8080}),
    ],
)
def test_deregister_disables_what_the_scope_selects(scope: str, disabled: set[int], http: httpx.Client) -> None:
    nacos = FakeNacos(major=3)
    ours = a_pod_with_several_registrations(nacos)
    settings = make(NACOS_SERVICE_NAME="orders", PRESTOP_DRAIN_SCOPE=scope, PRESTOP_DRAIN_PORTS="20880")
    with served_by(nacos), capture_logs() as logs:
        report = run_deregister(settings, Deps(FakeClock(), http), wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    assert {i.port for i in ours.values() if not i.enabled} == disabled
    assert all(i.enabled for i in nacos.services["DEFAULT_GROUP@@orders"] if i.ip != "10.0.0.7")
    named = {e["endpoint"] for e in logs if e["event"] == "instance_disabled"}
    assert named == {f"10.0.0.7:{port}" for port in disabled}, "the logs name each one"
    for write in nacos.writes:
        assert '"prestop-agent.disabled":"true"' in write["metadata"]
    assert ours["dubbo"].metadata == {"dubbo": "2.0.2", "prestop-agent.disabled": "true"} or scope == "service"


def test_status_lists_every_registration_and_the_last_instance(http: httpx.Client) -> None:
    from prestop_agent.cli import _status_text
    from prestop_agent.status import run_status

    nacos = FakeNacos(major=3)
    a_pod_with_several_registrations(nacos)
    nacos.services["DEFAULT_GROUP@@orders-admin"][0].enabled = False
    nacos.services["DEFAULT_GROUP@@orders-admin"][0].metadata = {"prestop-agent.disabled": "true"}
    with served_by(nacos):
        report = run_status(make(NACOS_SERVICE_NAME="orders"), Deps(FakeClock(), http))
    assert report.error is None
    registrations = report.data["registrations"]
    assert isinstance(registrations, list)
    listed = {r["endpoint"]: r for r in registrations}
    assert set(listed) == {"10.0.0.7:8080", "10.0.0.7:8081", "10.0.0.7:8082", "10.0.0.7:20880"}
    assert listed["10.0.0.7:8080"]["served_by"] == ["http://nacos:8848/nacos"]
    assert listed["10.0.0.7:8081"]["served_by"] == []
    assert listed["10.0.0.7:8081"]["marked"] is True
    assert report.data["last_instance"] == [
        "DUBBO@@providers:com.x.OrderApi:: 10.0.0.7:20880",
        "DEFAULT_GROUP@@orders-dns 10.0.0.7:8082",
    ]
    plan = str(report.data["deregister_would"])
    assert plan.startswith("disable 10.0.0.7:8080 in public/DEFAULT_GROUP@@orders (weight 1 kept), ")
    assert "8081" not in plan, "already disabled"
    text = _status_text(report)
    assert "DEFAULT_GROUP@@orders-admin 10.0.0.7:8081: cluster=DEFAULT enabled=False" in text
    assert "(disabled by a drain)" in text
    assert "last instance: DUBBO@@providers:com.x.OrderApi:: 10.0.0.7:20880, DEFAULT_GROUP@@orders-dns" in text
    assert nacos.writes == [], "status changes nothing"


def test_a_wait_without_the_registry_watcher_says_nothing_holds_the_drain(http: httpx.Client) -> None:
    from tests.unit.test_hold import Recording

    class RecordingConfig:
        def build(self, context: object) -> Recording:
            return Recording()

    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    settings = make(PRESTOP_WAIT_FOR="traffic")
    settings = replace(settings, watcher_configs={"traffic": RecordingConfig()})
    with served_by(nacos), capture_logs() as logs:
        report = run_deregister(settings, Deps(FakeClock(), http), wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    assert any(e["event"] == "drain_not_held" for e in logs)


def test_without_host_ip_the_pod_scope_says_it_cannot_tell_a_host_network_pod(http: httpx.Client) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with served_by(nacos), capture_logs() as logs:
        run_deregister(make(), Deps(FakeClock(), http), wait=False, dry_run=True)
        run_deregister(make(HOST_IP="192.168.0.1"), Deps(FakeClock(), http), wait=False, dry_run=True)
    warnings = [e for e in logs if e["event"] == "host_ip_unknown"]
    assert len(warnings) == 1
    assert "HOST_IP" in warnings[0]["fix"]
