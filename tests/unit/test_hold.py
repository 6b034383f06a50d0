"""Holding the drain (a registration served again is taken out again, the evidence starts over), the last
instance, `register` putting back exactly what a drain took out, and Dubbo's QoS offline as an opt-in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from prestop_agent.agent import Deps, run_deregister, run_register
from prestop_agent.clock import Deadline
from prestop_agent.config import Settings, load
from prestop_agent.source import Source
from prestop_agent.wait import wait_until_gone
from prestop_agent.watchers.base import Observation, PodTarget, Verdict, WatchContext
from prestop_agent.watchers.traffic.watcher import TrafficConfig
from tests.fakes import FakeClock, FakeInstance, FakeNacos, watch_context

ENV = {
    "POD_IP": "10.0.0.7",
    "NACOS_SERVICE_PORT": "8080",
    "NACOS_SERVER_ADDR": "nacos:8848",
    "NACOS_SERVICE_NAME": "orders",
    "PRESTOP_WAIT_FOR": "registry",
    "PRESTOP_CONSUMER_CACHE_SECONDS": "5",
    "PRESTOP_BUDGET_SECONDS": "60",
    "PRESTOP_GRACE_SECONDS": "70",
}
MARK = "prestop-agent.disabled"


def make(**env: str) -> Settings:
    return load(Source({**ENV, **env}))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def deps(clock: FakeClock) -> Iterator[Deps]:
    with httpx.Client() as http:
        yield Deps(clock=clock, http=http)


def served_requests(nacos: FakeNacos, on_served: Callable[[int], None]) -> respx.MockRouter:
    """Nacos, with ``on_served(n)`` called before the n-th served-list request is answered."""
    count = [0]

    def app(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith(("/ns/instance/list", "/client/ns/instance/list")) and "admin" not in str(
            request.url.path
        ):
            count[0] += 1
            on_served(count[0])
        return nacos(request)

    router = respx.mock(assert_all_called=False)
    router.route(host="nacos").mock(side_effect=app)
    return router


class Recording:
    """A watcher that has said "gone" all along and records every restart it is told of."""

    name = "traffic"

    def __init__(self) -> None:
        self.restarts: list[float] = []
        self.polls: list[float] = []

    def poll(self, now: float, timeout: float) -> Observation:
        self.polls.append(now)
        return Observation(Verdict.GONE, "quiet")

    def restart(self, at: float) -> None:
        self.restarts.append(at)

    def close(self) -> None:
        """Nothing to release."""


# -- holding the drain --------------------------------------------------------------------------------


@pytest.mark.parametrize("major", [2, 3])
def test_a_registration_served_again_is_disabled_again_and_the_evidence_starts_over(
    major: int, deps: Deps, clock: FakeClock
) -> None:
    nacos = FakeNacos(major=major)
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080, weight=2.0))
    nacos.add("orders", FakeInstance("10.0.0.8", 8080))
    came_back: list[float] = []

    def override_lost(n: int) -> None:  # nacos#11890: the node restart dropped enabled=false and its metadata
        if n == 3 and not came_back:
            inst.enabled, inst.weight, inst.metadata = True, 1.0, {}
            came_back.append(clock.now)

    recording = Recording()

    class RecordingConfig:
        def build(self, context: WatchContext) -> Recording:
            return recording

    settings = make(PRESTOP_WAIT_FOR="registry,traffic")
    settings = replace(settings, watcher_configs={**settings.watcher_configs, "traffic": RecordingConfig()})
    with served_requests(nacos, override_lost), capture_logs() as logs:
        report = run_deregister(settings, deps, wait=True, dry_run=False)

    assert (report.error, report.outcome) == (None, "drained")
    assert came_back, "the override was lost during the wait"
    assert inst.enabled is False
    assert inst.metadata == {MARK: "true"}
    assert [w["weight"] for w in nacos.writes] == ["2.0", "1.0"], "the second write sends what Nacos shows now"
    reasserted = [e for e in logs if e["event"] == "drain_reasserted"]
    assert len(reasserted) == 1
    assert reasserted[0]["count"] == 1
    assert reasserted[0]["registration"] == "DEFAULT_GROUP@@orders 10.0.0.7:8080"
    assert report.data["reasserted"] == 1
    restarted = next(e for e in logs if e["event"] == "evidence_restarted")
    assert restarted["by"] == "registry"
    assert recording.restarts, "every watcher is told"
    assert recording.polls[-1] > recording.restarts[0], "its earlier 'gone' did not count: polled again after"
    # The consumer-cache allowance started over: 5 s from the first poll that saw it unserved again.
    assert clock.now - came_back[0] >= 5.0
    assert clock.now - 1000.0 < 60.0


def test_while_nacos_still_shows_it_disabled_no_second_write_is_sent(deps: Deps, clock: FakeClock) -> None:
    """Right after a write, a served list may still show the instance: that alone is no reason to write."""
    nacos = FakeNacos(major=3)
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    nacos.add("orders", FakeInstance("10.0.0.8", 8080))
    router = respx.mock(assert_all_called=False)
    stale = [0]

    def lagging(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/v3/client/ns/instance/list") and 2 <= stale[0] < 4:
            stale[0] += 1
            hosts = [{"ip": "10.0.0.7", "port": 8080, "enabled": True, "healthy": True}]
            return httpx.Response(200, json={"code": 0, "message": "success", "data": hosts})
        if request.url.path.endswith("/v3/client/ns/instance/list"):
            stale[0] += 1
        return nacos(request)

    router.route(host="nacos").mock(side_effect=lagging)
    with router, capture_logs() as logs:
        report = run_deregister(make(), deps, wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    assert len(nacos.writes) == 1
    assert not any(e["event"].startswith("drain_reassert") for e in logs)


def test_the_wait_tells_every_watcher_and_no_earlier_gone_counts() -> None:
    clock = FakeClock()

    class ComesBackOnce:
        name = "registry"

        def __init__(self) -> None:
            self.polls = 0
            self.restarts: list[float] = []

        def poll(self, now: float, timeout: float) -> Observation:
            self.polls += 1
            if self.polls == 2:
                return Observation(Verdict.PRESENT, "served_again", restarts_at=now)
            return Observation(Verdict.GONE if self.polls > 2 else Verdict.PRESENT, "x")

        def restart(self, at: float) -> None:
            self.restarts.append(at)

        def close(self) -> None:
            """Nothing to release."""

    registry, other = ComesBackOnce(), Recording()
    with capture_logs() as logs:
        done, results = wait_until_gone([registry, other], Deadline.after(clock, 60), request_timeout=5)
    assert done
    assert registry.restarts == other.restarts, "the one that reported it is told as well"
    assert len(other.restarts) == 1
    assert max(other.polls) > other.restarts[0]
    assert results[1].at_ms is not None
    assert results[1].at_ms >= round((other.restarts[0] - 1000.0) * 1000)
    assert [e["by"] for e in logs if e["event"] == "evidence_restarted"] == ["registry"]


def test_the_traffic_watcher_counts_quiet_again_from_a_restart(tmp_path: Path) -> None:
    root = tmp_path / "proc"
    (root / "net").mkdir(parents=True)
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode"
    for table in ("tcp", "tcp6"):
        (root / "net" / table).write_text(header + "\n")
    (root / "net" / "snmp").write_text("Tcp: RtoAlgorithm PassiveOpens InSegs\nTcp: 1 10 100\n")
    config = TrafficConfig(quiet_seconds=10.0, proc_root=str(root), source="proc")
    watcher = config.build(watch_context(PodTarget("10.1.2.3", 8080)))
    watcher.poll(100.0, 1.0)
    watcher.restart(105.0)
    assert watcher.poll(110.0, 1.0).verdict is Verdict.PRESENT, "10 s since the first poll, 5 since the restart"
    gone = watcher.poll(115.0, 1.0)
    assert (gone.verdict, gone.details["quiet_for_s"]) == (Verdict.GONE, 10.0)


# -- the last instance --------------------------------------------------------------------------------


def test_draining_the_last_instance_warns_and_says_what_consumers_get(deps: Deps) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    nacos.add("orders", FakeInstance("10.0.0.8", 8080, healthy=False))
    nacos.add("orders-admin", FakeInstance("10.0.0.7", 8081))
    nacos.add("orders-admin", FakeInstance("10.0.0.9", 8081))
    with respx.mock(assert_all_called=False) as router, capture_logs() as logs:
        router.route(host="nacos").mock(side_effect=nacos)
        report = run_deregister(make(), deps, wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    assert report.data["last_instance"] == ["DEFAULT_GROUP@@orders 10.0.0.7:8080"], "the other one is unhealthy"
    warning = next(e for e in logs if e["event"] == "last_instance")
    assert "namingPushEmptyProtection" in warning["consumers"]
    outcome = next(e for e in logs if e["event"] == "last_instance_outcome")
    assert outcome["consumers"].startswith("unknown: add traffic")


def test_keep_holds_the_last_instance_until_another_is_served(deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos(major=3)
    ours = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    admin = nacos.add("orders-admin", FakeInstance("10.0.0.7", 8081))
    nacos.add("orders-admin", FakeInstance("10.0.0.9", 8081))
    arrived: list[float] = []

    def new_pod_registers(n: int) -> None:
        if clock.now - 1000.0 >= 12 and not arrived:
            nacos.add("orders", FakeInstance("10.0.0.20", 8080))
            arrived.append(clock.now)

    with served_requests(nacos, new_pod_registers), capture_logs() as logs:
        report = run_deregister(make(PRESTOP_LAST_INSTANCE="keep"), deps, wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    assert admin.enabled is False
    assert ours.enabled is False
    released = next(e for e in logs if e["event"] == "last_instance_released")
    assert released["replacements"] == ["10.0.0.20:8080"]
    assert clock.now - arrived[0] >= 5.0, "the consumer-cache allowance counts from the release"
    kept = next(e for e in logs if e["event"] == "last_instance")
    assert kept["action"] == "kept until another instance is served"


def test_keep_without_a_replacement_runs_to_the_budget_and_leaves_it_served(deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos()
    ours = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos").mock(side_effect=nacos)
        report = run_deregister(make(PRESTOP_LAST_INSTANCE="keep"), deps, wait=True, dry_run=False)
    assert report.outcome == "budget_exhausted"
    assert "registry=present(kept_last_instance)" in str(report.error)
    assert ours.enabled is True
    assert clock.now - 1000.0 == pytest.approx(60.0)


# -- register puts back exactly what was taken out ----------------------------------------------------


def test_register_enables_what_the_drain_disabled_and_nothing_else(deps: Deps) -> None:
    nacos = FakeNacos(major=3)
    ours = {
        port: nacos.add(service, FakeInstance("10.0.0.7", port, metadata={"zone": "a"}))
        for service, port in (("orders", 8080), ("orders-admin", 8081), ("dubbo-orders", 20880))
    }
    operators = nacos.add("orders-debug", FakeInstance("10.0.0.7", 5005, enabled=False))
    with respx.mock(assert_all_called=False) as router, capture_logs() as logs:
        router.route(host="nacos").mock(side_effect=nacos)
        drained = run_deregister(make(PRESTOP_CONSUMER_CACHE_SECONDS="0"), deps, wait=False, dry_run=False)
        assert all(i.metadata == {"zone": "a", MARK: "true"} for i in ours.values())
        back = run_register(make(), deps, wait=False)
    assert drained.error is None
    assert (back.error, back.outcome) == (None, "enabled")
    assert all(i.enabled for i in ours.values())
    assert all(i.metadata == {"zone": "a"} for i in ours.values()), "the mark leaves with the disable"
    assert operators.enabled is False, "someone else took it out: it stays out"
    left = next(e for e in logs if e["event"] == "registration_left_disabled")
    assert left["registration"] == "DEFAULT_GROUP@@orders-debug 10.0.0.7:5005"
    enabled = back.data["enabled"]
    assert isinstance(enabled, list)
    assert sorted(enabled) == [
        "DEFAULT_GROUP@@dubbo-orders 10.0.0.7:20880",
        "DEFAULT_GROUP@@orders 10.0.0.7:8080",
        "DEFAULT_GROUP@@orders-admin 10.0.0.7:8081",
    ]


def test_register_still_enables_the_named_instance_without_the_mark(deps: Deps) -> None:
    """What earlier versions (and an operator's `deregister` by hand) left behind: the named ip:port."""
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080, enabled=False))
    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos").mock(side_effect=nacos)
        back = run_register(make(), deps, wait=False)
    assert (back.error, back.outcome) == (None, "enabled")
    assert inst.enabled is True


