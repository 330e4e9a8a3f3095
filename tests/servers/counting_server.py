"""Test backend for the result cache: an official-SDK ``MCPServer`` over Streamable HTTP
that counts every call reaching it.

    python tests/servers/counting_server.py --port 0

Prints ``listening on http://127.0.0.1:PORT/mcp`` once it accepts connections. Each
tool, prompt and resource counts its runs per argument, and an answer says which run
it was, so an answer served again from a cache is told apart from a new run:

- ``lookup(q, n=0)``: ``"q#RUN"`` (``n`` only makes a second argument to reorder);
- ``ro_lookup(q)``: the same, annotated ``readOnlyHint: true``;
- ``held(q)``: the same, but answers only after ``release(q)``: calls pile up in flight;
- ``release(q)``: lets the ``held(q)`` calls answer;
- ``broken(q)``: counts, then raises (the SDK answers ``isError: true``);
- ``slow(q, ctx)``: reports one progress notification, then answers like ``lookup``;
- ``add_tool()``: adds a tool and announces ``tools/list_changed``;
- ``touch(uri, ctx)``: sends ``notifications/resources/updated`` for ``uri``;
- ``calls()``: the counts so far, ``{"tool:arg": runs}`` (never worth caching).

Resource template ``data://{name}`` answers ``"name#RUN"`` (``data://missing`` raises: a
JSON-RPC error); prompt ``greet(name)`` says hello with its run.
"""

from __future__ import annotations

import argparse
import asyncio
import collections

from mcp.server.mcpserver import Context, MCPServer
from mcp.types import ToolAnnotations
from serving import serve, with_add_tool

server = MCPServer("counting-test")
runs: collections.Counter[str] = collections.Counter()
gates: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)


def _run(what: str) -> int:
    runs[what] += 1
    return runs[what]


@server.tool()
def lookup(q: str, n: int = 0) -> str:
    """Answer which run of lookup(q) this is."""
    return f"{q}#{_run(f'lookup:{q}')}"


@server.tool(annotations=ToolAnnotations(readOnlyHint=True))
def ro_lookup(q: str) -> str:
    """A read-only lookup."""
    return f"{q}#{_run(f'ro_lookup:{q}')}"


@server.tool()
async def held(q: str) -> str:
    """Count the call now, answer once release(q) was called."""
    run = _run(f"held:{q}")
    await gates[q].wait()
    return f"{q}#{run}"


@server.tool()
def release(q: str) -> str:
    """Let the held(q) calls answer."""
    gates[q].set()
    return "released"


@server.tool()
def broken(q: str) -> str:
    """Count, then fail."""
    raise ValueError(f"broken {q} run {_run(f'broken:{q}')}")


@server.tool()
async def slow(q: str, ctx: Context) -> str:
    """One progress notification, then the lookup answer."""
    await ctx.report_progress(1, 1, "step")
    return f"{q}#{_run(f'slow:{q}')}"


with_add_tool(server)


@server.tool()
async def touch(uri: str, ctx: Context) -> str:
    """Announce that resource ``uri`` changed."""
    await ctx.request_context.session.send_resource_updated(uri)
    return "touched"


@server.tool()
def calls() -> dict[str, int]:
    """How many times each tool, prompt and resource ran, per argument."""
    return dict(runs)


@server.resource("data://{name}")
def data(name: str) -> str:
    """A counted resource."""
    run = _run(f"data:{name}")
    if name == "missing":
        raise ValueError("no such data")
    return f"{name}#{run}"


@server.prompt()
def greet(name: str) -> str:
    """A counted prompt."""
    return f"Say hello to {name} (run {_run(f'greet:{name}')})."



if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(serve(server, parser.parse_args().port))
