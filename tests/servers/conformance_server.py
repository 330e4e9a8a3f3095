"""The conformance fixture backend: an official-SDK server with the fixture names
that ``@modelcontextprotocol/conformance`` expects of a server under test.

Serves Streamable HTTP on 127.0.0.1 (both protocol eras, as the SDK does) and
prints ``listening on URL`` once bound. The conformance suite runs against it
directly and through the gateway; every scenario that passes directly must pass
through the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import socket
from typing import Annotated, Any

import uvicorn
from mcp.server import ServerRequestContext
from mcp.server.mcpserver import Context, MCPServer, RequestStateSecurity
from mcp.server.mcpserver.prompts.base import Prompt, UserMessage
from mcp.server.streamable_http import EventCallback, EventMessage, EventStore
from mcp.shared.exceptions import MCPError
from mcp.types import (
    MISSING_REQUIRED_CLIENT_CAPABILITY,
    AudioContent,
    Completion,
    CompletionArgument,
    CompletionContext,
    CreateMessageRequest,
    CreateMessageRequestParams,
    CreateMessageResult,
    ElicitRequest,
    ElicitRequestFormParams,
    ElicitResult,
    EmbeddedResource,
    EmptyResult,
    ImageContent,
    InputRequest,
    InputRequiredResult,
    JSONRPCMessage,
    ListRootsRequest,
    ListRootsResult,
    PromptReference,
    ResourceTemplateReference,
    SamplingMessage,
    SetLevelRequestParams,
    SubscribeRequestParams,
    TextContent,
    TextResourceContents,
    UnsubscribeRequestParams,
)
from pydantic import BaseModel, Field

PNG_1PX = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg=="
WAV_TINY = "UklGRiYAAABXQVZFZm10IBAAAAABAAEAQB8AAAB9AAACABAAZGF0YQIAAAA="


class _Replay(EventStore):
    """Keeps every SSE event so a client that reconnects with Last-Event-ID
    gets what it missed (the suite's SSE polling scenario)."""

    def __init__(self) -> None:
        self._log: list[tuple[str, str, JSONRPCMessage | None]] = []

    async def store_event(self, stream_id: str, message: JSONRPCMessage | None) -> str:
        event_id = str(len(self._log) + 1)
        self._log.append((stream_id, event_id, message))
        return event_id

    async def replay_events_after(self, last_event_id: str, send_callback: EventCallback) -> str | None:
        stream = next((s for s, e, _ in self._log if e == last_event_id), None)
        if stream is None:
            return None
        after = int(last_event_id)
        for s, e, message in self._log:
            if s == stream and int(e) > after and message is not None:
                await send_callback(EventMessage(message, e))
        return stream


server = MCPServer(
    name="conformance-fixture",
    version="1.0.0",
    # A fixed key so sealed requestState survives a restart of the fixture.
    request_state_security=RequestStateSecurity(keys=[b"conformance-fixture-request-state-key-0001"]),
)
subscriptions: set[str] = set()


def _text(text: str) -> TextContent:
    return TextContent(type="text", text=text)


# ---- tools -----------------------------------------------------------------


@server.tool()
def test_simple_text() -> str:
    """Answers with one text block."""
    return "This is a simple text response for testing."


@server.tool()
def test_image_content() -> list[ImageContent]:
    """Answers with one PNG image block."""
    return [ImageContent(type="image", data=PNG_1PX, mime_type="image/png")]


@server.tool()
def test_audio_content() -> list[AudioContent]:
    """Answers with one WAV audio block."""
    return [AudioContent(type="audio", data=WAV_TINY, mime_type="audio/wav")]


@server.tool()
def test_embedded_resource() -> list[EmbeddedResource]:
    """Answers with an embedded text resource."""
    inner = TextResourceContents(
        uri="test://embedded-resource", mime_type="text/plain", text="This is an embedded resource content."
    )
    return [EmbeddedResource(type="resource", resource=inner)]


@server.tool()
def test_multiple_content_types() -> list[TextContent | ImageContent | EmbeddedResource]:
    """Answers with text, image and resource blocks together."""
    inner = TextResourceContents(
        uri="test://mixed-content-resource", mime_type="application/json", text='{"test": "data", "value": 123}'
    )
    return [
        _text("Multiple content types test:"),
        ImageContent(type="image", data=PNG_1PX, mime_type="image/png"),
        EmbeddedResource(type="resource", resource=inner),
    ]


@server.tool()
async def test_tool_with_logging(ctx: Context) -> str:
    """Sends three log notifications while it runs."""
    for line in ("Tool execution started", "Tool processing data", "Tool execution completed"):
        await ctx.info(line)
        await asyncio.sleep(0.05)
    return "Tool with logging executed successfully"


@server.tool()
async def test_tool_with_progress(ctx: Context) -> str:
    """Sends progress 0, 50 and 100 of 100, then answers with the progress token."""
    for step in (0, 50, 100):
        await ctx.report_progress(progress=step, total=100, message=f"Completed step {step} of 100")
        await asyncio.sleep(0.05)
    meta = ctx.request_context.meta if ctx.request_context else None
    return str(meta.get("progress_token") if meta else 0)


@server.tool()
async def test_sampling(prompt: str, ctx: Context) -> str:
    """Asks the client's model (sampling/createMessage) and reports its answer."""
    try:
        result = await ctx.session.create_message(
            messages=[SamplingMessage(role="user", content=_text(prompt))],
            max_tokens=100,
            related_request_id=ctx.request_id,
        )
    except Exception as exc:  # the suite reads the message, not a traceback
        return f"Sampling not supported or error: {exc}"
    answer = result.content.text if result.content.type == "text" else "No response"
    return f"LLM response: {answer}"


class _Answer(BaseModel):
    response: str = Field(description="User's response")


async def _elicit_report(ctx: Context, message: str, schema: type[BaseModel], label: str) -> str:
    """Elicit a form and report ``LABEL: action=..., content=...`` (the wording the suite reads)."""
    try:
        result = await ctx.elicit(message=message, schema=schema)
    except Exception as exc:
        return f"Elicitation not supported or error: {exc}"
    content = result.data.model_dump_json() if result.action == "accept" else "{}"
    return f"{label}: action={result.action}, content={content}"


@server.tool()
async def test_elicitation(message: str, ctx: Context) -> str:
    """Asks the user (elicitation/create) and reports the action and content."""
    return await _elicit_report(ctx, message, _Answer, "User response")


class _Defaults(BaseModel):
    """Every primitive type with a default (SEP-1034)."""

    name: str = Field(default="John Doe", description="User name")
    age: int = Field(default=30, description="User age")
    score: float = Field(default=95.5, description="User score")
    status: str = Field(
        default="active", description="User status", json_schema_extra={"enum": ["active", "inactive", "pending"]}
    )
    verified: bool = Field(default=True, description="Verification status")


@server.tool()
async def test_elicitation_sep1034_defaults(ctx: Context) -> str:
    """Elicits a form whose fields all carry defaults."""
    return await _elicit_report(ctx, "Please provide user information", _Defaults, "Elicitation result")


def _choices(*pairs: tuple[str, str]) -> list[dict[str, str]]:
    return [{"const": value, "title": title} for value, title in pairs]


class _Enums(BaseModel):
    """The enum shapes of SEP-1330."""

    untitledSingle: str = Field(
        description="Simple enum without titles", json_schema_extra={"enum": ["active", "inactive", "pending"]}
    )
    titledSingle: str = Field(
        description="Enum with titled options (oneOf)",
        json_schema_extra={
            "oneOf": _choices(("low", "Low Priority"), ("medium", "Medium Priority"), ("high", "High Priority"))
        },
    )
    untitledMulti: list[str] = Field(
        description="Multi-select without titles",
        json_schema_extra={"items": {"type": "string", "enum": ["read", "write", "execute"]}},
    )
    titledMulti: list[str] = Field(
        description="Multi-select with titled options",
        json_schema_extra={
            "items": {"anyOf": _choices(("feature", "New Feature"), ("bug", "Bug Fix"), ("docs", "Documentation"))}
        },
    )
    legacyEnum: str = Field(
        description="Legacy enum with enumNames",
        json_schema_extra={"enum": ["small", "medium", "large"], "enumNames": ["Small Size", "Medium Size", "Large Size"]},
    )


@server.tool()
async def test_elicitation_sep1330_enums(ctx: Context) -> str:
    """Elicits a form with every enum variant."""
    message = "Please select values using different enum schema types"
    return await _elicit_report(ctx, message, _Enums, "Elicitation completed")


@server.tool()
def test_error_handling() -> str:
    """Always fails, so the result carries isError."""
    raise RuntimeError("This tool intentionally returns an error for testing")


@server.tool()
def test_x_mcp_header(
    region: Annotated[
        str, Field(description="Mirrored into Mcp-Param-Region", json_schema_extra={"x-mcp-header": "Region"})
    ] = "<none>",
) -> str:
    """Has a parameter mirrored into a routing header (SEP-2243)."""
    return f"region={region}"


@server.tool()
async def test_missing_capability(ctx: Context) -> str:
    """Fails with a protocol error unless the client declared sampling."""
    caps = ctx.session.client_capabilities
    if caps is None or caps.sampling is None:
        raise MCPError(
            code=MISSING_REQUIRED_CLIENT_CAPABILITY,
            message="This tool requires the client 'sampling' capability",
            data={"requiredCapabilities": {"sampling": {}}},
        )
    return "Client declared sampling capability; proceeding."


# ---- multi-round-trip (input_required) tools ------------------------------

_NAME_FORM = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}
_CONFIRM_FORM = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


