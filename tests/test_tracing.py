"""Tracing (``gateway.ops.tracing``, ``[tracing]``): W3C Trace Context parsed strictly, continued
from the client (header, or ``params._meta``) or started, passed to the backend (HTTP header and
``_meta``, stdio too) with the gateway's span as the new parent, and each traced request's span
exported by OTLP/HTTP JSON to a collector.

The units are the parsers, the span and the exporter. End to end: a real gateway in this process,
a real SDK backend (``tests/servers/trace_server.py``, whose tools answer with the trace context
they were given), the official SDK client, and an OTLP receiver on 127.0.0.1 (``Collector``)
that records each ``POST /v1/traces``. Waits are on conditions with a timeout, never on time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import pathlib
import sys
import tempfile
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx2
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamable_http_client

from gateway.app import Gateway
from gateway.config import Config, TracingConfig, load_config_text
from gateway.ops.tracing import (
    MAX_TRACESTATE,
    Span,
    Tracer,
    format_traceparent,
    parse_traceparent,
    parse_baggage,
    parse_tracestate,
)
from gateway.policy.admission import Admission
from gateway.protocol.jsonrpc import UNSET, Message, Raw
from gateway.server.listener import Server
from tests.support import ROOT, SERVERS, Child, ScriptedHttp, in_process_gateway

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
CLIENT_TP = f"00-{TRACE}-{PARENT}-01"
CLIENT_TS = "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
CLIENT_BAGGAGE = "userId=alice,serverNode=DF%2028;region=eu,isProduction=false"
META_TRACE = "0af7651916cd43dd8448eb211c80319c"
META_PARENT = "b7ad6b7169203331"
META_TP = f"00-{META_TRACE}-{META_PARENT}-01"


# -- traceparent ------------------------------------------------------------------------------------


def test_a_valid_traceparent_is_parsed() -> None:
    parent = parse_traceparent(CLIENT_TP)
    assert parent is not None
    assert (parent.trace_id, parent.parent_id, parent.flags, parent.sampled) == (TRACE, PARENT, 1, True)
    unsampled = parse_traceparent(f"00-{TRACE}-{PARENT}-00")
    assert unsampled is not None and unsampled.sampled is False
    assert format_traceparent(TRACE, PARENT, 1) == CLIENT_TP


@pytest.mark.parametrize(
    "value",
    [
        f"01-{TRACE}-{PARENT}-01",  # a version the gateway does not speak
        f"ff-{TRACE}-{PARENT}-01",  # the forbidden version
        f"00-{TRACE.upper()}-{PARENT}-01",  # upper-case hex
        f"00-{TRACE[:-1]}-{PARENT}-01",  # a trace id one digit short
        f"00-{TRACE}0-{PARENT}-01",  # one digit long
        f"00-{'0' * 32}-{PARENT}-01",  # all-zero trace id
        f"00-{TRACE}-{'0' * 16}-01",  # all-zero parent id
        f"00-{TRACE}-{PARENT}-0g",  # flags not hex
        f"00-{TRACE}-{PARENT}-1",  # flags one digit
        f"00-{TRACE}-{PARENT}-01-extra",  # a version-00 value with more after it
        f"00_{TRACE}_{PARENT}_01",  # wrong separators
        f" 00-{TRACE}-{PARENT}-0",  # padding
        f"00-{TRACE[:-1]}z-{PARENT}-01",  # a non-hex digit in the trace id
        f"00-{TRACE}-{PARENT[:-1]}z-01",  # and in the parent id
        f"{CLIENT_TP}, {CLIENT_TP}",  # two traceparent headers (joined by the HTTP layer)
        "",
        None,
        55,
        ["00", TRACE, PARENT, "01"],
    ],
)
def test_an_invalid_traceparent_is_refused(value: Any) -> None:
    assert parse_traceparent(value) is None


# -- tracestate -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (CLIENT_TS, CLIENT_TS),
        ("tenant@vendor=v1", "tenant@vendor=v1"),  # a multi-tenant key
        ("a=1 ,\t b=2", "a=1,b=2"),  # optional white space around members
        ("a=1,,b=2,", "a=1,b=2"),  # empty members
        ("k=value with spaces", "k=value with spaces"),
        ("a*b/c_d-e=x", "a*b/c_d-e=x"),
        ("rojo=ends with space ", "rojo=ends with space"),  # white space around a member, not its value
        ("", None),
        (" , ", None),
    ],
)
def test_a_valid_tracestate_is_kept(value: str, kept: str | None) -> None:
    assert parse_tracestate(value) == kept


@pytest.mark.parametrize(
    "value",
    [
        "Rojo=1",  # upper case in a key
        "1abc=1",  # a simple key starting with a digit
        "rojo",  # no value
        "rojo=",  # an empty value
        "rojo=a=b",  # "=" in a value
        "rojo=\x7f",  # a control character
        "rojo=caf\u00e9",  # not ASCII
        "rojo=1\r\nx-injected: yes",  # a header injection attempt
        "a=1,a=2",  # a key twice
        "t@=1",  # an empty system id
        "@v=1",  # an empty tenant id
        "t@Vendor=1",  # upper case in a system id
        "k" * 257 + "=1",  # a key too long
        "k=" + "v" * 257,  # a value too long
        ",".join(f"k{i}=v" for i in range(33)),  # 33 members
        None,
        42,
    ],
)
def test_an_invalid_tracestate_is_dropped(value: Any) -> None:
    assert parse_tracestate(value) is None


def test_thirty_two_members_are_kept() -> None:
    value = ",".join(f"k{i}=v" for i in range(32))
    assert parse_tracestate(value) == value


def test_a_long_tracestate_is_cut_to_512_characters_long_members_first() -> None:
    long_member = "big=" + "x" * 200  # longer than 128 characters: the first to go
    short = [f"m{i:02d}=" + "y" * 40 for i in range(12)]  # 12 x 44 characters + separators > 512
    value = ",".join([short[0], long_member, *short[1:]])
    kept = parse_tracestate(value)
    assert kept is not None and len(kept) <= MAX_TRACESTATE
    members = kept.split(",")
    assert long_member not in members
    # Then members from the end go, until it fits: the first ones stay, in order.
    assert members == short[: len(members)]
    assert len(members) == 11  # 11 x 44 + 10 = 494; with the 12th it would be 539


# -- baggage ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("value", "kept"),
    [
        (CLIENT_BAGGAGE, CLIENT_BAGGAGE),
        ("a = 1 ;  p ; q=2 , b=", "a = 1 ;  p ; q=2,b="),  # OWS around "=" and ";" is the member's own; empty value
        (" a=1 ,, b=2 ", "a=1,b=2"),  # empty members dropped, OWS around "," trimmed
        ("key=%E2%9C%93", "key=%E2%9C%93"),  # a percent-encoded value is passed on as it came
    ],
)
def test_a_valid_baggage_is_kept(value: str, kept: str) -> None:
    assert parse_baggage(value) == kept


@pytest.mark.parametrize(
    "value",
    [None, 7, "", " , ", "a", "a=1,b", "=1", "a b=1", 'a="quoted"', "a=x y", "a=1;", "a=1;=2", "a=\\x", "ключ=1",
     "a=1," + "b=2;c=\x7f"],
)
def test_an_invalid_baggage_is_dropped_whole(value: Any) -> None:
    assert parse_baggage(value) is None


def test_baggage_past_64_members_or_8192_bytes_loses_whole_members_from_the_end() -> None:
    many = [f"k{i}=v" for i in range(70)]
    assert parse_baggage(",".join(many)) == ",".join(many[:64])
    big = ["a=" + "x" * 4000, "b=" + "y" * 4000, "c=" + "z" * 300, "d=1"]
    kept = parse_baggage(",".join(big))
    assert kept == ",".join([big[0], big[1], big[3]])  # c would pass 8192 bytes; d still fits after it
    assert len(kept) <= 8192


def test_baggage_comes_from_the_header_else_meta_with_or_without_a_trace() -> None:
    msg = call({"name": "t", "_meta": {"baggage": "from=meta"}})
    assert tracer().begin(msg, _Ctx(), {"baggage": "from=header"}, "tcp").baggage == "from=header"
    assert tracer().begin(msg, _Ctx(), {"baggage": "not valid"}, "tcp").baggage == "from=meta"
    new_trace = tracer().begin(msg, _Ctx(), {}, "tcp")  # no traceparent anywhere: a new trace, baggage kept
    assert new_trace.parent_id is None and new_trace.baggage == "from=meta"
    assert tracer().begin(call({"name": "t"}), _Ctx(), None, "pipe").baggage is None


def test_the_span_passes_baggage_on_and_drops_an_invalid_one_from_meta() -> None:
    span = tracer().begin(call(), _Ctx(), {"traceparent": CLIENT_TP, "baggage": CLIENT_BAGGAGE}, "tcp")
    assert span.headers(None)["baggage"] == CLIENT_BAGGAGE
    meta: dict[str, Any] = {"baggage": "stale=1"}
    span.inject(meta)
    assert meta["baggage"] == CLIENT_BAGGAGE
    bare = tracer().begin(call({"name": "t", "_meta": {"baggage": "bad value"}}), _Ctx(), None, "tcp")
    meta = {"baggage": "bad value"}
    bare.inject(meta)
    assert "baggage" not in meta and "baggage" not in bare.headers(None)


# -- the span and the tracer -----------------------------------------------------------------------


def tracer(**options: Any) -> Tracer:
    return Tracer(TracingConfig(**options))


class _Ctx:
    """What ``Tracer.begin`` reads of a request context."""

    protocol_version = "2025-11-25"
    session_key = "session-secret"
    client_ip = "127.0.0.1"


def call(params: dict[str, Any] | None = None, method: str = "tools/call", request_id: Any = 7) -> Message:
    body = json.dumps(params if params is not None else {"name": "web__echo", "arguments": {"text": "x"}})
    return Message(id=request_id, method=method, params=Raw(body.encode()))


def test_a_valid_header_wins_over_meta() -> None:
    msg = call({"name": "t", "_meta": {"traceparent": META_TP, "tracestate": "meta=1"}})
    span = tracer().begin(msg, _Ctx(), {"traceparent": CLIENT_TP, "tracestate": CLIENT_TS}, "tcp")
    assert (span.trace_id, span.parent_id, span.tracestate) == (TRACE, PARENT, CLIENT_TS)
    assert span.span_id not in (PARENT, META_PARENT) and len(span.span_id) == 16
    assert span.traceparent == f"00-{TRACE}-{span.span_id}-01"


def test_meta_is_used_when_the_header_is_absent_or_invalid() -> None:
    msg = call({"name": "t", "_meta": {"traceparent": META_TP, "tracestate": "meta=1"}})
    for headers in (None, {}, {"traceparent": "00-bogus", "tracestate": CLIENT_TS}):
        span = tracer().begin(msg, _Ctx(), headers, "tcp")
        assert (span.trace_id, span.parent_id, span.tracestate) == (META_TRACE, META_PARENT, "meta=1")


def test_tracestate_goes_only_with_a_valid_traceparent() -> None:
    msg = call({"name": "t", "_meta": {"tracestate": "meta=1"}})
    span = tracer().begin(msg, _Ctx(), {"traceparent": f"00-{'0' * 32}-{PARENT}-01", "tracestate": CLIENT_TS}, "tcp")
    assert span.parent_id is None and span.tracestate is None
    assert span.trace_id != "0" * 32 and parse_traceparent(span.traceparent) is not None


def test_a_new_trace_is_sampled_by_ratio_and_a_continued_one_keeps_its_flags() -> None:
    everything, nothing = tracer(sample_ratio=1.0), tracer(sample_ratio=0.0)
    spans = [everything.begin(call(), _Ctx(), {}, "tcp") for _ in range(20)]
    assert all(s.sampled and s.parent_id is None for s in spans)
    assert len({s.trace_id for s in spans}) == 20  # random, never repeated
    assert not any(nothing.begin(call(), _Ctx(), {}, "tcp").sampled for _ in range(20))
    half = tracer(sample_ratio=0.5)
    sampled = sum(half.begin(call(), _Ctx(), {}, "tcp").sampled for _ in range(400))
    assert 120 < sampled < 280  # about half (the odds of missing this range are below 1e-12)
    # The client's decision stands whatever the ratio: unsampled stays unsampled, sampled stays sampled.
    assert not everything.begin(call(), _Ctx(), {"traceparent": f"00-{TRACE}-{PARENT}-00"}, "tcp").sampled
    assert nothing.begin(call(), _Ctx(), {"traceparent": CLIENT_TP}, "tcp").sampled


def test_the_span_follows_the_mcp_semantic_conventions() -> None:
    span = tracer().begin(call(), _Ctx(), {"traceparent": CLIENT_TP, "tracestate": CLIENT_TS}, "tcp")
    span.end_ns = span.start_ns + 1000
    out = span.otlp()
    attributes = {a["key"]: a["value"] for a in out["attributes"]}
    assert out["name"] == "tools/call web__echo"
    assert out["kind"] == 2  # SERVER
    assert (out["traceId"], out["parentSpanId"], out["spanId"]) == (TRACE, PARENT, span.span_id)
    assert out["traceState"] == CLIENT_TS
    assert out["startTimeUnixNano"] == str(span.start_ns) and out["endTimeUnixNano"] == str(span.start_ns + 1000)
    assert out["status"] == {"code": 0}
    assert attributes["mcp.method.name"] == {"stringValue": "tools/call"}
    assert attributes["gen_ai.tool.name"] == {"stringValue": "web__echo"}
    assert attributes["gen_ai.operation.name"] == {"stringValue": "execute_tool"}
    assert attributes["jsonrpc.request.id"] == {"stringValue": "7"}
    assert attributes["mcp.protocol.version"] == {"stringValue": "2025-11-25"}
    assert attributes["network.transport"] == {"stringValue": "tcp"}
    assert attributes["client.address"] == {"stringValue": "127.0.0.1"}
    session = attributes["mcp.session.id"]["stringValue"]
    assert len(session) == 32 and "session-secret" not in session  # a digest, not the id itself
    assert "error.type" not in attributes
    prompt = tracer().begin(call({"name": "greet"}, "prompts/get"), _Ctx(), None, "pipe").otlp()
    assert prompt["name"] == "prompts/get greet" and "parentSpanId" not in prompt
    prompt_attributes = {a["key"]: a["value"] for a in prompt["attributes"]}
    assert prompt_attributes["gen_ai.prompt.name"] == {"stringValue": "greet"}
    assert prompt_attributes["network.transport"] == {"stringValue": "pipe"}
    read = tracer().begin(call({"uri": "docs+file:///a"}, "resources/read"), _Ctx(), None, "tcp").otlp()
    assert read["name"] == "resources/read"  # never the URI: high cardinality
    assert {"key": "mcp.resource.uri", "value": {"stringValue": "docs+file:///a"}} in read["attributes"]


def _error_of(span: Span) -> tuple[Any, Any, Any]:
    out = span.otlp()
    attributes = {a["key"]: a["value"]["stringValue"] for a in out["attributes"] if "stringValue" in a["value"]}
    return attributes.get("error.type"), attributes.get("rpc.response.status_code"), out["status"]


def test_the_outcome_is_read_from_the_answer() -> None:
    t = tracer()
    ok = t.begin(call(), _Ctx(), None, "tcp")
    ok.answered(Message(id=1, result=Raw(b'{"content":[],"isError":false}')))
    assert _error_of(ok) == (None, None, {"code": 0})
    tool_error = t.begin(call(), _Ctx(), None, "tcp")
    tool_error.answered(Message(id=1, result=Raw(b'{"content":[], "isError" : true}')))
    assert _error_of(tool_error) == ("tool_error", None, {"code": 2})
    rpc_error = t.begin(call(), _Ctx(), None, "tcp")
    rpc_error.responded(b'{"jsonrpc":"2.0","id":1,"error":{"code":-32602,"message":"unknown tool: x"}}')
    assert _error_of(rpc_error) == ("-32602", "-32602", {"code": 2, "message": "unknown tool: x"})
    cached = t.begin(call(), _Ctx(), None, "tcp")  # a response the front made (a cache hit): read too
    cached.responded(b'{"jsonrpc":"2.0","id":1,"result":{"content":[],"isError":true}}')
    assert _error_of(cached) == ("tool_error", None, {"code": 2})
    page = t.begin(call(None, "tools/list"), _Ctx(), None, "tcp")
    page.responded(b'{"jsonrpc":"2.0","id":1,"result":{"tools":[],"isError":true}}')  # not a tool result
    assert _error_of(page) == (None, None, {"code": 0})
    settled = t.begin(call(), _Ctx(), None, "tcp")
    settled.answered(Message(id=1, result=Raw(b'{"content":[]}')))
    settled.responded(b'{"jsonrpc":"2.0","id":1,"error":{"code":-1,"message":"not read: settled"}}')
    assert _error_of(settled) == (None, None, {"code": 0})
    crashed = t.begin(call(), _Ctx(), None, "tcp")
    crashed.failed_with(asyncio.CancelledError())
    assert _error_of(crashed) == ("CancelledError", None, {"code": 2})


# -- the exporter (units: a recording post) ---------------------------------------------------------


class Posts:
    """A stand-in for ``httpclient.post_json``: records each body, answers ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []

    async def __call__(self, url: str, body: bytes, **kw: Any) -> tuple[int, dict[str, str], bytes]:
        self.bodies.append(json.loads(body))
        return self.status, {}, b"nope" if self.status >= 300 else b"{}"


