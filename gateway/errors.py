"""Errors a client can tell apart.

Every error the gateway makes is a JSON-RPC error object with a stable code, a
human-readable message and ``data.gateway.reason`` (a short machine-readable
word). Errors that come from a backend are passed through unchanged and never
become one of these.

The tree::

    GatewayError                      base: code, http_status, reason
    ├── ParseError          -32700    400  body is not JSON
    ├── InvalidRequest      -32600    400  not JSON-RPC, batch, bad headers, missing session
    ├── MethodNotFound      -32601    200  unknown method (404 in the stateless era)
    ├── InvalidParams       -32602    200  unknown tool / prompt / resource / namespace, bad params
    ├── InternalError       -32603    500  a bug in the gateway (never a traceback)
    ├── BackendTimeout      -32001    200  the backend did not answer in time (the SDKs' code)
    ├── SessionNotFound     -32050    404  unknown, expired or deleted Mcp-Session-Id
    ├── Unauthenticated     -32051    401  missing or invalid credentials
    ├── Forbidden           -32052    403  origin not allowed, RBAC
    ├── RateLimited         -32053    429  a limit was hit
    ├── BackendUnavailable  -32054    503  backend down, restarting or its circuit open
    ├── RequestTooLarge     -32055    413  body above the configured limit
    ├── CircuitOpen         -32056    503  the backend's circuit breaker is open
    ├── Disabled            -32057    403  the kill switch: a tool, backend or principal disabled
    ├── ResourceNotFound    -32002    200  unknown resource URI (handshake era)
    ├── HeaderMismatch      -32020    400  stateless era: routing header vs body
    ├── MissingClientCapability -32021 400 stateless era: capability not declared
    └── UnsupportedProtocolVersion -32022 400 stateless era: version not served

In the stateless era the HTTP status follows the JSON-RPC code (-32601 is 404,
-32602 is 400), as the 2026-07-28 transport requires; the front applies that.

``REGISTRY`` maps each code to its class and refuses duplicates, so a code means
one thing only.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

__all__ = [
    "REGISTRY",
    "BackendTimeout",
    "BackendUnavailable",
    "CircuitOpen",
    "Disabled",
    "Forbidden",
    "GatewayError",
    "HeaderMismatch",
    "InternalError",
    "InvalidParams",
    "InvalidRequest",
    "MethodNotFound",
    "MissingClientCapability",
    "ParseError",
    "RateLimited",
    "RequestTooLarge",
    "ResourceNotFound",
    "SessionNotFound",
    "Unauthenticated",
    "UnsupportedProtocolVersion",
    "error_body",
]

REGISTRY: dict[int, type[GatewayError]] = {}

_encode = msgspec.json.encode


class GatewayError(Exception):
    """Base of every error the gateway answers with.

    ``reason`` is a stable word for programs (``data.gateway.reason``);
    ``message`` is for people. ``http_status`` may be overridden per instance
    (for example -32600 is 400 for a bad request but 406 for a bad Accept).
    """

    code: ClassVar[int] = -32603
    http_status: int = 500
    default_reason: ClassVar[str] = "internal"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        http_status: int | None = None,
        data: dict[str, Any] | None = None,
        headers: tuple[tuple[str, str], ...] = (),
        spec_data: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        if http_status is not None:
            self.http_status = http_status
        self.extra = data or {}
        self.headers = headers
        # Fields the spec defines for this error (e.g. -32022's ``supported``),
        # placed at the top of ``data`` beside the gateway's own ``gateway`` object.
        self.spec_data = spec_data or {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.code in REGISTRY:
            raise TypeError(f"JSON-RPC code {cls.code} already belongs to {REGISTRY[cls.code].__name__}")
        REGISTRY[cls.code] = cls

    def to_error(self) -> dict[str, Any]:
        """The JSON-RPC ``error`` member for this error."""
        gateway = {"reason": self.reason, **self.extra}
        return {"code": self.code, "message": self.message, "data": {**self.spec_data, "gateway": gateway}}


def error_body(request_id: Any, err: GatewayError) -> bytes:
    """A complete JSON-RPC error response (``id`` may be None) as bytes."""
    return _encode({"jsonrpc": "2.0", "id": request_id, "error": err.to_error()})


class ParseError(GatewayError):
    """The body is not valid JSON."""

    code = -32700
    http_status = 400
    default_reason = "parse_error"


class InvalidRequest(GatewayError):
    """Valid JSON but not an acceptable JSON-RPC request or HTTP exchange."""

    code = -32600
    http_status = 400
    default_reason = "invalid_request"


class MethodNotFound(GatewayError):
    """No such method at the gateway or at the backend it routes to."""

    code = -32601
    http_status = 200
    default_reason = "method_not_found"


class InvalidParams(GatewayError):
    """Bad params, or a tool / prompt / resource / namespace that does not exist."""

    code = -32602
    http_status = 200
    default_reason = "invalid_params"


class InternalError(GatewayError):
    """A fault inside the gateway. The message never carries a traceback."""

    code = -32603
    http_status = 500
    default_reason = "internal"


class BackendTimeout(GatewayError):
    """The backend did not answer within its request timeout (-32001, as the SDKs use)."""

    code = -32001
    http_status = 200
    default_reason = "backend_timeout"


class SessionNotFound(GatewayError):
    """The ``Mcp-Session-Id`` is unknown, expired or was deleted."""

    code = -32050
    http_status = 404
    default_reason = "session_not_found"


class Unauthenticated(GatewayError):
    """Missing or invalid credentials."""

    code = -32051
    http_status = 401
    default_reason = "unauthenticated"


class Forbidden(GatewayError):
    """Not allowed: Origin not on the allow-list, or RBAC (the kill switch is ``Disabled``)."""

    code = -32052
    http_status = 403
    default_reason = "forbidden"


class RateLimited(GatewayError):
    """A rate limit was hit; ``data.gateway.retryAfterMs`` says when to retry."""

    code = -32053
    http_status = 429
    default_reason = "rate_limited"


class BackendUnavailable(GatewayError):
    """The backend is down, restarting, or its circuit is open."""

    code = -32054
    http_status = 503
    default_reason = "backend_unavailable"


class CircuitOpen(GatewayError):
    """The backend's circuit breaker is open: answered at once, nothing sent upstream
    (``Retry-After`` says when the breaker lets a probe through)."""

    code = -32056
    http_status = 503
    default_reason = "circuit_open"


class Disabled(GatewayError):
    """Disabled by an operator (the admin API's kill switch): a tool, a backend's items, or a
    caller. Not listed, never sent upstream, until enabled again."""

    code = -32057
    http_status = 403
    default_reason = "disabled"


class RequestTooLarge(GatewayError):
    """The request body is above the configured limit."""

    code = -32055
    http_status = 413
    default_reason = "request_too_large"


class ResourceNotFound(GatewayError):
    """A resource URI that no backend serves (handshake era; the stateless era uses -32602)."""

    code = -32002
    http_status = 200
    default_reason = "resource_not_found"


class HeaderMismatch(GatewayError):
    """Stateless era: a routing header disagrees with the body, or is missing."""

    code = -32020
    http_status = 400
    default_reason = "header_mismatch"


class MissingClientCapability(GatewayError):
    """Stateless era: the request needs a client capability the client did not declare."""

    code = -32021
    http_status = 400
    default_reason = "missing_client_capability"


class UnsupportedProtocolVersion(GatewayError):
    """Stateless era: ``MCP-Protocol-Version`` names a version the gateway does not serve."""

    code = -32022
    http_status = 400
    default_reason = "unsupported_protocol_version"
