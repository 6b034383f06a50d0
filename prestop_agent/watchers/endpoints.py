"""Watcher ``endpoints``: has Kubernetes stopped routing Service traffic to this pod?

Reads the EndpointSlices (``discovery.k8s.io/v1``) of the pod's namespace from the
Kubernetes API with the pod's service-account token. Every slice that lists the pod's IP
is checked: the watcher says GONE when the endpoint is no longer ``ready`` in all of
them (Kubernetes 1.26+ keeps terminating endpoints in the slice with ``ready: false``,
``serving`` and ``terminating``), or when no slice lists the pod at all. An absent
``ready`` means "unknown, treat as ready", as the API documents. Services with
``publishNotReadyAddresses`` keep terminating endpoints ready on purpose; this watcher
then stays PRESENT, which is the truth for them.

The token is read again on every poll (projected tokens rotate) and never logged. The
service account needs get, list and watch on ``endpointslices`` in ``discovery.k8s.io``
(see k8s-examples/rbac-endpoints-watcher.yaml).

Settings: ``PRESTOP_KUBE_API`` (default ``https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT``),
``PRESTOP_KUBE_SA_DIR`` (default the standard mount), ``PRESTOP_KUBE_NAMESPACE`` or
``POD_NAMESPACE`` (default the service account's namespace file), and
``PRESTOP_ENDPOINTS_SERVICES`` to list only the slices of the named Services. The namespace
file, the token's presence and the cluster CA are checked when the settings are loaded, before
anything is written.
"""

from __future__ import annotations

import ipaddress
import os
import re
import ssl
import urllib.parse
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from prestop_agent.errors import ConfigError, WatcherError
from prestop_agent.source import Source, parse_port
from prestop_agent.watchers.base import Observation, Verdict, WatchContext

NAME = "endpoints"

DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
PAGE_SIZE = 500
MAX_REQUEST_SECONDS = 10.0
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
RBAC_HINT = (
    "grant the pod's service account get, list and watch on endpointslices (apiGroup discovery.k8s.io) "
    "in namespace {namespace}, e.g. with k8s-examples/rbac-endpoints-watcher.yaml"
)

log = structlog.get_logger("prestop_agent.watchers.endpoints")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class EndpointsConfig:
    api_url: str
    sa_dir: str = DEFAULT_SA_DIR
    namespace: str | None = None  # None: read it from the service account's namespace file
    services: tuple[str, ...] = ()

    def build(self, context: WatchContext) -> EndpointsWatcher:
        namespace = self.namespace if self.namespace is not None else _namespace_file(self.sa_dir)
        token_file = _token_file(self.sa_dir)
        verify = _cluster_ca(self.sa_dir) if self.api_url.startswith("https://") else True
        client = httpx.Client(base_url=self.api_url, verify=verify, trust_env=False, follow_redirects=False)
        return EndpointsWatcher(
            client,
            namespace=namespace,
            pod_ip=context.target.pod_ip,
            token=lambda: _read_token(token_file),
            services=self.services,
            monotonic=context.clock.monotonic,
        )


def _namespace_file(sa_dir: str) -> str:
    namespace_file = os.path.join(sa_dir, "namespace")
    try:
        with open(namespace_file, encoding="utf-8") as handle:
            namespace = handle.read().strip()
    except OSError as exc:
        raise ConfigError(
            f"cannot read the pod's namespace from {namespace_file} ({exc.strerror}); set POD_NAMESPACE "
            "from the downward API (fieldRef: metadata.namespace)"
        ) from None
    _check_namespace(namespace_file, namespace)
    return namespace


def _token_file(sa_dir: str) -> str:
    token_file = os.path.join(sa_dir, "token")
    if not os.path.isfile(token_file):
        raise ConfigError(
            f"no service-account token at {token_file}; keep automountServiceAccountToken enabled for the pod "
            "or set PRESTOP_KUBE_SA_DIR"
        )
    return token_file


def _cluster_ca(sa_dir: str) -> ssl.SSLContext:
    ca_file = os.path.join(sa_dir, "ca.crt")
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load the cluster CA from {ca_file} ({exc}); mount the service account or set PRESTOP_KUBE_SA_DIR"
        ) from None