def finished(t: Tracer, n: int) -> None:
    for _ in range(n):
        t.end(t.begin(call(), _Ctx(), None, "tcp"))


def spans_in(bodies: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [s for b in bodies for r in b["resourceSpans"] for ss in r["scopeSpans"] for s in ss["spans"]]


async def test_a_full_queue_drops_and_counts() -> None:
    posts = Posts()
    t = Tracer(TracingConfig(otlp_endpoint="http://127.0.0.1:9/v1/traces", max_queue=3), post=posts)
    finished(t, 5)
    assert t.stats() == {"queued": 3, "exported": 0, "dropped": 2, "failed": 0}
    await t.close()  # flushes
    assert len(spans_in(posts.bodies)) == 3
    assert t.stats() == {"queued": 0, "exported": 3, "dropped": 2, "failed": 0}
    finished(t, 1)  # after close: counted, not queued
    assert t.stats()["dropped"] == 3 and t.stats()["queued"] == 0


async def test_unsampled_spans_and_a_tracer_without_endpoint_export_nothing() -> None:
    posts = Posts()
    t = Tracer(TracingConfig(otlp_endpoint="http://127.0.0.1:9/v1/traces", sample_ratio=0.0), post=posts)
    finished(t, 4)
    await t.close()
    assert posts.bodies == [] and t.stats()["exported"] == 0
    quiet = tracer()  # propagation only
    assert quiet.exporter is None
    finished(quiet, 2)
    await quiet.close()
    assert quiet.stats() == {"queued": 0, "exported": 0, "dropped": 0, "failed": 0}


async def test_a_failing_export_is_logged_once_per_round_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    posts = Posts(status=503)
    t = Tracer(TracingConfig(otlp_endpoint="http://127.0.0.1:9/v1/traces"), post=posts)
    finished(t, 600)  # two batches (512 + 88)
    assert t.exporter is not None
    with caplog.at_level(logging.WARNING, logger="gateway.tracing"):
        await t.exporter.flush()
        assert len(posts.bodies) == 1  # the round stopped at its first failure
        assert [r.getMessage() for r in caplog.records if r.name == "gateway.tracing"] == [
            "tracing: 512 spans not exported to http://127.0.0.1:9/v1/traces: HTTP 503: nope (512 failed so far)"
        ]
        await t.exporter.flush()  # the next round: the rest, one more line
    assert len([r for r in caplog.records if r.name == "gateway.tracing"]) == 2
    assert t.stats() == {"queued": 0, "exported": 0, "dropped": 0, "failed": 600}


async def test_an_unreachable_collector_fails_the_export_not_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()  # nothing listens there now: connections are refused
    t = Tracer(TracingConfig(otlp_endpoint=f"http://127.0.0.1:{port}/v1/traces"))
    finished(t, 2)
    with caplog.at_level(logging.WARNING, logger="gateway.tracing"):
        await t.close()
    assert t.stats()["failed"] == 2
    assert any("2 spans not exported" in r.getMessage() for r in caplog.records)


# -- an OTLP receiver -------------------------------------------------------------------------------


class Collector(ScriptedHttp):
    """An OTLP/HTTP receiver on 127.0.0.1: each POST recorded (``requests``), answered 200 (or
    ``status``); ``async with`` gives the collector itself, its endpoint in ``url``;
    ``wait_for(predicate)`` waits until the spans received satisfy it."""

    def __init__(self, status: int = 200) -> None:
        super().__init__(self._took)
        self.status = status
        self.changed = asyncio.Condition()
        self.url = ""

    async def __aenter__(self) -> Collector:  # type: ignore[override]
        base = await super().__aenter__()
        self.url = base.removesuffix("/mcp") + "/v1/traces"
        return self

    async def _took(self, request: dict) -> tuple[int, dict, bytes]:
        async with self.changed:
            self.changed.notify_all()
        return self.status, {}, b"{}"

    @property
    def spans(self) -> list[dict[str, Any]]:
        return spans_in([r["body"] for r in self.requests])

    async def wait_for(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float = 10.0) -> Any:
        """The first truthy ``predicate(spans)``; an AssertionError after ``timeout`` seconds."""
        found: list[Any] = []

        def check() -> bool:
            found[:] = [predicate(self.spans)]
            return bool(found[0])

        try:
            async with self.changed:
                await asyncio.wait_for(self.changed.wait_for(check), timeout)
        except asyncio.TimeoutError:
            raise AssertionError(f"after {timeout} s the collector has no such span: {self.spans}") from None
        return found[0]


def span_of(trace_id: str, name: str | None = None) -> Callable[[list[dict[str, Any]]], dict[str, Any] | None]:
    def find(spans: list[dict[str, Any]]) -> dict[str, Any] | None:
        return next((s for s in spans if s["traceId"] == trace_id and (name is None or s["name"] == name)), None)

    return find


def attributes_of(span: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in span["attributes"]}


async def test_the_exporter_posts_otlp_json_to_a_receiver() -> None:
    async with Collector() as collector:
        url = collector.url
        t = Tracer(TracingConfig(otlp_endpoint=url, headers={"x-api-key": "secret"}, service_name="edge-gw"))
        span = t.begin(call(), _Ctx(), {"traceparent": CLIENT_TP}, "tcp")
        t.end(span)
        await t.close()
        request = collector.requests[0]
        assert request["line"] == "POST /v1/traces HTTP/1.1"
        assert request["headers"]["content-type"] == "application/json"
        assert request["headers"]["x-api-key"] == "secret"
        resource = request["body"]["resourceSpans"][0]["resource"]
        assert {"key": "service.name", "value": {"stringValue": "edge-gw"}} in resource["attributes"]
        scope = request["body"]["resourceSpans"][0]["scopeSpans"][0]
        assert scope["scope"]["name"] == "mcp-gateway"
        assert scope["spans"][0]["traceId"] == TRACE and scope["spans"][0]["spanId"] == span.span_id


# -- end to end: a real gateway, a real backend -------------------------------------------------------


@pytest.fixture(scope="module")
def trace_backend() -> Child:
    """``trace_server.py`` over Streamable HTTP, as a real process."""
    child = Child([sys.executable, str(SERVERS / "trace_server.py"), "--port", "0"], "listening on")
    yield child
    child.stop()


def config_for(backend_url: str | None, tracing: str | None, *, stdio: bool = False) -> Config:
    text = "[server]\nport = 0\n"
    if backend_url is not None:
        text += f"[backends.web]\nurl = {backend_url!r}\n"
    if stdio:
        text += (
            f"[backends.local]\ncommand = {sys.executable!r}\n"
            f"args = [{str(SERVERS / 'trace_server.py')!r}, '--stdio']\n"
        )
    if tracing is not None:
        text += f"[tracing]\n{tracing}\n"
    return load_config_text(text, fmt="toml")


def tracing_to(url: str, interval: float = 0.05) -> str:
    return f"otlp_endpoint = {url!r}\nexport_interval = {interval}\n"


def seen(result: Any) -> dict[str, Any]:
    """What the backend's tool said it was given."""
    assert not result.is_error, result
    return json.loads(result.content[0].text)


@contextlib.asynccontextmanager
async def client_with(url: str, headers: dict[str, str] | None = None, mode: str = "legacy") -> AsyncIterator[Client]:
    """An SDK client to ``url`` whose every HTTP request carries ``headers``."""
    async with httpx2.AsyncClient(headers=headers or {}, timeout=httpx2.Timeout(30.0, read=300.0)) as http:
        async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
            yield client


def continued(value: str | None, trace_id: str, not_parent: str) -> str:
    """The span id in ``value``, a traceparent of trace ``trace_id`` whose parent is not ``not_parent``."""
    parent = parse_traceparent(value)
    assert parent is not None, value
    assert parent.trace_id == trace_id and parent.parent_id != not_parent
    return parent.parent_id


async def test_a_header_traceparent_reaches_the_backend_with_the_gateways_span_as_parent(trace_backend: Child) -> None:
    async with Collector() as collector:
        url = collector.url
        async with in_process_gateway(config_for(trace_backend.url, tracing_to(url))) as running:
            headers = {"traceparent": CLIENT_TP, "tracestate": CLIENT_TS, "baggage": CLIENT_BAGGAGE}
            async with client_with(running.url, headers) as client:
                got = seen(await client.call_tool("web__seen", {}))
            # The same new parent in the HTTP header and in _meta: the gateway's own span.
            gateway_span = continued(got["headers"]["traceparent"], TRACE, PARENT)
            assert got["meta"]["traceparent"] == got["headers"]["traceparent"]
            assert got["headers"]["tracestate"] == CLIENT_TS and got["meta"]["tracestate"] == CLIENT_TS
            assert got["headers"]["baggage"] == CLIENT_BAGGAGE and got["meta"]["baggage"] == CLIENT_BAGGAGE
            span = await collector.wait_for(span_of(TRACE, "tools/call web__seen"))
            assert running.taken and not any(running.taken)  # tracing on: the express lane declined each
    assert span["spanId"] == gateway_span and span["parentSpanId"] == PARENT and span["kind"] == 2
    assert span["traceState"] == CLIENT_TS and span["status"] == {"code": 0}
    attributes = attributes_of(span)
    assert attributes["mcp.method.name"] == "tools/call"
    assert attributes["gen_ai.tool.name"] == "web__seen"
    assert attributes["gen_ai.operation.name"] == "execute_tool"
    assert attributes["mcp_gateway.backend"] == "web"
    assert attributes["network.transport"] == "tcp" and attributes["client.address"] == "127.0.0.1"
    assert attributes["jsonrpc.request.id"] and attributes["mcp.session.id"]
    assert int(span["endTimeUnixNano"]) >= int(span["startTimeUnixNano"]) > 0


async def test_a_meta_traceparent_reaches_the_backend_in_both_eras(trace_backend: Child) -> None:
    async with Collector() as collector:
        url = collector.url
        async with in_process_gateway(config_for(trace_backend.url, tracing_to(url))) as running:
            for mode in ("legacy", "auto"):  # the handshake era, then the stateless one (server/discover)
                async with client_with(running.url, mode=mode) as client:
                    meta = {"traceparent": META_TP, "tracestate": "meta=1", "baggage": "tenant=acme", "other": "kept"}
                    got = seen(await client.call_tool("web__seen", {}, meta=meta))  # type: ignore[arg-type]
                gateway_span = continued(got["meta"]["traceparent"], META_TRACE, META_PARENT)
                assert got["meta"]["tracestate"] == "meta=1"
                assert got["meta"]["baggage"] == "tenant=acme" and got["headers"]["baggage"] == "tenant=acme"
                assert got["headers"]["traceparent"] == got["meta"]["traceparent"]
                span = await collector.wait_for(
                    lambda spans, s=gateway_span: next((x for x in spans if x["spanId"] == s), None)
                )
                assert span["traceId"] == META_TRACE and span["parentSpanId"] == META_PARENT


async def test_a_client_without_trace_context_gets_a_new_trace(trace_backend: Child) -> None:
    async with Collector() as collector:
        url = collector.url
        async with in_process_gateway(config_for(trace_backend.url, tracing_to(url))) as running:
            async with client_with(running.url, {"traceparent": "00-not-a-valid-one", "tracestate": CLIENT_TS}) as client:
                first = seen(await client.call_tool("web__seen", {}))
                second = seen(await client.call_tool("web__seen", {}))
            parents = [parse_traceparent(g["headers"]["traceparent"]) for g in (first, second)]
            assert all(p is not None and p.sampled for p in parents)  # sample_ratio 1 by default
            assert parents[0].trace_id != parents[1].trace_id  # type: ignore[union-attr]  # one trace per request
            assert first["headers"]["tracestate"] is None and first["meta"]["tracestate"] is None
            span = await collector.wait_for(span_of(parents[0].trace_id))  # type: ignore[union-attr]
    assert "parentSpanId" not in span and span["spanId"] == parents[0].parent_id  # type: ignore[union-attr]


async def test_prompts_resources_and_lists_are_traced(trace_backend: Child) -> None:
    async with Collector() as collector:
        url = collector.url
        async with in_process_gateway(config_for(trace_backend.url, tracing_to(url))) as running:
            async with client_with(running.url, {"traceparent": CLIENT_TP}) as client:
                prompt = await client.get_prompt("web__seen_prompt")
                resource = await client.read_resource("web+trace://seen/x")
                await client.list_tools()
            for text in (prompt.messages[0].content.text, resource.contents[0].text):  # type: ignore[union-attr]
                continued(json.loads(text)["meta"]["traceparent"], TRACE, PARENT)
            names = await collector.wait_for(
                lambda spans: (lambda n: n if {"prompts/get web__seen_prompt", "resources/read", "tools/list"} <= n else None)(
                    {s["name"] for s in spans if s["traceId"] == TRACE}
                )
            )
            read = next(s for s in collector.spans if s["name"] == "resources/read")
    assert attributes_of(read)["mcp.resource.uri"] == "web+trace://seen/x"
    assert "initialize" not in names  # the handshake is not a traced method


async def test_failures_are_errors_on_the_span(trace_backend: Child) -> None:
    async with Collector() as collector:
        url = collector.url
        async with in_process_gateway(config_for(trace_backend.url, tracing_to(url))) as running:
            async with client_with(running.url, {"traceparent": CLIENT_TP}) as client:
                assert (await client.call_tool("web__fails", {})).is_error
                with pytest.raises(Exception):
                    await client.call_tool("web__nope", {})
            tool_error = await collector.wait_for(span_of(TRACE, "tools/call web__fails"))
            unknown = await collector.wait_for(span_of(TRACE, "tools/call web__nope"))
    assert attributes_of(tool_error)["error.type"] == "tool_error" and tool_error["status"]["code"] == 2
    unknown_attributes = attributes_of(unknown)
    assert unknown_attributes["error.type"] == "-32602"
    assert unknown_attributes["rpc.response.status_code"] == "-32602"
    assert unknown_attributes["mcp_gateway.error.reason"] == "unknown_tool"
    assert unknown["status"] == {"code": 2, "message": "unknown tool: web__nope"}


async def test_a_stdio_backend_gets_the_trace_context_in_meta() -> None:
    async with Collector() as collector:
        url = collector.url
        async with in_process_gateway(config_for(None, tracing_to(url), stdio=True)) as running:
            # A handshake-era client, then a stateless one (translated for the handshake-only backend).
            for mode in ("legacy", "auto"):
                async with client_with(running.url, {"traceparent": CLIENT_TP, "tracestate": CLIENT_TS}, mode) as client:
                    got = seen(await client.call_tool("local__seen", {}))
                gateway_span = continued(got["meta"]["traceparent"], TRACE, PARENT)
                assert got["meta"]["tracestate"] == CLIENT_TS
                assert got["headers"] == {"traceparent": None, "tracestate": None, "baggage": None}  # stdio: no headers
                span = await collector.wait_for(
                    lambda spans, s=gateway_span: next((x for x in spans if x["spanId"] == s), None)
                )
                assert span["name"] == "tools/call local__seen" and span["parentSpanId"] == PARENT
                assert attributes_of(span)["mcp_gateway.backend"] == "local"


async def test_the_stdio_front_continues_a_meta_traceparent(tmp_path: pathlib.Path) -> None:
    async with Collector() as collector:
        path = tmp_path / "gateway.toml"
        path.write_text(
            f"[backends.local]\ncommand = {sys.executable!r}\n"
            f"args = [{str(SERVERS / 'trace_server.py')!r}, '--stdio']\n"
            f"[tracing]\n{tracing_to(collector.url)}"
        )
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "gateway", "stdio", "--config", str(path)], cwd=str(ROOT)
        )
        with tempfile.TemporaryFile("w+") as errlog:
            async with Client(stdio_client(params, errlog=errlog), mode="legacy") as client:
                got = seen(await client.call_tool("local__seen", {}, meta={"traceparent": META_TP}))  # type: ignore[arg-type]
                gateway_span = continued(got["meta"]["traceparent"], META_TRACE, META_PARENT)
                span = await collector.wait_for(span_of(META_TRACE, "tools/call local__seen"))
    assert span["spanId"] == gateway_span and span["parentSpanId"] == META_PARENT
    attributes = attributes_of(span)
    assert attributes["network.transport"] == "pipe" and "network.protocol.name" not in attributes


