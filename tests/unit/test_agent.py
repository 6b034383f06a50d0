"""deregister/register/status against Nacos response shapes, with an injected clock (no real waiting)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from prestop_agent.agent import Deps, run_deregister, run_register, run_status
from prestop_agent.config import Settings, load
from prestop_agent.errors import AuthError, BudgetExhausted, InstanceNotFound, RegistryError, ServerError
from prestop_agent.source import Source
from tests.fakes import FakeClock, FakeInstance, FakeNacos

ENV = {
    "POD_IP": "10.0.0.7",
    "NACOS_SERVICE_PORT": "8080",
    "NACOS_SERVER_ADDR": "nacos-a:8848",
    "HOSTNAME": "orders-6d9f7c8b5d-x7k2p",
    "PRESTOP_BUDGET_SECONDS": "20",
    "PRESTOP_CONSUMER_CACHE_SECONDS": "5",
    "PRESTOP_WAIT_FOR": "registry",
}


def make(**env: str) -> Settings:
    return load(Source({**ENV, **env}))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client() as client:
        yield client


@pytest.fixture
def deps(clock: FakeClock, http: httpx.Client) -> Deps:
    return Deps(clock=clock, http=http)


def serve(nacos: FakeNacos, host: str = "nacos-a") -> respx.MockRouter:
    router = respx.mock(assert_all_called=False)
    router.route(host=host).mock(side_effect=nacos)
    return router


@pytest.mark.parametrize("major", [2, 3])
def test_deregister_wait_disables_proves_and_waits_the_cache(major: int, deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos(major=major)
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080, weight=3.0, metadata={"zone": "a"}))
    nacos.add("orders", FakeInstance("10.0.0.8", 8080))
    with serve(nacos), capture_logs() as logs:
        report = run_deregister(make(), deps, wait=True, dry_run=False)
    assert report.error is None
    assert report.outcome == "drained"
    assert inst.enabled is False
    write = nacos.writes[-1]
    # Weight and metadata go back as observed, with the drain's mark, so that `register` knows what it took out.
    assert (write["enabled"], write["weight"]) == ("false", "3.0")
    assert json.loads(write["metadata"]) == {"zone": "a", "prestop-agent.disabled": "true"}
    watchers = report.data["watchers"]
    assert isinstance(watchers, dict)
    assert watchers["registry"]["verdict"] == "gone"
    # The consumer-cache allowance was waited for, on the injected clock.
    assert 5.0 <= clock.now - 1000.0 < 20.0
    events = [e["event"] for e in logs]
    assert events.index("instance_disabled") < events.index("instance_unserved") < events.index("deregister_finished")


def test_ok_alone_is_never_trusted(deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos(ignore_writes=True)
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with serve(nacos):
        report = run_deregister(make(), deps, wait=True, dry_run=False)
    assert isinstance(report.error, RegistryError)
    assert "still served" in str(report.error)
    assert report.outcome == "failed"
    # Fail-safe: the budget was waited out, like the sleep the agent replaces.
    assert clock.now - 1000.0 == pytest.approx(20.0)


def test_no_wait_returns_once_unserved(deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with serve(nacos):
        report = run_deregister(make(), deps, wait=False, dry_run=False)
    assert (report.error, report.outcome) == (None, "disabled")
    assert clock.now == 1000.0


def test_dry_run_sends_no_write(deps: Deps) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with serve(nacos):
        report = run_deregister(make(), deps, wait=True, dry_run=True)
    assert report.outcome == "dry_run"
    assert report.data["would"] == {"DEFAULT_GROUP@@orders 10.0.0.7:8080": "disable"}
    assert nacos.writes == []


def test_already_disabled_instance_is_confirmed_without_a_write(deps: Deps) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080, enabled=False))
    with serve(nacos):
        report = run_deregister(make(PRESTOP_CONSUMER_CACHE_SECONDS="0"), deps, wait=True, dry_run=False)
    assert report.outcome == "drained"
    assert nacos.writes == []


def test_wrong_derived_service_is_found_by_ip_port(deps: Deps) -> None:
    nacos = FakeNacos()
    nacos.add("other", FakeInstance("10.0.0.9", 8080))
    inst = nacos.add("orders-service", FakeInstance("10.0.0.7", 8080))
    with serve(nacos), capture_logs() as logs:
        report = run_deregister(make(), deps, wait=False, dry_run=False)
    assert report.error is None
    assert inst.enabled is False
    assert report.data["found_by_search"] is True
    corrected = next(e for e in logs if e["event"] == "service_name_corrected")
    assert corrected["hint"] == "set NACOS_SERVICE_NAME=orders-service"


def test_explicit_service_that_does_not_hold_the_instance_fails_naming_the_variable_in_scope_service(
    deps: Deps,
) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.1", 8080))
    nacos.add("orders-v2", FakeInstance("10.0.0.7", 8080))
    settings = make(NACOS_SERVICE_NAME="orders", PRESTOP_DRAIN_SCOPE="service")
    with serve(nacos):
        report = run_deregister(settings, deps, wait=False, dry_run=False)
    assert isinstance(report.error, InstanceNotFound)
    assert "set NACOS_SERVICE_NAME=orders-v2" in str(report.error)
    assert nacos.writes == []


def test_explicit_service_that_does_not_hold_the_instance_is_drained_where_it_is_in_scope_pod(deps: Deps) -> None:
    """Every registration at the pod's IP sends traffic into this pod, whatever service the settings name."""
    nacos = FakeNacos()
    other = nacos.add("orders", FakeInstance("10.0.0.1", 8080))
    inst = nacos.add("orders-v2", FakeInstance("10.0.0.7", 8080))
    with serve(nacos), capture_logs() as logs:
        report = run_deregister(make(NACOS_SERVICE_NAME="orders"), deps, wait=False, dry_run=False)
    assert (report.error, report.outcome) == (None, "disabled")
    assert (inst.enabled, other.enabled) == (False, True)
    warning = next(e for e in logs if e["event"] == "configured_service_not_registered")
    assert warning["hint"] == "set NACOS_SERVICE_NAME=orders-v2"