def _ask(message: str, schema: dict[str, Any] | None = None) -> ElicitRequest:
    return ElicitRequest(params=ElicitRequestFormParams(message=message, requested_schema=schema or _NAME_FORM))


def _sample(text: str, max_tokens: int) -> CreateMessageRequest:
    messages = [SamplingMessage(role="user", content=_text(text))]
    return CreateMessageRequest(params=CreateMessageRequestParams(messages=messages, max_tokens=max_tokens))


def _form_value(answer: object, key: str) -> Any:
    if isinstance(answer, ElicitResult) and answer.content:
        return answer.content.get(key)
    return None


@server.tool()
async def test_input_required_result_elicitation(ctx: Context) -> str | InputRequiredResult:
    """Needs one elicitation answered before it can greet."""
    answers = ctx.input_responses or {}
    if "user_name" in answers:
        return f"Hello, {_form_value(answers['user_name'], 'name') or 'stranger'}!"
    return InputRequiredResult(input_requests={"user_name": _ask("What is your name?")})


@server.tool()
async def test_input_required_result_sampling(ctx: Context) -> str | InputRequiredResult:
    """Needs one sampling answer."""
    answers = ctx.input_responses or {}
    if "capital_question" in answers:
        answer = answers["capital_question"]
        ok = isinstance(answer, CreateMessageResult) and answer.content.type == "text"
        return f"Model said: {answer.content.text if ok else '?'}"
    return InputRequiredResult(input_requests={"capital_question": _sample("What is the capital of France?", 100)})