async def test_spans_still_queued_are_flushed_when_the_gateway_stops(trace_backend: Child) -> None:
    async with Collector() as collector:
        url = collector.url
        # An interval far longer than the test: only the stop can export the span.
        async with in_process_gateway(config_for(trace_backend.url, tracing_to(url, interval=60))) as running:
            async with client_with(running.url, {"traceparent": CLIENT_TP}) as client:
                seen(await client.call_tool("web__seen", {}))
            assert collector.requests == []
        assert span_of(TRACE, "tools/call web__seen")(collector.spans) is not None


async def test_a_dead_collector_never_fails_a_call(trace_backend: Child) -> None:
    async with Collector(status=500) as collector:
        url = collector.url
        async with in_process_gateway(config_for(trace_backend.url, tracing_to(url))) as running:
            async with client_with(running.url, {"traceparent": CLIENT_TP}) as client:
                for _ in range(3):
                    continued(seen(await client.call_tool("web__seen", {}))["meta"]["traceparent"], TRACE, PARENT)
            await collector.wait_for(lambda spans: len(spans) >= 1)  # it was asked, and said 500
            tracer = running.gateway.tracer
        # Stopped: every span was offered to the collector (a round, or the flush) and refused.
        stats = tracer.stats()
        assert stats["failed"] >= 3 and stats["exported"] == 0 and stats["queued"] == 0


