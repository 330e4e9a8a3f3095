"""The official SDK ``Client`` in each of its modes against one aggregating gateway
with backends of both eras: the conformance fixture over HTTP (speaks the
handshake and the stateless era) and an SDK server over stdio (handshake era
only, so stateless clients reach it through the gateway's translation).

Each feature is its own test, run in ``legacy`` (handshake), ``2026-07-28``
(stateless) and ``auto`` mode.
"""

from __future__ import annotations

import asyncio
import sys

import mcp.types as types
import pytest
from mcp import Client

from tests.support import SERVERS, Child, eventually, gateway, wait_set, watched_transport

MODES = ["legacy", "2026-07-28", "auto"]


@pytest.fixture(scope="module")
def fixture_http() -> Child:
    child = Child([sys.executable, str(SERVERS / "conformance_server.py"), "--port", "0"], "listening on")
    yield child
    child.stop()


@pytest.fixture(scope="module")
def one_era() -> dict[str, Child]:
    """The same fixture restricted to one era each, as older and newer servers are."""
    children = {
        era: Child([sys.executable, str(SERVERS / "conformance_server.py"), "--era", era], "listening on")
        for era in ("handshake", "stateless")
    }
    yield children
    for child in children.values():
        child.stop()


@pytest.fixture(scope="module")
def gw2(fixture_http: Child, one_era: dict[str, Child], tmp_path_factory: pytest.TempPathFactory) -> Child:
    path = tmp_path_factory.mktemp("modes") / "gateway.toml"
    path.write_text(
        f"""
[gateway]
request_timeout = 20

[backends.fx]
url = "{fixture_http.url}"

[backends.hs]
url = "{one_era["handshake"].url}"

[backends.pc]
url = "{one_era["handshake"].url}"
session = "per-client"

[backends.st]
url = "{one_era["stateless"].url}"

[backends.local]
command = {sys.executable!r}
args = [{str(SERVERS / "sdk_stdio_server.py")!r}]
"""
    )
    child = gateway(path)
    yield child
    assert child.stop() == 0


async def _elicit(context: object, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"response": "yes", "name": "Ada"})


async def _sample(context: object, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="Paris"), model="test-model"
    )


def client(gw: Child, mode: str, **kwargs: object) -> Client:
    return Client(gw.url, mode=mode, **kwargs)  # type: ignore[arg-type]


async def tool_names(c: Client) -> set[str]:
    """Every tool name, following the gateway's pagination."""
    names: set[str] = set()
    cursor = None
    while True:
        page = await c.list_tools(cursor=cursor, cache_mode="refresh")
        names |= {t.name for t in page.tools}
        cursor = page.next_cursor
        if not cursor:
            return names


def text(result: types.CallToolResult | types.GetPromptResult) -> str:
    if isinstance(result, types.CallToolResult):
        return result.content[0].text  # type: ignore[union-attr]
    return result.messages[0].content.text  # type: ignore[union-attr]


@pytest.mark.parametrize("mode", MODES)
async def test_tools_of_both_backend_eras(gw2: Child, mode: str) -> None:
    async with client(gw2, mode) as c:
        names = await tool_names(c)
        assert {"fx__test_simple_text", "local__echo"} <= names
        assert text(await c.call_tool("fx__test_simple_text", {})) == "This is a simple text response for testing."
        assert text(await c.call_tool("local__echo", {"text": "hi"})) == "hi"
        error = await c.call_tool("fx__test_error_handling", {})
        assert error.is_error


@pytest.mark.parametrize("mode", MODES)
async def test_resources_and_prompts(gw2: Child, mode: str) -> None:
    async with client(gw2, mode) as c:
        uris = {str(r.uri) for r in (await c.list_resources()).resources}
        assert "fx+test://static-text" in uris and "local+notes://readme" in uris
        read = await c.read_resource("fx+test://static-text")
        assert read.contents[0].text == "This is the content of the static text resource."  # type: ignore[union-attr]
        templated = await c.read_resource("fx+test://template/42/data")
        assert '"id": "42"' in templated.contents[0].text  # type: ignore[union-attr]
        assert "42" in (await c.read_resource("local+notes://note/42")).contents[0].text  # type: ignore[union-attr]
        prompt = await c.get_prompt("fx__test_prompt_with_arguments", {"arg1": "a", "arg2": "b"})
        assert text(prompt) == "Prompt with arguments: arg1='a', arg2='b'"


@pytest.mark.parametrize("mode", MODES)
async def test_progress(gw2: Child, mode: str) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with client(gw2, mode) as c:
        await c.call_tool("fx__test_tool_with_progress", {}, progress_callback=on_progress)
        assert seen == [0, 50, 100]
        seen.clear()
        await c.call_tool("local__slow", {"seconds": 0.1}, progress_callback=on_progress)
        assert seen == [0, 1]


@pytest.mark.parametrize("mode", MODES)
async def test_logging(gw2: Child, mode: str) -> None:
    lines: list[str] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        lines.append(str(params.data))

    async with client(gw2, mode, logging_callback=on_log, log_level="info") as c:
        result = await c.call_tool("fx__test_tool_with_logging", {})
        assert text(result) == "Tool with logging executed successfully"
        assert lines == ["Tool execution started", "Tool processing data", "Tool execution completed"]


