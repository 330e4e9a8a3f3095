"""The strict HTTP/1.1 edge (RFC 9112): each attack on framing, Host, version or target is refused
with its status, ``Connection: close`` and a short text body, the connection closes, and the
gateway goes on serving; the legitimate form of each still passes.

The gateway runs in this process on a real socket on 127.0.0.1 (a scripted MCP backend behind it),
and the client sends raw bytes. A refused request is always refused on httptools' path (the one-call
parser declines it), so one write each is enough; the end of the file feeds the same attacks to a
protocol whole and one byte per read, so that a refusal never depends on how the bytes arrive.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from gateway.config import load_config_text
from gateway.server.api import Reply, Request
from tests.support import ScriptedHttp, handshake_answer, in_process_gateway
from tests.test_protocol import make, settle

pytestmark = pytest.mark.asyncio(loop_scope="module")

ACCEPT = "application/json, text/event-stream"
INITIALIZE = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
).encode()


# -- the gateway, and a raw client -------------------------------------------------------------


async def _backend_answer(request: dict, sessions: list[str]) -> tuple[int, dict, bytes] | None:
    """An MCP server with nothing to list: the gateway's own calls to it all succeed."""
    answer = handshake_answer(request, sessions)
    if answer is not None:
        return answer
    msg = request["body"]
    key = msg["method"].split("/")[0]
    return 200, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {key: []}}).encode()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def port() -> AsyncIterator[int]:
    sessions: list[str] = []

    async def answer(request: dict) -> tuple[int, dict, bytes] | None:
        return await _backend_answer(request, sessions)

    async with ScriptedHttp(answer) as url:
        config = load_config_text(f"[server]\nport = 0\n\n[backends.web]\nurl = {url!r}\n", fmt="toml")
        async with in_process_gateway(config) as gateway:
            yield gateway.port


@pytest.fixture(autouse=True)
def no_traceback_logged(caplog: pytest.LogCaptureFixture) -> None:
    """A refusal is an answer, not an error: nothing logged with a traceback, nothing at ERROR."""
    yield
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


class _Client(asyncio.Protocol):
    """Collects every byte the server sends; ``gone`` resolves when the server closed the connection."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.data = b""
        self.gone: asyncio.Future[None] = loop.create_future()

    def data_received(self, data: bytes) -> None:
        self.data += data

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.gone.done():
            self.gone.set_result(None)


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` and return all the server said before it closed the connection (the test
    fails if it does not close: every request here is refused, or asks for ``Connection: close``)."""
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_connection(lambda: _Client(loop), "127.0.0.1", port)
    try:
        transport.write(data)
        await asyncio.wait_for(client.gone, 10)
    finally:
        transport.close()
    return client.data


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Every ``Content-Length``-framed response in ``raw``: status, headers (lower-case names), body."""
    out = []
    while raw:
        head, sep, raw = raw.partition(b"\r\n\r\n")
        assert sep, f"a response head without its end: {head!r}"
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(headers["content-length"])
        out.append((int(lines[0].split()[1]), headers, raw[:length]))
        raw = raw[length:]
    return out


async def refused(port: int, data: bytes, status: int) -> bytes:
    """``data`` gets exactly one answer, ``status`` with ``Connection: close`` and a short text body,
    the connection closes, and a new connection is served as usual. Returns the body."""
    answers = responses(await exchange(port, data))
    assert [a[0] for a in answers] == [status], answers
    _, headers, body = answers[0]
    assert headers["connection"] == "close"
    assert headers["content-type"].startswith("text/plain")
    assert 0 < len(body) < 200 and b"Traceback" not in body
    await healthy(port)
    return body


async def healthy(port: int) -> None:
    """The gateway still serves: a plain GET /healthz on a new connection."""
    answers = responses(await exchange(port, b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"))
    assert [a[0] for a in answers] == [200]


def post(port: int, *lines: str, target: str = "/mcp", version: str = "HTTP/1.1", body: bytes = INITIALIZE) -> bytes:
    """A POST of ``body`` (an initialize) with the usual MCP headers, ``lines`` added, and a
    Content-Length unless ``lines`` frame the body themselves."""
    head = [f"POST {target} {version}", f"Host: 127.0.0.1:{port}", "Content-Type: application/json", f"Accept: {ACCEPT}"]
    head += lines
    if not any(line.lower().startswith(("content-length:", "transfer-encoding:")) for line in lines):
        head.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


def extension_for(line: int) -> bytes:
    """A chunk extension that makes the first size line of ``chunked(INITIALIZE, ...)`` ``line`` bytes long."""
    return b";a=" + b"x" * (line - len(b"%x" % (len(INITIALIZE) // 2)) - 3)


def chunked(body: bytes, *, extension: bytes = b"", trailer: bytes = b"") -> bytes:
    """``body`` as two chunks, the first one's size line carrying ``extension``."""
    half = len(body) // 2
    first, second = body[:half], body[half:]
    return b"%x%b\r\n%b\r\n%x\r\n%b\r\n0\r\n%b\r\n" % (len(first), extension, first, len(second), second, trailer)


