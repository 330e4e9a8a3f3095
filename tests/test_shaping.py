"""Tool shaping: ``[backends.NAME.tools.TOOL]`` (alias, description, hide, inject, defaults),
``hide_destructive`` and ``read_only``.

The compiled parts are checked on their own first, built from config text by the real
loader: the annotation rules (MCP's defaults), the shaping of a list (hidden, renamed,
described, schemas), the alias collision rule, and the transforms (``inject`` forced,
``defaults`` filled, odd arguments refused, nothing else touched, their place in the chain).
Then in-process gateways on real sockets, in front of the official SDK server, a scripted
backend listing every kind of annotation (and echoing the arguments it got), and the
conformance server (a tool with an ``x-mcp-header``), check what a client sees and what
the backend gets, in both paths (the express lane and the general one) and both eras: the
alias listed and callable and the original unknown, hidden tools answered byte for byte as
unknown names and never reaching the backend, injected values winning over what an attacker
sends, defaults filling only what is absent, RBAC deciding on the alias, and a
``list_changed`` rebuild shaped again.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from gateway.app import Gateway
from gateway.catalog.shaping import ToolShaping, destructive, read_only
from gateway.config import BackendConfig, ConfigError, load_config_text
from gateway.errors import InvalidParams
from gateway.policy.chain import Chain, build_admission
from gateway.policy.rbac import RbacAdmission
from gateway.policy.transforms import Transforms, build_transforms
from gateway.protocol.jsonrpc import Raw
from gateway.server.listener import Server
from tests.support import ROOT, Child, ScriptedHttp, eventually, handshake_answer, sdk_http_server
from tests.test_admission import stateless_post
from tests.test_express import ACCEPT, McpHttp, Response, gateway_for

CONFORMANCE = ROOT / "tests" / "servers" / "conformance_server.py"


def backend_config(body: str) -> BackendConfig:
    """``[backends.web]`` with ``body`` (its options and ``[tools.X]`` tables), through the real loader."""
    return web_config(body).backends["web"]


def web_config(body: str) -> Any:
    """A config of one backend ``web`` with ``body``; ``[tools.X]`` stands for ``[backends.web.tools.X]``."""
    text = '[backends.web]\nurl = "http://127.0.0.1:1/mcp"\n' + body.replace("[tools.", "[backends.web.tools.")
    return load_config_text(text, fmt="toml")


def tool(name: str, annotations: Any = None, **fields: Any) -> dict[str, Any]:
    item: dict[str, Any] = {"name": name, "inputSchema": {"type": "object"}, **fields}
    if annotations is not None:
        item["annotations"] = annotations
    return item


# -- the annotations: MCP's defaults ------------------------------------------------------------------

ANNOTATED = [
    tool("look", {"readOnlyHint": True}),
    tool("add", {"readOnlyHint": False, "destructiveHint": False}),
    tool("wipe", {"destructiveHint": True}),
    tool("plain"),  # no annotations: readOnlyHint false, destructiveHint true by default
    tool("odd", {"readOnlyHint": "true", "destructiveHint": "false"}),  # not booleans: as if absent
    tool("both", {"readOnlyHint": True, "destructiveHint": True}),  # destructiveHint means nothing when read-only
    tool("junk", ["readOnlyHint"]),  # annotations that are not an object: none
]


def test_annotations_follow_mcps_defaults() -> None:
    assert [t["name"] for t in ANNOTATED if destructive(t)] == ["wipe", "plain", "odd", "junk"]
    assert [t["name"] for t in ANNOTATED if read_only(t)] == ["look", "both"]


@pytest.mark.parametrize(
    ("option", "exposed"),
    [("hide_destructive = true", ["look", "add", "both"]), ("read_only = true", ["look", "both"]), ("", [t["name"] for t in ANNOTATED])],
)
def test_hide_destructive_and_read_only_filter_the_list(option: str, exposed: list[str]) -> None:
    shaping = ToolShaping("web", backend_config(option))
    assert [s.name for s in shaping.shape(ANNOTATED)] == exposed


def test_an_alias_does_not_unhide_a_tool_the_annotations_hide() -> None:
    shaping = ToolShaping("web", backend_config('hide_destructive = true\n[tools.wipe]\nalias = "clean"\n'))
    assert "clean" not in [s.name for s in shaping.shape(ANNOTATED)]


# -- the shaping of a list ------------------------------------------------------------------------------

SCHEMA = {
    "type": "object",
    "properties": {"user": {"type": "string"}, "limit": {"type": "integer"}, "query": {"type": "string"}},
    "required": ["user", "limit", "query"],
}
SHAPED = """
[tools.search]
alias = "find"
description = "Find things (as the gateway's user)."
inject = { user = "svc" }
defaults = { limit = 10 }

