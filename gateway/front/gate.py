"""The header gate: what a request's headers earn before its body is looked at.

One function (``HeaderGate.check``) builds the key of a request's header set,
looks it up in one verdict cache, and returns ``(error, principal)``: the
error those headers earn (DNS rebinding: ``Host`` 421, ``Origin`` 403; for a
POST, ``Content-Type`` 415 and ``Accept`` 406; without valid credentials 401),
or ``None``, and who is calling (``None`` without ``[auth]``). Both paths, the
general one and the express lane, call it, so a header added to the key is
seen by both.

Verdicts are cached because clients repeat one header set for every request:
a verdict depends only on the key's values, so the cache is exact. The last
passing key is kept apart, since comparing a tuple with the last one is
cheaper than hashing its fresh strings.

With an ``Authenticator`` (``gateway.policy.auth``), ``HeaderGate(server,
authenticator)`` is an ``AuthGate``: the key gains ``Authorization`` and the
connection's client-certificate subject (``Request.tls_subject``), and after
the header checks pass the authenticator decides. A cached verdict is used
only until its principal's expiry (one clock read per request), the cache is
bounded (the oldest verdict out first), and it is forgotten when an issuer's
keys lose a key (``Authenticator.generation``). Refusals by the authenticator
are not cached here (it remembers the permanent ones itself; a token refused
for an unknown kid or an early ``nbf`` may pass later), and neither is its
``PENDING`` (keys being fetched): the gate returns ``(PENDING, None)``, which
the express lane declines like any error, and the general path resolves with
``await gate.check_after_keys(request)``. Without an authenticator the plain
``HeaderGate`` is used, unchanged: authentication costs nothing when it is off.
"""

from __future__ import annotations

from time import time as _now
from typing import TYPE_CHECKING, Any

from gateway.errors import Disabled, Forbidden, GatewayError, InvalidRequest
from gateway.policy.identity import PENDING

if TYPE_CHECKING:
    from gateway.config import ServerConfig
    from gateway.policy.auth import Authenticator
    from gateway.server.api import Request

__all__ = ["AUTH_KEY_HEADERS", "AuthGate", "HeaderGate", "KEY_HEADERS", "LOOPBACK_HOSTS", "host_name", "media_types"]

KEY_HEADERS = ("host", "origin", "content-type", "accept")
"""The headers a verdict depends on (with the HTTP method), in the order ``HeaderGate.check``
builds its key from them (a test holds the two together)."""
AUTH_KEY_HEADERS = (*KEY_HEADERS, "authorization")
"""With authentication (``AuthGate``): these, then the client certificate's subject."""

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_MAX_VERDICTS = 1024
_MAX_AUTH_VERDICTS = 4096
_PASS: tuple[GatewayError | None, Any] = (None, None)
_PENDING: tuple[Any, Any] = (PENDING, None)


def host_name(host: str) -> str:
    """``example.com:8080`` -> ``example.com``; ``[::1]:80`` -> ``[::1]``."""
    if host.startswith("["):
        return host[: host.find("]") + 1]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def media_types(value: str) -> set[str]:
    """``"application/json; q=1, text/*"`` -> ``{"application/json", "text/*"}``."""
    return {part.split(";", 1)[0].strip().lower() for part in value.split(",")}


class HeaderGate:
    """``check(request) -> (error or None, principal)``, cached per header set."""

    __slots__ = ("allowed_hosts", "allowed_origins", "_verdicts", "_last", "_last_verdict")

    def __new__(cls, server: ServerConfig, authenticator: Authenticator | None = None) -> HeaderGate:
        if authenticator is not None and cls is HeaderGate:
            cls = AuthGate  # with credentials to check, the gate that checks them
        return object.__new__(cls)

    def __init__(self, server: ServerConfig, authenticator: Authenticator | None = None) -> None:
        self.allowed_hosts = _allowed_hosts(server)
        """Host names accepted in ``Host``; None means any (bound publicly, no list given)."""
        self.allowed_origins = frozenset(o.rstrip("/").lower() for o in server.allowed_origins)
        self._verdicts: dict[tuple[str | None, ...], tuple[GatewayError | None, Any]] = {}
        self._last: tuple[str | None, ...] | None = None
        self._last_verdict = _PASS

    def check(self, request: Request) -> tuple[GatewayError | None, Any]:
        """The verdict on this request's headers: ``(error, principal)``."""
        headers = request.headers
        # The key: the method and KEY_HEADERS, spelt out (a loop over KEY_HEADERS costs
        # about 3,000 more instructions per request). A header added here, and to
        # KEY_HEADERS, is seen by both paths.
        key = (request.method, headers.get("host"), headers.get("origin"), headers.get("content-type"), headers.get("accept"))
        if key == self._last:
            return self._last_verdict
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self._decide(request.method, request.headers)
            if len(self._verdicts) >= _MAX_VERDICTS:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        if verdict[0] is None:
            self._last, self._last_verdict = key, verdict
        return verdict

    def _decide(self, method: str, headers: dict[str, str]) -> tuple[GatewayError | None, Any]:
        try:
            self._check_dns_rebinding(headers)
            if method == "POST":
                _check_post_headers(headers)
        except GatewayError as err:
            return (err, None)
        return _PASS

    async def check_after_keys(self, request: Request) -> tuple[GatewayError | None, Any]:
        """The verdict for a request ``check`` answered PENDING (never, without authentication)."""
        return self.check(request)

    def _check_dns_rebinding(self, headers: dict[str, str]) -> None:
        allowed = self.allowed_hosts
        if allowed is not None:
            host = headers.get("host")
            if host is None or host_name(host.lower()) not in allowed:
                raise Forbidden(f"host {host!r} is not allowed", reason="host_not_allowed", http_status=421)
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin.lower().rstrip("/")):
            raise Forbidden(f"origin {origin!r} is not allowed", reason="origin_not_allowed", http_status=403)

    def _origin_allowed(self, origin: str) -> bool:
        if origin in self.allowed_origins or "*" in self.allowed_origins:
            return True
        scheme, sep, rest = origin.partition("://")
        return bool(sep) and scheme in ("http", "https") and host_name(rest) in LOOPBACK_HOSTS


