"""A backend's own OAuth 2.0 credential (``[backends.NAME.credential]``), fetched from a token
endpoint: never the client's token, which goes to no backend.

Two grants:

- ``ClientCredentials`` (RFC 6749 4.4): the gateway's own token. ``ensure()`` fetches it (the
  backend awaits it before its first request, and again while it is DOWN for want of one); a
  timer refreshes it at 80% of ``expires_in`` (no ``expires_in``: every ``DEFAULT_REFRESH``
  seconds). A refresh that fails keeps the token until it expires and retries with backoff
  (``RETRY_MIN`` s, doubling, at most ``RETRY_MAX``); at the expiry the token is dropped and
  ``on_change(None, why)`` says so: the backend goes DOWN with that reason and its recovery
  calls ``ensure()`` again. Each new token is told as ``on_change(token, None)``, so the
  backend rebuilds its constant request head (the express lane keeps working).
- ``TokenExchange`` (RFC 8693): a token for one caller. ``token_for(caller)`` exchanges the
  caller's own token (``subject_token``, of ``subject_token_type``) for one whose
  ``audience`` is the backend (``audience``, default its URL), ``requested_token_type``
  access_token. The answer is cached per caller ``key`` (issuer, subject, roles, scopes: a
  token with fewer scopes never gets one exchanged for more) until its ``expires_in`` less a
  margin (10%, at most 30 s; no ``expires_in``: ``DEFAULT_EXCHANGED_TTL``), and never past the
  caller's own expiry; at most ``MAX_EXCHANGED`` entries, the oldest dropped first.
  Concurrent calls of one caller share one request. Failures are not cached.

What the client is told when an exchange fails (a ``GatewayError``, and nothing is sent to
the backend): 403 ``Forbidden`` (-32052, ``token_exchange_refused``) when the caller has no
token to exchange (an API key, a client certificate) or the endpoint refuses the subject token
(HTTP 400 with ``invalid_request``, ``invalid_grant``, ``invalid_target`` or
``invalid_scope``: RFC 8693 2.2.2; retrying will not help); otherwise 503
``BackendUnavailable`` (-32054, ``token_exchange_failed``: the endpoint is unreachable, slow,
answers 5xx or something unreadable, or refuses the gateway's own client, which is the
operator's to fix).

Every request: a form POST (``gateway.httpclient.post_form``) to ``token_url`` (TLS verified
against ``ca_file`` or the system store), the client authenticated with HTTP Basic
(``client_secret_basic``, id and secret form-encoded first, RFC 6749 2.3.1) or in the form
(``client_secret_post``), ``scope``, ``audience`` and ``resource`` when configured. An answer
is taken only when it is 200 JSON with a non-empty ``access_token`` of visible ASCII (so it can
never break a header), a ``token_type`` of ``Bearer`` (or none), and an ``expires_in`` that is a
positive number when present. Secrets (the client secret, the tokens) are never logged and
never in an error message; the endpoint's own ``error`` code is, its ``error_description``
only in the log.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import math
import re
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote_plus

import msgspec

from gateway.errors import BackendUnavailable, Forbidden
from gateway.httpclient import HttpClientError, post_form
from gateway.tls import client_context

if TYPE_CHECKING:
    import ssl

    from gateway.config import CredentialConfig

__all__ = [
    "Caller",
    "ClientCredentials",
    "CredentialError",
    "TokenExchange",
    "identity_lines",
    "request_token",
]

log = logging.getLogger("gateway.credentials")

TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange"
TOKEN_TYPES = {
    "access_token": "urn:ietf:params:oauth:token-type:access_token",
    "jwt": "urn:ietf:params:oauth:token-type:jwt",
}
REFRESH_AT = 0.8
"""A client-credentials token is refreshed at this fraction of its ``expires_in``."""
MIN_REFRESH = 0.5
"""Seconds: the soonest a refresh is scheduled after a fetch (an endpoint saying ``expires_in: 0``
must not be asked in a loop)."""
MAX_REFRESH = 86400.0
"""Seconds: the latest a refresh is scheduled after a fetch."""
DEFAULT_REFRESH = 300.0
"""Seconds between refreshes of a token that came without ``expires_in``."""
RETRY_MIN, RETRY_MAX = 1.0, 60.0
"""Backoff of a failed refresh, doubling from the first to the second (and never past the expiry)."""
DEFAULT_EXCHANGED_TTL = 60.0
"""Seconds an exchanged token without ``expires_in`` is used."""
MAX_EXCHANGED = 10_000
"""Exchanged tokens cached per backend."""
MAX_TOKEN_RESPONSE = 64 * 1024
"""Largest token-endpoint answer read."""
MAX_TOKEN = 16 * 1024
"""Longest access token accepted from the endpoint."""
MAX_IDENTITY_VALUE = 4096
"""Longest identity-header value sent (bytes); a longer claim sends no header."""

_TOKEN_CHARS = re.compile(r"[\x21-\x7e]+")
_REFUSALS = frozenset({"invalid_request", "invalid_grant", "invalid_target", "invalid_scope"})
_decode = msgspec.json.decode
_encode = msgspec.json.encode


class Caller(Protocol):
    """What a credential reads of the caller (``gateway.policy.identity.Principal``; the
    backends may not import the policy layer, so it is described here)."""

    issuer: str
    subject: str
    key: Any
    claims: dict[str, Any]
    expires: float | None
    token: str | None


class CredentialError(Exception):
    """A token request failed. ``status`` is the endpoint's HTTP status (0: no answer) and
    ``error`` its OAuth ``error`` code (None: none given); the message holds no secret."""

    def __init__(self, message: str, status: int = 0, error: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.error = error

    @property
    def refused(self) -> bool:
        """The endpoint refused the grant itself (RFC 8693 2.2.2), not the gateway's client."""
        return self.status == 400 and self.error in _REFUSALS


