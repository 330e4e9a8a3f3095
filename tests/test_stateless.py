"""The 2026-07-28 (stateless) era on the front, over raw sockets, plus the pure
pieces behind it (header values, x-mcp-header annotations, cache hints).

Every refusal is checked for its HTTP status and JSON-RPC code, and that the
gateway goes on serving others."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from gateway.errors import HeaderMismatch, InvalidParams, UnsupportedProtocolVersion
from gateway.catalog.aggregate import NO_HINT, hint_of, merge_hints
from gateway.protocol.stateless import (
    check_envelope,
    check_param_headers,
    decode_header_value,
    encode_header_value,
    param_headers,
    x_mcp_headers,
)
from tests.support import Child, RawResponse, post, raw_exchange
from tests.test_bad_input import assert_error, assert_still_serving

V = "2026-07-28"
META = {"io.modelcontextprotocol/protocolVersion": V, "io.modelcontextprotocol/clientCapabilities": {}}


def body(method: str, params: dict[str, Any] | None = None, *, meta: dict | None = META, id: int = 1) -> bytes:
    p = dict(params or {})
    if meta is not None:
        p["_meta"] = meta
    return json.dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": p}).encode()


def send(gw: Child, method: str, params: dict | None = None, headers: dict | None = None, **kw: Any) -> RawResponse:
    base = {"mcp-protocol-version": V, "mcp-method": method}
    name = (params or {}).get("name") or (params or {}).get("uri")
    if name:
        base["mcp-name"] = name
    base.update(headers or {})
    return raw_exchange(gw.port, post("/mcp", body(method, params, **kw), base, port=gw.port))


def test_discover_lists_the_stateless_version_and_cache_hints(gw: Child) -> None:
    response = send(gw, "server/discover")
    assert response.status == 200, response.body
    assert "mcp-session-id" not in response.headers  # no session is minted in this era
    result = response.json()["result"]
    assert result["supportedVersions"] == [V]
    assert result["resultType"] == "complete"
    assert {"tools", "prompts", "resources"} <= set(result["capabilities"])
    assert isinstance(result["ttlMs"], int) and result["cacheScope"] in ("public", "private")


def test_lists_and_calls_without_a_session(gw: Child) -> None:
    listed = send(gw, "tools/list")
    assert listed.status == 200
    result = listed.json()["result"]
    assert result["resultType"] == "complete" and "ttlMs" in result and "cacheScope" in result
    assert "local__echo" in {t["name"] for t in result["tools"]}
    called = send(gw, "tools/call", {"name": "local__echo", "arguments": {"text": "stateless"}})
    assert called.status == 200, called.body
    assert called.json()["result"]["content"][0]["text"] == "stateless"
    assert called.json()["result"]["resultType"] == "complete"  # added: the backend speaks the handshake era


def test_a_session_id_is_not_honoured(gw: Child) -> None:
    response = send(gw, "tools/list", headers={"mcp-session-id": "made-up"})
    assert response.status == 200
    assert "mcp-session-id" not in response.headers


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ({"mcp-method": "tools/list"}, "method header differs from the body"),
        ({"mcp-method": None}, "method header missing"),
        ({"mcp-name": "local__add"}, "name header differs from the body"),
        ({"mcp-name": None}, "name header missing"),
        ({"mcp-protocol-version": "2025-11-25"}, "version header differs from _meta"),
    ],
)
def test_routing_headers_must_match_the_body(gw: Child, headers: dict, why: str) -> None:
    response = send(gw, "tools/call", {"name": "local__echo", "arguments": {"text": "x"}}, headers)
    error = assert_error(response, 400, -32020, "header_mismatch")
    assert error["message"], why
    assert_still_serving(gw.port)


def test_name_header_may_be_base64_and_padded_with_whitespace(gw: Child) -> None:
    encoded = "=?base64?" + base64.b64encode(b"local__echo").decode() + "?="
    response = send(gw, "tools/call", {"name": "local__echo", "arguments": {"text": "b64"}}, {"mcp-name": encoded})
    assert response.status == 200, response.body
    response = send(gw, "tools/call", {"name": "local__echo", "arguments": {"text": "ws"}}, {"mcp-name": "  local__echo "})
    assert response.status == 200, response.body


def test_missing_meta_is_invalid_params(gw: Child) -> None:
    assert_error(send(gw, "tools/list", meta={"io.modelcontextprotocol/protocolVersion": V}), 400, -32602)
    assert_error(send(gw, "tools/list", meta={}, headers={"mcp-protocol-version": V}), 400, -32602)


def test_unsupported_version_lists_what_is_supported(gw: Child) -> None:
    meta = {**META, "io.modelcontextprotocol/protocolVersion": "2099-01-01"}
    response = send(gw, "tools/list", meta=meta, headers={"mcp-protocol-version": "2099-01-01"})
    error = assert_error(response, 400, -32022)
    assert error["data"]["supported"] == [V] and error["data"]["requested"] == "2099-01-01"


def test_unknown_and_removed_methods_are_404(gw: Child) -> None:
    assert_error(send(gw, "no/such"), 404, -32601)
    assert_error(send(gw, "ping"), 404, -32601)  # removed in this era
    assert_error(send(gw, "initialize"), 404, -32601)


def test_unknown_tool_and_resource_are_invalid_params(gw: Child) -> None:
    assert_error(send(gw, "tools/call", {"name": "zzz__nope", "arguments": {}}), 400, -32602)
    # Resource not found is -32602 in this era (-32002 in the handshake era).
    assert_error(send(gw, "resources/read", {"uri": "nope+x://y"}), 400, -32602)


def test_get_and_delete_are_405(gw: Child) -> None:
    for method in ("GET", "DELETE"):
        request = (
            f"{method} /mcp HTTP/1.1\r\nhost: 127.0.0.1:{gw.port}\r\naccept: text/event-stream\r\n"
            f"mcp-protocol-version: {V}\r\ncontent-length: 0\r\n\r\n"
        ).encode()
        response = raw_exchange(gw.port, request)
        assert response.status == 405, (method, response.body)
        assert response.headers["allow"] == "POST"


def test_notifications_are_acknowledged(gw: Child) -> None:
    note = json.dumps({"jsonrpc": "2.0", "method": "notifications/whatever", "params": {"_meta": META}}).encode()
    headers = {"mcp-protocol-version": V, "mcp-method": "notifications/whatever"}
    assert raw_exchange(gw.port, post("/mcp", note, headers, port=gw.port)).status == 202


# -- the pure pieces -------------------------------------------------------------------------


def test_header_values_round_trip() -> None:
    for value in ["plain", " padded ", "naïve", "line\nbreak", "=?base64?eA==?=", ""]:
        assert decode_header_value(encode_header_value(value)) == value
    assert encode_header_value("plain") == "plain"
    assert encode_header_value("naïve").startswith("=?base64?")
    assert decode_header_value("=?base64?not base64?=") is None
    assert decode_header_value("=?base64?eB==?=") is None  # not canonical


def test_x_mcp_header_annotations() -> None:
    schema = {
        "type": "object",
        "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "n": {"type": "integer", "x-mcp-header": "N"},
            "inner": {"type": "object", "properties": {"flag": {"type": "boolean", "x-mcp-header": "Flag"}}},
        },
    }
    found = x_mcp_headers(schema)
    assert found is not None and sorted(t for _, t, _ in found) == ["Flag", "N", "Region"]
    assert param_headers(found, {"region": "eu", "n": 3, "inner": {"flag": True}}) == {
        "mcp-param-region": "eu",
        "mcp-param-n": "3",
        "mcp-param-flag": "true",
    }
    check_param_headers(found, {"region": "eu", "n": 3}, {"mcp-param-region": "eu", "mcp-param-n": "3.0"})
    with pytest.raises(HeaderMismatch):
        check_param_headers(found, {"region": "eu"}, {"mcp-param-region": "us"})
    with pytest.raises(HeaderMismatch):
        check_param_headers(found, {"region": "eu"}, {})
    with pytest.raises(HeaderMismatch):
        check_param_headers(found, {}, {"mcp-param-region": "eu"})
    bad = {"type": "object", "properties": {"a": {"type": "number", "x-mcp-header": "A"}}}
    assert x_mcp_headers(bad) is None  # numbers may not be mirrored: the tool's annotations are void
    dup = {"type": "object", "properties": {"a": {"type": "string", "x-mcp-header": "A"}, "b": {"type": "string", "x-mcp-header": "a"}}}
    assert x_mcp_headers(dup) is None


def test_envelope_checks_in_order() -> None:
    headers = {"mcp-protocol-version": V, "mcp-method": "tools/list"}
    assert check_envelope("tools/list", {"_meta": META}, headers).version == V
    with pytest.raises(InvalidParams):
        check_envelope("tools/list", {}, headers)
    with pytest.raises(HeaderMismatch):
        check_envelope("tools/list", {"_meta": META}, {**headers, "mcp-method": "prompts/list"})
    old = {**META, "io.modelcontextprotocol/protocolVersion": "1999-01-01"}
    with pytest.raises(UnsupportedProtocolVersion):
        check_envelope("tools/list", {"_meta": old}, {**headers, "mcp-protocol-version": "1999-01-01"})


def test_cache_hints_aggregate_to_the_smallest_ttl_and_private_if_any_part_is() -> None:
    assert merge_hints([(60000, "public"), (5000, "public")]) == (5000, "public")
    assert merge_hints([(60000, "public"), (90000, "private")]) == (60000, "private")
    assert merge_hints([]) == NO_HINT
    assert hint_of({"ttlMs": 10, "cacheScope": "public"}) == (10, "public")
    assert hint_of({"ttlMs": -1, "cacheScope": "public"}) is None
    assert hint_of({"cacheScope": "public"}) is None


def test_an_unknown_request_state_is_refused(gw: Child) -> None:
    """A retry must name a call the gateway holds (handshake backend behind a stateless client)."""
    params = {"name": "local__echo", "arguments": {"text": "x"}, "requestState": "made-up", "inputResponses": {}}
    assert_error(send(gw, "tools/call", params), 400, -32602, "unknown_request_state")
    assert_still_serving(gw.port)


def test_a_long_call_gets_sse_keep_alive_comments(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Past ``sse_keepalive`` seconds a call's response turns into SSE with comment lines,
    then the result arrives on it."""
    import socket
    import sys

    from tests.support import SERVERS, gateway

    path = tmp_path / "g.toml"
    path.write_text(
        f"[server]\nsse_keepalive = 0.2\n\n[backends.local]\ncommand = {sys.executable!r}\n"
        f"args = [{str(SERVERS / 'sdk_stdio_server.py')!r}]\n"
    )
    gw = gateway(path)
    try:
        params = {"name": "local__slow", "arguments": {"seconds": 1.0}}
        request = post("/mcp", body("tools/call", params, id=7), {
            "mcp-protocol-version": V, "mcp-method": "tools/call", "mcp-name": "local__slow", "connection": "close",
        }, port=gw.port)
        with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
            sock.sendall(request)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        text = raw.decode()
        assert "content-type: text/event-stream" in text.lower(), text
        assert text.count(": keep-alive") >= 2, text
        data = [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]
        assert data[-1]["id"] == 7 and data[-1]["result"]["content"][0]["text"] == "slept 1.0"
    finally:
        assert gw.stop() == 0