[tools.drop]
hide = true
"""


def test_a_list_is_hidden_renamed_described_and_its_schemas_shaped() -> None:
    tools = [tool("search", description="Search.", inputSchema=SCHEMA), tool("drop"), tool("keep", description="Kept.")]
    shaped = ToolShaping("web", backend_config(SHAPED)).shape(tools)
    assert [(s.original, s.name) for s in shaped] == [("search", "find"), ("keep", "keep")]
    find, keep = shaped
    assert find.item["description"] == "Find things (as the gateway's user)."
    assert find.item["inputSchema"] == {
        "type": "object",
        "properties": {"limit": {"type": "integer", "default": 10}, "query": {"type": "string"}},
        "required": ["query"],  # injected: gone; defaulted: the gateway fills it, so not required
    }
    assert find.upstream_schema == SCHEMA and find.filled == {"user", "limit"}
    assert tools[0]["inputSchema"] == SCHEMA and tools[0]["description"] == "Search."  # the fetched list is untouched
    assert keep.item is tools[2] and keep.upstream_schema is None


def test_an_emptied_required_list_is_dropped() -> None:
    schema = {"type": "object", "properties": {"user": {"type": "string"}}, "required": ["user"]}
    (shaped,) = ToolShaping("web", backend_config('[tools.t]\ninject = { user = "svc" }\n')).shape([tool("t", inputSchema=schema)])
    assert shaped.item["inputSchema"] == {"type": "object", "properties": {}}


def test_an_alias_that_collides_with_a_tool_exposed_as_itself_loses(caplog: pytest.LogCaptureFixture) -> None:
    shaping = ToolShaping("web", backend_config('[tools.search]\nalias = "find"\n'))
    tools = [tool("search"), tool("find")]  # the backend has a tool named like the alias, exposed as itself
    with caplog.at_level(logging.WARNING, logger="gateway.catalog"):
        first = shaping.shape(tools)
        again = shaping.shape(tools)  # a rebuild: the same collision is not logged twice
    assert [(s.original, s.name) for s in first] == [("find", "find")] == [(s.original, s.name) for s in again]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1
    assert "tool 'search' has alias 'find', which is the name of another tool of this backend" in warnings[0]
    assert "'search' is not exposed" in warnings[0]


def test_an_alias_may_take_the_name_of_a_tool_that_is_hidden_or_aliased_away() -> None:
    swap = ToolShaping("web", backend_config('[tools.a]\nalias = "b"\n[tools.b]\nalias = "a"\n'))
    assert [(s.original, s.name) for s in swap.shape([tool("a"), tool("b")])] == [("a", "b"), ("b", "a")]
    by_annotation = ToolShaping("web", backend_config('read_only = true\n[tools.look]\nalias = "wipe"\n'))
    assert [(s.original, s.name) for s in by_annotation.shape(ANNOTATED)] == [("look", "wipe"), ("both", "both")]


def test_a_tool_table_naming_no_listed_tool_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    shaping = ToolShaping("web", backend_config("[tools.serach]\nhide = true\n"))
    with caplog.at_level(logging.WARNING, logger="gateway.catalog"):
        shaping.shape([])  # nothing listed yet (the backend is down): nothing to say
        shaping.shape([tool("search")])
        shaping.shape([tool("search")])
    assert [r.getMessage() for r in caplog.records] == [
        "backend 'web': [backends.web.tools.serach] names no tool the backend lists (its own names, not the exposed ones)"
    ]


# -- the transforms ------------------------------------------------------------------------------------

WEB = SimpleNamespace(name="web")  # a route's backend: only its name is read


def transforms(body: str) -> Transforms:
    built = build_transforms(web_config(body))
    assert built is not None
    return built


def sent(admission: Transforms, arguments: bytes | None, tool_name: str = "search", method: str = "tools/call") -> Any:
    """What ``admit`` does to a call with these raw arguments: the arguments sent (decoded), or the verdict."""
    params = {"name": Raw(b'"web__find"')}
    if arguments is not None:
        params["arguments"] = Raw(arguments)
    verdict = admission.admit(None, None, method, "web__find", (WEB, tool_name), params)  # type: ignore[arg-type]
    if verdict is None or verdict.error is not None:
        return verdict
    assert verdict.route is None and verdict.result is None and verdict.params is not None
    assert bytes(verdict.params["name"]) == b'"web__find"'  # the other params are kept
    return json.loads(bytes(verdict.params["arguments"]), object_pairs_hook=_no_duplicates)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"a key sent twice: {keys}"
    return dict(pairs)


def test_injected_values_win_over_what_the_client_sends() -> None:
    admission = transforms(SHAPED)
    assert sent(admission, b'{"query": "x"}') == {"limit": 10, "query": "x", "user": "svc"}
    # Attack: the client sends the injected argument itself, even twice (a parser that keeps the
    # first of two keys would see the client's value): the backend gets the forced one, once.
    assert sent(admission, b'{"user": "root", "query": "x"}')["user"] == "svc"
    assert sent(admission, b'{"user": "root", "user": "root", "query": "x"}')["user"] == "svc"


def test_defaults_fill_only_absent_arguments() -> None:
    admission = transforms(SHAPED)
    assert sent(admission, b'{"query": "x", "limit": 3}')["limit"] == 3
    assert sent(admission, b'{"query": "x", "limit": null}')["limit"] is None  # given (as null): kept
    assert sent(admission, b'{"query": "x"}')["limit"] == 10


def test_absent_or_null_arguments_still_get_the_forced_and_default_values() -> None:
    admission = transforms(SHAPED)
    assert sent(admission, None) == sent(admission, b"null") == {"limit": 10, "user": "svc"}


def test_arguments_that_are_not_an_object_are_refused() -> None:
    admission = transforms(SHAPED)
    for bad in (b'["user", "root"]', b'"user=root"', b"7"):
        verdict = sent(admission, bad)
        assert isinstance(verdict.error, InvalidParams) and verdict.error.code == -32602
        assert verdict.error.reason == "invalid_arguments"


def test_values_pass_through_byte_for_byte() -> None:
    admission = transforms(SHAPED)
    params = {"arguments": Raw(b'{"query": {"deep": [1e400, 12345678901234567890123]}}')}
    verdict = admission.admit(None, None, "tools/call", "web__find", (WEB, "search"), params)  # type: ignore[arg-type]
    assert verdict is not None and verdict.params is not None
    assert b'{"deep": [1e400, 12345678901234567890123]}' in bytes(verdict.params["arguments"])


def test_only_the_named_tools_calls_are_rewritten() -> None:
    admission = transforms(SHAPED)
    assert sent(admission, b"{}", tool_name="keep") is None  # another tool of the backend
    assert sent(admission, b"{}", method="prompts/get") is None  # a prompt of the same name
    other = SimpleNamespace(name="other")
    assert admission.admit(None, None, "tools/call", "x", (other, "search"), {}) is None  # type: ignore[arg-type]
    assert list(admission.by_backend) == ["web"] and list(admission.by_backend["web"]) == ["search"]


def test_the_chain_holds_transforms_only_when_asked_for_and_right_after_rbac() -> None:
    base = '[backends.web]\nurl = "http://127.0.0.1:1/mcp"\n'
    rbac = '[rbac]\ndefault = "allow"\n'
    assert build_admission(load_config_text(base + "[backends.web.tools.t]\nhide = true\n", fmt="toml")) is None
    assert isinstance(build_admission(load_config_text(base + SHAPED.replace("[tools.", "[backends.web.tools."), fmt="toml")), Transforms)
    disabled = base + "enabled = false\n[backends.web.tools.t]\ninject = { a = 1 }\n"
    assert build_admission(load_config_text(disabled, fmt="toml")) is None
    chain = build_admission(load_config_text(base + "[backends.web.tools.t]\ninject = { a = 1 }\n" + rbac, fmt="toml"))
    assert isinstance(chain, Chain)
    assert [type(a) for a in chain.admissions][:2] == [RbacAdmission, Transforms]


# -- through a gateway, in front of the official SDK server -----------------------------------------


def call(request_id: int, name: str, arguments: Any = None) -> dict[str, Any]:
    params: dict[str, Any] = {"name": name}
    if arguments is not None:
        params["arguments"] = arguments
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}


def result_text(response: Response) -> str:
    body = json.loads(response.text)
    assert "result" in body, response.text
    return body["result"]["content"][0]["text"]


def comparable(response: Response, name: str) -> tuple[int, str, str]:
    """Status, content type and body, with the name asked for taken out."""
    return response.status_code, response.headers["content-type"], response.text.replace(name, "NAME")


async def listed(client: McpHttp) -> dict[str, dict[str, Any]]:
    response = await client.post({"jsonrpc": "2.0", "id": 99, "method": "tools/list"})
    return sdk_tools(json.loads(response.text)["result"]["tools"])


def sdk_tools(tools: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The listed tools by name, without the ``extra_N`` tools other tests' ``add_tool`` calls
    may have added to the session's shared SDK backend."""
    return {t["name"]: t for t in tools if "__extra_" not in t["name"]}


