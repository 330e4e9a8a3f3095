"""Answers: how the front turns errors and backend answers into what a client gets.

Shared by the general path (``endpoint``), the express lane and the stdio
front, so an error or a backend's answer is shaped in one place: the HTTP
status each era gives a JSON-RPC error, ``Retry-After`` on 503, and the
translation between eras (``resultType``, cache hints, resource-not-found).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

from gateway.errors import BackendUnavailable, GatewayError, InternalError, error_body
from gateway.protocol.jsonrpc import UNSET, Message, Raw, encode, response_bytes
from gateway.protocol.stateless import as_stateless_result

if TYPE_CHECKING:
    from gateway.front.sessions import RequestContext
    from gateway.server.api import Reply

__all__ = [
    "JSON_HEADERS",
    "SSE_HEADERS",
    "STATELESS_STATUS",
    "request_failed",
    "send_error",
    "sse_event",
    "translate",
]

JSON_HEADERS = (("content-type", "application/json"),)
SSE_HEADERS = (("content-type", "text/event-stream"), ("cache-control", "no-cache"))
STATELESS_STATUS = {-32700: 400, -32600: 400, -32602: 400, -32020: 400, -32021: 400, -32022: 400, -32601: 404}
"""Stateless era: the HTTP status of a JSON-RPC error follows its code."""
_RETRY_AFTER = (("retry-after", "1"),)
# The error object a backend sent, decoded only to read its code.
_decode_error = msgspec.json.Decoder(dict[str, Any]).decode


def sse_event(data: bytes) -> bytes:
    """One JSON-RPC message as an SSE ``message`` event."""
    return b"event: message\ndata: " + data + b"\n\n"


def send_error(reply: Reply, request_id: Any, err: GatewayError) -> None:
    """Send ``err`` with its HTTP status (503 always with ``Retry-After``), unless the reply is closed."""
    if reply.closed:
        return
    headers: tuple[tuple[str, str], ...] = JSON_HEADERS + err.headers
    if isinstance(err, BackendUnavailable) and not any(k == "retry-after" for k, _ in err.headers):
        headers += _RETRY_AFTER
    reply.send(err.http_status, headers, error_body(request_id, err))


def request_failed(msg: Message, reply: Reply | None, err: GatewayError) -> bytes | None:
    """A request's error: as response bytes (200-status errors, or no reply), else sent now."""
    if reply is None or err.http_status == 200:
        return error_body(msg.id, err)
    send_error(reply, msg.id, err)
    return None


def translate(msg: Message, ctx: RequestContext, era: str, answer: Message) -> tuple[bytes, int]:
    """The backend's answer (given in ``era``) for this client: its id back, and what differs
    between eras (resultType and cache hints for stateless clients; the resource-not-found code)."""
    if answer.result is not UNSET:
        result = answer.result
        if ctx.era == "stateless" and era == "handshake":
            result = Raw(as_stateless_result(bytes(result), msg.method))  # type: ignore[arg-type]
        return response_bytes(msg.id, result), 200  # type: ignore[arg-type]
    if answer.error is UNSET:
        err = InternalError("backend sent an empty response", reason="bad_backend_response")
        return error_body(msg.id, err), 200
    error = answer.error
    code: Any = None
    if ctx.era == "stateless" or msg.method == "resources/read":
        try:
            decoded = _decode_error(error)
        except (msgspec.DecodeError, msgspec.ValidationError):
            decoded = {}
        code = decoded.get("code")
        if msg.method == "resources/read":
            if ctx.era == "stateless" and code == -32002:
                code = -32602
            elif ctx.era == "handshake" and era == "stateless" and code == -32602:
                code = -32002
            if code != decoded.get("code"):
                error = Raw(encode({**decoded, "code": code}))
    body = encode(Message(id=msg.id, error=error))
    status = STATELESS_STATUS.get(code, 200) if ctx.era == "stateless" else 200
    return body, status
