"""The one exception tree of prestop-agent.

    PrestopError                 anything the agent reports as a failure
    ├── ConfigError              bad or missing input; nothing was sent      -> exit 2
    ├── RegistryError            the registry operation failed               -> exit 3
    │   ├── AuthError            credentials refused, or a token rejected twice
    │   ├── ServerError          an error answer, or one that is not a Nacos answer
    │   │   └── ServerUnavailable    no answer: unreachable, timed out, 5xx or 429
    │   └── InstanceNotFound     no server holds this ip:port
    ├── WatcherError             one poll of a watcher failed (retried, never fatal)
    └── BudgetExhausted          the budget ran out before the drain was confirmed -> exit 4

    Interrupted                  SIGINT (Ctrl-C) or SIGTERM ended the run    -> exit 128 + signal: 130, 143

Errors of dependencies (httpx, boto3, cloud SDKs) are converted where they enter,
with ``raise ... from exc``. The CLI maps these classes to exit codes in one table.
``Interrupted`` is a ``KeyboardInterrupt``, not a ``PrestopError``: no handler of errors may swallow it.
"""

from __future__ import annotations


class PrestopError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(PrestopError):
    """Input is malformed, missing or contradictory. The message names the variable and the fix."""


class RegistryError(PrestopError):
    """The registry could not be read or changed as required."""


class AuthError(RegistryError):
    """The registry refused the credentials, or rejected a fresh token."""


class ServerError(RegistryError):
    """A registry server was unreachable, timed out, or answered with an error."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ServerUnavailable(ServerError):
    """A server gave no usable answer (unreachable, timed out, 5xx, 429): another member, or a later try, may.

    ``timed_out`` marks a server that held a request for its whole cap: the cluster tries it last from then on.
    """

    def __init__(self, message: str, *, status: int | None = None, timed_out: bool = False) -> None:
        super().__init__(message, status=status)
        self.timed_out = timed_out


class InstanceNotFound(RegistryError):
    """No configured server holds this pod's ip:port."""


class WatcherError(PrestopError):
    """One poll of a watcher failed; the wait goes on and the watcher stays 'unknown'."""


class BudgetExhausted(PrestopError):
    """The budget ran out before every watcher said 'gone'."""


class Interrupted(KeyboardInterrupt):
    """A signal ended the run early; the message says what it left behind."""

    def __init__(self, signum: int, message: str = "interrupted") -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message
