"""One Nacos server: requests capped by the deadline, retries, login and the 403 re-login rule."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, stop_any, wait_exponential
from tenacity.stop import stop_base

from prestop_agent.clock import Deadline
from prestop_agent.errors import AuthError, ServerUnavailable
from prestop_agent.http_cap import HEADERS, RequestCap
from prestop_agent.masking import Secrets
from prestop_agent.nacos.model import ServerAddress

log = structlog.get_logger(__name__)

Params = Mapping[str, str | int | float]
_TAG = re.compile(r"<[^>]*>")


@dataclass(frozen=True)
class Credentials:
    """The user and password to log in to Nacos with."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password='***')"


def _unmasked(text: str) -> str:
    return text


@dataclass(frozen=True)
class Reply:
    """A server's answer. ``text`` is as received (parse it); ``brief`` is what may be shown."""

    status: int
    text: str
    mask: Callable[[str], str] = field(default=_unmasked, repr=False, compare=False)

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
        """A short, single-line excerpt of the body for messages, secrets masked (servers may echo them)."""
        payload = self.json()
        if isinstance(payload, dict):
            for key in ("message", "data", "error"):
                value = payload.get(key)
                if isinstance(value, str) and value:
                    return self.mask(" ".join(value.split()))[:200]
        text = self.text
        if text.lstrip().startswith("<"):  # a proxy's or gateway's HTML page: its words, not its markup
            text = _TAG.sub(" ", text)
        # Masked before it is cut, so a cut cannot split a secret into an unmasked prefix.
        return self.mask(" ".join(text.split()))[:200]


class _StopAtDeadline(stop_base):
    """Stop retrying once the deadline is (nearly) reached; tenacity's own stops read their own clock."""

    def __init__(self, deadline: Deadline) -> None:
        self._deadline = deadline

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._deadline.remaining() < 0.05


def _transient(exc: BaseException) -> bool:
    """Worth another try on the same server: not a timeout, which already spent a whole request cap there."""
    return isinstance(exc, ServerUnavailable) and not exc.timed_out


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
        secrets: Secrets | None = None,
    ) -> None:
        self.address = address
        self._http = http
        self._credentials = credentials
        self._request_timeout = request_timeout
        self._attempts = attempts
        self._secrets = secrets if secrets is not None else Secrets()
        if credentials is not None:
            self._secrets.add(credentials.password)
        self._token: str | None = None
        self._token_expires: float = 0.0
        # Set when a request ran out its cap here, cleared by the next answer: the cluster then
        # tries this server last, so the budget goes to the servers that answer.
        self.unresponsive = False

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
        self,
        method: str,
        path: str,
        deadline: Deadline,
        *,
        params: Params | None = None,
        form: Params | None = None,
        any_status: bool = False,
    ) -> Reply:
        """One request within the cap; a 5xx or 429 raises ``ServerUnavailable`` unless ``any_status``."""
        if deadline.expired():
            raise ServerUnavailable(f"{self}: {method} {path} not sent: the budget is used up")
        timeout = deadline.cap(self._request_timeout)
        # httpx's timeout bounds each read; the cap bounds the whole request (a server may drip bytes).
        with RequestCap(timeout) as cap:
            try:
                response = self._http.request(
                    method,
                    self.address.base_url + path,
                    params=params,
                    data=form,
                    headers=HEADERS,
                    timeout=httpx.Timeout(timeout),
                    extensions={"trace": cap.trace},
                )
            except httpx.TimeoutException as exc:
                raise self._timed_out(method, path, timeout) from exc
            except httpx.TransportError as exc:
                if cap.fired:
                    raise self._timed_out(method, path, timeout) from exc
                raise ServerUnavailable(
                    f"{self}: {method} {path} failed: {type(exc).__name__}: {self._secrets.foreign(_first_line(exc))}"
                ) from exc
        self.unresponsive = False
        reply = Reply(response.status_code, response.text, self._secrets.foreign)
        if (reply.status >= 500 or reply.status == 429) and not any_status:
            raise ServerUnavailable(
                f"{self}: {method} {path} answered {reply.status}: {reply.brief()}", status=reply.status
            )
        return reply

    def _timed_out(self, method: str, path: str, timeout: float) -> ServerUnavailable:
        self.unresponsive = True
        return ServerUnavailable(f"{self}: {method} {path} timed out after {timeout:.1f}s", timed_out=True)

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
            # Unreachable or timed out raises: a server problem, retried as such.
            reply = self._raw("POST", path, deadline, form=form, any_status=True)
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
        self._secrets.add(token)
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
