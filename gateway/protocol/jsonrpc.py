"""JSON-RPC 2.0 envelopes, decoded by msgspec with ``params``/``result`` kept raw.

One ``Message`` Struct covers requests, notifications and responses: a missing
``id`` is ``UNSET`` (a notification), which is different from ``id: null``.
Only the envelope is decoded; ``params``, ``result`` and ``error`` stay as the
bytes the peer sent (``msgspec.Raw``) so that they pass through untouched.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Raw, UnsetType

from gateway.errors import InvalidRequest, ParseError

__all__ = [
    "UNSET",
    "CallMessage",
    "Message",
    "Raw",
    "decode_call",
    "decode_message",
    "decode_any",
    "decode_params",
    "decode_envelope",
    "encode",
    "is_request",
    "is_notification",
    "is_response",
    "response_bytes",
    "error_response_bytes",
]

RequestId = int | str | None


class Message(msgspec.Struct):
    """Any JSON-RPC message: request, notification, success or error response.

    ``UNSET`` fields are left out when encoding; ``jsonrpc`` is always written.
    (A peer that omits ``jsonrpc`` is tolerated; a wrong value is rejected.)
    """

    jsonrpc: str = "2.0"
    id: int | str | None | UnsetType = UNSET
    method: str | UnsetType = UNSET
    params: Raw | UnsetType = UNSET
    result: Raw | UnsetType = UNSET
    error: Raw | UnsetType = UNSET


_message_decoder = msgspec.json.Decoder(Message)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
encode = _encoder.encode
decode_envelope = _message_decoder.decode
"""The ``Message`` decoder itself: msgspec's errors and none of ``decode_message``'s checks, for a
hot path that checks only what it needs and leaves every other case to ``decode_message``."""
class CallMessage(msgspec.Struct):
    """A ``Message`` whose ``params`` are decoded one level, ``{key: raw value}``, in the same pass as
    the envelope: what the express lane reads (params that are not an object fail to decode)."""

    jsonrpc: str = "2.0"
    id: int | str | None | UnsetType = UNSET
    method: str | UnsetType = UNSET
    params: dict[str, Raw] | UnsetType = UNSET
    result: Raw | UnsetType = UNSET
    error: Raw | UnsetType = UNSET


decode_call = msgspec.json.Decoder(CallMessage).decode
"""``CallMessage``'s decoder: msgspec's errors only (a hot path's own checks follow)."""
decode_params = msgspec.json.Decoder(dict[str, Raw]).decode
"""Params as ``{key: raw value}``: top-level keys decoded, every value kept as its bytes (renaming
``name`` or ``uri`` re-encodes the keys only, never the arguments)."""


def decode_message(data: bytes) -> Message:
    """Decode one JSON-RPC message, raising ParseError / InvalidRequest.

    A JSON array (batch) is reported as InvalidRequest with reason ``batch``;
    the caller decides whether its protocol version allows batches.
    """
    try:
        msg = _message_decoder.decode(data)
    except msgspec.ValidationError as exc:
        stripped = data.lstrip()
        if stripped[:1] == b"[":
            raise InvalidRequest("JSON-RPC batches are not supported", reason="batch") from None
        raise InvalidRequest(f"not a JSON-RPC message: {exc}") from None
    except msgspec.DecodeError:
        raise ParseError("body is not valid JSON") from None
    if msg.jsonrpc != "2.0":
        raise InvalidRequest('"jsonrpc" must be "2.0"')
    if msg.method is UNSET and msg.result is UNSET and msg.error is UNSET:
        raise InvalidRequest("a JSON-RPC message needs a method, a result or an error")
    return msg


def decode_any(data: bytes | Raw) -> Any:
    """Decode free-form JSON (a Raw field, for example) to Python objects."""
    return _any_decoder.decode(data)


def is_request(msg: Message) -> bool:
    """True for a request (has a method and an id)."""
    return msg.method is not UNSET and msg.id is not UNSET


def is_notification(msg: Message) -> bool:
    """True for a notification (a method and no id)."""
    return msg.method is not UNSET and msg.id is UNSET


def is_response(msg: Message) -> bool:
    """True for a response (no method)."""
    return msg.method is UNSET


# A response is its fixed head, the id, and the result (or error) bytes as they came: joined, it is
# byte for byte what encoding a ``Message`` gives (a test holds the two together), without building one.
_HEAD = b'{"jsonrpc":"2.0","id":'
_RESULT = b',"result":'
_ERROR = b',"error":'
_TAIL = b"}"
_encode_id = _encoder.encode


def response_bytes(request_id: RequestId, result: Raw | bytes) -> bytes:
    """A success response carrying ``result`` bytes unchanged."""
    return b"".join((_HEAD, _encode_id(request_id), _RESULT, result, _TAIL))


def error_response_bytes(request_id: RequestId, error: Raw | bytes) -> bytes:
    """An error response carrying a backend's ``error`` object unchanged."""
    return b"".join((_HEAD, _encode_id(request_id), _ERROR, error, _TAIL))