# -- the request context the audit reads ---------------------------------------------------------------


class TraceRecorder(Admission):
    """Records, at each routed request's outcome, the trace id on its context and the one its
    backend said it got (the audit's ``trace_of`` reads the first)."""

    observes_outcomes = True

    def __init__(self) -> None:
        self.pairs: list[tuple[str | None, str | None]] = []
        self.done = asyncio.Event()

    def outcome(self, principal: Any, ctx: Any, method: str, name: str, route: Any, answer: Any, error: Any,
                note: Any = None) -> None:
        on_ctx = ctx.trace.trace_id if ctx.trace is not None else None
        backend = None
        if answer is not None and answer.result is not UNSET and b"traceparent" in bytes(answer.result):
            text = json.loads(bytes(answer.result))["content"][0]["text"]
            parent = parse_traceparent(json.loads(text)["meta"]["traceparent"])
            backend = parent.trace_id if parent is not None else None
        self.pairs.append((on_ctx, backend))
        if len(self.pairs) >= 2:
            self.done.set()


async def test_concurrent_calls_in_one_session_each_keep_their_own_trace_on_the_context(trace_backend: Child) -> None:
    recorder = TraceRecorder()
    traces = [f"{i:032x}" for i in (1, 2)]
    config = config_for(trace_backend.url, "")  # [tracing] with no endpoint: propagation (and audit) only
    async with in_process_gateway(config, recorder) as running:
        async with client_with(running.url) as client:
            # Both in flight at once on one session: the backend's tool waits for its twin.
            results = await asyncio.gather(*(
                client.call_tool("web__rendezvous", {"tag": "pair"}, meta={"traceparent": f"00-{t}-{PARENT}-01"})  # type: ignore[arg-type]
                for t in traces
            ))
        await asyncio.wait_for(recorder.done.wait(), 10)
    assert sorted(parse_traceparent(seen(r)["meta"]["traceparent"]).trace_id for r in results) == traces  # type: ignore[union-attr]
    assert sorted(recorder.pairs) == [(t, t) for t in traces]  # each outcome saw its own request's trace


