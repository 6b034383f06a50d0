"""Dubbo's own switch for its registrations, on the provider's QoS port (opt-in: ``PRESTOP_DUBBO_QOS=true``).

``offline`` makes a Dubbo provider unregister every service it exported, from every registry it
uses (other namespaces and registries too, which the agent does not see); ``online`` registers
them again. They remove the registrations instead of disabling them. The QoS server answers
local calls only by default (``qos-accept-foreign-ip=false``; a call from another address gets a
403), so the agent calls 127.0.0.1, which is the provider's own loopback in a pod.

QoS answers ``OK`` as readily as Nacos answers ``ok``: on a real Dubbo 3.3 provider the
interface-level registrations left Nacos about 0.2 s after the answer and the application-level
one about 0.6 s after it. So the answer is never taken as proof: the registrations are checked
in Nacos like any other, and whatever is still served is disabled there.
"""

from __future__ import annotations

from dataclasses import dataclass

import httpx
import structlog

from prestop_agent.clock import Deadline
from prestop_agent.http_cap import HEADERS, RequestCap
from prestop_agent.nacos.model import Instance

log = structlog.get_logger(__name__)

QOS_HOST = "127.0.0.1"


@dataclass(frozen=True)
class QosAnswer:
    command: str
    ok: bool  # HTTP 200 with the body "OK"
    detail: str


def qos_command(http: httpx.Client, port: int, command: str, deadline: Deadline, request_timeout: float) -> QosAnswer:
    """One QoS command over HTTP, capped like every request; never raises for the provider's answer."""
    timeout = deadline.cap(request_timeout)
    url = f"http://{QOS_HOST}:{port}/{command}"
    with RequestCap(timeout) as cap:
        try:
            response = http.get(url, headers=HEADERS, timeout=httpx.Timeout(timeout), extensions={"trace": cap.trace})
        except httpx.HTTPError as exc:
            answer = QosAnswer(command, False, f"{type(exc).__name__}: {_first_line(exc)}")
        else:
            text = " ".join(response.text.split())[:200]
            answer = QosAnswer(command, response.status_code == 200 and text == "OK", f"{response.status_code} {text}")
    log.info("dubbo_qos_command", command=command, port=port, ok=answer.ok, answer=answer.detail)
    return answer


def is_dubbo(instance: Instance) -> bool:
    """Registered by Dubbo: its interface-level instances carry ``dubbo`` (the protocol version) in their
    metadata, its application-level ones ``dubbo.metadata.revision`` and other ``dubbo.`` keys."""
    return any(key == "dubbo" or key.startswith("dubbo.") for key in instance.metadata)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""