@server.tool()
async def test_input_required_result_list_roots(ctx: Context) -> str | InputRequiredResult:
    """Needs the client's roots."""
    answers = ctx.input_responses or {}
    if "client_roots" in answers:
        answer = answers["client_roots"]
        return f"Client exposed {len(answer.roots) if isinstance(answer, ListRootsResult) else 0} root(s)."
    return InputRequiredResult(input_requests={"client_roots": ListRootsRequest()})


@server.tool()
async def test_input_required_result_request_state(ctx: Context) -> str | InputRequiredResult:
    """Checks that requestState comes back unchanged with the answer."""
    if "confirm" in (ctx.input_responses or {}) and ctx.request_state == "request-state-nonce":
        return "state-ok: confirmation received"
    return InputRequiredResult(
        input_requests={"confirm": _ask("Please confirm", _CONFIRM_FORM)}, request_state="request-state-nonce"
    )


@server.tool()
async def test_input_required_result_multiple_inputs(ctx: Context) -> str | InputRequiredResult:
    """Needs an elicitation, a sampling answer and the roots at once."""
    if {"user_name", "greeting", "client_roots"} <= (ctx.input_responses or {}).keys():
        return "All inputs received."
    return InputRequiredResult(
        input_requests={
            "user_name": _ask("What is your name?"),
            "greeting": _sample("Generate a greeting", 50),
            "client_roots": ListRootsRequest(),
        },
        request_state="multiple-inputs",
    )


@server.tool()
async def test_input_required_result_multi_round(ctx: Context) -> str | InputRequiredResult:
    """Three rounds, the state carrying what earlier rounds learned."""
    state = json.loads(ctx.request_state) if ctx.request_state else {"round": 0}
    answers = ctx.input_responses or {}
    if state["round"] == 1 and "step1" in answers:
        color_form = {"type": "object", "properties": {"color": {"type": "string"}}, "required": ["color"]}
        return InputRequiredResult(
            input_requests={"step2": _ask("Step 2: What is your favorite color?", color_form)},
            request_state=json.dumps({"round": 2, "name": _form_value(answers["step1"], "name")}),
        )
    if state["round"] == 2 and "step2" in answers:
        return f"{state.get('name')} likes {_form_value(answers['step2'], 'color')}."
    return InputRequiredResult(
        input_requests={"step1": _ask("Step 1: What is your name?")}, request_state=json.dumps({"round": 1})
    )