@pytest.mark.parametrize("mode", MODES)
async def test_elicitation(gw2: Child, mode: str) -> None:
    async with client(gw2, mode, elicitation_callback=_elicit) as c:
        if c.session.protocol_version == "2026-07-28":
            # Stateless era: the backend asks with an input_required result; the client answers and retries.
            assert text(await c.call_tool("fx__test_input_required_result_elicitation", {})) == "Hello, Ada!"
        else:
            # Handshake era: the backend's elicitation/create is relayed to this client and back.
            result = await c.call_tool("fx__test_elicitation", {"message": "ok?"})
            assert text(result) == 'User response: action=accept, content={"response":"yes"}'


@pytest.mark.parametrize("mode", MODES)
async def test_sampling(gw2: Child, mode: str) -> None:
    async with client(gw2, mode, sampling_callback=_sample) as c:
        if c.session.protocol_version == "2026-07-28":
            assert text(await c.call_tool("fx__test_input_required_result_sampling", {})) == "Model said: Paris"
        else:
            assert text(await c.call_tool("fx__test_sampling", {"prompt": "capital?"})) == "LLM response: Paris"


@pytest.mark.parametrize("mode", MODES)
async def test_elicitation_and_sampling_bridged_between_eras(gw2: Child, mode: str) -> None:
    """A handshake client reaching a stateless-only backend gets the backend's input_required
    as requests on its stream; a stateless client reaching a handshake-only backend gets the
    backend's requests as input_required. Either way the tool completes with the answers."""
    async with client(gw2, mode, elicitation_callback=_elicit, sampling_callback=_sample) as c:
        if c.session.protocol_version == "2026-07-28":
            other = "hs"  # handshake-only: its elicitation/create becomes input_required
            assert text(await c.call_tool(f"{other}__test_elicitation", {"message": "ok?"})) == (
                'User response: action=accept, content={"response":"yes"}'
            )
            assert text(await c.call_tool(f"{other}__test_sampling", {"prompt": "capital?"})) == "LLM response: Paris"
        else:
            other = "st"  # stateless-only: its input_required becomes requests to this client
            assert text(await c.call_tool(f"{other}__test_input_required_result_elicitation", {})) == "Hello, Ada!"
            assert text(await c.call_tool(f"{other}__test_input_required_result_sampling", {})) == "Model said: Paris"
        result = await c.call_tool(f"{other}__test_simple_text", {})
        assert text(result) == "This is a simple text response for testing."


async def test_a_client_without_the_capability_is_not_asked(gw2: Child) -> None:
    """No elicitation callback, so none declared: the gateway refuses the backend's request for this client."""
    async with client(gw2, "legacy") as c:
        result = await c.call_tool("fx__test_elicitation", {"message": "ok?"})
        assert text(result).startswith("Elicitation not supported or error")


@pytest.mark.parametrize("mode", MODES)
async def test_cancellation_reaches_the_backend(gw2: Child, mode: str) -> None:
    seconds = 30 + MODES.index(mode)  # tells this mode's cancel apart in the log
    async with client(gw2, mode) as c:
        with pytest.raises(Exception):
            await c.call_tool("local__slow", {"seconds": seconds}, read_timeout_seconds=0.5)
    marker = f"slow({float(seconds)}) cancelled"
    await eventually(lambda: marker in gw2.stderr_text(), timeout=10, message=f"no {marker!r} in the gateway log")
    assert marker in gw2.stderr_text()


async def test_a_stateless_backends_list_changes_reach_clients(gw2: Child) -> None:
    """The gateway listens (subscriptions/listen) to a stateless-only backend and passes
    its list_changed on to handshake clients' GET streams."""
    changed = asyncio.Event()

    async def on_message(message: object) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            changed.set()

    async with watched_transport(gw2.url) as (transport, stream_open):
        async with Client(transport, mode="legacy", message_handler=on_message) as c:
            await wait_set(stream_open, 10, "the client's GET stream did not open")
            added = text(await c.call_tool("st__add_dynamic_tool", {}))
            try:
                await asyncio.wait_for(changed.wait(), 10)
            except asyncio.TimeoutError:
                raise AssertionError(f"no list_changed; gateway log: {gw2.stderr_text()[-3000:]}") from None
            assert f"st__{added}" in await tool_names(c)


async def test_a_per_client_session_declares_the_clients_own_capabilities(gw2: Child) -> None:
    """Shared sessions declare what the gateway can relay; a per-client upstream session
    declares exactly what its client declared (the fixture tool checks for sampling)."""
    async with client(gw2, "legacy") as plain:
        with pytest.raises(Exception, match="sampling"):
            await plain.call_tool("pc__test_missing_capability", {})
    async with client(gw2, "legacy", sampling_callback=_sample) as sampler:
        result = await sampler.call_tool("pc__test_missing_capability", {})
        assert text(result) == "Client declared sampling capability; proceeding."
