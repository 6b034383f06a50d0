"""The pod's instance across the configured Nacos cluster: find it, switch it, and see what each server serves."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TypeVar

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.errors import AuthError, InstanceNotFound, RegistryError, ServerError
from prestop_agent.nacos.api import APIS, ApiGone, NacosApi
from prestop_agent.nacos.model import Instance, ServiceKey
from prestop_agent.nacos.server import NacosServer

log = structlog.get_logger(__name__)

MAX_SEARCHED_SERVICES = 300

T = TypeVar("T")


@dataclass(frozen=True)
class Located:
    """Where the instance lives: the service that holds it and the instance as observed."""

    key: ServiceKey
    instance: Instance
    server: str
    searched: bool = False  # found by ip:port search, not under the configured/derived service


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


@dataclass
class Registry:
    """The configured servers, treated as one cluster with failover, and the API choice."""

    servers: Sequence[NacosServer]
    api_choice: str  # auto, v1, v2, v3
    ip: str
    port: int
    cluster: str
    _apis: dict[str, NacosApi] = field(default_factory=dict)

    # -- API selection --------------------------------------------------------------------------

    def api(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> NacosApi:
        """The API to use on this server; ``auto`` probes the 3.x admin API, then falls back to v1."""
        chosen = self._apis.get(str(server))
        if chosen is not None:
            return chosen
        if self.api_choice != "auto":
            chosen = APIS[self.api_choice]
        else:
            try:
                APIS["v3"].list_all(server, key, self.cluster, deadline)
                chosen = APIS["v3"]
            except ApiGone:
                chosen = APIS["v1"]
            log.info("nacos_api_detected", server=str(server), api=chosen.name)
        self._apis[str(server)] = chosen
        return chosen

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
        try:
            instances = self.api(server, key, deadline).list_all(server, key, self.cluster, deadline)
        except ApiGone as exc:
            api = self._switch_on_gone(server, exc)
            if api is None:
                raise
            instances = api.list_all(server, key, self.cluster, deadline)
        return self._pick(instances)

    def _pick(self, instances: Sequence[Instance]) -> Instance | None:
        matches = [i for i in instances if i.ip == self.ip and i.port == self.port]
        preferred = [i for i in matches if i.cluster == self.cluster]
        best = preferred or matches
        return best[0] if best else None

    def is_served(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> bool:
        try:
            served = self.api(server, key, deadline).list_served(server, key, deadline)
        except ApiGone as exc:
            api = self._switch_on_gone(server, exc)
            if api is None:
                raise
            served = api.list_served(server, key, deadline)
        return any(i.ip == self.ip and i.port == self.port for i in served)

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
        """Find this ip:port under ``key`` on the first server that answers, else search the namespace."""
        server, instance = self._first_answer("answered", lambda s: self.find(s, key, deadline))
        if instance is not None:
            return Located(key, instance, str(server))
        found = self._search(server, key, deadline) if search else []
        return self._decide(key, found, str(server))

    def _first_answer(self, what: str, attempt: Callable[[NacosServer], T]) -> tuple[NacosServer, T]:
        """Fail over: the first server where ``attempt`` succeeds, and its result."""
        errors: list[str] = []
        for server in self.servers:
            try:
                return server, attempt(server)
            except AuthError:
                raise  # the same credentials would be refused by every member of the cluster
            except RegistryError as exc:
                errors.append(str(exc))
                log.warning("nacos_server_failed", server=str(server), error=str(exc))
        raise ServerError(f"no Nacos server {what}: " + "; ".join(errors))

    def _search(self, server: NacosServer, key: ServiceKey, deadline: Deadline) -> list[Located]:
        api = self.api(server, key, deadline)
        names = api.service_names(server, key.namespace, key.group, deadline)
        log.info("nacos_search_by_endpoint", server=str(server), services=len(names), endpoint=f"{self.ip}:{self.port}")
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
            raise InstanceNotFound(
                f"{self.ip}:{self.port} is not in service {key.service!r} but in several others ({names}) in {where}; "
                "set NACOS_SERVICE_NAME to the one to drain"
            )
        raise InstanceNotFound(
            f"{self.ip}:{self.port} is registered in no service of {where} on {server} "
            f"(looked in {key.service!r} first); set NACOS_SERVICE_NAME, NACOS_NAMESPACE or NACOS_GROUP "
            "to where the app registers, and check POD_IP and NACOS_SERVICE_PORT"
        )

    # -- writes ---------------------------------------------------------------------------------

    def set_enabled(self, located: Located, enabled: bool, deadline: Deadline) -> str:
        """Write ``enabled`` on the first server that accepts it; returns that server."""
        server, _ = self._first_answer("accepted the write", lambda s: self._write(s, located, enabled, deadline))
        return str(server)

    def _write(self, server: NacosServer, located: Located, enabled: bool, deadline: Deadline) -> None:
        api = self.api(server, located.key, deadline)
        try:
            api.update(server, located.key, located.instance, enabled, deadline)
        except ApiGone as exc:
            switched = self._switch_on_gone(server, exc)
            if switched is None:
                raise
            switched.update(server, located.key, located.instance, enabled, deadline)