SDK_SHAPES = """
[backends.web.tools.echo]
alias = "say"
description = "Say it back."

[backends.web.tools.multiply]
defaults = { b = 2 }

[backends.web.tools.progress]
hide = true
"""


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_alias_description_hide_and_defaults_through_the_gateway(http_backend: Child, express: bool) -> None:
    async with gateway_for(http_backend.url, express=express, backend=SDK_SHAPES) as gw:
        client = McpHttp(gw.url)
        await client.open()
        tools = await listed(client)
        answers: dict[str, Any] = {}
        for _ in range(2):  # the second round finds the pool settled and the lane free
            answers["say"] = result_text(await client.post(call(1, "web__say", {"text": "hi"})))
            answers["doubled"] = result_text(await client.post(call(2, "web__multiply", {"a": 3})))
            answers["given"] = result_text(await client.post(call(3, "web__multiply", {"a": 3, "b": 5})))
            for name in ("web__echo", "web__progress", "web__nope"):
                answers[name] = comparable(await client.post(call(4, name, {"text": "hi", "steps": 1})), name)
    assert sorted(tools) == ["web__add_tool", "web__multiply", "web__say"]
    assert tools["web__say"]["description"] == "Say it back."
    assert "b" not in tools["web__multiply"]["inputSchema"].get("required", [])
    assert tools["web__multiply"]["inputSchema"]["properties"]["b"]["default"] == 2
    assert answers["say"] == "hi" and answers["doubled"] == "6.0" and answers["given"] == "15.0"
    # The original name of an aliased tool and a hidden tool: answered exactly as a name that never existed.
    assert answers["web__echo"] == answers["web__progress"] == answers["web__nope"]
    status, _, text = answers["web__nope"]
    assert status == 200 and json.loads(text)["error"]["code"] == -32602
    if express:
        assert True in gw.taken  # the lane admitted the shaped calls itself
    else:
        assert gw.taken == []