def test_instance_nowhere_fails_with_the_variables_to_check(deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.1", 8080))
    with serve(nacos):
        report = run_deregister(make(), deps, wait=True, dry_run=False)
    assert isinstance(report.error, InstanceNotFound)
    assert "POD_IP" in str(report.error)
    assert "NACOS_NAMESPACE" in str(report.error)
    assert nacos.writes == []
    assert clock.now - 1000.0 == pytest.approx(20.0)


def test_auth_logs_in_and_never_logs_secrets(deps: Deps) -> None:
    nacos = FakeNacos(users={"nacos": "s3cret-pw"})
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with serve(nacos), capture_logs() as logs:
        report = run_deregister(
            make(NACOS_USERNAME="nacos", NACOS_PASSWORD="s3cret-pw"), deps, wait=False, dry_run=False
        )
    assert report.error is None
    assert nacos.logins == 1
    text = repr(logs) + repr(report.as_dict())
    assert "s3cret-pw" not in text
    assert "secretvalue" not in text


def test_wrong_password_is_an_auth_error(deps: Deps) -> None:
    nacos = FakeNacos(users={"nacos": "right"})
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with serve(nacos):
        report = run_deregister(make(NACOS_USERNAME="nacos", NACOS_PASSWORD="wrong"), deps, wait=False, dry_run=False)
    assert isinstance(report.error, AuthError)
    assert "check NACOS_USERNAME and NACOS_PASSWORD" in str(report.error)


def test_expired_token_gets_one_relogin(deps: Deps) -> None:
    nacos = FakeNacos(users={"nacos": "pw"})
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    settings = make(NACOS_USERNAME="nacos", NACOS_PASSWORD="pw")
    with serve(nacos):
        run_status(settings, deps)
        nacos.tokens.clear()  # the server forgot every token
        report = run_deregister(settings, deps, wait=False, dry_run=False)
    assert report.error is None
    assert nacos.logins >= 2


def test_3x_without_credentials_says_which_variables_to_set(deps: Deps) -> None:
    nacos = FakeNacos(major=3, users={"nacos": "pw"})
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    with serve(nacos):
        report = run_deregister(make(), deps, wait=False, dry_run=False)
    assert isinstance(report.error, AuthError)
    assert "set NACOS_USERNAME and NACOS_PASSWORD" in str(report.error)


def test_auto_gets_past_410_when_v1_was_forced_to_v3(deps: Deps) -> None:
    """A server that serves the v1 catalog but answers the v1 write with 410 (3.x with v1 reads left on)."""
    nacos = FakeNacos(major=3)
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    router = respx.mock(assert_all_called=False)
    router.get(host="nacos-a", path="/nacos/v3/admin/ns/instance/list").mock(
        side_effect=[httpx.Response(404, json={"status": 404, "error": "Not Found", "path": "/nacos/v3/x"})]
        + [nacos] * 20  # type: ignore[list-item]
    )
    router.get(host="nacos-a", path="/nacos/v1/ns/catalog/instances").mock(
        return_value=httpx.Response(200, json={"count": 1, "list": [{"ip": "10.0.0.7", "port": 8080}]})
    )
    router.route(host="nacos-a").mock(side_effect=nacos)
    with router, capture_logs() as logs:
        report = run_deregister(make(), deps, wait=False, dry_run=False)
    assert report.error is None
    assert inst.enabled is False
    assert any(e["event"] == "nacos_api_switched" and e["new"] == "v3" for e in logs)


def test_failover_to_the_second_server(deps: Deps) -> None:
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    router = respx.mock(assert_all_called=False)
    router.route(host="nacos-a").mock(side_effect=httpx.ConnectError("refused"))
    router.route(host="nacos-b").mock(side_effect=nacos)
    with router:
        report = run_deregister(
            make(NACOS_SERVER_ADDR="nacos-a:8848,nacos-b:8848", PRESTOP_CONSUMER_CACHE_SECONDS="1"),
            deps,
            wait=True,
            dry_run=False,
        )
    assert report.error is None
    assert report.outcome == "drained"
    assert inst.enabled is False


def test_5xx_is_retried_then_succeeds(deps: Deps) -> None:
    nacos = FakeNacos()
    inst = nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    router = respx.mock(assert_all_called=False)
    router.put(host="nacos-a", path="/nacos/v1/ns/instance").mock(
        side_effect=[httpx.Response(500, text="caused: raft leader not ready"), nacos]  # type: ignore[list-item]
    )
    router.route(host="nacos-a").mock(side_effect=nacos)
    with router:
        report = run_deregister(make(), deps, wait=False, dry_run=False)
    assert report.error is None
    assert inst.enabled is False


def test_unreachable_servers_mean_exit_3_after_the_budget(deps: Deps, clock: FakeClock) -> None:
    router = respx.mock(assert_all_called=False)
    router.route(host="nacos-a").mock(side_effect=httpx.ConnectTimeout("timed out"))
    with router:
        report = run_deregister(make(), deps, wait=True, dry_run=False)
    assert isinstance(report.error, ServerError)
    assert clock.now - 1000.0 == pytest.approx(20.0)


def test_budget_exhausted_while_still_served_by_a_stale_server(deps: Deps) -> None:
    """Server b never drops the instance: the wait runs to the budget and says which watcher was pending."""
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    stale = FakeNacos()
    stale.add("orders", FakeInstance("10.0.0.7", 8080))
    stale.ignore_writes = True
    router = respx.mock(assert_all_called=False)
    router.route(host="nacos-a").mock(side_effect=nacos)
    router.route(host="nacos-b").mock(side_effect=stale)
    settings = make(NACOS_SERVER_ADDR="nacos-a,nacos-b")
    with router:
        report = run_deregister(settings, deps, wait=True, dry_run=False)
    # the proof step itself already fails: b still serves it
    assert isinstance(report.error, RegistryError)


def test_budget_exhausted_when_a_watcher_never_says_gone(deps: Deps, clock: FakeClock) -> None:
    from prestop_agent.watchers.base import Observation, Verdict, WatchContext

    class Busy:
        name = "traffic"

        def poll(self, now: float, timeout: float) -> Observation:
            return Observation(Verdict.PRESENT, "active")

        def restart(self, at: float) -> None:
            """Nothing judged over time."""

        def close(self) -> None:
            """Nothing to release."""

    class BusyConfig:
        def build(self, context: WatchContext) -> Busy:
            return Busy()

    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    settings = load(Source({**ENV, "PRESTOP_WAIT_FOR": "registry"}))
    settings = Settings(
        **{
            **settings.__dict__,
            "wait_for": settings.wait_for.__class__(("registry", "traffic"), "x"),
            "watcher_configs": {**settings.watcher_configs, "traffic": BusyConfig()},
        }
    )
    with serve(nacos):
        report = run_deregister(settings, deps, wait=True, dry_run=False)
    assert isinstance(report.error, BudgetExhausted)
    assert "traffic=present(active)" in str(report.error)
    assert clock.now - 1000.0 == pytest.approx(20.0)


def test_watchers_are_built_with_the_run_context_and_closed(deps: Deps, clock: FakeClock) -> None:
    from prestop_agent.watchers.base import Observation, Verdict, WatchContext

    built: list[WatchContext] = []
    closed: list[str] = []

    class Quiet:
        name = "traffic"

        def poll(self, now: float, timeout: float) -> Observation:
            return Observation(Verdict.GONE, "quiet")

        def restart(self, at: float) -> None:
            """Nothing judged over time."""

        def close(self) -> None:
            closed.append(self.name)

    class QuietConfig:
        def build(self, context: WatchContext) -> Quiet:
            built.append(context)
            return Quiet()

    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080))
    settings = make(PRESTOP_WAIT_FOR="registry,traffic")
    settings = replace(settings, watcher_configs={**settings.watcher_configs, "traffic": QuietConfig()})
    with serve(nacos):
        drained = run_deregister(settings, deps, wait=True, dry_run=False)
        status = run_status(settings, deps)
    assert drained.outcome == "drained"
    assert status.data["watchers"]["traffic"]["verdict"] == "gone"  # type: ignore[index]
    assert closed == ["traffic", "traffic"]  # once after the wait, once after status
    assert [c.clock for c in built] == [deps.clock, deps.clock]
    assert [str(r) for r in built[0].registrations.registrations] == ["DEFAULT_GROUP@@orders 10.0.0.7:8080"]
    assert built[0].registrations.holding, "the drain's watchers hold the registrations out"
    assert not built[1].registrations.holding, "status only looks"
    assert built[0].target.pod_ip == "10.0.0.7"


