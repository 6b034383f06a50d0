"""The pod's registrations across the configured Nacos cluster: find them, switch them, see what each server serves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.errors import AuthError, InstanceNotFound, RegistryError, ServerError, ServerUnavailable
from prestop_agent.nacos.api import APIS, ApiGone, NacosApi
from prestop_agent.nacos.model import Instance, Registration, ServiceKey, format_endpoint, same_address
from prestop_agent.nacos.server import NacosServer

log = structlog.get_logger(__name__)

MAX_SEARCHED_SERVICES = 300
# Between rounds over a cluster of which no member answered: short at first (a restart, a blip).
FIRST_ROUND_PAUSE_S = 0.25
MAX_ROUND_PAUSE_S = 2.0
# Asked for by the API probe when the service name is unknown: any name will do, found or not.
PROBE_SERVICE = "prestop-agent-api-probe"

T = TypeVar("T")


@dataclass(frozen=True)
class Located:
    """Where the instance lives: the service that holds it and the instance as observed."""

    key: ServiceKey
    instance: Instance
    server: str
    searched: bool = False  # found by ip:port search, not under the configured/derived service

    @property
    def registration(self) -> Registration:
        return Registration(self.key, self.instance)


@dataclass(frozen=True)
class ServerView:
    """One server's view of the instance, for ``status`` and the registry watcher."""

    server: str
    api: str | None = None
    instance: Instance | None = None
    served: bool | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        return {
            "server": self.server,
            "api": self.api,
            "found": self.instance is not None if self.error is None else None,
            "instance": self.instance.summary() if self.instance else None,
            "served": self.served,
            "error": self.error,
        }


@dataclass(frozen=True)
class Serving:
    """Which servers serve each registration, which answered for each service, which failed or were skipped.

    ``others`` holds, per service, the instances served that are none of the registrations asked
    about, as the first server that answered for it lists them.
    """

    by: dict[tuple[str, str, str, str, int, str], list[str]]
    answered: dict[ServiceKey, list[str]]
    failed: list[str]
    skipped: list[str]
    others: dict[ServiceKey, list[Instance]]

    def servers(self, registration: Registration) -> list[str]:
        """The servers that serve it (empty: none of those that answered)."""
        return self.by.get(registration.identity, [])

    def answered_for(self, registration: Registration) -> bool:
        return bool(self.answered.get(registration.key))


