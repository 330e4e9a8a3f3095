"""HttpProtocol fed raw bytes through a recording transport (no sockets): framing,
keep-alive, pipelining order, limits, timeouts, streaming and app failures."""

from __future__ import annotations

import asyncio

import pytest

from gateway.config import ServerConfig
from gateway.server.api import Reply, Request
from gateway.server.protocol import HttpProtocol, ServerState


class RecordingTransport(asyncio.Transport):
    """Collects what the protocol writes; records close and read pausing."""

    def __init__(self) -> None:
        super().__init__()
        self.data = b""
        self.closed = False
        self.reading = True

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 50000) if name == "peername" else default


async def echo_app(request: Request, reply: Reply) -> None:
    """Answers with method, path and body; ``/slow`` waits first, ``/boom`` raises."""
    if request.path == "/slow":
        await asyncio.sleep(0.05)
    if request.path == "/boom":
        raise RuntimeError("secret internal detail")
    if request.path == "/nothing":
        return
    if request.path == "/stream":
        reply.start_stream(200, [("content-type", "text/event-stream")])
        reply.write(b"data: 1\n\n")
        reply.write(b"data: 2\n\n")
        reply.end()
        return
    reply.send(200, [("x-path", request.path)], f"{request.method} {request.path} ".encode() + request.body)


def make(app=echo_app, **limits) -> tuple[HttpProtocol, RecordingTransport]:  # type: ignore[no-untyped-def]
    config = ServerConfig(**limits)
    proto = HttpProtocol(app, config, ServerState(), asyncio.get_running_loop())
    transport = RecordingTransport()
    proto.connection_made(transport)
    return proto, transport


async def settle(seconds: float = 0.0) -> None:
    for _ in range(5):
        await asyncio.sleep(seconds / 5 if seconds else 0)


def status_lines(data: bytes) -> list[int]:
    """Offsets of every status line in the bytes written."""
    out, start = [], 0
    while (i := data.find(b"HTTP/1.1 ", start)) >= 0:
        out.append(i)
        start = i + 1
    return out


GET = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n"


