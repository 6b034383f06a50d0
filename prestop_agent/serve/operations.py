"""What the endpoints do, independent of HTTP: one drain at a time (started, joined, remembered), register, status.

A drain, a register and a status call can run at once, each in its own request thread and
with its own deadline. A drain takes precedence: it cancels a running register.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

from prestop_agent.agent import Deps, Report, run_deregister, run_register, run_status
from prestop_agent.clock import Clock, Deadline
from prestop_agent.config import Settings
from prestop_agent.errors import BudgetExhausted, PrestopError, RegistryError
from prestop_agent.logs import RunClock

log = structlog.get_logger("prestop_agent.serve")

# /prestop answers at the latest this long after budget end, even if the drain thread is stuck.
ANSWER_GRACE_S = 0.5
# A drain waits at most this long for a register it cancelled to stop sending.
REGISTER_STOP_WAIT_S = 2.0

Command = Callable[[Settings, Deps], Report]
# (command, when the operation started on the monotonic clock, its clock, wait out the budget on a crash)
Runner = Callable[[Command, float, Clock, bool], Report]


class ThreadRunClock(RunClock):
    """A ``RunClock`` whose deadline belongs to the current thread.

    A drain, a register and a status call can run at once in the sidecar; each logs the
    elapsed/remaining time of its own deadline, not of whichever started last.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def deadline(self) -> Deadline | None:
        value: Deadline | None = getattr(self._local, "deadline", None)
        return value

    @deadline.setter
    def deadline(self, value: Deadline | None) -> None:
        self._local.deadline = value


class _CancellableClock:
    """A clock whose sleeps end with ``RegisterCancelled`` once a drain has asked for it."""

    def __init__(self, clock: Clock, cancel: threading.Event) -> None:
        self._clock = clock
        self._cancel = cancel

    def monotonic(self) -> float:
        return self._clock.monotonic()

    def sleep(self, seconds: float) -> None:
        if self._cancel.wait(max(0.0, seconds)):
            raise RegisterCancelled("cancelled: a drain (/prestop) started; it takes precedence")


class RegisterCancelled(RegistryError):
    """A running register gave way to a drain."""


# -- the state: one drain at a time, joined and remembered -----------------------------------------


@dataclass
class _Drain:
    started: float  # arrival of the first call, monotonic
    answer_by: float  # budget end plus ANSWER_GRACE_S
    done: threading.Event = field(default_factory=threading.Event)
    report: Report | None = None


@dataclass
class _RegisterRun:
    cancel: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)


class Operations:
    """What the endpoints do, independent of HTTP: drains (started, joined, cached), registers, status."""

    def __init__(self, settings: Settings, runner: Runner, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._runner = runner
        self._lock = threading.Lock()
        self._drain: _Drain | None = None
        self._register: _RegisterRun | None = None

    # -- drain ---------------------------------------------------------------------------------

    def drain(self, arrival: float) -> tuple[Report, str]:
        """The drain's report and how this call got it: ``started``, ``joined`` or ``cached``."""
        with self._lock:
            drain = self._drain
            if drain is None:
                how = "started"
                drain = _Drain(arrival, arrival + self.settings.budget.value + ANSWER_GRACE_S)
                self._drain = drain
                threading.Thread(
                    target=self._drain_worker, args=(drain, self._register), name="prestop-drain", daemon=True
                ).start()
            else:
                how = "cached" if drain.done.is_set() else "joined"
        if not drain.done.wait(max(0.0, drain.answer_by - self.clock.monotonic())):
            self._give_up(drain)
        report = drain.report
        if report is None:  # cannot happen: ``done`` is set only together with a report
            raise RuntimeError("drain finished without a report")
        return report, how

    def _drain_worker(self, drain: _Drain, register: _RegisterRun | None) -> None:
        if register is not None and not register.done.is_set():
            log.warning("register_cancelled", reason="a drain started")
            register.cancel.set()
            left = drain.started + self.settings.budget.value - self.clock.monotonic()
            register.done.wait(max(0.0, min(REGISTER_STOP_WAIT_S, left)))
        try:
            report = self._runner(
                lambda settings, deps: run_deregister(settings, deps, wait=True, dry_run=False),
                drain.started,
                self.clock,
                True,
            )
        except Exception as exc:  # the runner itself failed; the caller still gets an answer
            log.exception("drain_crashed")
            report = Report("deregister", "failed", error=PrestopError(f"{type(exc).__name__}: {exc}"))
        self._finish(drain, report)

    def _give_up(self, drain: _Drain) -> None:
        """The per-drain watchdog: the answer goes out by budget + grace even if the drain is stuck."""
        report = Report(
            "deregister",
            "budget_exhausted",
            error=BudgetExhausted(
                f"the drain did not finish within the budget of {self.settings.budget.value:g}s "
                "(something blocked past every timeout)"
            ),
        )
        if self._finish(drain, report):
            log.error("drain_watchdog", budget_s=self.settings.budget.value)

    def _finish(self, drain: _Drain, report: Report) -> bool:
        with self._lock:
            if drain.report is not None:
                return False  # the first answer given stays the answer
            drain.report = report
            drain.done.set()
            return True

    def drain_state(self) -> str:
        with self._lock:
            if self._register is not None:
                return "registering"
            if self._drain is None:
                return "idle"
            return "drained" if self._drain.done.is_set() else "draining"

    def running_drain_answer_by(self) -> float | None:
        with self._lock:
            drain = self._drain
            return drain.answer_by if drain is not None and not drain.done.is_set() else None

    # -- register, status ------------------------------------------------------------------------

    def register(self, arrival: float, *, wait: bool) -> Report | None:
        """Run ``register``; None (409) while a drain or another register runs."""
        with self._lock:
            if self._register is not None or (self._drain is not None and not self._drain.done.is_set()):
                return None
            self._drain = None  # the instance is back: a later /prestop must drain again
            run = _RegisterRun()
            self._register = run
        try:
            return self._runner(
                lambda settings, deps: run_register(settings, deps, wait=wait),
                arrival,
                _CancellableClock(self.clock, run.cancel),
                False,
            )
        finally:
            with self._lock:
                run.done.set()
                if self._register is run:
                    self._register = None

    def status(self, arrival: float) -> Report:
        return self._runner(run_status, arrival, self.clock, False)
