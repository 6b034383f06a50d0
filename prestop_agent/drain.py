"""The registrations a run drains, and holding them out until the end.

A disable can be lost while the wait runs: a Nacos node restart drops the ``enabled=false``
override (nacos#11890), so does a client that stays disconnected past the server's metadata
memory and then re-registers, a gRPC reconnect to another node on 2.0-2.2 (nacos#10975), or an
operator. So on every poll the registry evidence asks which registrations are served; one that
is served again while Nacos shows it enabled gets ``enabled=false`` written again at once, and the
wait's evidence starts over from that moment (``DrainSet.hold``).

A registration kept because it is the last enabled, healthy instance of its service
(``PRESTOP_LAST_INSTANCE=keep``) is disabled as soon as its service serves another healthy instance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import structlog

from prestop_agent.clock import Deadline
from prestop_agent.errors import AuthError, RegistryError
from prestop_agent.nacos.model import Instance, Registration, ServiceKey
from prestop_agent.nacos.registry import Registry, Serving

log = structlog.get_logger(__name__)

LAST_INSTANCE_CHOICES = ("drain", "keep")


@dataclass(frozen=True)
class Check:
    """One look at every registration: which are served, and for which no server answered."""

    serving: Serving
    served: list[Registration]
    unanswered: list[Registration]


class DrainSet:
    """The run's registrations, what each server serves of them, and (when ``holding``) keeping them out."""

    def __init__(
        self,
        registry: Registry,
        registrations: Iterable[Registration],
        *,
        kept: Iterable[Registration] = (),
        holding: bool = False,
    ) -> None:
        self.registry = registry
        self.registrations = list(registrations)
        self.holding = holding
        self.reasserted = 0  # how many times a registration came back during the run
        self._kept = {r.identity for r in kept}
        self._back: set[tuple[str, str, str, str, int, str]] = set()  # came back, disable re-sent, still served

    @property
    def kept(self) -> list[Registration]:
        return [r for r in self.registrations if r.identity in self._kept]

    def check(self, deadline: Deadline) -> Check:
        serving = self.registry.serving(self.registrations, deadline)
        served = [r for r in self.registrations if serving.servers(r)]
        unanswered = [r for r in self.registrations if not serving.answered_for(r)]
        return Check(serving, served, unanswered)

    def hold(self, check: Check, deadline: Deadline) -> list[Registration]:
        """Keep every registration out; returns those that came back (or were released) now.

        Only when Nacos shows the registration enabled is the disable sent again: right after a
        write, a served list may still show it for a moment, and that is no reason to write twice.
        """
        if not self.holding:
            return []
        restarted: list[Registration] = []
        served = {r.identity for r in check.served}
        for registration in self.registrations:
            identity = registration.identity
            if identity in self._kept:
                if self._release(registration, check, deadline):
                    restarted.append(registration)
                continue
            if identity not in served:
                self._back.discard(identity)
                continue
            try:
                current = self.registry.current(registration, deadline)
                if current is None or not current.enabled:
                    continue  # the served list has not caught up yet, or the instance is gone
                first = identity not in self._back
                if first:
                    self.reasserted += 1
                    self._back.add(identity)
                    restarted.append(registration)
                server = self.registry.write(Registration(registration.key, current), False, deadline)
            except AuthError:
                raise
            except RegistryError as exc:
                log.warning("drain_reassert_failed", registration=str(registration), error=str(exc))
                continue
            log.warning(
                "drain_reasserted" if first else "drain_reassert_resent",
                registration=str(registration),
                count=self.reasserted,
                served_by=check.serving.servers(registration),
                server=server,
            )
        return restarted

    def _release(self, registration: Registration, check: Check, deadline: Deadline) -> bool:
        """A kept last instance is disabled once its service serves another healthy instance."""
        others = [i for i in check.serving.others.get(registration.key, []) if i.enabled and i.healthy]
        if not others:
            return False
        try:
            current = self.registry.current(registration, deadline) or registration.instance
            server = self.registry.write(Registration(registration.key, current), False, deadline)
        except AuthError:
            raise
        except RegistryError as exc:
            log.warning("last_instance_release_failed", registration=str(registration), error=str(exc))
            return False
        self._kept.discard(registration.identity)
        log.info(
            "last_instance_released",
            registration=str(registration),
            replacements=[i.endpoint for i in others][:5],
            server=server,
        )
        return True


# -- the last instance -------------------------------------------------------------------------------


def last_instances(
    registrations: Sequence[Registration], listings: dict[ServiceKey, list[Instance]]
) -> list[Registration]:
    """The registrations whose service has no other enabled, healthy instance: draining them leaves it empty."""
    ours = {r.identity for r in registrations}
    last: list[Registration] = []
    for registration in registrations:
        others = [
            i
            for i in listings.get(registration.key, [])
            if Registration(registration.key, i).identity not in ours and i.enabled and i.healthy
        ]
        if not others and registration.instance.enabled:
            last.append(registration)
    return last


CONSUMERS_OF_AN_EMPTY_SERVICE = (
    "consumers get an empty list: those that protect themselves against empty pushes "
    "(the Nacos client's namingPushEmptyProtection) keep their old list and go on calling this pod "
    "until it stops; the others find no provider at all"
)
