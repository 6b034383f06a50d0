"""IPv6 addresses are compared as addresses, written back as the server holds them, and printed unambiguously."""

from __future__ import annotations

import httpx
import pytest
import respx
from structlog.testing import capture_logs

from prestop_agent.agent import Deps, run_deregister
from prestop_agent.config import load
from prestop_agent.source import Source
from tests.fakes import FakeClock, FakeInstance, FakeNacos

# As clients register them: Spring Cloud Alibaba with ipType=IPv6 sends Java's bracketed, uncompressed
# text; other clients send upper case; some send the address with its zone.
REGISTERED = ["[2001:db8:0:0:0:0:0:5]", "2001:DB8::5", "2001:db8:0000::0005", "[2001:db8::5%eth0]"]


@pytest.mark.parametrize("major", [2, 3])
@pytest.mark.parametrize("registered", REGISTERED)
def test_an_ipv6_instance_is_found_disabled_and_proven_whatever_its_text(registered: str, major: int) -> None:
    nacos = FakeNacos(major=major)
    inst = nacos.add("orders", FakeInstance(registered, 8080))
    nacos.add("orders", FakeInstance("2001:db8::6", 8080))
    settings = load(
        Source(
            {
                "POD_IP": "2001:db8::5",
                "NACOS_SERVICE_PORT": "8080",
                "NACOS_SERVICE_NAME": "orders",
                "NACOS_SERVER_ADDR": "nacos:8848",
                "PRESTOP_WAIT_FOR": "registry",
                "PRESTOP_CONSUMER_CACHE_SECONDS": "0",
            }
        )
    )
    with respx.mock(assert_all_called=False) as router, httpx.Client() as http, capture_logs() as logs:
        router.route(host="nacos").mock(side_effect=nacos)
        report = run_deregister(settings, Deps(clock=FakeClock(), http=http), wait=True, dry_run=False)
    assert (report.error, report.outcome) == (None, "drained")
    # Nacos matches a write by the ip text it holds, so the write must send that text back.
    assert nacos.writes[-1]["ip"] == registered
    assert inst.enabled is False
    located = next(e for e in logs if e["event"] == "instance_located")
    assert located["endpoint"] == "[2001:db8::5]:8080"


def test_addresses_compare_as_addresses() -> None:
    from prestop_agent.nacos.model import format_endpoint, same_address

    assert same_address("[2001:db8:0:0:0:0:0:5]", "2001:db8::5")
    assert same_address("2001:DB8::5", "2001:db8::5")
    assert same_address("::ffff:10.0.0.7", "10.0.0.7")
    assert not same_address("2001:db8::5", "2001:db8::50")
    assert not same_address("10.0.0.7", "10.0.0.70")
    assert same_address("not-an-ip", "not-an-ip")
    assert format_endpoint("[2001:db8:0:0:0:0:0:5]", 8080) == "[2001:db8::5]:8080"
    assert format_endpoint("10.0.0.7", 8080) == "10.0.0.7:8080"


def test_pod_ip_may_be_bracketed() -> None:
    settings = load(
        Source(
            {
                "POD_IP": "[2001:DB8::5]",
                "NACOS_SERVICE_PORT": "8080",
                "NACOS_SERVICE_NAME": "orders",
                "NACOS_SERVER_ADDR": "nacos:8848",
            }
        )
    )
    assert settings.pod_ip.value == "2001:db8::5"
