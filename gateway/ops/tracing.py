"""Tracing (``[tracing]``): W3C Trace Context on every traced request, and its span exported
by OTLP/HTTP with JSON encoding.

Off (no ``[tracing]`` table) nothing here exists: the front holds no ``Tracer`` and its one
check per request is ``self.tracer is not None``. On, for each traced request (``TRACED``: the
routed methods and the list methods), the front calls ``Tracer.begin``, which:

- takes the client's ``traceparent`` (and ``tracestate``) from the HTTP header, or else from
  ``params._meta``: a *valid* header wins over ``_meta``; an invalid one is ignored as if absent
  (so ``_meta`` is tried next). Parsing is strict (``parse_traceparent``: version ``00`` only,
  lower-case hex, ids not all zeros); an invalid value starts a new trace. ``tracestate`` is kept
  only with the ``traceparent`` it came with (``parse_tracestate``: W3C syntax, at most 32
  members, unique keys, cut to 512 characters);
- takes the client's W3C ``baggage`` the same way (a valid header, else ``params._meta``'s),
  whether or not the trace is continued: baggage is its own propagation field
  (``parse_baggage``: W3C Baggage syntax, at most 64 members and 8,192 bytes, whole members
  only). The gateway reads none of it; it passes it on, as it passes the trace on;
- or starts a new trace: random ids from ``secrets``, sampled by ``sample_ratio`` (decided from
  the trace id, as OpenTelemetry's ratio sampler does, so every hop that uses the same rule
  agrees). A continued trace keeps the client's flags (and so its sampled decision);
- makes the gateway's own span (``Span``, kind SERVER): its id is the parent id the backend
  gets. ``gateway.front.forward`` puts ``Span.traceparent`` (and the tracestate and baggage) in
  ``params._meta`` of the forwarded request (every backend, stdio too) and in the upstream HTTP
  request's headers (``Span.headers``).

The span follows the OpenTelemetry semantic conventions for MCP (server span): name
``"{mcp.method.name} {target}"`` (the tool or prompt name as the client knows it; the method
alone otherwise, never a resource URI: high cardinality), attributes ``mcp.method.name``,
``jsonrpc.request.id``, ``mcp.protocol.version``, ``mcp.session.id`` (a digest of it, see
``_session_digest``), ``gen_ai.tool.name`` and ``gen_ai.operation.name = execute_tool``,
``gen_ai.prompt.name``, ``mcp.resource.uri``, ``network.transport`` (``tcp``, or ``pipe`` on the
stdio front), ``network.protocol.name``/``version`` (``http``/``1.1``), ``client.address``, and on
failure ``error.type`` (the JSON-RPC error code, ``tool_error`` for a tool result with
``isError``, or the exception's class), ``rpc.response.status_code`` and an ERROR status with the
error's message. Two attributes are the gateway's own: ``mcp_gateway.backend`` (the backend that
served it) and ``mcp_gateway.error.reason`` (``data.gateway.reason`` of a gateway-made error).

A sampled span, once ended, is queued for the exporter (``OtlpExporter``, only with
``otlp_endpoint``): a bounded queue (``max_queue``; past it spans are dropped and counted), sent
every ``export_interval`` by a background task in batches (``ExportTraceServiceRequest`` JSON,
POSTed with ``gateway.httpclient``: no dependency added). A failed export is logged at most once
per round (one round per interval), its batch dropped and counted, and it never touches a request;
``close`` flushes what is left.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

import msgspec
from msgspec import UnsetType

from gateway import __version__, httpclient
from gateway.errors import GatewayError
from gateway.protocol.jsonrpc import UNSET, Raw, encode

if TYPE_CHECKING:
    from gateway.config import TracingConfig
    from gateway.protocol.jsonrpc import Message

__all__ = [
    "TRACED",
    "OtlpExporter",
    "Span",
    "TraceParent",
    "Tracer",
    "format_traceparent",
    "parse_baggage",
    "parse_traceparent",
    "parse_tracestate",
    "tracer_for",
]

log = logging.getLogger("gateway.tracing")

TRACED = frozenset({
    "tools/call", "prompts/get", "resources/read", "resources/subscribe", "resources/unsubscribe",
    "completion/complete", "tools/list", "prompts/list", "resources/list", "resources/templates/list",
})
"""The methods that get a span (and whose forwarded request carries the trace context)."""

SPAN_KIND_SERVER = 2
"""OTLP ``Span.SpanKind.SPAN_KIND_SERVER``."""
STATUS_UNSET, STATUS_ERROR = 0, 2
"""OTLP ``Status.StatusCode`` values used: success leaves the status unset (the conventions say so)."""
_FLAG_HAS_IS_REMOTE, _FLAG_IS_REMOTE = 0x100, 0x200
"""OTLP ``SpanFlags``: whether the parent's remoteness is known, and that it is remote."""

