"""Faults around a real Nacos: hung members before it, a gateway that lies for it, IPv6 and long pod names."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator

import httpx
import pytest

from localnacos import HarnessError, JavaInstance, NacosProcess
from tests import faults
from tests.integration.conftest import next_address, unavailable
from tests.integration.test_agent_real_nacos import enabled_on_server, pod_env, run_agent, served, wait_served
from tests.unit.test_not_nacos_answers import NOT_NACOS

pytestmark = pytest.mark.integration


def events(stderr: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


# -- defect: a hung first member stopped the drain --------------------------------------------------


def test_a_hung_first_member_with_default_settings(nacos: NacosProcess, grpc_instance: JavaInstance) -> None:
    """The issue's case: default budget (20 s) and request timeout (5 s), the first member never answers."""
    wait_served(nacos, grpc_instance, True)
    with faults.silent() as hung:
        env = pod_env(nacos, grpc_instance, server_addr=f"{hung},{nacos.http_addr}", budget=20)
        env["PRESTOP_WAIT_FOR"] = "registry"
        run = run_agent(["deregister", "--wait"], env)
    assert run.returncode == 0, run.output
    assert enabled_on_server(nacos, grpc_instance) is False
    assert not served(nacos, grpc_instance)
    assert run.seconds < 20 + 1, f"took {run.seconds:.1f} s"


def test_hung_dripping_and_syn_dropping_members_before_the_real_one(
    nacos: NacosProcess, grpc_instance: JavaInstance
) -> None:
    wait_served(nacos, grpc_instance, True)
    budget = 20
    with faults.silent() as hung, faults.drip(interval=0.5) as dripping, faults.syn_drop() as dropping:
        members = ",".join([hung, dripping, dropping, nacos.http_addr])
        env = pod_env(nacos, grpc_instance, server_addr=members, budget=budget)
        env.update({"PRESTOP_WAIT_FOR": "registry", "PRESTOP_REQUEST_TIMEOUT_SECONDS": "2"})
        run = run_agent(["deregister", "--wait"], env)
    assert run.returncode == 0, run.output
    assert enabled_on_server(nacos, grpc_instance) is False
    assert not served(nacos, grpc_instance)
    assert run.seconds < budget + 1, f"took {run.seconds:.1f} s"


# -- defect: any 200 counted as "not served" ---------------------------------------------------------

SERVED_PATHS = ("/nacos/v1/ns/instance/list", "/nacos/v2/ns/instance/list", "/nacos/v3/client/ns/instance/list")


def lying_gateway(upstream: httpx.Client) -> faults.App:
    """In front of a real server: swallows writes (answering as Nacos does) and serves junk as the served list."""
    junk = itertools.cycle(NOT_NACOS.values())

    def app(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if request.method == "PUT" and path.endswith("/ns/instance"):
            if "/v3/" in path:
                return httpx.Response(200, json={"code": 0, "message": "success", "data": "ok"})
            return httpx.Response(200, text="ok")
        if path in SERVED_PATHS:
            content_type, body = next(junk)
            return httpx.Response(200, text=body, headers={"Content-Type": content_type})
        answer = upstream.request(
            request.method,
            request.url.raw_path.decode(),
            content=request.content,
            headers={"Content-Type": request.headers.get("Content-Type", "application/x-www-form-urlencoded")},
        )
        return httpx.Response(
            answer.status_code, content=answer.content, headers={"Content-Type": answer.headers.get("Content-Type", "")}
        )

    return app


def test_a_gateway_that_ignores_the_write_and_answers_junk_never_drains(
    nacos: NacosProcess, grpc_instance: JavaInstance
) -> None:
    wait_served(nacos, grpc_instance, True)
    budget = 6
    upstream = httpx.Client(base_url=f"http://{nacos.http_addr}", timeout=10.0)
    with upstream, faults.http_app(lying_gateway(upstream)) as gateway:
        env = pod_env(nacos, grpc_instance, server_addr=gateway, budget=budget)
        env["PRESTOP_WAIT_FOR"] = "registry"  # so that only the registry's evidence decides
        run = run_agent(["deregister", "--wait"], env)
    assert run.returncode == 3, run.output
    assert "never shown to be unserved" in run.output, run.output
    finished = [e for e in events(run.stderr) if e.get("event") == "deregister_finished"]
    assert finished
    assert finished[0]["outcome"] != "drained"
    assert enabled_on_server(nacos, grpc_instance) is True
    assert served(nacos, grpc_instance)


# -- defect: IPv6 addresses compared as text ---------------------------------------------------------

_v6 = itertools.count(0x10)


@pytest.fixture(params=["bracketed-uncompressed", "upper-case"])
def ipv6_instance(nacos: NacosProcess, request: pytest.FixtureRequest) -> Iterator[tuple[JavaInstance, str]]:
    """An instance registered over gRPC with the text a client of that kind sends, and the pod's POD_IP."""
    n = next(_v6)
    _, port = next_address()
    pod_ip = f"2001:db8::{n:x}"
    registered = f"[2001:db8:0:0:0:0:0:{n:x}]" if request.param == "bracketed-uncompressed" else pod_ip.upper()
    instance = JavaInstance(nacos, f"it-ipv6-{request.param}", registered, port)
    try:
        instance.start()
    except HarnessError as exc:
        unavailable(str(exc))
    try:
        yield instance, pod_ip
    finally:
        instance.stop()


def test_ipv6_instances_are_found_and_drained_whatever_text_they_were_registered_with(
    nacos: NacosProcess, ipv6_instance: tuple[JavaInstance, str]
) -> None:
    instance, pod_ip = ipv6_instance
    wait_served(nacos, instance, True)
    env = pod_env(nacos, instance)
    env.update({"POD_IP": pod_ip, "PRESTOP_WAIT_FOR": "registry"})
    run = run_agent(["deregister", "--wait"], env)
    assert run.returncode == 0, run.output
    assert enabled_on_server(nacos, instance) is False, "the write must name the instance as the server holds it"
    assert not served(nacos, instance)
    located = [e for e in events(run.stderr) if e.get("event") == "instance_located"]
    assert located
    assert located[0]["endpoint"] == f"[{pod_ip}]:{instance.port}"


# -- defect: long Deployment names gave up -----------------------------------------------------------

LONG_POD = "payment-reconciliation-service-eu-west-production-7d9c8b6fx2x9k"  # 63: base cut to 58, + 5


@pytest.mark.parametrize("hostname", [LONG_POD, "payments"], ids=["truncated-deployment-pod", "no-workload-name"])
def test_a_pod_name_without_the_service_finds_the_instance_by_ip_and_port(
    nacos: NacosProcess, grpc_instance: JavaInstance, hostname: str
) -> None:
    wait_served(nacos, grpc_instance, True)
    env = pod_env(nacos, grpc_instance, service=None, hostname=hostname)
    env["PRESTOP_WAIT_FOR"] = "registry"
    run = run_agent(["deregister", "--wait"], env)
    assert run.returncode == 0, run.output
    assert enabled_on_server(nacos, grpc_instance) is False
    assert not served(nacos, grpc_instance)
    assert f"NACOS_SERVICE_NAME={grpc_instance.service}" in run.output, "it should say which service it found"
