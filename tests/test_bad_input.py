"""Bad input over real sockets: each gets the status and JSON-RPC error of the
error table, and the gateway keeps serving other clients."""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support import Child, RawResponse, post, raw_exchange, read_response

INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
    }
).encode()


def call(port: int, body: bytes, headers: dict | None = None) -> RawResponse:
    return raw_exchange(port, post("/mcp", body, headers, port=port))


def new_session(port: int) -> str:
    response = call(port, INIT)
    assert response.status == 200, response.body
    return response.headers["mcp-session-id"]


def assert_still_serving(port: int) -> None:
    """Another client can still initialize and list tools."""
    session = new_session(port)
    body = b'{"jsonrpc":"2.0","id":2,"method":"tools/list"}'
    response = call(port, body, {"mcp-session-id": session, "mcp-protocol-version": "2025-11-25"})
    assert response.status == 200
    assert response.json()["result"]["tools"]


def assert_error(response: RawResponse, status: int, code: int, reason: str | None = None) -> dict:
    assert response.status == status, (response.status, response.body)
    error = response.json()["error"]
    assert error["code"] == code, error
    if reason is not None:
        assert error["data"]["gateway"]["reason"] == reason
    assert "Traceback" not in response.body.decode()
    return error


def test_malformed_json(gw: Child) -> None:
    assert_error(call(gw.port, b'{"jsonrpc": "2.0", "id": 1, "method": '), 400, -32700, "parse_error")
    assert_still_serving(gw.port)


def test_not_jsonrpc(gw: Child) -> None:
    assert_error(call(gw.port, b'{"hello": "world"}'), 400, -32600)
    assert_error(call(gw.port, b'{"jsonrpc": "1.0", "id": 1, "method": "ping"}'), 400, -32600)
    assert_still_serving(gw.port)


def test_batch_rejected_for_2025_11_25(gw: Child) -> None:
    session = new_session(gw.port)
    batch = b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","id":2,"method":"ping"}]'
    assert_error(call(gw.port, batch, {"mcp-session-id": session}), 400, -32600, "batch")
    assert_still_serving(gw.port)


def test_batch_allowed_for_2025_03_26(gw: Child) -> None:
    init = INIT.replace(b"2025-11-25", b"2025-03-26")
    response = call(gw.port, init)
    assert response.json()["result"]["protocolVersion"] == "2025-03-26"
    session = response.headers["mcp-session-id"]
    batch = b'[{"jsonrpc":"2.0","id":1,"method":"ping"},{"jsonrpc":"2.0","method":"notifications/initialized"},' \
            b'{"jsonrpc":"2.0","id":"b","method":"tools/list"}]'
    answer = call(gw.port, batch, {"mcp-session-id": session})
    assert answer.status == 200
    items = answer.json()
    assert [item["id"] for item in items] == [1, "b"]
    assert items[1]["result"]["tools"]


def test_missing_accept(gw: Child) -> None:
    assert_error(call(gw.port, INIT, {"accept": None}), 406, -32600, "not_acceptable")
    assert_error(call(gw.port, INIT, {"accept": "application/json"}), 406, -32600, "not_acceptable")
    assert_still_serving(gw.port)


def test_wrong_content_type(gw: Child) -> None:
    assert_error(call(gw.port, INIT, {"content-type": "text/plain"}), 415, -32600, "unsupported_media_type")
    assert_still_serving(gw.port)


def test_missing_session(gw: Child) -> None:
    assert_error(call(gw.port, b'{"jsonrpc":"2.0","id":1,"method":"ping"}'), 400, -32600, "session_required")


def test_unknown_session(gw: Child) -> None:
    body = b'{"jsonrpc":"2.0","id":1,"method":"tools/list"}'
    assert_error(call(gw.port, body, {"mcp-session-id": "no-such-session"}), 404, -32050, "session_not_found")
    assert_still_serving(gw.port)


def test_deleted_session_is_unknown(gw: Child) -> None:
    session = new_session(gw.port)
    delete = f"DELETE /mcp HTTP/1.1\r\nhost: 127.0.0.1:{gw.port}\r\nmcp-session-id: {session}\r\n\r\n".encode()
    assert raw_exchange(gw.port, delete).status == 200
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    assert_error(call(gw.port, body, {"mcp-session-id": session}), 404, -32050)