BATCH = 512
"""Most spans in one export request (collectors bound a request's size)."""
EXPORT_TIMEOUT = 10.0
"""Seconds one export request may take."""

# -- W3C Trace Context ------------------------------------------------------------------------------

_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
# A tracestate list member: key "=" value (W3C Trace Context, 3.3.1.3). The key is a simple key, or
# tenant "@" system; the value is printable ASCII without "," and "=", not ending in a space.
_KEY = r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
_VALUE = r"[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
_MEMBER = re.compile(rf"({_KEY})=({_VALUE})")
MAX_MEMBERS = 32
"""Most tracestate list members; more makes the whole header invalid."""
MAX_TRACESTATE = 512
"""Longest tracestate passed on (the spec's minimum to propagate); longer ones are cut."""
_LONG_MEMBER = 128
_MAX_INPUT = 16 * 1024  # no valid tracestate is longer (32 members of 513 characters and separators)


class TraceParent(NamedTuple):
    """A valid ``traceparent``: the trace id, the caller's span id and the trace flags."""

    trace_id: str
    parent_id: str
    flags: int

    @property
    def sampled(self) -> bool:
        """The caller's sampled flag."""
        return bool(self.flags & 1)


def parse_traceparent(value: object) -> TraceParent | None:
    """``value`` as a W3C ``traceparent`` (version ``00``), or None when it is not one: exactly
    ``00-<32 hex>-<16 hex>-<2 hex>``, lower-case hex, neither id all zeros. Other versions are
    refused too (the gateway only speaks 00; a client on a later one gets a new trace)."""
    if not isinstance(value, str) or len(value) != 55:
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    trace_id, parent_id, flags = match.groups()
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return TraceParent(trace_id, parent_id, int(flags, 16))


def parse_tracestate(value: object) -> str | None:
    """``value`` as a W3C ``tracestate`` to pass on, or None (absent, empty or invalid).

    Invalid, and dropped whole: not a string, a member that is not ``key=value`` in the spec's
    syntax, a key twice, more than 32 members. Valid but longer than 512 characters: members
    longer than 128 characters go first, then members from the end, until it fits (3.3.1.5).
    Empty members (``a=1,,b=2``) are allowed and dropped; the result is re-joined with ``,``."""
    if not isinstance(value, str) or len(value) > _MAX_INPUT:
        return None
    members: list[str] = []
    keys: set[str] = set()
    for part in value.split(","):
        member = part.strip(" \t")
        if not member:
            continue
        match = _MEMBER.fullmatch(member)
        if match is None or match.group(1) in keys:
            return None
        keys.add(match.group(1))
        members.append(member)
        if len(members) > MAX_MEMBERS:
            return None
    return _bounded(members) or None


def _bounded(members: list[str]) -> str:
    """``members`` joined, cut to ``MAX_TRACESTATE`` characters the way the spec asks."""
    joined = ",".join(members)
    if len(joined) <= MAX_TRACESTATE:
        return joined
    members = [m for m in members if len(m) <= _LONG_MEMBER]
    while members and len(",".join(members)) > MAX_TRACESTATE:
        members.pop()
    return ",".join(members)


