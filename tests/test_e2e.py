"""End to end: the official SDK client drives the gateway over real sockets,
in front of three real backends at once (SDK server over stdio, SDK server over
Streamable HTTP, @modelcontextprotocol/server-everything over stdio), and gets
what the same client gets from each backend directly, apart from the prefixes.
"""

from __future__ import annotations

import sys
from typing import Any

import pytest
from mcp import Client, StdioServerParameters
from mcp.shared.exceptions import MCPError

from tests.support import EVERYTHING, SERVERS, Child

SEP = "__"


def direct_target(name: str, http_backend: Child) -> Any:
    """How to reach backend ``name`` without the gateway."""
    if name == "local":
        return StdioServerParameters(command=sys.executable, args=[str(SERVERS / "sdk_stdio_server.py")])
    if name == "web":
        return http_backend.url
    return StdioServerParameters(command=str(EVERYTHING), args=["stdio"])


async def list_all(client: Client, kind: str) -> list[Any]:
    """Every item of a paginated list, following cursors."""
    method = {
        "tools": client.list_tools,
        "prompts": client.list_prompts,
        "resources": client.list_resources,
        "resourceTemplates": client.list_resource_templates,
    }[kind]
    items: list[Any] = []
    cursor = None
    for _ in range(100):
        page = await method(cursor=cursor, cache_mode="bypass")
        items.extend(getattr(page, {"resourceTemplates": "resource_templates"}.get(kind, kind)))
        cursor = page.next_cursor
        if not cursor:
            return items
    raise AssertionError("pagination did not end")


def strip_prefix(kind: str, namespace: str, items: list[Any]) -> list[dict[str, Any]]:
    """The gateway's items that belong to ``namespace``, with the prefix removed."""
    out = []
    for item in items:
        data = item.model_dump(by_alias=True, exclude_none=True)
        if kind in ("tools", "prompts"):
            if data["name"].startswith(namespace + SEP):
                data["name"] = data["name"][len(namespace + SEP) :]
                out.append(data)
        else:
            key = "uri" if kind == "resources" else "uriTemplate"
            if data[key].startswith(namespace + "+"):
                data[key] = data[key][len(namespace + "+") :]
                out.append(data)
    return out


BACKENDS = ["local", "web", "everything"]
KINDS = ["tools", "prompts", "resources", "resourceTemplates"]


async def _never(*args: object) -> None:
    raise AssertionError("not called by a list request")


# The gateway's shared upstream session declares sampling, elicitation and roots (it
# relays them to clients that declare them), and server-everything lists some tools
# only to clients with those capabilities: the direct client declares the same.
# Listed by server-everything only to clients that declare URL-mode elicitation or
# tasks, which the gateway does not relay (yet), so the gateway does not declare them.
_NEEDS_UNDECLARED = {"trigger-url-elicitation", "simulate-research-query"}
_SAME_CAPABILITIES = {"sampling_callback": _never, "elicitation_callback": _never, "list_roots_callback": _never}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_lists_equal_direct(gw: Child, http_backend: Child, backend: str) -> None:
    direct_client = Client(direct_target(backend, http_backend), mode="legacy", **_SAME_CAPABILITIES)  # type: ignore[arg-type]
    async with Client(gw.url, mode="legacy") as via, direct_client as direct:
        for kind in KINDS:
            through = strip_prefix(kind, backend, await list_all(via, kind))
            expected = [i.model_dump(by_alias=True, exclude_none=True) for i in await list_all(direct, kind)]
            names = {i.get("name") for i in through}
            left_out = [i.get("name") for i in expected if i.get("name") not in names]
            assert set(left_out) <= _NEEDS_UNDECLARED, f"{backend} {kind}: {left_out} missing"
            assert through == [i for i in expected if i.get("name") in names], f"{backend} {kind} differ"
        assert through is not None


async def test_aggregate_has_all_three_backends(gw: Child) -> None:
    async with Client(gw.url, mode="legacy") as client:
        names = [t.name for t in await list_all(client, "tools")]
    prefixes = {n.split(SEP, 1)[0] for n in names}
    assert prefixes == {"local", "web", "everything"}
    assert len(names) == len(set(names))
    # Deterministic order: backends sorted by name, each backend's items in its own order.
    order = [n.split(SEP, 1)[0] for n in names]
    assert order == sorted(order)


