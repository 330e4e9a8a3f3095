"""Unit tests of the small core pieces: errors, the JSON-RPC envelope, sessions."""

from __future__ import annotations

import json

import msgspec
import pytest

from gateway import errors
from gateway.errors import GatewayError, InvalidParams, error_body
from gateway.protocol.jsonrpc import UNSET, Message, decode_message, is_notification, is_request, is_response, response_bytes
from gateway.front.sessions import SessionStore


def test_error_codes_are_unique_and_registered() -> None:
    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, GatewayError) and c is not GatewayError]
    assert {c.code for c in classes} == set(errors.REGISTRY)
    assert len(classes) == len(errors.REGISTRY)
    with pytest.raises(TypeError):

        class Duplicate(GatewayError):  # noqa: F841 - the definition itself must fail
            code = -32602


def test_error_body_shape() -> None:
    body = json.loads(error_body(7, InvalidParams("unknown tool: x", reason="unknown_tool", data={"name": "x"})))
    assert body == {
        "jsonrpc": "2.0",
        "id": 7,
        "error": {"code": -32602, "message": "unknown tool: x", "data": {"gateway": {"reason": "unknown_tool", "name": "x"}}},
    }


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b'{"jsonrpc":"2.0","id":1,"method":"ping"}', "request"),
        (b'{"jsonrpc":"2.0","id":null,"method":"ping"}', "request"),
        (b'{"jsonrpc":"2.0","method":"notifications/initialized"}', "notification"),
        (b'{"jsonrpc":"2.0","id":"a","result":{}}', "response"),
        (b'{"jsonrpc":"2.0","id":1,"error":{"code":1,"message":"m"}}', "response"),
    ],
)
def test_decode_message_kinds(data: bytes, kind: str) -> None:
    msg = decode_message(data)
    assert {"request": is_request, "notification": is_notification, "response": is_response}[kind](msg)


def test_params_pass_through_as_bytes() -> None:
    raw = b'{"name":"x","arguments":{"deep":[1,2,{"k":"\\u00e9"}]}}'
    msg = decode_message(b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":' + raw + b"}")
    assert bytes(msg.params) == raw
    assert response_bytes(9, msg.params) == b'{"jsonrpc":"2.0","id":9,"result":' + raw + b"}"


@pytest.mark.parametrize(
    ("data", "code", "reason"),
    [
        (b"{not json", -32700, "parse_error"),
        (b"", -32700, "parse_error"),
        (b"[1,2]", -32600, "batch"),
        (b'{"jsonrpc":"2.0"}', -32600, "invalid_request"),
        (b'{"jsonrpc":"1.0","id":1,"method":"x"}', -32600, "invalid_request"),
        (b'{"jsonrpc":"2.0","id":{},"method":"x"}', -32600, "invalid_request"),
        (b'"just a string"', -32600, "invalid_request"),
    ],
)
def test_decode_message_errors(data: bytes, code: int, reason: str) -> None:
    with pytest.raises(GatewayError) as info:
        decode_message(data)
    assert info.value.code == code
    assert info.value.reason == reason


def test_notification_id_is_unset_not_none() -> None:
    assert decode_message(b'{"jsonrpc":"2.0","method":"n"}').id is UNSET
    assert msgspec.json.encode(Message(method="n")) == b'{"jsonrpc":"2.0","method":"n"}'


def test_sessions_ids_random_and_expiry() -> None:
    ended = []
    store = SessionStore(10.0, on_end=ended.append)
    first = store.create("2025-11-25", {}, None)
    second = store.create("2025-06-18", {}, None)
    assert first.id != second.id and len(first.id) >= 32
    assert all(0x21 <= ord(c) <= 0x7E for c in first.id)
    assert store.get(first.id) is first
    assert store.expire_idle(now=first.last_seen + 5) == 0
    assert store.expire_idle(now=max(first.last_seen, second.last_seen) + 11) == 2
    assert store.get(first.id) is None
    assert {s.id for s in ended} == {first.id, second.id}
    assert store.end(first.id) is False


def test_signed_sessions_are_accepted_by_another_worker() -> None:
    a = SessionStore(60, secret=b"k")
    b = SessionStore(60, secret=b"k")
    other = SessionStore(60, secret=b"different")
    session = a.create("2025-06-18", {}, None)
    adopted = b.get(session.id)
    assert adopted is not None and adopted.protocol_version == "2025-06-18"
    assert other.get(session.id) is None
    forged = session.id[:-2] + ("AA" if not session.id.endswith("AA") else "BB")
    assert SessionStore(60, secret=b"k").get(forged) is None
    assert SessionStore(60).get(session.id) is None  # no secret: only own sessions


def test_a_forged_non_ascii_session_id_is_unknown_not_an_error() -> None:
    store = SessionStore(60, secret=b"shared by the workers")
    made = store.create("2025-11-25", {}, None)
    assert store.get(made.id) is made
    for forged in ("ünïcode.2025-11-25.sig", made.id[:-2] + "é!", "a.b.\u00ff\u00ff"):
        assert store.get(forged) is None