# W3C Baggage (3.3.1): a list member is key OWS "=" OWS value, then ";"-separated properties
# (key, or key "=" value); a key is an RFC 7230 token, a value baggage-octets (printable ASCII
# without space, '"', ",", ";" and "\\"; anything else is percent-encoded by the sender).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_OCTETS = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_OWS = r"[ \t]*"
_PROPERTY = rf"{_TOKEN}(?:{_OWS}={_OWS}{_OCTETS})?"
_BAGGAGE_MEMBER = re.compile(rf"{_TOKEN}{_OWS}={_OWS}{_OCTETS}(?:{_OWS};{_OWS}{_PROPERTY})*")
MAX_BAGGAGE_MEMBERS = 64
"""Most baggage list members passed on (the spec's minimum to propagate); later ones are dropped."""
MAX_BAGGAGE = 8192
"""Most bytes of baggage passed on (the spec's minimum); whole members past it are dropped."""
_MAX_BAGGAGE_INPUT = 64 * 1024  # a longer header is not parsed at all (dropped as invalid)


def parse_baggage(value: object) -> str | None:
    """``value`` as a W3C ``baggage`` to pass on, or None (absent, empty or invalid).

    Invalid, and dropped whole (the gateway does not repair another party's context): not a
    string, or a member that is not ``key=value[;property...]`` in the spec's syntax. Valid:
    members are kept in order, whole, while they fit in 64 members and 8,192 bytes (the spec
    lets a hop drop members past its limits, never part of one). Empty members are dropped;
    the result is re-joined with ``,``."""
    if not isinstance(value, str) or len(value) > _MAX_BAGGAGE_INPUT:
        return None
    members: list[str] = []
    size = -1  # the separators: one fewer than the members
    for part in value.split(","):
        member = part.strip(" \t")
        if not member:
            continue
        if _BAGGAGE_MEMBER.fullmatch(member) is None:
            return None
        if len(members) < MAX_BAGGAGE_MEMBERS and size + 1 + len(member) <= MAX_BAGGAGE:
            members.append(member)
            size += 1 + len(member)
    return ",".join(members) or None


def format_traceparent(trace_id: str, span_id: str, flags: int) -> str:
    """The ``traceparent`` value that names ``span_id`` as the parent of the next hop."""
    return f"00-{trace_id}-{span_id}-{flags:02x}"


def new_trace_id() -> str:
    """32 random hex digits, never all zeros (which would be invalid)."""
    while True:
        trace_id = secrets.token_hex(16)
        if trace_id != _ZERO_TRACE:
            return trace_id


def new_span_id() -> str:
    """16 random hex digits, never all zeros."""
    while True:
        span_id = secrets.token_hex(8)
        if span_id != _ZERO_SPAN:
            return span_id


# -- what is read of a request and of its answer ---------------------------------------------------


class _ParamsView(msgspec.Struct):
    """The few params a span reads; the arguments are skipped, not decoded."""

    name: Any = None
    uri: Any = None
    meta: Any = msgspec.field(default=None, name="_meta")


class _ErrorView(msgspec.Struct):
    code: Any = None
    message: Any = None


class _ResponseView(msgspec.Struct):
    result: Raw | UnsetType = UNSET
    error: _ErrorView | None = None


class _ToolResultView(msgspec.Struct):
    isError: Any = False  # noqa: N815 - the MCP field's name


_decode_params = msgspec.json.Decoder(_ParamsView).decode
_decode_response = msgspec.json.Decoder(_ResponseView).decode
_decode_error = msgspec.json.Decoder(_ErrorView).decode
_decode_tool_result = msgspec.json.Decoder(_ToolResultView).decode
_VIEW_ERRORS = (msgspec.DecodeError, msgspec.ValidationError)


