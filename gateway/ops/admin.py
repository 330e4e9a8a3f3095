"""The admin listener's application (``[admin]``): health, readiness, metrics, state, reload, kill switch.

It is served by its own ``gateway.server.listener.Server`` on its own port, so
nothing of it is reachable from the MCP port, and the MCP front knows nothing of
it. Every path except ``[admin] public_paths`` (by default the probes) needs the
admin credential, ``Authorization: Bearer ...``: the ``token``, or a principal of
``[auth]`` with one of ``roles``. No credential, or a wrong one: 401 with
``WWW-Authenticate``; a principal without an admin role: 403.

Paths (JSON bodies, made with orjson)::

    GET    /healthz                 alive (200)
    GET    /readyz                  200 ready / 503 not (no backend ready, a required one down, draining)
    GET    /metrics                 Prometheus text exposition
    GET    /admin/backends          per backend: state, era, replicas, breaker, in flight, item counts
    GET    /admin/sessions          the front sessions; DELETE /admin/sessions/ID ends one
    GET    /admin/cache             the result cache's counters; POST /admin/cache/flush empties it
    GET    /admin/limits            each rate limit's refusals and buckets
    GET    /admin/config            the effective config, secrets redacted
    POST   /admin/reload            read the config file again and apply it (400 and the reason if refused)
    GET    /admin/disabled          what the kill switch disabled
    POST   /admin/disable           {"tool": NAME} | {"backend": NAME} | {"principal": SUBJECT}
    POST   /admin/enable            the same body: enabled again
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import msgspec
import orjson

from gateway.ops.health import readiness
from gateway.ops.killswitch import KINDS
from gateway.policy.chain import policy_named

if TYPE_CHECKING:
    from gateway.app import Gateway
    from gateway.config import AdminConfig
    from gateway.server.api import Reply, Request

__all__ = ["AdminApp", "effective_config"]

log = logging.getLogger("gateway.admin")

_JSON = (("content-type", "application/json"),)
_CHALLENGE = (("content-type", "application/json"), ("www-authenticate", 'Bearer realm="mcp-gateway-admin"'))
_REDACTED = "***"
_SECRET_FIELDS = frozenset({"bearer_token", "client_secret", "token", "key", "key_sha256", "headers", "env"})

Reload = Callable[[], Awaitable[dict[str, Any]]]
"""Reads the config file again and applies it; returns what was done, raises with the reason."""


class AdminApp:
    """``await app(request, reply)`` for the admin listener (see the module docstring)."""

    def __init__(self, gateway: Gateway, config: AdminConfig, reload: Reload | None = None) -> None:
        self.gateway = gateway
        self.config = config
        self.reload = reload
        self.public = frozenset(config.public_paths)
        self._token = config.token.encode() if config.token is not None else None
        self._roles = frozenset(config.roles)
        self._routes: dict[tuple[str, str], Callable[[Request], Any]] = {
            ("GET", "/healthz"): self._healthz,
            ("GET", "/readyz"): self._readyz,
            ("GET", "/metrics"): self._metrics,
            ("GET", "/admin/backends"): self._backends,
            ("GET", "/admin/sessions"): self._sessions,
            ("GET", "/admin/cache"): self._cache,
            ("POST", "/admin/cache/flush"): self._cache_flush,
            ("GET", "/admin/limits"): self._limits,
            ("GET", "/admin/config"): self._config,
            ("POST", "/admin/reload"): self._reload,
            ("GET", "/admin/disabled"): self._disabled,
            ("POST", "/admin/disable"): self._disable,
            ("POST", "/admin/enable"): self._enable,
        }

    async def __call__(self, request: Request, reply: Reply) -> None:
        """Answer one admin request: credential, then the route."""
        path = request.path
        if path not in self.public:
            refusal = await self._refusal(request)
            if refusal is not None:
                status, why = refusal
                reply.send(status, _CHALLENGE if status == 401 else _JSON, _body({"error": why}))
                return
        handler = self._routes.get((request.method, path))
        if handler is None and path.startswith("/admin/sessions/") and request.method == "DELETE":
            status, body = self._end_session(path[len("/admin/sessions/"):])
        elif handler is None:
            known = any(p == path for _, p in self._routes)
            status, body = (405, {"error": "method not allowed"}) if known else (404, {"error": "not found"})
        else:
            result = handler(request)
            if hasattr(result, "__await__"):
                result = await result
            status, body = result
        if isinstance(body, tuple):  # (content type, bytes): /metrics
            reply.send(status, (("content-type", body[0]),), body[1])
        else:
            reply.send(status, _JSON, _body(body))

    # -- the credential ------------------------------------------------------------------------

    async def _refusal(self, request: Request) -> tuple[int, str] | None:
        """None when the request carries the admin credential, else ``(status, why)``."""
        authorization = request.headers.get("authorization")
        if authorization is None:
            return 401, "the admin API needs a credential (Authorization: Bearer ...)"
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip(" ")
        if scheme.lower() != "bearer" or not credential:
            return 401, "the admin API needs a bearer credential"
        if self._token is not None and hmac.compare_digest(credential.encode(), self._token):
            return None
        authenticator = self.gateway.authenticator
        if self._roles and authenticator is not None:
            from gateway.policy.auth import PENDING, Principal  # only with [auth], which loaded it already

            principal = authenticator.authenticate(authorization, request.tls_subject)
            if principal is PENDING:
                await authenticator.wait_for_keys(authorization)
                principal = authenticator.authenticate(authorization, request.tls_subject)
            if isinstance(principal, Principal):
                if principal.roles & self._roles:
                    return None
                return 403, f"principal {principal.subject!r} has no admin role"
        return 401, "invalid admin credential"

    # -- health --------------------------------------------------------------------------------

    def _healthz(self, request: Request) -> tuple[int, Any]:
        return 200, {"status": "ok"}

    def _readyz(self, request: Request) -> tuple[int, Any]:
        ready, body = readiness(self.gateway.backends, self.gateway.draining)
        return (200 if ready else 503), orjson.loads(body)

    def _metrics(self, request: Request) -> tuple[int, Any]:
        metrics = getattr(self.gateway, "metrics", None)
        if metrics is None:
            return 404, {"error": "metrics are not enabled"}
        from gateway.ops.metrics import CONTENT_TYPE  # loaded already: metrics are on

        return 200, (CONTENT_TYPE, metrics.render())

    # -- state ---------------------------------------------------------------------------------

    def _backends(self, request: Request) -> tuple[int, Any]:
        counts = _item_counts(self.gateway)
        out = {}
        for name, backend in sorted(self.gateway.backends.items()):
            info = backend.describe()
            info["items"] = counts.get(name, {})
            info["disabled"] = name in self.gateway.kill_switch.disabled["backend"]
            out[name] = info
        return 200, {"backends": out}

    def _sessions(self, request: Request) -> tuple[int, Any]:
        now = time.monotonic()
        sessions = [
            {
                "id": s.id,
                "protocol_version": s.protocol_version,
                "owner": list(s.owner) if s.owner is not None else None,
                "client": s.client_info if isinstance(s.client_info, dict) else None,
                "idle_seconds": round(now - s.last_seen, 3),
                "in_flight": len(s.inflight),
                "stream": s.stream is not None,
                "subscriptions": len(s.subscriptions),
            }
            for s in self.gateway.sessions
        ]
        return 200, {"sessions": sessions, "count": len(sessions)}

    def _end_session(self, session_id: str) -> tuple[int, Any]:
        if self.gateway.sessions.end(session_id):
            log.info("admin: ended session %s", session_id[:12])
            return 200, {"ended": session_id}
        return 404, {"error": "no such session"}

    def _cache(self, request: Request) -> tuple[int, Any]:
        cache = _policy(self.gateway, "CacheAdmission")
        if cache is None:
            return 200, {"enabled": False}
        return 200, {"enabled": True, **cache.stats()}

    def _cache_flush(self, request: Request) -> tuple[int, Any]:
        cache = _policy(self.gateway, "CacheAdmission")
        if cache is None:
            return 200, {"enabled": False, "flushed": 0}
        flushed = len(cache.lru)
        cache.lru.clear()
        log.info("admin: cache flushed (%d entries)", flushed)
        return 200, {"enabled": True, "flushed": flushed}

    def _limits(self, request: Request) -> tuple[int, Any]:
        limits = _policy(self.gateway, "LimitsAdmission")
        return 200, {"limits": limits.state() if limits is not None else []}

    def _config(self, request: Request) -> tuple[int, Any]:
        return 200, effective_config(self.gateway.config)

    async def _reload(self, request: Request) -> tuple[int, Any]:
        if self.reload is None:
            return 409, {"error": "this gateway has no config file to reload (the bundled demo)"}
        from gateway.config import ConfigError
        from gateway.ops.reload import ReloadRefused

        try:
            done = await self.reload()
        except (ConfigError, ReloadRefused) as exc:  # the reason, one line; the old config serves
            log.error("admin: reload refused, the running config is kept: %s", exc)
            return 400, {"reloaded": False, "error": str(exc)}
        except Exception:  # a bug: logged here, never shown to the caller
            log.exception("admin: reload failed")
            return 500, {"reloaded": False, "error": "internal error while reloading (see the gateway's log)"}
        return 200, {"reloaded": True, **done}

    # -- the kill switch -----------------------------------------------------------------------

    def _disabled(self, request: Request) -> tuple[int, Any]:
        return 200, self.gateway.kill_switch.state()

    def _disable(self, request: Request) -> tuple[int, Any]:
        return self._switch(request, "disable")

    def _enable(self, request: Request) -> tuple[int, Any]:
        return self._switch(request, "enable")

    def _switch(self, request: Request, action: str) -> tuple[int, Any]:
        try:
            body = orjson.loads(request.body)
        except orjson.JSONDecodeError:
            return 400, {"error": "the body must be JSON: {\"tool\": NAME}, {\"backend\": NAME} or {\"principal\": SUBJECT}"}
        if not isinstance(body, dict) or len(body) != 1:
            return 400, {"error": "the body must be one of {\"tool\": NAME}, {\"backend\": NAME}, {\"principal\": SUBJECT}"}
        ((kind, value),) = body.items()
        if kind not in KINDS or not isinstance(value, str) or not value:
            return 400, {"error": f"unknown target {kind!r} or not a name: use tool, backend or principal"}
        gateway = self.gateway
        if kind == "backend" and value not in gateway.config.backends:
            return 404, {"error": f"no backend {value!r} in the config"}
        if kind == "principal" and gateway.authenticator is None:
            return 409, {"error": "no [auth]: callers are anonymous, there is no principal to disable"}
        changed = gateway.kill_switch.set(action, kind, value)
        gateway.apply_kill_switch()
        log.warning("admin: %s %s %r%s", action, kind, value, "" if changed else " (no change)")
        return 200, {"changed": changed, **gateway.kill_switch.state()}


def _body(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS) + b"\n"


def _policy(gateway: Gateway, name: str) -> Any:
    """The admission policy of class ``name`` in the running chain, or None."""
    return policy_named(gateway.front.admission, name)


def _item_counts(gateway: Gateway) -> dict[str, dict[str, int]]:
    """Per backend, how many tools, prompts and resources of it are listed now."""
    counts: dict[str, dict[str, int]] = {}
    snapshot = gateway.catalog.snapshot
    router = snapshot.router
    for method, kind, field, resolve in (
        ("tools/list", "tools", "name", router.resolve_tool),
        ("prompts/list", "prompts", "name", router.resolve_prompt),
        ("resources/list", "resources", "uri", router.resolve_uri),
    ):
        for item in snapshot.items.get(method, ()):
            route = resolve(str(item.get(field, "")))
            if route is not None:
                entry = counts.setdefault(route[0].name, {})
                entry[kind] = entry.get(kind, 0) + 1
    return counts


def effective_config(config: Any) -> Any:
    """``config`` as plain data, every secret replaced by ``***`` (tokens, keys, secrets, header
    values and environment values, which may carry credentials)."""
    return _redact(msgspec.to_builtins(config))


def _redact(value: Any, key: str | None = None) -> Any:
    if key in _SECRET_FIELDS and value not in (None, [], {}):
        if isinstance(value, dict):
            return {k: _REDACTED for k in value}
        return _REDACTED
    if isinstance(value, dict):
        return {k: _redact(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value