INJECT = '[backends.web.tools.echo]\ninject = { text = "forced" }\n'


class RawClient(McpHttp):
    """``McpHttp`` that can POST bytes as they are (a body ``json.dumps`` could not make)."""

    async def post_bytes(self, data: bytes) -> Response:
        head = (
            f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{self.port}\r\naccept: {ACCEPT}\r\ncontent-type: application/json\r\n"
            f"mcp-protocol-version: 2025-11-25\r\nconnection: close\r\ncontent-length: {len(data)}\r\n"
            f"mcp-session-id: {self.session}\r\n\r\n"
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(head.encode() + data)
            return Response(await asyncio.wait_for(reader.read(), 10))
        finally:
            writer.close()


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
async def test_an_injected_argument_is_forced_whatever_the_client_sends(http_backend: Child, express: bool) -> None:
    async with gateway_for(http_backend.url, express=express, backend=INJECT) as gw:
        client = RawClient(gw.url)
        await client.open()
        schema = (await listed(client))["web__echo"]["inputSchema"]
        echoed = []
        for _ in range(2):
            echoed.append(result_text(await client.post(call(1, "web__echo", {"text": "evil"}))))  # the attack
            echoed.append(result_text(await client.post(call(2, "web__echo", {}))))  # the legitimate call
            twice = b'{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"web__echo","arguments":{"text":"evil","text":"evil"}}}'
            echoed.append(result_text(await client.post_bytes(twice)))
            echoed.append(result_text(await client.post(call(4, "web__echo"))))  # no arguments at all
        refused = await client.post(call(5, "web__echo", ["evil"]))
    assert echoed == ["forced"] * 8  # what the SDK server itself got and echoed
    assert "text" not in schema.get("properties", {}) and "text" not in schema.get("required", [])
    error = json.loads(refused.text)["error"]
    assert error["code"] == -32602 and error["data"]["gateway"]["reason"] == "invalid_arguments"
    if express:
        assert True in gw.taken


STATELESS_SHAPES = SDK_SHAPES.replace("defaults = { b = 2 }", "defaults = { b = 2 }\ninject = { a = 7 }")


async def test_the_stateless_era_gets_the_same_shaping(http_backend: Child) -> None:
    async with gateway_for(http_backend.url, backend=STATELESS_SHAPES) as gw:
        page = json.loads((await stateless_post(gw.port, "tools/list", {})).text)["result"]
        said = await stateless_post(gw.port, "tools/call", {"name": "web__say", "arguments": {"text": "s"}}, "web__say")
        product = await stateless_post(gw.port, "tools/call", {"name": "web__multiply", "arguments": {"a": 1}}, "web__multiply")
        hidden = await stateless_post(gw.port, "tools/call", {"name": "web__progress", "arguments": {"steps": 1}}, "web__progress")
        original = await stateless_post(gw.port, "tools/call", {"name": "web__echo", "arguments": {"text": "s"}}, "web__echo")
        unknown = await stateless_post(gw.port, "tools/call", {"name": "web__nope", "arguments": {"steps": 1}}, "web__nope")
    tools = sdk_tools(page["tools"])
    assert sorted(tools) == ["web__add_tool", "web__multiply", "web__say"]
    assert tools["web__say"]["description"] == "Say it back."
    assert list(tools["web__multiply"]["inputSchema"]["properties"]) == ["b"]  # a: injected; b: defaulted
    assert result_text(said) == "s"
    assert result_text(product) == "14.0"  # a forced to 7 (not the client's 1), b defaulted to 2
    assert comparable(hidden, "web__progress") == comparable(original, "web__echo") == comparable(unknown, "web__nope")
    assert hidden.status_code == 400 and json.loads(hidden.text)["error"]["code"] == -32602


RBAC_ON_ALIAS = """
[rbac]
[[rbac.rules]]
name = "say-only"
tools = ["web__say", "web__echo"]
"""


async def test_rbac_decides_on_the_alias(http_backend: Child) -> None:
    # The rule allows the alias and the original name; only the alias exists, so only it is listed and callable.
    async with gateway_for(http_backend.url, backend=SDK_SHAPES + RBAC_ON_ALIAS) as gw:
        client = McpHttp(gw.url)
        await client.open()
        tools = await listed(client)
        said = await client.post(call(1, "web__say", {"text": "ok"}))
        refused = {name: comparable(await client.post(call(2, name, {"a": 1, "b": 2})), name) for name in ("web__echo", "web__multiply", "web__nope")}
    assert sorted(tools) == ["web__say"]
    assert result_text(said) == "ok"
    assert refused["web__echo"] == refused["web__multiply"] == refused["web__nope"]
    deny = '\n[rbac]\ndefault = "allow"\n[[rbac.rules]]\nname = "no-say"\neffect = "deny"\ntools = ["web__say"]\n'
    async with gateway_for(http_backend.url, backend=SDK_SHAPES + deny) as gw:
        client = McpHttp(gw.url)
        await client.open()
        tools = await listed(client)
        denied = comparable(await client.post(call(1, "web__say", {"text": "ok"})), "web__say")
        unknown = comparable(await client.post(call(1, "web__nope", {"text": "ok"})), "web__nope")
    assert sorted(tools) == ["web__add_tool", "web__multiply"] and denied == unknown


# -- annotations, on a backend that lists every kind of them ----------------------------------------


class Annotated(ScriptedHttp):
    """An MCP server listing ``ANNOTATED``; each call answers the arguments it got, as JSON text."""

    def __init__(self) -> None:
        super().__init__(self._answer)
        self.sessions: list[str] = []
        self.called: list[str] = []

    async def _answer(self, request: dict) -> tuple[int, dict, bytes] | None:
        answer = handshake_answer(request, self.sessions)
        if answer is not None:
            return answer
        msg = request["body"]
        if msg["method"] == "tools/list":
            result: dict[str, Any] = {"tools": ANNOTATED}
        else:
            self.called.append(msg["params"]["name"])
            result = {"content": [{"type": "text", "text": json.dumps(msg["params"].get("arguments"))}]}
        return 200, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}).encode()


