"""The header gate: what a request's headers earn before its body is looked at.

One function (``HeaderGate.check``) builds the key of a request's header set,
looks it up in one verdict cache, and returns ``(error, principal)``: the
error those headers earn (DNS rebinding: ``Host`` 421, ``Origin`` 403; for a
POST, ``Content-Type`` 415 and ``Accept`` 406), or ``None``, and who is
calling (``None`` until authentication exists). Both paths, the general one
and the express lane, call it, so a header added to ``KEY_HEADERS`` (such as
``authorization``) is seen by both.

Verdicts are cached because clients repeat one header set for every request:
a verdict depends only on the key's values, so the cache is exact. The last
passing key is kept apart, since comparing a tuple with the last one is
cheaper than hashing its fresh strings.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gateway.errors import Forbidden, GatewayError, InvalidRequest

if TYPE_CHECKING:
    from gateway.config import ServerConfig
    from gateway.server.api import Request

__all__ = ["HeaderGate", "KEY_HEADERS", "LOOPBACK_HOSTS", "host_name", "media_types"]

KEY_HEADERS = ("host", "origin", "content-type", "accept")
"""The headers a verdict depends on (with the HTTP method), in the order ``HeaderGate.check``
builds its key from them (a test holds the two together)."""

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]", "::1"})
_MAX_VERDICTS = 1024
_PASS: tuple[GatewayError | None, Any] = (None, None)


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

    def __init__(self, server: ServerConfig) -> None:
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