CALLS = [
    ("local", "echo", {"text": "hello local"}),
    ("local", "add", {"a": 2, "b": 3}),
    ("web", "echo", {"text": "hello web"}),
    ("web", "multiply", {"a": 6, "b": 7}),
    ("everything", "echo", {"message": "hello everything"}),
    ("everything", "get-sum", {"a": 5, "b": 8}),
]


@pytest.mark.parametrize(("backend", "tool", "args"), CALLS, ids=[f"{b}-{t}" for b, t, _ in CALLS])
async def test_call_tool_equal_direct(gw: Child, http_backend: Child, backend: str, tool: str, args: dict) -> None:
    async with Client(gw.url, mode="legacy") as via, Client(direct_target(backend, http_backend), mode="legacy") as direct:
        got = await via.call_tool(f"{backend}{SEP}{tool}", args)
        want = await direct.call_tool(tool, args)
    assert not got.is_error
    assert got.model_dump() == want.model_dump()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_read_resources_equal_direct(gw: Child, http_backend: Child, backend: str) -> None:
    async with Client(gw.url, mode="legacy") as via, Client(direct_target(backend, http_backend), mode="legacy") as direct:
        resources = await list_all(direct, "resources")
        assert resources, f"{backend} lists no resources"
        for resource in resources[:3]:
            want = await direct.read_resource(str(resource.uri))
            got = await via.read_resource(f"{backend}+{resource.uri}")
            assert got.model_dump() == want.model_dump()


async def test_read_templated_resource(gw: Child, http_backend: Child) -> None:
    async with Client(gw.url, mode="legacy") as via, Client(direct_target("local", http_backend), mode="legacy") as direct:
        templates = await list_all(via, "resourceTemplates")
        local = [t.uri_template for t in templates if t.uri_template.startswith("local+")]
        assert local, "the stdio backend's template is missing"
        uri = local[0].replace("local+", "", 1)
        concrete = uri.split("{", 1)[0] + "alpha"
        got = await via.read_resource("local+" + concrete)
        want = await direct.read_resource(concrete)
    assert got.model_dump() == want.model_dump()


@pytest.mark.parametrize("backend", BACKENDS)
async def test_get_prompts_equal_direct(gw: Child, http_backend: Child, backend: str) -> None:
    async with Client(gw.url, mode="legacy") as via, Client(direct_target(backend, http_backend), mode="legacy") as direct:
        prompts = await list_all(direct, "prompts")
        assert prompts, f"{backend} lists no prompts"
        for prompt in prompts[:3]:
            args = {a.name: "7" for a in (prompt.arguments or []) if a.required}
            want = await direct.get_prompt(prompt.name, args)
            got = await via.get_prompt(f"{backend}{SEP}{prompt.name}", args)
            assert got.model_dump() == want.model_dump()


async def test_unknown_tool_is_a_clear_error(gw: Child) -> None:
    async with Client(gw.url, mode="legacy") as client:
        with pytest.raises(MCPError) as info:
            await client.call_tool("nope__missing", {})
        assert info.value.code == -32602
        assert "unknown tool" in info.value.message
        assert info.value.data["gateway"]["reason"] == "unknown_tool"
        # The session is still good.
        assert (await client.call_tool("local__echo", {"text": "still here"})).content


async def test_backend_error_passes_through(gw: Child, http_backend: Child) -> None:
    """A backend's own error for a bad call reaches the client unchanged."""
    async with Client(gw.url, mode="legacy") as via, Client(direct_target("web", http_backend), mode="legacy") as direct:
        want = await direct.call_tool("multiply", {"a": "x"})
        got = await via.call_tool("web__multiply", {"a": "x"})
    assert got.is_error and want.is_error
    assert got.model_dump() == want.model_dump()


async def test_backend_sse_progress_streams_through(gw: Child) -> None:
    """A backend that answers with SSE (progress first) is streamed to the client as SSE."""
    updates: list[tuple[float, float | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total))

    async with Client(gw.url, mode="legacy") as client:
        result = await client.call_tool("web__progress", {"steps": 3}, progress_callback=on_progress)
    assert result.content[0].text == "done 3"
    assert updates == [(1.0, 3.0), (2.0, 3.0), (3.0, 3.0)]
