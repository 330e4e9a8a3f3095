"""Locust load test that speaks real MCP, in both eras, to an mcp-gateway.

    locust -f benchmarks/locust/locustfile.py --headless -u 16 -r 16 -t 30s \
        --host http://127.0.0.1:8080

Two kinds of simulated user, spawned in equal numbers (pick one by naming its
class on the command line, e.g. ``McpStatelessUser``):

- ``McpUser`` (handshake era) runs ``initialize``, keeps its ``Mcp-Session-Id``,
  sends ``notifications/initialized`` and then calls ``$MCP_TOOL`` (default
  ``floor__echo``) in a loop;
- ``McpStatelessUser`` (2026-07-28) calls ``server/discover`` once, then the
  tool with ``_meta`` and the routing headers on every request, no session.

A JSON-RPC error counts as a failure, so locust exits non-zero when anything failed.
"""

from __future__ import annotations

import os

from locust import FastHttpUser, task

PATH = os.environ.get("MCP_PATH", "/mcp")
TOOL = os.environ.get("MCP_TOOL", "floor__echo")
VERSION = "2025-11-25"
BASE = {"content-type": "application/json", "accept": "application/json, text/event-stream"}


class McpUser(FastHttpUser):
    """One MCP client session."""

    def on_start(self) -> None:
        params = {"protocolVersion": VERSION, "capabilities": {}, "clientInfo": {"name": "locust", "version": "1"}}
        with self.client.post(PATH, json={"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": params},
                              headers=BASE, name="initialize", catch_response=True) as res:
            self.session = res.headers.get("mcp-session-id", "")
            if res.status_code != 200 or not self.session:
                res.failure(f"initialize failed: HTTP {res.status_code}")
        self.headers = {**BASE, "mcp-session-id": self.session, "mcp-protocol-version": VERSION}
        self.client.post(PATH, json={"jsonrpc": "2.0", "method": "notifications/initialized"},
                         headers=self.headers, name="notifications/initialized")
        self.next_id = 1

    @task
    def call_tool(self) -> None:
        self.next_id += 1
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": "tools/call",
                "params": {"name": TOOL, "arguments": {"text": "hello"}}}
        with self.client.post(PATH, json=body, headers=self.headers, name="tools/call", catch_response=True) as res:
            if res.status_code != 200:
                res.failure(f"HTTP {res.status_code}")
            elif "error" in (res.json() or {}):
                res.failure(f"JSON-RPC error: {res.json()['error']}")


STATELESS = "2026-07-28"
META = {
    "io.modelcontextprotocol/protocolVersion": STATELESS,
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/clientInfo": {"name": "locust", "version": "1"},
}


class McpStatelessUser(FastHttpUser):
    """One stateless-era client: no session, everything in each request."""

    def _post(self, method: str, params: dict, name: str | None = None) -> None:
        self.next_id += 1
        headers = {**BASE, "mcp-protocol-version": STATELESS, "mcp-method": method}
        if name:
            headers["mcp-name"] = name
        body = {"jsonrpc": "2.0", "id": self.next_id, "method": method, "params": {**params, "_meta": META}}
        with self.client.post(PATH, json=body, headers=headers, name=method, catch_response=True) as res:
            if res.status_code != 200:
                res.failure(f"HTTP {res.status_code}")
            elif "error" in (res.json() or {}):
                res.failure(f"JSON-RPC error: {res.json()['error']}")

    def on_start(self) -> None:
        self.next_id = 0
        self._post("server/discover", {})

    @task
    def call_tool(self) -> None:
        self._post("tools/call", {"name": TOOL, "arguments": {"text": "hello"}}, TOOL)