@pytest.mark.parametrize("express", [True, False], ids=["lane", "general"])
@pytest.mark.parametrize(
    ("option", "exposed"), [("hide_destructive = true", ["add", "both", "look"]), ("read_only = true", ["both", "look"])]
)
async def test_annotations_hide_tools_from_the_list_and_from_calls(option: str, exposed: list[str], express: bool) -> None:
    backend = Annotated()
    async with backend as url, gateway_for(url, express=express, backend=option) as gw:
        client = McpHttp(gw.url)
        await client.open()
        tools = await listed(client)
        answers = {}
        for _ in range(2):
            for item in ANNOTATED:
                name = f"web__{item['name']}"
                answers[item["name"]] = comparable(await client.post(call(1, name, {"x": 1})), name)
        unknown = comparable(await client.post(call(1, "web__nope", {"x": 1})), "web__nope")
    assert sorted(tools) == [f"web__{name}" for name in exposed]
    for item in ANNOTATED:
        if item["name"] in exposed:
            assert json.loads(json.loads(answers[item["name"]][2])["result"]["content"][0]["text"]) == {"x": 1}
        else:
            assert answers[item["name"]] == unknown, item["name"]
    assert sorted(set(backend.called)) == exposed  # nothing hidden ever reached the backend
    if express:
        assert True in gw.taken