@dataclass
class Registry:
    """The configured servers, treated as one cluster with failover, and the API choice."""

    servers: Sequence[NacosServer]
    api_choice: str  # auto, v1, v2, v3
    ip: str
    port: int
    cluster: str
    _apis: dict[str, NacosApi] = field(default_factory=dict)

    @property
    def endpoint(self) -> str:
        return format_endpoint(self.ip, self.port)

    def ordered(self) -> list[NacosServer]:
        """The servers in their configured order, except that one which ran out a request's cap comes last."""
        return sorted(self.servers, key=lambda server: server.unresponsive)

    # -- API selection --------------------------------------------------------------------------

    def api(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> NacosApi:
        """The API to use on this server; ``auto`` probes the 3.x admin API, then falls back to v1."""
        chosen = self._apis.get(str(server))
        if chosen is not None:
            return chosen
        if self.api_choice != "auto":
            chosen = APIS[self.api_choice]
        else:
            chosen = self._probe(server, key, deadline)
            log.info("nacos_api_detected", server=str(server), api=chosen.name)
        self._apis[str(server)] = chosen
        return chosen

    def _probe(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> NacosApi:
        try:
            probe = replace(key, service=key.service or PROBE_SERVICE)
            APIS["v3"].list_all(server, probe, self.cluster, deadline)
        except ApiGone:
            return APIS["v1"]
        except ServerError as exc:
            if isinstance(exc, ServerUnavailable) or exc.status != 404:
                raise
            # Not the 404 of Nacos or of its Spring routing: something in between answered.
            raise ServerError(
                f"{exc}; NACOS_API=auto cannot tell this server's API from an answer that is not Nacos's: "
                "if a gateway sits in front of Nacos, set NACOS_API=v1 (Nacos 1.x/2.x) or NACOS_API=v3 (3.x)",
                status=exc.status,
            ) from exc
        return APIS["v3"]

    def _switch_on_gone(self, server: NacosServer, exc: ApiGone) -> NacosApi | None:
        """A v1/v2 call answered 404/405/410 (3.x turned it off): use v3 from now on, when on auto."""
        current = self._apis.get(str(server))
        if self.api_choice != "auto" or current is None or current.name == "v3":
            return None
        log.info("nacos_api_switched", server=str(server), old=current.name, new="v3", status=exc.status)
        self._apis[str(server)] = APIS["v3"]
        return APIS["v3"]

    # -- reads ----------------------------------------------------------------------------------

    def find(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> Instance | None:
        return self._pick(self.list_all(server, key, self.cluster, deadline))

    def list_all(self, server: NacosServer, key: ServiceKey, cluster: str, deadline: Deadline) -> list[Instance]:
        """Every instance of a service on one server, disabled ones included (``cluster`` matters on 2.0.x only)."""
        try:
            return self.api(server, key, deadline).list_all(server, key, cluster, deadline)
        except ApiGone as exc:
            api = self._switch_on_gone(server, exc)
            if api is None:
                raise
            return api.list_all(server, key, cluster, deadline)

    def _pick(self, instances: Sequence[Instance]) -> Instance | None:
        matches = [i for i in instances if self._is_ours(i)]
        preferred = [i for i in matches if i.cluster == self.cluster]
        best = preferred or matches
        return best[0] if best else None

    def _is_ours(self, instance: Instance) -> bool:
        # As addresses: clients register bracketed, uncompressed or upper-case IPv6 text.
        return instance.port == self.port and same_address(instance.ip, self.ip)

    def is_served(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> bool:
        return any(self._is_ours(i) for i in self.list_served(server, key, deadline))

    def list_served(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> list[Instance]:
        """The instances of a service that this server gives consumers."""
        try:
            return self.api(server, key, deadline).list_served(server, key, deadline)
        except ApiGone as exc:
            api = self._switch_on_gone(server, exc)
            if api is None:
                raise
            return api.list_served(server, key, deadline)

    def serving(self, registrations: Sequence[Registration], deadline: Deadline) -> Serving:
        """Ask every server which of the registrations it serves (refused credentials raise).

        One served list per service and server. The servers that answer are asked first; one that
        ran out a request's cap earlier is skipped once another has answered, so a hung member
        cannot eat the time of those that answer. A server that fails is not asked further.
        """
        keys = list(dict.fromkeys(r.key for r in registrations))
        by: dict[tuple[str, str, str, str, int, str], list[str]] = {r.identity: [] for r in registrations}
        answered: dict[ServiceKey, list[str]] = {key: [] for key in keys}
        others: dict[ServiceKey, list[Instance]] = {}
        failed: list[str] = []
        skipped: list[str] = []
        for server in self.ordered():
            if server.unresponsive and any(answered.values()):
                skipped.append(str(server))
                continue
            for key in keys:
                try:
                    listed = self.list_served(server, key, deadline)
                except AuthError:
                    raise
                except RegistryError as exc:
                    failed.append(f"{server}: {exc}")
                    break
                answered[key].append(str(server))
                ours = [r for r in registrations if r.key == key]
                for registration in ours:
                    if any(_same_endpoint(i, registration.instance) for i in listed):
                        by[registration.identity].append(str(server))
                others.setdefault(key, [i for i in listed if not any(_same_endpoint(i, r.instance) for r in ours)])
        return Serving(by, answered, failed, skipped, others)

    def view(self, key: ServiceKey, deadline: Deadline) -> list[ServerView]:
        """Every server's view; errors are recorded per server, never raised (except refused credentials)."""
        views: list[ServerView] = []
        for server in self.servers:
            try:
                instance = self.find(server, key, deadline)
                served = self.is_served(server, key, deadline)
                views.append(ServerView(str(server), self._apis[str(server)].name, instance, served))
            except AuthError:
                raise
            except RegistryError as exc:
                views.append(ServerView(str(server), error=str(exc)))
        return views

    # -- locating ---------------------------------------------------------------------------------

    def locate(self, key: ServiceKey, deadline: Deadline, *, search: bool) -> Located:
        """Find this ip:port under ``key`` on the first server that answers, else search the namespace.

        A key without a service name (none could be derived) goes straight to the search.
        """
        if key.service:
            server, instance = self.first_answer("answered", lambda s: self.find(s, key, deadline), deadline)
            if instance is not None:
                return Located(key, instance, str(server))
            if not search:
                return self._decide(key, [], str(server))
        server, found = self.first_answer("answered the search", lambda s: self._search(s, key, deadline), deadline)
        return self._decide(key, found, str(server))

    def first_answer(self, what: str, attempt: Callable[[NacosServer], T], deadline: Deadline) -> tuple[NacosServer, T]:
        """Fail over: the first server where ``attempt`` succeeds, and its result.

        While no member answers at all (down, hung, 5xx), go round again within the budget: the
        time is better spent on another try than on waiting for the budget to end.
        """
        pause = FIRST_ROUND_PAUSE_S
        while True:
            errors: list[RegistryError] = []
            for server in self.ordered():
                try:
                    return server, attempt(server)
                except AuthError:
                    raise  # the same credentials would be refused by every member of the cluster
                except RegistryError as exc:
                    errors.append(exc)
                    log.warning("nacos_server_failed", server=str(server), error=str(exc))
            unanswered = all(isinstance(exc, ServerUnavailable) for exc in errors)
            if not unanswered or deadline.remaining() <= pause:
                raise ServerError(f"no Nacos server {what}: " + "; ".join(str(exc) for exc in errors))
            log.info("nacos_cluster_retry", what=what, pause_s=pause)
            deadline.sleep(pause)
            pause = min(2 * pause, MAX_ROUND_PAUSE_S)

    def _search(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> list[Located]:
        api = self.api(server, key, deadline)
        names = api.service_names(server, key.namespace, key.group, deadline)
        log.info("nacos_search_by_endpoint", server=str(server), services=len(names), endpoint=self.endpoint)
        found: list[Located] = []
        for name in names[:MAX_SEARCHED_SERVICES]:
            if name == key.service or deadline.expired():
                continue
            other = replace(key, service=name)
            instance = self._pick(api.list_all(server, other, self.cluster, deadline))
            if instance is not None:
                found.append(Located(other, instance, str(server), searched=True))
        return found

    def _decide(self, key: ServiceKey, found: list[Located], server: str) -> Located:
        where = f"namespace {key.namespace!r}, group {key.group!r}"
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            names = ", ".join(sorted(f.key.service for f in found))
            first = f"is not in service {key.service!r} but" if key.service else "is"
            raise InstanceNotFound(
                f"{self.endpoint} {first} in several services ({names}) in {where}; "
                "set NACOS_SERVICE_NAME to the one to drain"
            )
        looked = f"looked in {key.service!r} first, then by ip:port" if key.service else "looked up by ip:port"
        raise InstanceNotFound(
            f"{self.endpoint} is registered in no service of {where}, cluster {self.cluster!r} on {server} "
            f"({looked}); set NACOS_SERVICE_NAME, NACOS_NAMESPACE, NACOS_GROUP or NACOS_CLUSTER "
            "to where the app registers, and check POD_IP and NACOS_SERVICE_PORT"
        )

    # -- writes ---------------------------------------------------------------------------------

    def write(self, registration: Registration, enabled: bool, deadline: Deadline) -> str:
        """Write ``enabled`` (with the drain's mark in the metadata, see ``DISABLED_MARK``) on the first server
        that accepts it; returns that server. The weight and the rest of the metadata go back as observed.
        """
        written = Registration(registration.key, registration.instance.as_written(enabled))
        server, _ = self.first_answer(
            "accepted the write", lambda s: self._write(s, written, enabled, deadline), deadline
        )
        return str(server)

    def _write(self, server: NacosServer, registration: Registration, enabled: bool, deadline: Deadline) -> None:
        key, instance = registration.key, registration.instance
        api = self.api(server, key, deadline)
        try:
            api.update(server, key, instance, enabled, deadline)
        except ApiGone as exc:
            switched = self._switch_on_gone(server, exc)
            if switched is None:
                raise
            switched.update(server, key, instance, enabled, deadline)

    def current(self, registration: Registration, deadline: Deadline) -> Instance | None:
        """The registration's instance as the first server that answers holds it now; None: not registered."""
        key, instance = registration.key, registration.instance
        _, listed = self.first_answer("answered", lambda s: self.list_all(s, key, instance.cluster, deadline), deadline)
        matches = [i for i in listed if _same_endpoint(i, instance)]
        same_cluster = [i for i in matches if i.cluster == instance.cluster]
        found = same_cluster or matches
        return found[0] if found else None


def _same_endpoint(a: Instance, b: Instance) -> bool:
    return a.port == b.port and same_address(a.ip, b.ip)
