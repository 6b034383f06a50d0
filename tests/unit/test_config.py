from __future__ import annotations

import pytest

from prestop_agent.config import derive_service, load
from prestop_agent.errors import ConfigError
from prestop_agent.nacos.model import ServerAddress, parse_server_addresses
from prestop_agent.source import Source

BASE = {"POD_IP": "10.1.2.3", "NACOS_SERVICE_PORT": "8080", "NACOS_SERVER_ADDR": "nacos:8848", "HOSTNAME": "shop-0"}


def settings(env: dict[str, str], **flags: object):  # type: ignore[no-untyped-def]
    return load(Source(env, flags))


@pytest.mark.parametrize(
    ("pod", "service"),
    [
        ("jdd-parking-cloud-admin-5456f59db7-hcdd7", "jdd-parking-cloud-admin"),
        ("web-0", "web"),
        ("web-12", "web"),
        ("node-agent-x7k2p", "node-agent"),
        ("api-7d4b9c8f6-2xzqv", "api"),
        # Kubernetes cuts a generated name's base (ReplicaSet name + "-") to 58 characters, then adds 5:
        (
            "payment-reconciliation-service-eu-west-production-7d9c8b6fx2x9k",
            "payment-reconciliation-service-eu-west-production",
        ),
        (
            "settlement-ledger-reconciliation-worker-eu-central-1-blue-x2x9k",
            "settlement-ledger-reconciliation-worker-eu-central-1-blue",
        ),
    ],
)
def test_service_is_derived_from_generated_pod_names(pod: str, service: str) -> None:
    assert derive_service(pod) == service


def _pod_name(deployment: str, template_hash: str, random: str = "x2x9k") -> str:
    """A Deployment's pod name as Kubernetes makes it: (ReplicaSet name + "-") cut to 58, then 5 random."""
    return f"{deployment}-{template_hash}-"[:58] + random


@pytest.mark.parametrize("length", range(40, 58))
def test_every_truncation_of_a_long_deployment_name_is_derived(length: int) -> None:
    deployment = ("payments-reconciliation-" * 3)[:length].rstrip("-")
    assert derive_service(_pod_name(deployment, "7d9c8b6f5d")) == deployment


@pytest.mark.parametrize("pod", ["standalone", "Web_1", "a" * 63])
def test_undecodable_pod_name_gives_none(pod: str) -> None:
    assert derive_service(pod) is None


def test_an_undecodable_pod_name_means_a_lookup_by_ip_and_port() -> None:
    s = settings({**BASE, "HOSTNAME": "standalone"})
    assert s.service.value == ""
    assert s.service_derived
    assert "looked up by ip:port" in s.service.source


def test_flag_beats_nacos_variable_beats_spring_fallback_beats_default() -> None:
    env = {**BASE, "NACOS_GROUP": "G1", "SPRING_CLOUD_NACOS_DISCOVERY_GROUP": "G2"}
    assert settings(env).group.value == "G1"
    assert settings(env).group.source == "env NACOS_GROUP"
    assert settings(env, group="G0").group.source == "--group"
    env.pop("NACOS_GROUP")
    assert settings(env).group.value == "G2"
    env.pop("SPRING_CLOUD_NACOS_DISCOVERY_GROUP")
    assert settings(env).group.source == "default"
    assert settings(env).group.value == "DEFAULT_GROUP"


def test_spring_variables_fill_in() -> None:
    env = {
        "POD_IP": "10.1.2.3",
        "SERVER_PORT": "9090",
        "SPRING_CLOUD_NACOS_SERVER_ADDR": "https://nacos.example/ctx",
        "SPRING_APPLICATION_NAME": "orders",
        "SPRING_CLOUD_NACOS_DISCOVERY_NAMESPACE": "prod",
    }
    s = settings(env)
    assert (s.port.value, s.service.value, s.namespace.value) == (9090, "orders", "prod")
    assert s.servers.value == (ServerAddress("https", "nacos.example", 8848, "/ctx"),)
    assert not s.service_derived


def test_service_derived_from_hostname_says_so() -> None:
    s = settings({**BASE, "HOSTNAME": "shop-6d9f7c8b5d-x7k2p"})
    assert s.service.value == "shop"
    assert s.service_derived
    assert "derived from HOSTNAME" in s.service.source