def _printable(text: Any, limit: int = 200) -> str:
    """An endpoint's word, safe to log: printable ASCII, shortened."""
    if not isinstance(text, str):
        return ""
    clean = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


class _Endpoint:
    """One token endpoint and the gateway's client there; ``post(fields)`` is one token request."""

    def __init__(self, name: str, config: CredentialConfig) -> None:
        self.name = name
        self.config = config
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext | None:
        if not self.config.token_url.lower().startswith("https://"):
            return None
        if self._context is None:
            try:
                self._context = client_context(self.config.ca_file)
            except (OSError, ValueError) as exc:
                why = getattr(exc, "strerror", None) or exc
                raise CredentialError(f"cannot load ca_file {self.config.ca_file!r}: {why}") from None
        return self._context

    async def post(self, fields: dict[str, str]) -> tuple[str, float | None]:
        return await request_token(self.config, fields, self.context())


async def request_token(
    config: CredentialConfig, fields: dict[str, str], context: ssl.SSLContext | None
) -> tuple[str, float | None]:
    """POST one token request (``fields`` plus the client's authentication and the configured
    ``scope``, ``resource``): ``(access_token, expires_in or None)``; ``CredentialError`` else."""
    form = dict(fields)
    headers: dict[str, str] = {}
    if config.client_auth == "client_secret_basic":
        pair = f"{quote_plus(config.client_id)}:{quote_plus(config.client_secret)}"
        headers["authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
    else:
        form["client_id"] = config.client_id
        form["client_secret"] = config.client_secret
    if config.scope is not None:
        form["scope"] = config.scope
    if config.resource is not None:
        form["resource"] = config.resource
    url = config.token_url
    try:
        status, _, body = await post_form(
            url, form, context=context, timeout=config.timeout, headers=headers, max_bytes=MAX_TOKEN_RESPONSE
        )
    except HttpClientError as exc:
        raise CredentialError(str(exc)) from None
    try:
        answer = _decode(body) if body else None
    except (msgspec.DecodeError, RecursionError):
        answer = None
    if not isinstance(answer, dict):
        answer = None
    if status != 200:
        error = (_printable(answer.get("error"), 64) or None) if answer is not None else None
        if answer is not None and answer.get("error_description"):
            log.info("token endpoint %s: %s: %s", url, error, _printable(answer.get("error_description")))
        raise CredentialError(f"{url} answered {status}" + (f" ({error})" if error else ""), status, error)
    if answer is None:
        raise CredentialError(f"{url} answered 200 with a body that is not a JSON object", status)
    token = answer.get("access_token")
    if not isinstance(token, str) or not token or len(token) > MAX_TOKEN or not _TOKEN_CHARS.fullmatch(token):
        raise CredentialError(f"{url} answered without a usable access_token", status)
    token_type = answer.get("token_type")
    if token_type is not None and (not isinstance(token_type, str) or token_type.lower() != "bearer"):
        raise CredentialError(f"{url} issued a token of type {_printable(token_type, 32)!r}, not Bearer", status)
    expires_in = answer.get("expires_in")
    if isinstance(expires_in, str) and expires_in.isdigit():
        expires_in = int(expires_in)  # some endpoints send a string
    if expires_in is not None:
        if type(expires_in) not in (int, float) or not 0 < expires_in < 1e9 or math.isnan(expires_in):
            raise CredentialError(f"{url} answered an expires_in that is not a positive number", status)
        expires_in = float(expires_in)
    return token, expires_in


class ClientCredentials:
    """The gateway's own token for one backend (see the module docstring).

    ``token`` is the current one (None: none valid), ``last_error`` why the last fetch failed,
    ``fetches`` how many token requests were made. ``on_change(token, why)`` is called with each
    new token, and with ``(None, why)`` when the token expired with no new one.
    """

    def __init__(
        self,
        name: str,
        config: CredentialConfig,
        on_change: Callable[[str | None, str | None], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.endpoint = _Endpoint(name, config)
        self.on_change = on_change
        self.clock = clock
        self.token: str | None = None
        self.expires_at = -math.inf
        self.refresh_at = math.inf
        self.last_error: str | None = None
        self.fetches = 0
        self._inflight: asyncio.Task[str] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._retry = RETRY_MIN
        self._stopped = False

    def valid(self) -> bool:
        """Whether ``token`` may still be sent."""
        return self.token is not None and self.clock() < self.expires_at

    async def ensure(self) -> str:
        """A valid token: the current one, or one fetched now (joining a fetch in flight);
        ``CredentialError`` when none can be had."""
        self._stopped = False
        if self.valid():
            return self.token  # type: ignore[return-value]
        return await asyncio.shield(self._fetch_now())

    def stop(self) -> None:
        """No more refreshes; a fetch in flight is cancelled."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._inflight is not None:
            self._inflight.cancel()
            self._inflight = None

    def _fetch_now(self) -> asyncio.Task[str]:
        task = self._inflight
        if task is None or task.done():
            task = self._inflight = asyncio.get_running_loop().create_task(self._fetch())
            task.add_done_callback(_quiet)
        return task

    async def _fetch(self) -> str:
        self.fetches += 1
        fields = {"grant_type": "client_credentials"}
        audience = self.endpoint.config.audience
        if audience is not None:
            fields["audience"] = audience
        try:
            token, expires_in = await self.endpoint.post(fields)
        except CredentialError as exc:
            self.last_error = str(exc)
            self._failed()
            raise
        now = self.clock()
        self.token, self.last_error, self._retry = token, None, RETRY_MIN
        if expires_in is None:
            self.expires_at, delay = math.inf, DEFAULT_REFRESH
        else:
            self.expires_at = now + expires_in
            delay = min(max(expires_in * REFRESH_AT, MIN_REFRESH), MAX_REFRESH)
        self.refresh_at = now + delay
        self._schedule(delay)
        self.on_change(token, None)
        return token

    def _failed(self) -> None:
        """A fetch failed: keep a token that is still valid and retry before it expires, with
        backoff; a token that expired is dropped (``on_change(None, why)``) and no timer is
        left: the backend's recovery asks again."""
        if self.token is None:
            return  # the first fetch (or one after the expiry): the caller of ensure() retries
        left = self.expires_at - self.clock()
        if left <= 0:
            self._expired()
            return
        delay = min(self._retry, left)
        self._retry = min(self._retry * 2, RETRY_MAX)
        log.warning(
            "%s: refreshing the backend token failed (%s); the current one stays, %.0f s left; retry in %g s",
            self.name, self.last_error, left, delay,
        )
        self._schedule(delay)

    def _expired(self) -> None:
        self.token, self.expires_at = None, -math.inf
        self.on_change(None, f"the backend token expired and the token endpoint fails: {self.last_error}")

    def _schedule(self, delay: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None if self._stopped else asyncio.get_running_loop().call_later(delay, self._due)

    def _due(self) -> None:
        self._timer = None
        if self._stopped:
            return
        if self.token is not None and self.clock() >= self.expires_at:
            self._expired()
            return
        self._fetch_now()


def _quiet(task: asyncio.Task[Any]) -> None:
    """A background fetch's failure is recorded (``last_error``), not an unretrieved exception."""
    if not task.cancelled():
        task.exception()


class TokenExchange:
    """Tokens for the callers of one backend, exchanged and cached (see the module docstring)."""

    def __init__(
        self,
        name: str,
        config: CredentialConfig,
        audience: str,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.config = config
        self.endpoint = _Endpoint(name, config)
        self.audience = config.audience if config.audience is not None else audience
        self.subject_token_type = TOKEN_TYPES[config.subject_token_type]
        self.clock = clock
        self.wall = wall
        self.exchanges = 0
        """Token requests made."""
        self._cache: dict[Any, tuple[str, float]] = {}
        self._inflight: dict[Any, asyncio.Task[str]] = {}
        self.no_token = Forbidden(
            f"backend {name!r} takes a token exchanged for the caller's own token; this caller has none "
            "(an API key or a client certificate)",
            reason="token_exchange_refused",
        )

    async def token_for(self, caller: Caller | None) -> str:
        """The token to send for ``caller``: cached, or exchanged now; a ``GatewayError`` when
        it cannot be had (the module docstring says which)."""
        subject_token = caller.token if caller is not None else None
        if caller is None or not subject_token:
            raise self.no_token
        key = caller.key
        entry = self._cache.get(key)
        if entry is not None:
            if self.clock() < entry[1]:
                return entry[0]
            del self._cache[key]
        task = self._inflight.get(key)
        if task is None:
            task = self._inflight[key] = asyncio.get_running_loop().create_task(self._exchange(caller, subject_token))
            task.add_done_callback(lambda t, key=key: self._settled(key, t))
        return await asyncio.shield(task)

    def forget(self) -> None:
        """Drop every cached token and cancel the exchanges in flight (the backend stops)."""
        self._cache.clear()
        for task in self._inflight.values():
            task.cancel()
        self._inflight.clear()

    def _settled(self, key: Any, task: asyncio.Task[str]) -> None:
        if self._inflight.get(key) is task:
            del self._inflight[key]
        _quiet(task)

    async def _exchange(self, caller: Caller, subject_token: str) -> str:
        self.exchanges += 1
        fields = {
            "grant_type": TOKEN_EXCHANGE,
            "subject_token": subject_token,
            "subject_token_type": self.subject_token_type,
            "requested_token_type": TOKEN_TYPES["access_token"],
            "audience": self.audience,
        }
        try:
            token, expires_in = await self.endpoint.post(fields)
        except CredentialError as exc:
            if exc.refused:
                log.info("%s: the token endpoint refused to exchange the token of %r: %s", self.name, caller.subject, exc)
                raise Forbidden(
                    f"backend {self.name!r}: the token endpoint refused to exchange the caller's token"
                    + (f" ({exc.error})" if exc.error else ""),
                    reason="token_exchange_refused",
                ) from None
            log.warning("%s: token exchange failed: %s", self.name, exc)
            raise BackendUnavailable(
                f"backend {self.name!r}: the token exchange failed; retry shortly", reason="token_exchange_failed"
            ) from None
        if token == subject_token:
            # The endpoint handed the caller's own token back: it would reach the backend as it is.
            log.warning("%s: the token endpoint answered the subject token itself; not sent", self.name)
            raise BackendUnavailable(
                f"backend {self.name!r}: the token exchange failed; retry shortly", reason="token_exchange_failed"
            )
        now = self.clock()
        ttl = DEFAULT_EXCHANGED_TTL if expires_in is None else expires_in - min(30.0, expires_in * 0.1)
        if caller.expires is not None:
            ttl = min(ttl, caller.expires - self.wall())
        if ttl > 0:
            cache = self._cache
            if len(cache) >= MAX_EXCHANGED:
                cache.pop(next(iter(cache)))
            cache[caller.key] = (token, now + ttl)
        return token


def _claim(claims: dict[str, Any], name: str) -> Any:
    """A claim by its name, else by its dotted path (``realm_access.roles``); None when missing."""
    if name in claims:
        return claims[name]
    if "." not in name:
        return None
    value: Any = claims
    for part in name.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def identity_lines(caller: Caller | None, mapping: dict[str, str]) -> bytes:
    """The identity header lines for ``caller`` (``identity_headers``: claim -> header name):
    ``b"x-user: alice\\r\\n"``. A missing claim (or a caller without claims) sends no header;
    a string is sent as it is (UTF-8), any other value as its JSON; a value with a control
    character (CR, LF, NUL, tab...), leading or trailing white space, or longer than
    ``MAX_IDENTITY_VALUE`` bytes sends no header: a value is never altered into another one."""
    if caller is None:
        return b""
    claims = caller.claims
    if not claims:
        return b""
    out = b""
    for claim, header in mapping.items():
        value = _claim(claims, claim)
        if value is None:
            continue
        text = value if isinstance(value, str) else _encode(value).decode()
        if (
            not text
            or text != text.strip(" \t")
            or any(ch < " " or ch == "\x7f" for ch in text)
        ):
            log.debug("identity header %s not sent: the value of claim %r is not one clean line", header, claim)
            continue
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: not text
            continue
        if len(data) > MAX_IDENTITY_VALUE:
            continue
        out += header.lower().encode("latin-1") + b": " + data + b"\r\n"
    return out