# -- a list_changed rebuild is shaped again ------------------------------------------------------------


async def test_a_list_changed_rebuild_applies_the_shaping_again() -> None:
    own = sdk_http_server()  # its own process: its first added tool is "extra_1"
    shapes = '[backends.web.tools.extra_1]\nalias = "bonus"\ndescription = "Added, renamed."\n'
    try:
        async with gateway_for(own.url, backend=shapes) as gw:
            client = McpHttp(gw.url)
            await client.open()
            before = await listed(client)
            added = result_text(await client.post(call(1, "web__add_tool", {})))
            tools = await eventually(
                lambda: _listed_with(client, "web__bonus"), message="the added tool never appeared under its alias"
            )
            bonus = await client.post(call(2, "web__bonus", {}))
            original = comparable(await client.post(call(3, "web__extra_1", {})), "web__extra_1")
            unknown = comparable(await client.post(call(3, "web__nope", {})), "web__nope")
    finally:
        own.stop()
    assert added == "extra_1" and "web__bonus" not in before
    assert set(tools) - set(before) == {"web__bonus"} and tools["web__bonus"]["description"] == "Added, renamed."
    assert result_text(bonus) == "extra_1" and original == unknown


async def _listed_with(client: McpHttp, name: str) -> dict[str, dict[str, Any]] | None:
    tools = await listed(client)
    return tools if name in tools else None