def test_register_wait_enables_after_the_app_registers(deps: Deps, clock: FakeClock) -> None:
    nacos = FakeNacos()
    settings = make(NACOS_SERVICE_NAME="orders", PRESTOP_REGISTER_TIMEOUT_SECONDS="30")
    nacos.add("orders", FakeInstance("10.0.0.1", 8080))

    appeared: list[FakeInstance] = []

    def app_registers_late(request: httpx.Request) -> httpx.Response:
        if clock.now - 1000.0 >= 3 and not appeared:
            appeared.append(nacos.add("orders", FakeInstance("10.0.0.7", 8080, enabled=False)))
        return nacos(request)

    with respx.mock(assert_all_called=False) as router:
        router.route(host="nacos-a").mock(side_effect=app_registers_late)
        report = run_register(settings, deps, wait=True)
    assert report.error is None
    assert report.outcome == "enabled"
    assert appeared[0].enabled is True


def test_register_without_the_app_times_out(deps: Deps) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.1", 8080))
    with serve(nacos):
        report = run_register(make(NACOS_SERVICE_NAME="orders", PRESTOP_REGISTER_TIMEOUT_SECONDS="5"), deps, wait=True)
    assert isinstance(report.error, InstanceNotFound)
    assert "did not register within 5s" in str(report.error)