def load_config(src: Source, watched: Collection[str] = ()) -> EndpointsConfig:
    api = src.raw("PRESTOP_KUBE_API")
    if api is not None:
        api_url = _check_url("PRESTOP_KUBE_API", api.value)
    else:
        host = src.raw("KUBERNETES_SERVICE_HOST")
        if host is None:
            raise ConfigError(
                "the endpoints watcher needs the Kubernetes API, but KUBERNETES_SERVICE_HOST is not set "
                "(not running in a pod?); set PRESTOP_KUBE_API=https://host:port or drop endpoints from "
                "PRESTOP_WAIT_FOR"
            )
        port_found = src.raw("KUBERNETES_SERVICE_PORT")
        port = 443 if port_found is None else parse_port("KUBERNETES_SERVICE_PORT", port_found.value)
        hostname = host.value
        if ":" in hostname and not hostname.startswith("["):
            hostname = f"[{hostname}]"  # an IPv6 service address
        api_url = _check_url("KUBERNETES_SERVICE_HOST", f"https://{hostname}:{port}")
    sa_dir = src.string("PRESTOP_KUBE_SA_DIR", default=DEFAULT_SA_DIR).value
    namespace = src.raw("PRESTOP_KUBE_NAMESPACE", "POD_NAMESPACE")
    if namespace is not None:
        _check_namespace(namespace.name, namespace.value)
    services = src.items("PRESTOP_ENDPOINTS_SERVICES")
    if services is not None:
        for service in services.value:
            if not _DNS_LABEL.match(service):
                raise ConfigError(
                    f"PRESTOP_ENDPOINTS_SERVICES contains {service!r}, which is not a Service name; "
                    "use comma-separated names such as web,web-headless"
                )
    # The service-account files are read now, before anything is written: a watcher that cannot be
    # built after the instance was disabled would leave it disabled with nothing to show for it.
    resolved = None if namespace is None else namespace.value
    if src.local:  # a manifest's pod has its own mount
        resolved = resolved if resolved is not None else _namespace_file(sa_dir)
        _token_file(sa_dir)
        if api_url.startswith("https://"):
            _cluster_ca(sa_dir)
    return EndpointsConfig(
        api_url=api_url,
        sa_dir=sa_dir,
        namespace=resolved,
        services=() if services is None else services.value,
    )


def _check_url(name: str, value: str) -> str:
    try:
        parsed = urllib.parse.urlsplit(value)
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        parsed = None
    if parsed is None or parsed.scheme not in ("https", "http") or not parsed.hostname:
        raise ConfigError(f"{name}={value!r} does not give a Kubernetes API URL; use https://host:port")
    return value.rstrip("/")


def _check_namespace(name: str, value: str) -> None:
    if not _DNS_LABEL.match(value):
        raise ConfigError(
            f"{name}={value!r} is not a namespace name; set it from the downward API (fieldRef: metadata.namespace)"
        )