def initialized(answer: tuple[int, dict[str, str], bytes]) -> bool:
    """The app read the initialize body and answered it."""
    status, headers, body = answer
    return status == 200 and "mcp-session-id" in headers and json.loads(body)["id"] == 7


# -- Host ---------------------------------------------------------------------------------------


async def test_http11_without_host_is_400(port: int) -> None:
    data = post(port).replace(f"Host: 127.0.0.1:{port}\r\n".encode(), b"")
    assert b"Host" in await refused(port, data, 400)


@pytest.mark.parametrize("second", ["127.0.0.1", "evil.example", ""])
async def test_two_host_lines_are_400(port: int, second: str) -> None:
    await refused(port, post(port, f"Host: {second}"), 400)  # even the same name twice


@pytest.mark.parametrize("value", ["127.0.0.1, evil.example", "", "a b", "user@127.0.0.1", "127.0.0.1/x"])
async def test_an_invalid_host_value_is_400(port: int, value: str) -> None:
    data = post(port).replace(f"Host: 127.0.0.1:{port}".encode(), f"Host: {value}".encode())
    await refused(port, data, 400)


async def test_host_once_passes(port: int) -> None:
    [answer] = responses(await exchange(port, post(port, "Connection: close")))
    assert initialized(answer)


async def test_http10_without_host_is_accepted(port: int) -> None:
    """RFC 9112 3.2 requires Host of HTTP/1.1 only; the DNS-rebinding gate still judges a 1.0 request."""
    answers = responses(await exchange(port, b"GET /healthz HTTP/1.0\r\n\r\n"))
    assert [a[0] for a in answers] == [200]
    data = post(port, version="HTTP/1.0").replace(f"Host: 127.0.0.1:{port}\r\n".encode(), b"")
    [(status, _, body)] = responses(await exchange(port, data))
    assert status == 421 and b"host_not_allowed" in body  # /mcp with no Host: the gate refuses it


async def test_http10_with_content_length_passes(port: int) -> None:
    [answer] = responses(await exchange(port, post(port, version="HTTP/1.0")))
    assert initialized(answer)


# -- Transfer-Encoding --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "lines",
    [
        ["Transfer-Encoding: gzip, chunked"],
        ["Transfer-Encoding: chunked, chunked"],
        ["Transfer-Encoding: chunked", "Transfer-Encoding: chunked"],
        ["Transfer-Encoding: chunked, gzip"],
        ["Transfer-Encoding: identity"],
        ["Transfer-Encoding: xchunked"],
        ["Transfer-Encoding: chunked;q=1"],
        ["Transfer-Encoding:"],
    ],
)
async def test_a_coding_other_than_chunked_is_501(port: int, lines: list[str]) -> None:
    await refused(port, post(port, *lines, body=chunked(INITIALIZE)), 501)


async def test_transfer_encoding_in_http10_is_400(port: int) -> None:
    await refused(port, post(port, "Transfer-Encoding: chunked", version="HTTP/1.0", body=chunked(INITIALIZE)), 400)
    await refused(port, post(port, "Transfer-Encoding: gzip, chunked", version="HTTP/1.0", body=chunked(INITIALIZE)), 400)


@pytest.mark.parametrize("order", [0, 1])
async def test_transfer_encoding_with_content_length_is_400(port: int, order: int) -> None:
    lines = ["Transfer-Encoding: chunked", f"Content-Length: {len(INITIALIZE)}"]
    await refused(port, post(port, *lines[order:], *lines[:order], body=chunked(INITIALIZE)), 400)


@pytest.mark.parametrize("coding", ["chunked", "Chunked", "CHUNKED"])
async def test_a_chunked_body_is_accepted(port: int, coding: str) -> None:
    data = post(port, f"Transfer-Encoding: {coding}", "Connection: close", body=chunked(INITIALIZE))
    [answer] = responses(await exchange(port, data))
    assert initialized(answer)


