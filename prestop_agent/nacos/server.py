"""One Nacos server: requests capped by the deadline, retries, login and the 403 re-login rule."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_exponential
from tenacity.stop import stop_base

from prestop_agent.clock import Deadline
from prestop_agent.errors import AuthError, ServerError
from prestop_agent.nacos.model import ServerAddress

log = structlog.get_logger(__name__)

Params = Mapping[str, str | int | float]


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


@dataclass(frozen=True)
class Reply:
    status: int
    text: str

    def json(self) -> Any:
        try:
            return json.loads(self.text)
        except ValueError:
            return None

    def unwrap(self) -> Any:
        """The payload, unwrapped from the v2/v3 envelope ``{"code": 0, "data": ...}`` when present."""
        payload = self.json()
        if isinstance(payload, dict) and "code" in payload and "data" in payload:
            return payload["data"]
        return payload

    def brief(self) -> str:
        """A short, single-line excerpt of the body for messages."""
        payload = self.json()
        if isinstance(payload, dict):
            for key in ("message", "data", "error"):
                value = payload.get(key)
                if isinstance(value, str) and value:
                    return value[:200]
        return " ".join(self.text.split())[:200]


class _StopAtDeadline(stop_base):
    """Stop retrying once the deadline is (nearly) reached; tenacity's own stops read their own clock."""

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._deadline.remaining() < 0.05


def _transient(exc: BaseException) -> bool:
    return isinstance(exc, ServerError) and (exc.status is None or exc.status >= 500 or exc.status == 429)


class NacosServer:
    """Requests to one server. Every timeout is capped by the time left; errors become ServerError/AuthError."""

    def __init__(
        self,
        address: ServerAddress,
        http: httpx.Client,
        *,
        credentials: Credentials | None = None,
        request_timeout: float = 5.0,
        attempts: int = 3,
        on_secret: Callable[[str], None] = lambda _secret: None,
    ) -> None:
        self.address = address
        self._http = http
        self._credentials = credentials
        self._request_timeout = request_timeout
        self._attempts = attempts
        self._on_secret = on_secret
        self._token: str | None = None
        self._token_expires: float = 0.0

    def __str__(self) -> str:
        return self.address.base_url

    # -- public -------------------------------------------------------------------------------

    def call(
        self,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        params: Params | None = None,
        form: Params | None = None,
    ) -> Reply:
        """One API call, with retries for transient failures and one re-login after a 403."""
        reply = self._with_retries(method, path, deadline, params, form)
        if reply.status == 403 and self._credentials is not None:
            log.info("nacos_token_refused", server=str(self), path=path)
            self._token = None
            reply = self._with_retries(method, path, deadline, params, form)
            if reply.status == 403:
                raise AuthError(f"{self}: {method} {path} refused with 403 after a fresh login: {reply.brief()}")
        if reply.status == 403:
            raise AuthError(
                f"{self}: {method} {path} refused with 403 ({reply.brief()}); "
                "this server needs credentials: set NACOS_USERNAME and NACOS_PASSWORD"
            )
        return reply

    # -- internals ----------------------------------------------------------------------------

    def _with_retries(
        self, method: str, path: str, deadline: Deadline, params: Params | None, form: Params | None
    ) -> Reply:
        def nap(seconds: float) -> None:
            deadline.sleep(seconds)

        retrying = Retrying(
            stop=stop_any(stop_after_attempt(self._attempts), _StopAtDeadline(deadline)),
            wait=wait_exponential(multiplier=0.2, max=2.0),
            retry=retry_if_exception(_transient),
            sleep=nap,
            reraise=True,
        )
        result: Reply = retrying(self._send, method, path, deadline, params, form)
        return result

    def _send(self, method: str, path: str, deadline: Deadline, params: Params | None, form: Params | None) -> Reply:
        query: dict[str, str | int | float] = dict(params or {})
        token = self._ensure_token(deadline)
        if token is not None:
            query["accessToken"] = token
        return self._raw(method, path, deadline, params=query, form=form)

    def _raw(
        self, method: str, path: str, deadline: Deadline, *, params: Params | None = None, form: Params | None = None
    ) -> Reply:
        if deadline.expired():
            raise ServerError(f"{self}: {method} {path} not sent: the budget is used up")
        timeout = deadline.cap(self._request_timeout)
        try:
            response = self._http.request(
                method,
                self.address.base_url + path,
                params=params,
                data=form,
                timeout=httpx.Timeout(timeout),
            )
        except httpx.TimeoutException as exc:
            raise ServerError(f"{self}: {method} {path} timed out after {timeout:.1f}s") from exc
        except httpx.TransportError as exc:
            raise ServerError(f"{self}: {method} {path} failed: {type(exc).__name__}: {_first_line(exc)}") from exc
        reply = Reply(response.status_code, response.text)
        if reply.status >= 500 or reply.status == 429:
            raise ServerError(f"{self}: {method} {path} answered {reply.status}: {reply.brief()}", status=reply.status)
        return reply

    def _ensure_token(self, deadline: Deadline) -> str | None:
        if self._credentials is None:
            return None
        now = deadline.clock.monotonic()
        if self._token is not None and now < self._token_expires:
            return self._token
        self._token = self._login(deadline)
        return self._token

    def _login(self, deadline: Deadline) -> str:
        if self._credentials is None:
            raise AuthError(f"{self}: no credentials to log in with; set NACOS_USERNAME and NACOS_PASSWORD")
        form = {"username": self._credentials.username, "password": self._credentials.password}
        refusals: list[str] = []
        # 1.x/2.x log in on v1; 3.x also on v3. Nacos 3.1 answers a wrong password with a 500 on
        # both paths, so any answer but a token counts as a refusal, never as a retryable failure.
        for path in ("/v1/auth/login", "/v3/auth/user/login"):
            try:
                reply = self._raw("POST", path, deadline, form=form)
            except ServerError as exc:
                if exc.status is None:
                    raise  # unreachable or timed out: a server problem, retried as such
                refusals.append(f"{path}: {exc.status}")
                continue
            payload = reply.unwrap()
            token = payload.get("accessToken") if isinstance(payload, dict) else None
            if reply.status == 200 and isinstance(token, str) and token:
                return self._accept(token, payload, deadline)
            refusals.append(f"{path}: {reply.status} {reply.brief()}")
        raise AuthError(
            f"{self}: login as {self._credentials.username!r} refused ({'; '.join(refusals)}); "
            "check NACOS_USERNAME and NACOS_PASSWORD"
        )

    def _accept(self, token: str, payload: dict[str, object], deadline: Deadline) -> str:
        self._on_secret(token)
        try:
            ttl_seconds = float(str(payload.get("tokenTtl", 18000)))
        except ValueError:
            ttl_seconds = 18000.0
        # Renew well before the server's expiry so a long wait never sends a stale token.
        self._token_expires = deadline.clock.monotonic() + max(1.0, ttl_seconds * 0.8)
        username = self._credentials.username if self._credentials else None
        log.info("nacos_login", server=str(self), username=username, ttl_s=ttl_seconds)
        return token


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else ""