# -- the stateless era's routing headers follow the shaped name -----------------------------------------


async def test_routing_header_annotations_follow_the_alias() -> None:
    backend = Child([sys.executable, str(CONFORMANCE), "--port", "0"], "listening on")
    shapes = '[backends.web.tools.test_x_mcp_header]\nalias = "where"\n'
    try:
        async with gateway_for(backend.url, backend=shapes) as gw:
            args = {"name": "web__where", "arguments": {"region": "eu"}}
            mismatch = await stateless_post(gw.port, "tools/call", args, "web__where", {"mcp-param-region": "us"})
            matching = await stateless_post(gw.port, "tools/call", args, "web__where", {"mcp-param-region": "eu"})
    finally:
        backend.stop()
    assert json.loads(mismatch.text)["error"]["code"] == -32020  # the alias's annotations were checked
    assert result_text(matching) == "region=eu"


async def test_filled_arguments_are_mirrored_in_the_routing_headers_toward_the_backend() -> None:
    backend = Child([sys.executable, str(CONFORMANCE), "--port", "0"], "listening on")
    shapes = '[backends.web.tools.test_x_mcp_header]\ninject = { region = "eu" }\n'
    try:
        async with gateway_for(backend.url, backend=shapes) as gw:
            args = {"name": "web__test_x_mcp_header", "arguments": {"region": "us"}}  # the attack, its header agreeing
            forced = await stateless_post(gw.port, "tools/call", args, "web__test_x_mcp_header", {"mcp-param-region": "us"})
    finally:
        backend.stop()
    # The backend checks that Mcp-Param-Region mirrors the body it gets: the injected value, sent with its header.
    assert result_text(forced) == "region=eu"


# -- passthrough: one backend, unprefixed ------------------------------------------------------------


def test_passthrough_refuses_hiding_and_aliases() -> None:
    # Passthrough sends a name the catalog does not list to the backend: hiding there would only unlist.
    base = '[gateway]\npassthrough = true\n[backends.web]\nurl = "http://127.0.0.1:1/mcp"\n'
    for extra, key in (
        ("[backends.web.tools.echo]\nalias = 'say'\n", "backends.web.tools.echo.alias"),
        ("[backends.web.tools.echo]\nhide = true\n", "backends.web.tools.echo.hide"),
        ("hide_destructive = true\n", "backends.web.hide_destructive"),
        ("read_only = true\n", "backends.web.read_only"),
    ):
        with pytest.raises(ConfigError, match=f"'{key}': cannot hide"):
            load_config_text(base + extra, fmt="toml")


async def test_passthrough_injects(http_backend: Child) -> None:
    text = f"""
[server]
port = 0
[gateway]
passthrough = true
[backends.web]
url = {http_backend.url!r}
[backends.web.tools.echo]
inject = {{ text = "forced" }}
description = "Echo, with the text chosen by the gateway."
"""
    config = load_config_text(text, fmt="toml")
    gateway = Gateway(config)
    await gateway.start()
    listener = Server(gateway.front, config.server)
    _, port = await listener.start()
    try:
        client = McpHttp(f"http://127.0.0.1:{port}/mcp")
        await client.open()
        tools = await listed(client)
        said = await client.post(call(1, "echo", {"text": "evil"}))
    finally:
        await listener.shutdown()
        await gateway.stop()
    assert tools["echo"]["description"] == "Echo, with the text chosen by the gateway."
    assert "text" not in tools["echo"]["inputSchema"].get("properties", {})
    assert result_text(said) == "forced"