def test_status_reports_each_server_and_the_plan(deps: Deps) -> None:
    nacos = FakeNacos()
    nacos.add("orders", FakeInstance("10.0.0.7", 8080, weight=2.0))
    router = respx.mock(assert_all_called=False)
    router.route(host="nacos-a").mock(side_effect=nacos)
    router.route(host="nacos-b").mock(side_effect=httpx.ConnectError("refused"))
    with router:
        report = run_status(make(NACOS_SERVER_ADDR="nacos-a,nacos-b"), deps)
    assert report.error is None
    servers = report.data["servers"]
    assert isinstance(servers, list)
    assert servers[0]["found"] is True
    assert servers[0]["served"] is True
    assert servers[0]["instance"]["weight"] == 2.0
    assert servers[1]["error"] is not None
    assert "disable 10.0.0.7:8080" in str(report.data["deregister_would"])
    assert nacos.writes == []


def test_registry_watcher_looks_again_soon_after_a_write_then_less_often(clock: FakeClock) -> None:
    from types import SimpleNamespace

    from prestop_agent.drain import Check
    from prestop_agent.watchers.registry import RegistryWatcher

    answers = [True, True, True, False, True]  # served after the write, then not, then served again

    class Lagging:
        def __init__(self) -> None:
            self.registrations = ["orders"]
            self.kept: list[str] = []
            self.reasserted = 0

        def check(self, deadline: object) -> Check:
            served = answers.pop(0)
            serving = SimpleNamespace(
                answered={"orders": ["nacos-a"]},
                failed=[],
                skipped=[],
                servers=lambda r: ["nacos-a"] if served else [],
            )
            return Check(serving, ["orders"] if served else [], [])  # type: ignore[arg-type, list-item]

        def hold(self, check: Check, deadline: object) -> list[str]:
            return []

    watcher = RegistryWatcher(Lagging(), 0.0, clock)  # type: ignore[arg-type]
    hints = [watcher.poll(clock.now, 1.0).details.get("next_poll_s") for _ in range(5)]
    assert hints == [0.25, 0.5, 1.0, None, 0.25]  # unserved in between: the next served answer starts over