def _params_view(params: Any) -> _ParamsView:
    if params is UNSET:
        return _ParamsView()
    try:
        return _decode_params(params)
    except _VIEW_ERRORS:
        return _ParamsView()  # not an object: the front says what is wrong; the span just knows less


def _session_digest(session_id: str) -> str:
    """What ``mcp.session.id`` carries: a digest of the session id, not the id itself. A handshake-era
    session id lets whoever holds it use the session (without ``[auth]``), and spans are stored and
    read far from the gateway; the digest still groups a session's spans."""
    return hashlib.sha256(session_id.encode()).hexdigest()[:32]


# -- the span ---------------------------------------------------------------------------------------


class Span:
    """One traced request: its trace context (``trace_id``, ``span_id``: the gateway's, ``parent_id``:
    the client's, None for a trace the gateway started, ``flags``, ``tracestate``) and the span
    record exported for it (name, times, attributes, error). ``RequestContext.trace`` holds it."""

    __slots__ = (
        "trace_id", "span_id", "parent_id", "flags", "tracestate", "method", "name", "start_ns", "end_ns",
        "attributes", "error_type", "message", "settled", "baggage",
    )

    def __init__(
        self, trace_id: str, span_id: str, parent_id: str | None, flags: int, tracestate: str | None, method: str
    ) -> None:
        self.trace_id = trace_id
        self.span_id = span_id
        self.parent_id = parent_id
        self.flags = flags
        self.tracestate = tracestate
        self.method = method
        self.name = method
        self.start_ns = time.time_ns()
        self.end_ns = 0
        self.attributes: dict[str, str | int | bool] = {"mcp.method.name": method}
        self.error_type: str | None = None
        self.message = ""
        self.settled = False
        """True once the request's outcome is recorded (the answer read, or the error seen)."""
        self.baggage: str | None = None
        """The client's valid W3C baggage (``parse_baggage``), passed on unread; None: none."""

    @property
    def sampled(self) -> bool:
        """Whether this trace is sampled (its span is exported)."""
        return bool(self.flags & 1)

    @property
    def traceparent(self) -> str:
        """The ``traceparent`` the backend gets: this trace, with the gateway's span as parent."""
        return format_traceparent(self.trace_id, self.span_id, self.flags)

    def headers(self, headers: dict[str, str] | None) -> dict[str, str]:
        """``headers`` (a new dict when None) with ``traceparent``, ``tracestate`` and ``baggage`` added."""
        headers = {} if headers is None else headers
        headers["traceparent"] = self.traceparent
        if self.tracestate is not None:
            headers["tracestate"] = self.tracestate
        if self.baggage is not None:
            headers["baggage"] = self.baggage
        return headers

    def inject(self, meta: dict[str, Any]) -> None:
        """Put this trace context in a forwarded request's ``_meta`` (in place), replacing the
        client's: the gateway's span is the backend's parent, and an invalid tracestate is not passed on."""
        meta["traceparent"] = self.traceparent
        if self.tracestate is not None:
            meta["tracestate"] = self.tracestate
        else:
            meta.pop("tracestate", None)
        if self.baggage is not None:
            meta["baggage"] = self.baggage
        else:
            meta.pop("baggage", None)

    def fail(self, error_type: str, message: str = "", code: Any = None) -> None:
        """Record a failure: ``error.type``, the status message, and the JSON-RPC code if any."""
        self.settled = True
        self.error_type = error_type
        self.message = message
        if code is not None:
            self.attributes["rpc.response.status_code"] = str(code)

    def failed_with(self, exc: BaseException) -> None:
        """The request ended with ``exc``: a gateway error (its code, message and reason), or
        anything else (its class name: a shutdown, a bug)."""
        if isinstance(exc, GatewayError):
            self.attributes["mcp_gateway.error.reason"] = exc.reason
            self.fail(str(exc.code), exc.message, exc.code)
        else:
            self.fail(type(exc).__qualname__)

    def answered(self, answer: Message) -> None:
        """The backend's answer: a JSON-RPC error (its code and message), or a tool result with
        ``isError`` (``tool_error``), or a success."""
        self.settled = True
        if answer.error is not UNSET:
            self._error(answer.error)
        elif answer.result is not UNSET and self.method == "tools/call":
            self._tool_result(answer.result)

    def responded(self, body: bytes) -> None:
        """The response the client got (a cache hit, a list page, a backend's answer), read for its
        outcome unless that is known already."""
        if self.settled:
            return
        self.settled = True
        try:
            view = _decode_response(body)
        except _VIEW_ERRORS:
            return
        if view.error is not None:
            self._failed_rpc(view.error)
        elif view.result is not UNSET and self.method == "tools/call":
            self._tool_result(view.result)

    def _error(self, raw: Raw) -> None:
        try:
            self._failed_rpc(_decode_error(raw))
        except _VIEW_ERRORS:
            self.fail("_OTHER")

    def _failed_rpc(self, error: _ErrorView) -> None:
        code = error.code if isinstance(error.code, int) else None
        message = error.message if isinstance(error.message, str) else ""
        self.fail(str(code) if code is not None else "_OTHER", message, code)

    def _tool_result(self, raw: Raw) -> None:
        try:
            failed = _decode_tool_result(raw).isError is True
        except _VIEW_ERRORS:
            return
        if failed:
            self.fail("tool_error")

    def otlp(self) -> dict[str, Any]:
        """This span as an OTLP/JSON ``Span`` (ids as hex, times as decimal strings)."""
        attributes = dict(self.attributes)
        status: dict[str, Any] = {"code": STATUS_UNSET}
        if self.error_type is not None:
            attributes["error.type"] = self.error_type
            status = {"code": STATUS_ERROR, "message": self.message} if self.message else {"code": STATUS_ERROR}
        flags = (self.flags & 0xFF) | _FLAG_HAS_IS_REMOTE | (_FLAG_IS_REMOTE if self.parent_id is not None else 0)
        span: dict[str, Any] = {
            "traceId": self.trace_id,
            "spanId": self.span_id,
            "name": self.name,
            "kind": SPAN_KIND_SERVER,
            "startTimeUnixNano": str(self.start_ns),
            "endTimeUnixNano": str(self.end_ns),
            "attributes": otlp_attributes(attributes),
            "status": status,
            "flags": flags,
        }
        if self.parent_id is not None:
            span["parentSpanId"] = self.parent_id
        if self.tracestate is not None:
            span["traceState"] = self.tracestate
        return span


