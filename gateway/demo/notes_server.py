"""Demo backend over stdio: a tiny notebook (official MCP SDK).

Started by ``mcp-gateway serve`` when no config is given. Needs the SDK:
``pip install "mcp-gateway[demo]"``.
"""

from __future__ import annotations

from mcp.server.mcpserver import MCPServer

server = MCPServer("demo-notes", instructions="A small in-memory notebook.")
_NOTES: dict[str, str] = {"welcome": "Hello from the notes backend behind mcp-gateway."}


@server.tool()
def add_note(name: str, text: str) -> str:
    """Store a note under a name."""
    _NOTES[name] = text
    return f"saved {name!r}"


@server.tool()
def list_notes() -> list[str]:
    """Names of all stored notes."""
    return sorted(_NOTES)


@server.resource("notes://welcome")
def welcome() -> str:
    """The welcome note."""
    return _NOTES["welcome"]


@server.resource("notes://note/{name}")
def note(name: str) -> str:
    """Any note by name."""
    return _NOTES.get(name, "")


@server.prompt()
def summarize(name: str) -> str:
    """Ask for a summary of one note."""
    return f"Summarize this note: {_NOTES.get(name, '')}"


if __name__ == "__main__":
    server.run("stdio")