async def test_simple_get_and_keep_alive() -> None:
    proto, transport = make()
    proto.data_received(GET)
    await settle()
    assert transport.data.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 7\r\n" in transport.data
    assert transport.data.endswith(b"GET /a ")
    assert not transport.closed
    proto.data_received(b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    await settle()
    assert transport.data.endswith(b"POST /b hello")
    assert len(status_lines(transport.data)) == 2


async def test_body_split_across_chunks() -> None:
    proto, transport = make()
    request = b"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\nhello world"
    for i in range(len(request)):
        proto.data_received(request[i : i + 1])
    await settle()
    assert transport.data.endswith(b"POST /b hello world")


async def test_pipelined_responses_keep_request_order() -> None:
    proto, transport = make()
    proto.data_received(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /fast HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle(0.2)
    assert transport.data.index(b"GET /slow") < transport.data.index(b"GET /fast")
    assert len(status_lines(transport.data)) == 2


async def test_connection_close_and_http10() -> None:
    proto, transport = make()
    proto.data_received(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    await settle()
    assert b"connection: close\r\n" in transport.data and transport.closed
    proto, transport = make()
    proto.data_received(b"GET /a HTTP/1.0\r\n\r\n")
    await settle()
    assert transport.data.startswith(b"HTTP/1.1 200") and transport.closed


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT HTTP AT ALL\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    ],
    ids=["garbage", "cl-and-te", "bad-chunk", "bad-length", "upgrade"],
)
async def test_malformed_requests_get_400_and_close(request_bytes: bytes) -> None:
    proto, transport = make()
    proto.data_received(request_bytes)
    await settle()
    assert transport.data.startswith(b"HTTP/1.1 400 ")
    assert transport.closed


async def test_header_section_limit_applies_before_the_parser() -> None:
    proto, transport = make(max_header_bytes=1024)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ")
    for _ in range(20):  # a header value that never ends, in small chunks
        if transport.closed:
            break
        proto.data_received(b"a" * 100)
    assert transport.data.startswith(b"HTTP/1.1 431 ")
    assert transport.closed


async def test_one_huge_header_chunk() -> None:
    proto, transport = make(max_header_bytes=1024)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert transport.data.startswith(b"HTTP/1.1 431 ") and transport.closed


async def test_too_many_headers() -> None:
    proto, transport = make(max_headers=10)
    headers = b"".join(b"X-%d: v\r\n" % i for i in range(11))
    proto.data_received(b"GET / HTTP/1.1\r\n" + headers + b"\r\n")
    assert transport.data.startswith(b"HTTP/1.1 431 ") and transport.closed


async def test_headers_within_limits_pass() -> None:
    proto, transport = make(max_headers=10, max_header_bytes=1024)
    headers = b"Host: x\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(9))
    proto.data_received(b"GET /ok HTTP/1.1\r\n" + headers + b"\r\n")
    await settle()
    assert transport.data.startswith(b"HTTP/1.1 200 ")


async def test_url_too_long() -> None:
    proto, transport = make(max_url_bytes=100)
    proto.data_received(b"GET /" + b"a" * 200 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert transport.data.startswith(b"HTTP/1.1 414 ") and transport.closed


async def test_content_length_too_large_gets_413_jsonrpc() -> None:
    proto, transport = make(max_body_bytes=10)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 11\r\n\r\n")
    assert transport.data.startswith(b"HTTP/1.1 413 ") and transport.closed
    assert b'"code":-32055' in transport.data


async def test_chunked_body_too_large() -> None:
    proto, transport = make(max_body_bytes=10)
    proto.data_received(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
    proto.data_received(b"8\r\n12345678\r\n")
    assert not transport.closed
    proto.data_received(b"8\r\n12345678\r\n")
    assert transport.data.startswith(b"HTTP/1.1 413 ") and transport.closed


async def test_header_timeout_gets_408() -> None:
    proto, transport = make(header_timeout=0.05)
    proto.data_received(b"GET / HTTP/1.1\r\nHost: x\r\n")
    await asyncio.sleep(0.15)
    assert transport.data.startswith(b"HTTP/1.1 408 ") and transport.closed


async def test_idle_keep_alive_connection_is_closed() -> None:
    proto, transport = make(idle_timeout=0.05)
    proto.data_received(GET)
    await settle()
    assert not transport.closed
    await asyncio.sleep(0.15)
    assert transport.closed


async def test_app_exception_is_500_without_traceback() -> None:
    proto, transport = make()
    proto.data_received(b"GET /boom HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert transport.data.startswith(b"HTTP/1.1 500 ")
    assert b"secret internal detail" not in transport.data and b"Traceback" not in transport.data
    assert b'"code":-32603' in transport.data


async def test_app_returning_without_reply_is_500() -> None:
    proto, transport = make()
    proto.data_received(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    assert transport.data.startswith(b"HTTP/1.1 500 ")


async def test_streamed_response_is_chunked() -> None:
    proto, transport = make()
    proto.data_received(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    head, _, body = transport.data.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head
    assert body == b"9\r\ndata: 1\n\n\r\n9\r\ndata: 2\n\n\r\n0\r\n\r\n"
    assert not transport.closed


async def test_disconnect_marks_reply_closed_and_wakes_waiters() -> None:
    replies: list[Reply] = []
    woke = asyncio.Event()

    async def waiting_app(request: Request, reply: Reply) -> None:
        replies.append(reply)
        reply.start_stream(200, [])
        await reply.wait_closed()
        woke.set()

    proto, transport = make(waiting_app)
    proto.data_received(GET)
    await settle()
    assert replies and not replies[0].closed
    proto.connection_lost(None)
    await asyncio.wait_for(woke.wait(), 1)
    assert replies[0].closed


async def test_many_pipelined_requests_pause_reading() -> None:
    gate = asyncio.Event()

    async def blocked_app(request: Request, reply: Reply) -> None:
        await gate.wait()
        reply.send(200, [], b"ok")

    proto, transport = make(blocked_app)
    proto.data_received(GET * 20)
    await settle()
    assert not transport.reading
    gate.set()
    await settle(0.05)
    assert transport.reading
    assert len(status_lines(transport.data)) == 20


async def test_pre_encoded_header_lines() -> None:
    async def app(request: Request, reply: Reply) -> None:
        reply.send(200, b"content-type: application/json\r\n", b"{}")

    proto, transport = make(app)
    proto.data_received(GET)
    await settle()
    head, _, body = transport.data.partition(b"\r\n\r\n")
    assert b"\r\ncontent-type: application/json\r\ncontent-length: 2" in head and body == b"{}"


async def test_whole_and_split_requests_reach_the_app_alike() -> None:
    """One read (the one-call parser) and one byte per read (httptools) give the app the same Request."""
    seen: list[tuple[object, ...]] = []

    async def record(request: Request, reply: Reply) -> None:
        seen.append((request.method, request.path, request.query, request.headers, request.body, request.keep_alive))
        reply.send(200, [], b"")

    data = (
        b"POST /mcp?a=1 HTTP/1.1\r\nHost: x\r\nX-Twice: a \r\nx-twice: b\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n"
        b"DELETE /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    proto, _ = make(record)
    proto.data_received(data)
    await settle()
    whole = list(seen)
    seen.clear()
    proto, _ = make(record)
    for i in range(len(data)):
        proto.data_received(data[i : i + 1])
    await settle()
    assert len(whole) == 3 and seen == whole
    assert whole[0][3] == {"host": "x", "x-twice": "a, b", "content-length": "5"}
    assert [w[5] for w in whole] == [True, True, False]


async def test_an_app_still_running_after_its_reply_does_not_hold_up_the_next_request() -> None:
    """A held call (replied, still running until the client's next request) must not block
    that next request on the same connection."""
    second_seen = asyncio.Event()

    async def app(request: Request, reply: Reply) -> None:
        if request.path == "/first":
            reply.send(200, [], b"first")
            await asyncio.wait_for(second_seen.wait(), 2)  # waits for the next request, as a held call does
        else:
            second_seen.set()
            reply.send(200, [], b"second")

    proto, transport = make(app)
    proto.data_received(b"GET /first HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle()
    proto.data_received(b"GET /second HTTP/1.1\r\nHost: x\r\n\r\n")
    await settle(0.05)
    assert second_seen.is_set()
    assert transport.data.endswith(b"second") and len(status_lines(transport.data)) == 2


@pytest.mark.parametrize("request_id", [0, 7, -1, 2**63, "a", 'x"y\\z', "é\u2028", ""])
@pytest.mark.parametrize("as_raw", [True, False])
def test_response_bytes_are_what_encoding_a_message_gives(request_id: object, as_raw: bool) -> None:
    # response_bytes joins the parts itself (no Message built): it must stay byte for byte the encoder's output.
    import msgspec

    from gateway.protocol.jsonrpc import Message, error_response_bytes, response_bytes

    body = b'{"content":[{"type":"text","text":"hi"}],"isError":false}'
    value = msgspec.Raw(body) if as_raw else body
    encode = msgspec.json.Encoder().encode
    assert response_bytes(request_id, value) == encode(Message(id=request_id, result=msgspec.Raw(body)))  # type: ignore[arg-type]
    error = b'{"code":-32601,"message":"nope"}'
    assert error_response_bytes(request_id, error) == encode(Message(id=request_id, error=msgspec.Raw(error)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "body",
    [
        b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a__b","arguments":{"x":[1,2]}}}',
        b'{"jsonrpc":"2.0","id":"s","method":"tools/call","params":{}}',
        b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
    ],
)
def test_decode_call_is_decode_envelope_then_decode_params(body: bytes) -> None:
    # The express lane decodes the envelope and the params' top level in one pass: the same as the two apart.
    from gateway.protocol.jsonrpc import UNSET, decode_call, decode_envelope, decode_params

    one, two = decode_call(body), decode_envelope(body)
    assert (one.jsonrpc, one.id, one.method) == (two.jsonrpc, two.id, two.method)
    expected = decode_params(two.params) if two.params is not UNSET else UNSET
    got = one.params if one.params is UNSET else {k: bytes(v) for k, v in one.params.items()}
    assert got == (expected if expected is UNSET else {k: bytes(v) for k, v in expected.items()})


def test_decode_call_refuses_params_that_are_not_an_object() -> None:
    import msgspec

    from gateway.protocol.jsonrpc import decode_call

    with pytest.raises(msgspec.ValidationError):
        decode_call(b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}')