def otlp_attributes(attributes: Mapping[str, Any]) -> list[dict[str, Any]]:
    """``{key: value}`` as OTLP/JSON ``KeyValue`` items (an int64 is a decimal string in OTLP/JSON)."""
    out = []
    for key, value in attributes.items():
        if isinstance(value, bool):
            any_value: dict[str, Any] = {"boolValue": value}
        elif isinstance(value, int):
            any_value = {"intValue": str(value)}
        elif isinstance(value, float):
            any_value = {"doubleValue": value}
        else:
            any_value = {"stringValue": str(value)}
        out.append({"key": key, "value": any_value})
    return out


# -- the exporter -----------------------------------------------------------------------------------

Post = Callable[..., Awaitable[tuple[int, dict[str, str], bytes]]]


class OtlpExporter:
    """Finished spans, queued (bounded) and POSTed to the OTLP/HTTP endpoint in batches by a task.

    Counters (for the admin API and metrics): ``exported``, ``dropped`` (the queue was full, or a
    span ended after ``close``), ``failed`` (in a batch the endpoint refused or could not take).
    ``post``: the HTTP call (``gateway.httpclient.post_json``; a test may pass its own)."""

    def __init__(self, config: TracingConfig, post: Post | None = None) -> None:
        assert config.otlp_endpoint is not None
        self.url = config.otlp_endpoint
        self.headers = dict(config.headers)
        self.interval = config.export_interval
        self.max_queue = config.max_queue
        self.queue: collections.deque[Span] = collections.deque()
        self.exported = 0
        self.dropped = 0
        self.failed = 0
        self._post = post if post is not None else httpclient.post_json
        self._context: Any = None
        if self.url.startswith("https://"):
            from gateway.tls import client_context  # only for an https:// collector

            self._context = client_context()
        self._resource = {"attributes": otlp_attributes({"service.name": config.service_name, "service.version": __version__})}
        self._scope = {"name": "mcp-gateway", "version": __version__}
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def add(self, span: Span) -> None:
        """Queue one finished span; dropped (counted) when the queue is full or the exporter closed."""
        if self._closed or len(self.queue) >= self.max_queue:
            self.dropped += 1
            return
        self.queue.append(span)

    def start(self) -> None:
        """Start the export task (one round every ``export_interval`` seconds)."""
        if self._task is None:
            self._closed = False
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        """Stop the task, then export what is still queued (bounded by ``EXPORT_TIMEOUT`` a batch)."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        await self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.flush()
            except Exception:  # a bug here must not end the exports (nor reach a request)
                log.exception("exporting spans failed")

    def body(self, spans: list[Span]) -> bytes:
        """One ``ExportTraceServiceRequest`` (OTLP/JSON) carrying ``spans``."""
        scope_spans = {"scope": self._scope, "spans": [span.otlp() for span in spans]}
        return encode({"resourceSpans": [{"resource": self._resource, "scopeSpans": [scope_spans]}]})

    async def flush(self) -> None:
        """Export everything queued, batch by batch; at the first failure the round stops (the
        rest waits for the next) and one warning says what failed."""
        queue = self.queue
        while queue:
            batch = [queue.popleft() for _ in range(min(len(queue), BATCH))]
            problem = await self._send(batch)
            if problem is None:
                self.exported += len(batch)
                continue
            self.failed += len(batch)
            log.warning("tracing: %d spans not exported to %s: %s (%d failed so far)",
                        len(batch), self.url, problem, self.failed)
            return

    async def _send(self, batch: list[Span]) -> str | None:
        """POST one batch: None when the endpoint took it, else what went wrong."""
        try:
            status, _, answer = await self._post(
                self.url, self.body(batch), context=self._context, timeout=EXPORT_TIMEOUT, headers=self.headers
            )
        except httpclient.HttpClientError as exc:
            return str(exc)
        if 200 <= status < 300:
            return None
        return f"HTTP {status}: {answer[:200].decode('utf-8', 'replace')}"


# -- the tracer -------------------------------------------------------------------------------------


class Tracer:
    """Trace context for each traced request, and its span's export (the module docstring)."""

    def __init__(self, config: TracingConfig, post: Post | None = None) -> None:
        """``post``: the exporter's HTTP call (default ``gateway.httpclient.post_json``)."""
        self.config = config
        self.methods = TRACED
        """The methods that get a span (the front checks membership)."""
        # A new trace is sampled when its id's low 64 bits fall under this bound (ratio * 2**64).
        self._bound = int(config.sample_ratio * (1 << 64))
        self.exporter = OtlpExporter(config, post) if config.otlp_endpoint is not None else None
        """None without ``otlp_endpoint``: trace context is propagated (and audited), nothing exported."""

    def begin(self, msg: Message, ctx: Any, headers: Mapping[str, str] | None, transport: str) -> Span:
        """The span of one request: the client's trace continued (header first, then ``_meta``)
        or a new one; ``transport``: ``tcp`` (HTTP front) or ``pipe`` (stdio front)."""
        method: str = msg.method  # type: ignore[assignment]
        view = _params_view(msg.params)
        parent, state = self._incoming(headers, view.meta)
        if parent is None:
            trace_id = new_trace_id()
            sampled = int(trace_id[16:], 16) < self._bound
            span = Span(trace_id, new_span_id(), None, 1 if sampled else 0, None, method)
        else:
            span = Span(parent.trace_id, new_span_id(), parent.parent_id, parent.flags, state, method)
        span.baggage = self._baggage(headers, view.meta)
        self._describe(span, msg, ctx, view, transport)
        return span

    @staticmethod
    def _incoming(headers: Mapping[str, str] | None, meta: Any) -> tuple[TraceParent | None, str | None]:
        """The client's valid traceparent and its tracestate: the header's, else ``_meta``'s."""
        if headers is not None:
            parent = parse_traceparent(headers.get("traceparent"))
            if parent is not None:
                return parent, parse_tracestate(headers.get("tracestate"))
        if isinstance(meta, dict):
            parent = parse_traceparent(meta.get("traceparent"))
            if parent is not None:
                return parent, parse_tracestate(meta.get("tracestate"))
        return None, None

    @staticmethod
    def _baggage(headers: Mapping[str, str] | None, meta: Any) -> str | None:
        """The client's valid baggage: the header's, else ``_meta``'s."""
        if headers is not None:
            baggage = parse_baggage(headers.get("baggage"))
            if baggage is not None:
                return baggage
        return parse_baggage(meta.get("baggage")) if isinstance(meta, dict) else None

    @staticmethod
    def _describe(span: Span, msg: Message, ctx: Any, view: _ParamsView, transport: str) -> None:
        """The span's name and its request attributes (the semantic conventions' server span)."""
        attributes = span.attributes
        method = span.method
        if msg.id is not UNSET and msg.id is not None:
            attributes["jsonrpc.request.id"] = str(msg.id)
        name = view.name if isinstance(view.name, str) else None
        if method == "tools/call" and name is not None:
            span.name = f"{method} {name}"
            attributes["gen_ai.tool.name"] = name
            attributes["gen_ai.operation.name"] = "execute_tool"
        elif method == "prompts/get" and name is not None:
            span.name = f"{method} {name}"
            attributes["gen_ai.prompt.name"] = name
        elif isinstance(view.uri, str):
            attributes["mcp.resource.uri"] = view.uri
        version = getattr(ctx, "protocol_version", None)
        if version:
            attributes["mcp.protocol.version"] = version
        session_key = getattr(ctx, "session_key", None)
        if session_key:
            attributes["mcp.session.id"] = _session_digest(session_key)
        attributes["network.transport"] = transport
        if transport == "tcp":
            attributes["network.protocol.name"] = "http"
            attributes["network.protocol.version"] = "1.1"
        client_ip = getattr(ctx, "client_ip", None)
        if client_ip:
            attributes["client.address"] = client_ip

    def end(self, span: Span) -> None:
        """The request is answered: stamp the end, and queue the span if it is sampled and exported."""
        span.end_ns = time.time_ns()
        exporter = self.exporter
        if exporter is not None and span.flags & 1:
            exporter.add(span)

    def start(self) -> None:
        """Start the export task (nothing to start without ``otlp_endpoint``)."""
        if self.exporter is not None:
            self.exporter.start()

    async def close(self) -> None:
        """Stop exporting, after flushing the spans still queued."""
        if self.exporter is not None:
            await self.exporter.close()

    def stats(self) -> dict[str, int]:
        """Export counters: ``queued``, ``exported``, ``dropped``, ``failed`` (all 0 without an endpoint)."""
        exporter = self.exporter
        if exporter is None:
            return {"queued": 0, "exported": 0, "dropped": 0, "failed": 0}
        return {"queued": len(exporter.queue), "exported": exporter.exported, "dropped": exporter.dropped,
                "failed": exporter.failed}


def tracer_for(config: TracingConfig | None) -> Tracer | None:
    """The ``Tracer`` a ``[tracing]`` table asks for, or None (no table: tracing off)."""
    return Tracer(config) if config is not None else None
