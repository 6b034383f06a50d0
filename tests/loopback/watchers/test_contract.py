"""One contract for every watcher: named as in the catalog, and never "gone" without an answer.

Each watcher is built the way the agent builds it (the catalog's ``load_config``, then the
config's ``build`` with the run's context, closed when done), pointed at a backend that cannot
answer: a closed loopback port, or a /proc tree with no TCP tables. It must never say GONE, and
every such poll must fail with a ``WatcherError`` that names its cause (which the wait loop
logs and retries), never with another exception and never as an observation.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from prestop_agent.clock import SystemClock
from prestop_agent.drain import DrainSet
from prestop_agent.errors import WatcherError
from prestop_agent.nacos.model import Instance, Registration, ServerAddress, ServiceKey
from prestop_agent.nacos.registry import Registry
from prestop_agent.nacos.server import NacosServer
from prestop_agent.source import Source
from prestop_agent.watchers import catalog
from prestop_agent.watchers.base import PodTarget, Verdict, WatchContext, Watcher

TARGET = PodTarget("127.0.0.1", 18080, host_ip="10.9.9.9")


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def context(closed_port: int) -> Iterator[WatchContext]:
    """The run's context, with a Nacos cluster whose one server is the closed port."""
    with httpx.Client() as http:
        server = NacosServer(ServerAddress("http", "127.0.0.1", closed_port, "/nacos"), http, attempts=1)
        registry = Registry([server], "auto", TARGET.pod_ip, TARGET.port, "DEFAULT")
        instance = Instance(
            TARGET.pod_ip, TARGET.port, "DEFAULT", enabled=False, healthy=True, weight=1.0, ephemeral=True
        )
        registration = Registration(ServiceKey("public", "DEFAULT_GROUP", "orders"), instance)
        yield WatchContext(TARGET, SystemClock(), registry, DrainSet(registry, [registration], holding=True))


def _from_catalog(name: str, env: dict[str, str], context: WatchContext) -> Iterator[Watcher]:
    configs = catalog.load_configs((name,), Source(env), "PRESTOP_WAIT_FOR")
    with catalog.built(configs.values(), context) as watchers:
        yield from watchers


def registry_watcher(port: int, tmp: Path, context: WatchContext) -> Iterator[Watcher]:
    yield from _from_catalog("registry", {}, context)


def traffic_watcher(port: int, tmp: Path, context: WatchContext) -> Iterator[Watcher]:
    (tmp / "net").mkdir()
    yield from _from_catalog("traffic", {"PRESTOP_PROC_ROOT": str(tmp), "PRESTOP_QUIET_SECONDS": "0.1"}, context)


def endpoints_watcher(port: int, tmp: Path, context: WatchContext) -> Iterator[Watcher]:
    (tmp / "token").write_text("t0ken-value")
    (tmp / "ca.crt").write_text("")
    (tmp / "namespace").write_text("shop")
    env = {"PRESTOP_KUBE_API": f"http://127.0.0.1:{port}", "PRESTOP_KUBE_SA_DIR": str(tmp)}
    yield from _from_catalog("endpoints", env, context)


def aws_alb_watcher(port: int, tmp: Path, context: WatchContext) -> Iterator[Watcher]:
    pytest.importorskip("boto3")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        arn = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/web/0123456789abcdef"
        yield from _from_catalog(
            "aws-alb",
            {"PRESTOP_AWS_TARGET_GROUP_ARNS": arn, "PRESTOP_AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"},
            context,
        )


def aliyun_alb_watcher(port: int, tmp: Path, context: WatchContext) -> Iterator[Watcher]:
    pytest.importorskip("alibabacloud_alb20200616")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ALIBABA_CLOUD_ACCESS_KEY_ID", "testing")
        mp.setenv("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "testing")
        yield from _from_catalog(
            "aliyun-alb",
            {
                "PRESTOP_ALIYUN_SERVER_GROUP_IDS": "sgp-0a1b2c3d4e5f6g7h",
                "PRESTOP_ALIYUN_REGION": "cn-hangzhou",
                "PRESTOP_ALIYUN_ENDPOINT": f"http://127.0.0.1:{port}",
            },
            context,
        )


FACTORIES: dict[str, Callable[[int, Path, WatchContext], Iterator[Watcher]]] = {
    "registry": registry_watcher,
    "traffic": traffic_watcher,
    "endpoints": endpoints_watcher,
    "aws-alb": aws_alb_watcher,
    "aliyun-alb": aliyun_alb_watcher,
}


def test_every_catalog_name_has_a_contract_case() -> None:
    assert set(FACTORIES) == set(catalog.NAMES)


@pytest.fixture(params=sorted(FACTORIES))
def unanswered(
    request: pytest.FixtureRequest, closed_port: int, tmp_path: Path, context: WatchContext
) -> Iterator[tuple[str, Watcher]]:
    name: str = request.param
    factory = FACTORIES[name]
    yield from ((name, w) for w in factory(closed_port, tmp_path, context))


def test_name_matches_the_catalog(unanswered: tuple[str, Watcher]) -> None:
    name, watcher = unanswered
    assert watcher.name == name


def test_no_answer_is_never_gone(unanswered: tuple[str, Watcher]) -> None:
    _, watcher = unanswered
    now = 1000.0
    causes: list[str] = []
    for _ in range(3):
        try:
            observation = watcher.poll(now, 1.0)
        except WatcherError as exc:
            causes.append(str(exc))
            continue
        assert observation.verdict is not Verdict.GONE, observation
        now += 5.0
    assert len(causes) == 3, "a poll that got no answer fails with WatcherError; it is not an observation"
    assert all(cause.strip() for cause in causes), "a failed poll names its cause"


def test_a_restart_is_taken_and_still_no_answer_is_never_gone(unanswered: tuple[str, Watcher]) -> None:
    """Every watcher takes "evidence restarts at t" (the wait passes it on when a registration comes back)."""
    _, watcher = unanswered
    now = 1000.0
    for _ in range(2):
        watcher.restart(now)
        try:
            observation = watcher.poll(now + 1.0, 1.0)
        except WatcherError:
            continue
        finally:
            now += 5.0
        assert observation.verdict is not Verdict.GONE, observation