async def test_without_tracing_nothing_is_traced_and_the_lane_takes_calls(trace_backend: Child) -> None:
    recorder = TraceRecorder()
    async with in_process_gateway(config_for(trace_backend.url, None), recorder) as running:
        assert running.gateway.tracer is None and running.gateway.front.tracer is None
        headers = {"traceparent": CLIENT_TP, "tracestate": CLIENT_TS, "baggage": CLIENT_BAGGAGE}
        async with client_with(running.url, headers) as client:
            for _ in range(3):
                got = seen(await client.call_tool("web__seen", {}))
                # The client's headers are never forwarded: a backend sees no trace context at all.
                nothing = {"traceparent": None, "tracestate": None, "baggage": None}
                assert got == {"headers": nothing, "meta": nothing}
        assert any(running.taken)
    assert recorder.pairs and all(pair == (None, None) for pair in recorder.pairs)


async def test_a_reload_turns_tracing_on_and_off(trace_backend: Child) -> None:
    async with Collector() as collector:
        url = collector.url
        config = config_for(trace_backend.url, None)
        gateway = Gateway(config)
        await gateway.start()
        listener = Server(gateway.front, config.server)
        _, port = await listener.start()
        endpoint = f"http://127.0.0.1:{port}/mcp"
        try:
            async with client_with(endpoint, {"traceparent": CLIENT_TP}) as client:
                assert seen(await client.call_tool("web__seen", {}))["meta"]["traceparent"] is None
                assert gateway.front.express is not None and gateway.front.express.path == "/mcp"
                await gateway.reload(config_for(trace_backend.url, tracing_to(url)))
                assert gateway.front.tracer is gateway.tracer is not None
                assert gateway.front.express.path is None  # the lane now declines everything
                continued(seen(await client.call_tool("web__seen", {}))["meta"]["traceparent"], TRACE, PARENT)
                await collector.wait_for(span_of(TRACE, "tools/call web__seen"))
                await gateway.reload(config_for(trace_backend.url, None))
                assert gateway.tracer is None and gateway.front.tracer is None
                assert gateway.front.express.path == "/mcp"
                assert seen(await client.call_tool("web__seen", {}))["meta"]["traceparent"] is None
        finally:
            await listener.shutdown()
            await gateway.stop()