def test_register_wait_also_puts_back_what_registers_a_little_later(deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos(major=3)
    started = clock.now

    def app_restarts(request: httpx.Request) -> httpx.Response:
        # The restart trap: each registration comes back disabled (and marked) from Nacos's memory.
        if clock.now - started >= 2 and "DEFAULT_GROUP@@orders" not in nacos.services:
            nacos.add("orders", FakeInstance("10.0.0.7", 8080, enabled=False, metadata={MARK: "true"}))
        if clock.now - started >= 5 and "DEFAULT_GROUP@@dubbo-orders" not in nacos.services:
            nacos.add("dubbo-orders", FakeInstance("10.0.0.7", 20880, enabled=False, metadata={MARK: "true"}))
        return nacos(request)

    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos").mock(side_effect=app_restarts)
        back = run_register(make(PRESTOP_REGISTER_TIMEOUT_SECONDS="60"), deps, wait=True)
    assert (back.error, back.outcome) == (None, "enabled")
    assert all(i.enabled for instances in nacos.services.values() for i in instances)


# -- Dubbo's QoS offline, as an opt-in ----------------------------------------------------------------


def a_dubbo_pod(nacos: FakeNacos) -> dict[str, FakeInstance]:
    return {
        "web": nacos.add("orders", FakeInstance("10.0.0.7", 8080)),
        "interface": nacos.add(
            "providers:com.x.OrderApi::", FakeInstance("10.0.0.7", 20880, metadata={"dubbo": "2.0.2"})
        ),
        "application": nacos.add(
            "dubbo-orders", FakeInstance("10.0.0.7", 20880, metadata={"dubbo.metadata.revision": "8813"})
        ),
    }


def qos(router: respx.MockRouter, answer: Callable[[httpx.Request], httpx.Response]) -> respx.Route:
    return router.route(host="127.0.0.1", port=22222).mock(side_effect=answer)


def test_qos_offline_takes_dubbo_out_and_nacos_proves_it(deps: Deps) -> None:
    nacos = FakeNacos(major=3)
    pod = a_dubbo_pod(nacos)

    def offline(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/offline"
        for key in ("DEFAULT_GROUP@@providers:com.x.OrderApi::", "DEFAULT_GROUP@@dubbo-orders"):
            nacos.services[key] = []  # Dubbo unregisters: the instances are gone, not disabled
        return httpx.Response(200, text="OK\r\n")

    with respx.mock(assert_all_called=False) as router, capture_logs() as logs:
        route = qos(router, offline)
        router.route(host="nacos").mock(side_effect=nacos)
        report = run_deregister(make(PRESTOP_DUBBO_QOS="true"), deps, wait=True, dry_run=False)
        assert route.call_count == 1
    assert (report.error, report.outcome) == (None, "drained")
    assert [(w["serviceName"], w["enabled"]) for w in nacos.writes] == [("orders", "false")]
    assert pod["web"].enabled is False
    done = next(e for e in logs if e["event"] == "dubbo_offline")
    assert sorted(done["unregistered"]) == [
        "DEFAULT_GROUP@@dubbo-orders 10.0.0.7:20880",
        "DEFAULT_GROUP@@providers:com.x.OrderApi:: 10.0.0.7:20880",
    ]


@pytest.mark.parametrize(
    "answer",
    [httpx.Response(200, text="OK"), httpx.Response(403, text=""), httpx.ConnectError("refused")],
    ids=["ok-but-nothing-happened", "foreign-ip-refused", "no-qos-server"],
)
def test_qos_that_does_not_take_them_out_falls_back_to_nacos(deps: Deps, answer: object) -> None:
    nacos = FakeNacos(major=3)
    pod = a_dubbo_pod(nacos)

    def qos_answer(_request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, httpx.Response)
        return answer

    with respx.mock(assert_all_called=False) as router:
        qos(router, qos_answer)
        router.route(host="nacos").mock(side_effect=nacos)
        report = run_deregister(make(PRESTOP_DUBBO_QOS="true"), deps, wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    assert not any(i.enabled for i in pod.values())
    assert sorted(w["serviceName"] for w in nacos.writes) == ["dubbo-orders", "orders", "providers:com.x.OrderApi::"]


def test_register_asks_dubbo_online_first(deps: Deps) -> None:
    nacos = FakeNacos(major=3)
    nacos.add("orders", FakeInstance("10.0.0.7", 8080, enabled=False, metadata={MARK: "true"}))
    with respx.mock(assert_all_called=False) as router:
        route = qos(router, lambda request: httpx.Response(200, text="OK"))
        router.route(host="nacos").mock(side_effect=nacos)
        back = run_register(make(PRESTOP_DUBBO_QOS="true", PRESTOP_DUBBO_QOS_PORT="22222"), deps, wait=False)
        assert [c.request.url.path for c in route.calls] == ["/online"]
    assert back.error is None


def test_the_settings_show_the_drain_options() -> None:
    shown = make(PRESTOP_DUBBO_QOS="true", PRESTOP_DRAIN_PORTS="20880").sources()
    assert shown["drain_scope"] == {"value": "pod", "source": "default"}
    assert shown["drain_ports"] == {"value": "20880", "source": "env PRESTOP_DRAIN_PORTS"}
    assert shown["dubbo_qos"] == {"value": True, "source": "env PRESTOP_DUBBO_QOS"}
    assert shown["dubbo_qos_port"] == {"value": 22222, "source": "default"}
    assert json.dumps(shown)


def test_one_failed_disable_does_not_keep_the_others_in(deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos()
    first = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    second = nacos.add("orders-admin", FakeInstance("10.0.0.7", 8081))
    router = respx.mock(assert_all_called=False)
    router.put(host="nacos", path="/nacos/v1/ns/instance", data__contains={"serviceName": "orders"}).respond(
        500, text="caused: raft leader not ready"
    )
    router.route(host="nacos").mock(side_effect=nacos)
    with router, capture_logs() as logs:
        report = run_deregister(make(), deps, wait=True, dry_run=False)
    assert report.outcome == "failed"
    assert "1 of 2 disables failed: DEFAULT_GROUP@@orders 10.0.0.7:8080" in str(report.error)
    assert (first.enabled, second.enabled) == (True, False)
    assert any(e["event"] == "instance_disable_failed" for e in logs)
    assert clock.now - 1000.0 == pytest.approx(60.0), "then it waits out the budget, as a sleep would"