class AuthGate(HeaderGate):
    """The header gate with authentication (the module docstring)."""

    __slots__ = ("authenticator", "_last_expires", "_generation", "blocked")

    def __init__(self, server: ServerConfig, authenticator: Authenticator | None = None) -> None:
        super().__init__(server)
        assert authenticator is not None
        self.authenticator = authenticator
        self.blocked: frozenset[str] = frozenset()
        """Subjects the kill switch disabled (``block``): refused 403 (-32057) on every request."""
        self._last_expires: float | None = None
        self._generation = authenticator.generation

    def check(self, request: Request) -> tuple[GatewayError | None, Any]:
        headers = request.headers
        key = (
            request.method, headers.get("host"), headers.get("origin"), headers.get("content-type"),
            headers.get("accept"), headers.get("authorization"), request.tls_subject,
        )
        if self._generation != self.authenticator.generation:
            self._forget()
        if key == self._last:
            expires = self._last_expires
            if expires is None or _now() < expires:
                return self._last_verdict
        verdict = self._verdicts.get(key)
        if verdict is not None:
            principal = verdict[1]
            expires = principal.expires if principal is not None else None
            if expires is not None and _now() >= expires:
                del self._verdicts[key]
                verdict = None
        if verdict is None:
            verdict = self._decide(request.method, headers)
            if verdict[0] is None:
                result = self.authenticator.authenticate(key[5], key[6])
                if result is PENDING:
                    return _PENDING
                if isinstance(result, GatewayError):
                    return (result, None)
                if result.subject in self.blocked:  # decided once per header set: the cache keeps it
                    verdict = (Disabled(f"principal {result.subject!r} is disabled by an operator"), None)
                else:
                    verdict = (None, result)
            verdicts = self._verdicts
            if len(verdicts) >= _MAX_AUTH_VERDICTS:
                verdicts.pop(next(iter(verdicts)))
            verdicts[key] = verdict
        if verdict[0] is None:
            self._last, self._last_verdict = key, verdict
            self._last_expires = verdict[1].expires if verdict[1] is not None else None
        return verdict

    async def check_after_keys(self, request: Request) -> tuple[GatewayError | None, Any]:
        """After ``check`` said PENDING: await the keys (bounded), then the verdict (not PENDING)."""
        authorization = request.headers.get("authorization")
        await self.authenticator.wait_for_keys(authorization)
        verdict = self.check(request)
        if verdict[0] is PENDING:  # the fetch did not end in time
            verdict = (self.authenticator.keys_late, None)
        return verdict

    def block(self, subjects: frozenset[str]) -> None:
        """The kill switch's disabled subjects, effective at once (the cached verdicts are dropped)."""
        self.blocked = subjects
        self._forget()

    def _forget(self) -> None:
        self._verdicts.clear()
        self._last, self._last_verdict, self._last_expires = None, _PASS, None
        self._generation = self.authenticator.generation


def _allowed_hosts(server: ServerConfig) -> frozenset[str] | None:
    extra = {h.lower() for h in server.allowed_hosts}
    if "*" in extra:
        return None
    if server.host not in LOOPBACK_HOSTS and not extra:
        return None
    return frozenset(LOOPBACK_HOSTS | {server.host.lower()} | {host_name(h) for h in extra})


def _check_post_headers(headers: dict[str, str]) -> None:
    content_type = headers.get("content-type", "")
    if content_type.split(";", 1)[0].strip().lower() != "application/json":
        raise InvalidRequest("Content-Type must be application/json", reason="unsupported_media_type", http_status=415)
    accept = media_types(headers.get("accept", ""))
    if "*/*" not in accept and not {"application/json", "text/event-stream"} <= accept:
        raise InvalidRequest(
            "Accept must include application/json and text/event-stream", reason="not_acceptable", http_status=406
        )