# -- version ------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["HTTP/1.2", "HTTP/2.0", "HTTP/0.9", "HTTP/3.0", "HTTP/9.9"])
async def test_another_version_is_505(port: int, version: str) -> None:
    await refused(port, post(port, version=version), 505)


async def test_the_http2_preface_is_505(port: int) -> None:
    await refused(port, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505)


@pytest.mark.parametrize("version", ["HTTP/1.x", "HTTP/12.0", "HTXP/1.1", "HTTP/1.1x", "HTTP/3x"])
async def test_a_version_that_is_not_one_is_400(port: int, version: str) -> None:
    await refused(port, post(port, version=version), 400)


# -- request target -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/mcp#frag", "/mcp?x=1#", "http://127.0.0.1:{port}/mcp#f"])
async def test_a_fragment_is_400(port: int, target: str) -> None:
    await refused(port, post(port, target=target.format(port=port)), 400)


async def test_absolute_form_naming_this_host_is_routed_by_its_path(port: int) -> None:
    data = post(port, "Connection: close", target=f"HTTP://127.0.0.1:{port}/mcp")
    [answer] = responses(await exchange(port, data))
    assert initialized(answer)
    get = f"GET http://127.0.0.1:{port}/healthz?x=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    [(status, _, body)] = responses(await exchange(port, get.encode()))
    assert status == 200 and b'"status"' in body


@pytest.mark.parametrize(
    "target",
    [
        "http://evil.example/mcp",  # another name than Host
        "http://127.0.0.1:1/mcp",  # another port
        "http://user@127.0.0.1:{port}/mcp",  # userinfo
        "http:///mcp",  # no authority
        "ftp://127.0.0.1:{port}/mcp",  # not http
    ],
)
async def test_absolute_form_not_naming_this_host_is_400(port: int, target: str) -> None:
    await refused(port, post(port, target=target.format(port=port)), 400)


async def test_absolute_form_cannot_bypass_the_host_check(port: int) -> None:
    """The authority is the Host the DNS-rebinding gate judges: a foreign name is refused by it
    (421) whether it is in both, or only in the target of an HTTP/1.0 request without Host."""
    data = post(port, "Connection: close", target="http://evil.example/mcp").replace(
        f"Host: 127.0.0.1:{port}".encode(), b"Host: evil.example"
    )
    [(status, _, body)] = responses(await exchange(port, data))
    assert status == 421 and b"evil.example" in body
    data = post(port, target="http://evil.example/mcp", version="HTTP/1.0").replace(
        f"Host: 127.0.0.1:{port}\r\n".encode(), b""
    )
    [(status, _, body)] = responses(await exchange(port, data))
    assert status == 421 and b"evil.example" in body
    # And in HTTP/1.1, a target cannot stand for the Host it lacks.
    data = post(port, target=f"http://127.0.0.1:{port}/mcp").replace(f"Host: 127.0.0.1:{port}\r\n".encode(), b"")
    await refused(port, data, 400)


# -- chunk extensions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extension",
    [
        extension_for(257),  # one byte past the bound
        b";a=" + b"x" * 100_000,  # far past the bound, in the same read as the head
        b';a="' + b"x" * 300 + b'"',  # a quoted value
    ],
)
async def test_a_long_chunk_line_is_400(port: int, extension: bytes) -> None:
    data = post(port, "Transfer-Encoding: chunked", body=chunked(INITIALIZE, extension=extension))
    assert b"chunk" in await refused(port, data, 400)


async def test_a_long_chunk_size_is_400(port: int) -> None:
    body = b"0" * 300 + b"%x\r\n%b\r\n0\r\n\r\n" % (len(INITIALIZE), INITIALIZE)  # leading zeros, no extension
    await refused(port, post(port, "Transfer-Encoding: chunked", body=body), 400)


async def test_many_short_extensions_are_bounded_per_body(port: int) -> None:
    """Each line within its bound, 4 KiB of extensions in all: 400 (one-byte chunks, 100 bytes each)."""
    ext = b";e=" + b"x" * 97
    body = b"".join(b"1%b\r\n%b\r\n" % (ext, INITIALIZE[i : i + 1]) for i in range(len(INITIALIZE))) + b"0\r\n\r\n"
    assert len(INITIALIZE) * len(ext) > 4096
    await refused(port, post(port, "Transfer-Encoding: chunked", body=body), 400)


async def test_short_chunk_extensions_pass(port: int) -> None:
    for extension in (b";a=b", b';name="quoted \\" value";flag', extension_for(256)):  # the last: at the bound
        data = post(port, "Transfer-Encoding: chunked", "Connection: close", body=chunked(INITIALIZE, extension=extension))
        [answer] = responses(await exchange(port, data))
        assert initialized(answer), extension