@server.tool()
async def test_input_required_result_tampered_state(ctx: Context) -> str | InputRequiredResult:
    """The SDK rejects a requestState that was altered on the way back."""
    if ctx.request_state is None:
        return InputRequiredResult(
            input_requests={"confirm": _ask("Please confirm", _CONFIRM_FORM)}, request_state="round-1"
        )
    return f"state-ok: {ctx.request_state}"


@server.tool()
async def test_input_required_result_capabilities(ctx: Context) -> InputRequiredResult:
    """Asks only for the kinds of input the client declared."""
    caps = ctx.client_capabilities
    wanted: dict[str, InputRequest] = {}
    if caps is None or caps.sampling is not None:
        wanted["sample"] = _sample("Say hello", 50)
    if caps is None or caps.elicitation is not None:
        wanted["ask"] = _ask("What is your name?")
    return InputRequiredResult(input_requests=wanted, request_state="capability-gated")


_SCHEMA_2020_12: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "$defs": {
        "address": {
            "$anchor": "addressDef",
            "type": "object",
            "properties": {"street": {"type": "string"}, "city": {"type": "string"}},
        }
    },
    "properties": {
        "name": {"type": "string"},
        "address": {"$ref": "#/$defs/address"},
        "contactMethod": {"type": "string", "enum": ["phone", "email"]},
        "phone": {"type": "string"},
        "email": {"type": "string"},
    },
    "allOf": [{"anyOf": [{"required": ["phone"]}, {"required": ["email"]}]}],
    "if": {"properties": {"contactMethod": {"const": "phone"}}, "required": ["contactMethod"]},
    "then": {"required": ["phone"]},
    "else": {"required": ["email"]},
    "additionalProperties": False,
}


@server.tool(name="json_schema_2020_12_tool")
def json_schema_2020_12_tool() -> str:
    """Its input schema uses the 2020-12 keywords the suite checks survive listing."""
    return "json_schema_2020_12_tool"


# The SDK derives schemas from signatures; this one is set by hand.
server._tool_manager._tools["json_schema_2020_12_tool"].parameters = _SCHEMA_2020_12


@server.tool()
async def test_reconnection(ctx: Context) -> str:
    """Closes its SSE stream mid-call; the client polls back (SEP-1699)."""
    await ctx.info("Before disconnect")
    await ctx.close_sse_stream()
    await asyncio.sleep(0.2)
    await ctx.info("After reconnect")
    return "Reconnection test completed"


def _dynamic() -> str:
    """Exists only for a moment."""
    return "dynamic"


@server.tool()
async def test_trigger_tool_change(ctx: Context) -> str:
    """Changes the tool list and says so."""
    server.add_tool(_dynamic, name="test_dynamic_tool")
    server.remove_tool("test_dynamic_tool")
    await ctx.notify_tools_changed()
    return "tool list changed"


@server.tool()
async def test_trigger_prompt_change(ctx: Context) -> str:
    """Changes the prompt list and says so."""
    server.add_prompt(Prompt.from_function(_dynamic, name="test_dynamic_prompt", description="dynamic"))
    server.remove_prompt("test_dynamic_prompt")
    await ctx.notify_prompts_changed()
    return "prompt list changed"


_added: list[str] = []


@server.tool()
async def add_dynamic_tool(ctx: Context) -> str:
    """Not a suite fixture: registers one more tool for good and announces the change
    (the suite's trigger tools add and remove, leaving the list as it was)."""
    name = f"dynamic_{len(_added) + 1}"
    _added.append(name)
    server.add_tool(_dynamic, name=name)
    await ctx.notify_tools_changed()
    return name


# ---- resources -------------------------------------------------------------


@server.resource("test://static-text")
def static_text() -> str:
    """Fixed text."""
    return "This is the content of the static text resource."


@server.resource("test://static-binary")
def static_binary() -> bytes:
    """Fixed bytes (a PNG)."""
    return base64.b64decode(PNG_1PX)


@server.resource("test://template/{id}/data")
def templated(id: str) -> str:
    """JSON naming the id it was read with."""
    return json.dumps({"id": id, "templateTest": True, "data": f"Data for ID: {id}"})