def test_unsupported_protocol_version(gw: Child) -> None:
    session = new_session(gw.port)
    body = b'{"jsonrpc":"2.0","id":1,"method":"ping"}'
    error = assert_error(
        call(gw.port, body, {"mcp-session-id": session, "mcp-protocol-version": "1999-01-01"}), 400, -32600
    )
    assert error["data"]["gateway"]["reason"] == "unsupported_protocol_version"


def test_unknown_method_and_tool(gw: Child) -> None:
    session = new_session(gw.port)
    headers = {"mcp-session-id": session}
    assert_error(call(gw.port, b'{"jsonrpc":"2.0","id":1,"method":"no/such"}', headers), 200, -32601)
    body = b'{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"zzz__nope","arguments":{}}}'
    assert_error(call(gw.port, body, headers), 200, -32602, "unknown_tool")
    body = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"arguments":{}}}'
    assert_error(call(gw.port, body, headers), 200, -32602)
    body = b'{"jsonrpc":"2.0","id":4,"method":"resources/read","params":{"uri":"nope+x://y"}}'
    # Resource not found is -32002 in the handshake era (the stateless era uses -32602).
    assert_error(call(gw.port, body, headers), 200, -32002, "resource_not_found")


def test_oversized_body(gw: Child) -> None:
    # The gateway under test allows 1 MiB; announce 2 MiB and send only the start.
    request = post("/mcp", b"", {"content-length": str(2 * 1024 * 1024)}, port=gw.port) + b"{" * 1000
    response = raw_exchange(gw.port, request)
    assert_error(response, 413, -32055, "request_too_large")
    assert_still_serving(gw.port)


def test_oversized_headers(gw: Child) -> None:
    request = post("/mcp", INIT, {"x-padding": "a" * 70_000}, port=gw.port)
    response = raw_exchange(gw.port, request)
    assert response.status == 431
    many = post("/mcp", INIT, {f"x-h{i}": "v" for i in range(500)}, port=gw.port)
    assert raw_exchange(gw.port, many).status == 431
    assert_still_serving(gw.port)


def test_malformed_http(gw: Child) -> None:
    response = raw_exchange(gw.port, b"THIS IS NOT HTTP\r\n\r\n")
    assert response.status == 400
    cl_te = post("/mcp", INIT, {"transfer-encoding": "chunked"}, port=gw.port)
    assert raw_exchange(gw.port, cl_te).status == 400
    assert_still_serving(gw.port)


def test_slow_client_never_finishing_headers(gw: Child) -> None:
    """A client that stops mid-headers is answered 408 (or closed) after header_timeout (1 s here)."""
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as slow:
        slow.sendall(b"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\n")
        started = time.monotonic()
        # Meanwhile, everyone else is served.
        assert_still_serving(gw.port)
        try:
            response = read_response(slow, timeout=10)
            assert response.status == 408
        except ConnectionError:
            pass  # a plain close is allowed too
        assert time.monotonic() - started < 8
        slow.settimeout(5)
        assert slow.recv(1) == b""


@pytest.mark.parametrize(
    ("headers", "status"),
    [({"host": "evil.example.com"}, 421), ({"origin": "http://evil.example.com"}, 403)],
    ids=["host", "origin"],
)
def test_dns_rebinding(gw: Child, headers: dict, status: int) -> None:
    assert_error(call(gw.port, INIT, headers), status, -32052)
    ok = call(gw.port, INIT, {"origin": f"http://localhost:{gw.port}"})
    assert ok.status == 200


def test_wrong_http_method(gw: Child) -> None:
    response = raw_exchange(gw.port, f"PUT /mcp HTTP/1.1\r\nhost: 127.0.0.1:{gw.port}\r\ncontent-length: 0\r\n\r\n".encode())
    assert response.status == 405
    assert "POST" in response.headers["allow"]


def test_notification_is_accepted(gw: Child) -> None:
    session = new_session(gw.port)
    response = call(gw.port, b'{"jsonrpc":"2.0","method":"notifications/initialized"}', {"mcp-session-id": session})
    assert response.status == 202
    assert response.body == b""