async def test_a_chunked_body_behind_another_request_is_bounded_too(port: int) -> None:
    """Pipelined in one write after a Content-Length request, it is still measured and refused. (The
    first, if it is still running then, is dropped rather than answered after the refusal.)"""
    bad = post(port, "Transfer-Encoding: chunked", body=chunked(INITIALIZE, extension=b";a=" + b"x" * 400))
    *earlier, (status, headers, body) = responses(await exchange(port, post(port) + bad))
    assert status == 400 and headers["connection"] == "close" and b"chunk" in body
    assert len(earlier) <= 1 and all(initialized(a) for a in earlier)


async def test_requests_behind_a_chunked_one_are_read_as_themselves(port: int) -> None:
    first = post(port, "Transfer-Encoding: chunked", body=chunked(INITIALIZE, extension=b";a=b"))
    answers = responses(await exchange(port, first + post(port) + post(port, "Connection: close")))
    assert len(answers) == 3 and all(initialized(a) for a in answers)


async def test_trailers_are_bounded_and_never_become_headers(port: int) -> None:
    trailer = b"Host: evil.example\r\nMcp-Session-Id: stolen\r\n"
    data = post(port, "Transfer-Encoding: chunked", "Connection: close", body=chunked(INITIALIZE, trailer=trailer))
    [answer] = responses(await exchange(port, data))
    assert initialized(answer)  # not 421 (evil Host) nor 404 (an unknown session)
    huge = b"X-Big: " + b"a" * 20_000 + b"\r\n"
    await refused(port, post(port, "Transfer-Encoding: chunked", body=chunked(INITIALIZE, trailer=huge)), 431)


# -- the same, one byte per read (httptools' path, every split) -----------------------------------


async def _status(data: bytes, *, whole: bool) -> tuple[int, bool, list[Request]]:
    """Feed ``data`` to a protocol (in one read, or one byte per read): the first status it wrote,
    whether it closed, and the requests its app saw."""
    seen: list[Request] = []

    async def app(request: Request, reply: Reply) -> None:
        seen.append(request)
        reply.send(200, [], b"ok")

    proto, transport = make(app)
    pieces = [data] if whole else [data[i : i + 1] for i in range(len(data))]
    for piece in pieces:
        if transport.closed:
            break
        proto.data_received(piece)
    await settle()
    return int(transport.data.split(b" ", 2)[1]), transport.closed, seen


H = b"POST /mcp HTTP/1.1\r\nHost: x\r\n"
BODY = b"Transfer-Encoding: chunked\r\n\r\n3;a=b\r\nabc\r\n0\r\n\r\n"


@pytest.mark.parametrize(
    ("data", "status"),
    [
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x, y\r\n\r\n", 400),
        (H + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        (H + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (H + b"Transfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
        (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /a#b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET http://y/a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (H + b"Transfer-Encoding: chunked\r\n\r\n3;" + b"e" * 256 + b"\r\nabc\r\n0\r\n\r\n", 400),
        (H + b"Transfer-Encoding: chunked\r\n\r\n3;" + b"e" * 254 + b"\r\nabc\r\n0\r\n\r\n", 200),  # 257: 400, 256: 200
        (H + BODY, 200),
        (b"GET http://X/a?q HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /a HTTP/1.0\r\n\r\n", 200),
    ],
)
@pytest.mark.parametrize("whole", [True, False], ids=["whole", "bytewise"])
async def test_the_verdict_does_not_depend_on_how_bytes_arrive(data: bytes, status: int, whole: bool) -> None:
    got, closed, seen = await _status(data, whole=whole)
    assert got == status
    assert closed is (status != 200 or data.startswith(b"GET /a HTTP/1.0"))  # 1.0: closes unless keep-alive
    assert bool(seen) is (status == 200)


async def test_what_the_app_sees_of_an_absolute_form_and_a_chunked_request() -> None:
    data = b"GET http://X:1/a?q=1 HTTP/1.1\r\nHost: x:1\r\n\r\n" + H + BODY[:-2] + b"Host: evil\r\n\r\n"
    for whole in (True, False):
        _, closed, seen = await _status(data, whole=whole)
        assert not closed
        assert [(r.path, r.query, r.headers.get("host")) for r in seen] == [("/a", "q=1", "X:1"), ("/mcp", "", "x")]
        assert seen[1].body == b"abc" and "evil" not in seen[1].headers.values()  # the trailer was dropped