def test_budget_defaults_to_grace_minus_reserve() -> None:
    assert settings(BASE).budget.value == 20.0
    s = settings({**BASE, "PRESTOP_GRACE_SECONDS": "60", "PRESTOP_SHUTDOWN_RESERVE_SECONDS": "15"})
    assert s.budget.value == 45.0
    assert settings({**BASE, "PRESTOP_BUDGET_SECONDS": "7.5"}).budget.value == 7.5


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"POD_IP": ""}, "POD_IP is not set"),
        ({"POD_IP": "10.1.2"}, "POD_IP='10.1.2' is not an IP address"),
        ({"NACOS_SERVICE_PORT": "70000"}, "NACOS_SERVICE_PORT='70000' is out of range"),
        ({"NACOS_SERVICE_PORT": "http"}, "NACOS_SERVICE_PORT='http' is not a port number"),
        ({"NACOS_SERVER_ADDR": "ftp://x:1"}, "unparsable server address 'ftp://x:1'"),
        ({"NACOS_SERVER_ADDR": "nacos:99999"}, "unparsable server address 'nacos:99999'"),
        ({"NACOS_SERVER_ADDR": "http://u:p@nacos"}, "must not carry credentials"),
        ({"PRESTOP_BUDGET_SECONDS": "soon"}, "PRESTOP_BUDGET_SECONDS='soon' is not a number"),
        ({"PRESTOP_BUDGET_SECONDS": "-3"}, "PRESTOP_BUDGET_SECONDS='-3' must be"),
        ({"PRESTOP_BUDGET_SECONDS": "nan"}, "PRESTOP_BUDGET_SECONDS='nan' must be"),
        ({"NACOS_API": "v9"}, "NACOS_API='v9' is not a known API"),
        ({"NACOS_USERNAME": "nacos"}, "NACOS_PASSWORD is not set"),
        ({"PRESTOP_GRACE_SECONDS": "10"}, "leaves no time"),
        ({"PRESTOP_GRACE_SECONDS": "30", "PRESTOP_BUDGET_SECONDS": "40"}, "longer than PRESTOP_GRACE_SECONDS"),
        ({"PRESTOP_LOG_TO_PID1": "maybe"}, "PRESTOP_LOG_TO_PID1='maybe'"),
    ],
)
def test_bad_input_names_variable_value_and_fix(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings({**BASE, **env})
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


def test_password_never_shown_in_sources() -> None:
    s = settings({**BASE, "NACOS_USERNAME": "nacos", "NACOS_PASSWORD": "hunter2-secret"})
    assert "hunter2-secret" not in repr(s)
    assert "hunter2-secret" not in str(s.sources())
    assert s.sources()["password"] == {"value": "***", "source": "env NACOS_PASSWORD"}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("nacos", ServerAddress("http", "nacos", 8848, "/nacos")),
        ("10.0.0.1:8849", ServerAddress("http", "10.0.0.1", 8849, "/nacos")),
        ("https://n.example:443", ServerAddress("https", "n.example", 443, "/nacos")),
        ("http://n:80/custom/", ServerAddress("http", "n", 80, "/custom")),
        ("[::1]:8848", ServerAddress("http", "::1", 8848, "/nacos")),
    ],
)
def test_server_address_forms(text: str, expected: ServerAddress) -> None:
    assert parse_server_addresses("NACOS_SERVER_ADDR", text) == (expected,)


def test_several_servers_keep_their_order() -> None:
    parsed = parse_server_addresses("X", "a:1, b:2,,c")
    assert [p.host for p in parsed] == ["a", "b", "c"]
    assert parsed[1].base_url == "http://b:2/nacos"


def test_default_policy_waits_on_traffic_instead_of_the_cache_allowance() -> None:
    s = settings(BASE)
    assert s.wait_for.value == ("registry", "traffic")
    assert (s.consumer_cache.value, s.consumer_cache.source) == (0.0, "default")
    registry_only = settings({**BASE, "PRESTOP_WAIT_FOR": "Registry"})
    assert registry_only.wait_for.value == ("registry",)
    assert registry_only.consumer_cache.value == 35.0
    explicit = settings({**BASE, "PRESTOP_CONSUMER_CACHE_SECONDS": "12"})
    assert explicit.consumer_cache.value == 12.0


@pytest.mark.parametrize("port", ["8_080", "+8080", "\uff18\uff10\uff18\uff10", "8080.0", "0x1f90", "8 080"])
def test_a_port_is_plain_ascii_digits(port: str) -> None:
    with pytest.raises(ConfigError, match="is not a port number"):
        settings({**BASE, "NACOS_SERVICE_PORT": port})


@pytest.mark.parametrize("seconds", ["2_0", "+20", "\uff12\uff10"])
def test_seconds_are_plain_ascii_numbers(seconds: str) -> None:
    with pytest.raises(ConfigError, match="is not a number of seconds"):
        settings({**BASE, "PRESTOP_BUDGET_SECONDS": seconds})


@pytest.mark.parametrize(
    "name", ["PRESTOP_BUDGET_SECONDS", "PRESTOP_GRACE_SECONDS", "PRESTOP_REGISTER_TIMEOUT_SECONDS"]
)
def test_a_huge_number_of_seconds_is_refused_in_one_line(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings({**BASE, name: "1e10"})
    assert f"{name}='1e10' is longer than a day" in str(caught.value)


def test_a_password_keeps_its_spaces() -> None:
    s = settings({**BASE, "NACOS_USERNAME": " nacos ", "NACOS_PASSWORD": "  pass word  "})
    assert s.password is not None
    assert s.password.value == "  pass word  "
    assert s.username is not None
    assert s.username.value == "nacos"