@server.resource("test://watched-resource")
def watched() -> str:
    """A resource clients may subscribe to."""
    return "Watched resource content"


# ---- prompts ---------------------------------------------------------------


@server.prompt()
def test_simple_prompt() -> list[UserMessage]:
    """No arguments."""
    return [UserMessage(role="user", content=_text("This is a simple prompt for testing."))]


@server.prompt()
def test_prompt_with_arguments(arg1: str, arg2: str) -> list[UserMessage]:
    """Two required arguments."""
    return [UserMessage(role="user", content=_text(f"Prompt with arguments: arg1='{arg1}', arg2='{arg2}'"))]


@server.prompt()
def test_prompt_with_embedded_resource(resourceUri: str) -> list[UserMessage]:
    """Embeds a resource named by the caller."""
    inner = TextResourceContents(uri=resourceUri, mime_type="text/plain", text="Embedded resource content for testing.")
    return [
        UserMessage(role="user", content=EmbeddedResource(type="resource", resource=inner)),
        UserMessage(role="user", content=_text("Please process the embedded resource above.")),
    ]


@server.prompt()
def test_prompt_with_image() -> list[UserMessage]:
    """Carries an image."""
    return [
        UserMessage(role="user", content=ImageContent(type="image", data=PNG_1PX, mime_type="image/png")),
        UserMessage(role="user", content=_text("Please analyze the image above.")),
    ]


@server.prompt()
async def test_input_required_result_prompt(ctx: Context) -> list[UserMessage] | InputRequiredResult:
    """A prompt that needs an elicitation first (input_required outside tools)."""
    answers = ctx.input_responses or {}
    if "user_context" in answers:
        text = _form_value(answers["user_context"], "context") or "?"
        return [UserMessage(role="user", content=_text(f"Use the following context: {text}"))]
    form = {"type": "object", "properties": {"context": {"type": "string"}}, "required": ["context"]}
    return InputRequiredResult(input_requests={"user_context": _ask("What context should the prompt use?", form)})


# ---- the requests MCPServer has no decorator for ----------------------------


async def _set_level(ctx: ServerRequestContext, params: SetLevelRequestParams) -> EmptyResult:
    return EmptyResult()


async def _subscribe(ctx: ServerRequestContext, params: SubscribeRequestParams) -> EmptyResult:
    subscriptions.add(str(params.uri))
    return EmptyResult()


async def _unsubscribe(ctx: ServerRequestContext, params: UnsubscribeRequestParams) -> EmptyResult:
    subscriptions.discard(str(params.uri))
    return EmptyResult()


server._lowlevel_server.add_request_handler("logging/setLevel", SetLevelRequestParams, _set_level)
server._lowlevel_server.add_request_handler("resources/subscribe", SubscribeRequestParams, _subscribe)
server._lowlevel_server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, _unsubscribe)


@server.completion()
async def _complete(
    ref: PromptReference | ResourceTemplateReference, argument: CompletionArgument, context: CompletionContext | None
) -> Completion:
    return Completion(values=[], total=0, has_more=False)


class _OneEra:
    """ASGI wrapper that makes the dual-era SDK app speak one era only, as older
    (handshake-only) and newer (stateless-only) servers do: requests of the other
    era get the 400 such a server answers."""

    def __init__(self, app: Any, era: str) -> None:
        self.app = app
        self.era = era

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = dict(scope["headers"])
            stateless = headers.get(b"mcp-protocol-version") == b"2026-07-28"
            if stateless != (self.era == "stateless"):
                await self._refuse(send)
                return
        await self.app(scope, receive, send)

    async def _refuse(self, send: Any) -> None:
        if self.era == "stateless":
            error = {"code": -32022, "message": "Unsupported protocol version", "data": {"supported": ["2026-07-28"]}}
        else:
            error = {"code": -32600, "message": "Bad Request: this server speaks the handshake era only"}
        body = json.dumps({"jsonrpc": "2.0", "id": None, "error": error}).encode()
        await send({"type": "http.response.start", "status": 400, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})


async def _serve(port: int, era: str) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(128)
    app = server.streamable_http_app(event_store=_Replay(), retry_interval=100)
    if era != "both":
        app = _OneEra(app, era)
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    print(f"listening on http://127.0.0.1:{sock.getsockname()[1]}/mcp", flush=True)
    await uvicorn.Server(config).serve(sockets=[sock])


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--era", choices=["both", "handshake", "stateless"], default="both")
    args = parser.parse_args()
    asyncio.run(_serve(args.port, args.era))