def _read_token(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            token = handle.read().strip()
    except OSError as exc:
        raise WatcherError(f"cannot read the service-account token at {path}: {exc.strerror}") from exc
    if not token:
        raise WatcherError(f"the service-account token at {path} is empty")
    return token


@dataclass(frozen=True)
class SliceEndpoint:
    """This pod's entry in one EndpointSlice."""

    slice: str
    service: str | None
    ready: bool  # as the API says to read it: absent counts as ready
    serving: bool | None
    terminating: bool | None


class EndpointsWatcher:
    """Lists the namespace's EndpointSlices on each poll and finds this pod's IP in them."""

    name = NAME

    def __init__(
        self,
        client: httpx.Client,
        *,
        namespace: str,
        pod_ip: str,
        token: Callable[[], str],
        services: Sequence[str] = (),
        monotonic: Callable[[], float],
        page_size: int = PAGE_SIZE,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._pod_ip = _normalize(pod_ip) or pod_ip
        self._token = token
        self._services = tuple(services)
        self._page_size = page_size
        self._monotonic = monotonic
        self._path = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        self._last_reason: str | None = None

    def close(self) -> None:
        self._client.close()

    def restart(self, at: float) -> None:
        """Nothing to forget: every poll reads the EndpointSlices' current state afresh."""

    def poll(self, now: float, timeout: float) -> Observation:
        slices = self._list(timeout)
        found = find_pod(slices, self._pod_ip)
        details: dict[str, object] = {
            "namespace": self._namespace,
            "slices_listed": len(slices),
            "slices": sorted({e.slice for e in found}),
            "services": sorted({e.service for e in found if e.service}),
            "ready_in": sorted({e.slice for e in found if e.ready}),
            "terminating": any(e.terminating for e in found),
        }
        if not found:
            observation = Observation(Verdict.GONE, "not_in_any_slice", details)
        elif any(e.ready for e in found):
            observation = Observation(Verdict.PRESENT, "ready", details)
        else:
            observation = Observation(Verdict.GONE, "not_ready", details)
        if observation.reason != self._last_reason:
            log.info("endpoints_state", verdict=observation.verdict.value, reason=observation.reason, **details)
            self._last_reason = observation.reason
        return observation

    def _list(self, timeout: float) -> list[Mapping[str, Any]]:
        token = self._token()
        end = self._monotonic() + timeout
        items: list[Mapping[str, Any]] = []
        params: dict[str, str | int] = {"limit": self._page_size}
        if self._services:
            params["labelSelector"] = f"{SERVICE_NAME_LABEL} in ({','.join(self._services)})"
        while True:
            left = end - self._monotonic()
            if left <= 0:
                raise WatcherError(f"listing endpointslices took longer than {timeout:.1f}s; retrying")
            body = self._get(params, token, min(left, MAX_REQUEST_SECONDS))
            page = body.get("items")
            if page is None:
                page = []
            if not isinstance(page, list):
                raise WatcherError("unexpected answer listing endpointslices: 'items' is not a list")
            items.extend(i for i in page if isinstance(i, Mapping))
            metadata = body.get("metadata")
            cont = metadata.get("continue") if isinstance(metadata, Mapping) else None
            if not cont:
                return items
            params["continue"] = str(cont)

    def _get(self, params: Mapping[str, str | int], token: str, timeout: float) -> Mapping[str, Any]:
        try:
            response = self._client.get(
                self._path,
                params=params,
                headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
                timeout=httpx.Timeout(timeout),
            )
        except httpx.TimeoutException as exc:
            raise WatcherError(
                f"the Kubernetes API did not answer within {timeout:.1f}s ({type(exc).__name__})"
            ) from exc
        except httpx.HTTPError as exc:
            raise WatcherError(f"the Kubernetes API is unreachable: {type(exc).__name__}: {exc}") from exc
        if response.status_code != 200:
            raise WatcherError(self._describe_failure(response))
        try:
            body = response.json()
        except ValueError as exc:
            raise WatcherError("the Kubernetes API answered with something that is not JSON") from exc
        if not isinstance(body, Mapping):
            raise WatcherError("unexpected answer listing endpointslices: not a JSON object")
        return body

    def _describe_failure(self, response: httpx.Response) -> str:
        status = response.status_code
        message = _status_message(response)
        said = f": {message}" if message else ""
        retry = response.headers.get("Retry-After")
        explained = {
            401: "the Kubernetes API rejected the service-account token (401 Unauthorized); it is read again on "
            f"every poll, check that it is mounted and not expired{said}",
            403: f"forbidden (403){said}; " + RBAC_HINT.format(namespace=self._namespace),
            404: f"not found (404){said}; the API server must serve discovery.k8s.io/v1 (Kubernetes 1.21+)",
            410: f"the list continuation expired (410){said}; listing again on the next poll",
            429: "throttled by the Kubernetes API (429 Too Many Requests)"
            + (f", server asks to retry after {retry}s" if retry else "")
            + said,
        }
        if status in explained:
            return explained[status]
        if status >= 500:
            return f"the Kubernetes API failed ({status}){said}"
        return f"unexpected answer from the Kubernetes API ({status}){said}"


def _status_message(response: httpx.Response) -> str:
    """The ``message`` of a Kubernetes Status body, shortened; empty if there is none."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200]
    if isinstance(body, Mapping) and isinstance(body.get("message"), str):
        return str(body["message"])[:300]
    return ""


def _normalize(address: str) -> str | None:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def find_pod(slices: Sequence[Mapping[str, Any]], pod_ip: str) -> list[SliceEndpoint]:
    """This pod's entries in the slices (FQDN slices never list pod IPs and are skipped)."""
    found: list[SliceEndpoint] = []
    for item in slices:
        if item.get("addressType") == "FQDN":
            continue
        metadata = _mapping(item.get("metadata"))
        service = _mapping(metadata.get("labels")).get(SERVICE_NAME_LABEL)
        for endpoint in item.get("endpoints") or []:
            if not isinstance(endpoint, Mapping):
                continue
            addresses = endpoint.get("addresses") or []
            if not any(isinstance(a, str) and _normalize(a) == pod_ip for a in addresses):
                continue
            conditions = _mapping(endpoint.get("conditions"))
            found.append(
                SliceEndpoint(
                    slice=str(metadata.get("name", "?")),
                    service=service if isinstance(service, str) else None,
                    ready=conditions.get("ready") is not False,
                    serving=_flag(conditions.get("serving")),
                    terminating=_flag(conditions.get("terminating")),
                )
            )
    return found


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
