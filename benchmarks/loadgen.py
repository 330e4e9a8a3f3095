"""A small uvloop HTTP/1.1 load generator that speaks just enough MCP.

Run in its own process so that its CPU is not the measured server's::

    python -m benchmarks.loadgen --port 8080 --concurrency 16 --duration 3 \
        --body '{"jsonrpc":"2.0","id":1,"method":"tools/call",...}' [--initialize] [--churn]

``--concurrency`` keep-alive connections each send one request at a time,
back to back, for ``--duration`` seconds or until ``--requests`` were sent
(``--churn``: a new connection per request). With ``--initialize`` it first runs the MCP handshake and sends the
session header on every request. It prints one JSON line: requests, errors,
requests/s, latency percentiles in microseconds, and its own CPU seconds (so a
reader can check the generator was not the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import time

import httptools
import uvloop

INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 0,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "loadgen", "version": "1"}},
    }
).encode()


class _Conn(asyncio.Protocol):
    """One client connection: one request in flight at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[int] | None = None
        self.transport: asyncio.Transport | None = None
        self.headers: dict[bytes, bytes] = {}
        self.lost = False
        self.rpc_error = False  # the body carried a JSON-RPC error (HTTP 200 can still be a failure)
        self.body_seen = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError("closed"))

    def on_body(self, body: bytes) -> None:
        # A JSON-RPC error object comes right after "jsonrpc" and "id" (an SSE body: after "data: "),
        # so only the start of the body is searched: scanning whole large results would make the
        # generator, not the server, the bottleneck (and could match text inside a result).
        if not self.body_seen:
            self.body_seen = True
            if b'"error":{' in body[:96]:
                self.rpc_error = True

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(self.parser.get_status_code())

    async def exchange(self, data: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.headers = {}
        self.rpc_error = False
        self.body_seen = False
        assert self.transport is not None
        self.transport.write(data)
        return await self.waiter


class _HeaderConn(_Conn):
    """A connection that also keeps the response's headers (the handshake needs its session id).
    The load's own connections do not: httptools then makes no Python call per header line, so
    the generator spends less of the machine than the server it measures."""

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value


# Extra header lines sent with every request (``--header``), e.g. an Authorization.
_EXTRA = ""


def _request(path: str, host: str, body: bytes, session: str | None, stateless: bool = False) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\n"
        "accept: application/json, text/event-stream\r\n" + _EXTRA
    )
    if session:
        head += f"mcp-session-id: {session}\r\nmcp-protocol-version: 2025-11-25\r\n"
    if stateless:
        # The 2026-07-28 era: no session; routing headers repeat the body.
        message = json.loads(body)
        head += f"mcp-protocol-version: 2026-07-28\r\nmcp-method: {message['method']}\r\n"
        name = (message.get("params") or {}).get("name")
        if name:
            head += f"mcp-name: {name}\r\n"
    return (head + f"content-length: {len(body)}\r\n\r\n").encode() + body


async def _connect(host: str, port: int, protocol: type[_Conn] = _Conn) -> _Conn:
    _, conn = await asyncio.get_running_loop().create_connection(protocol, host, port)
    return conn


async def _initialize(host: str, port: int, path: str) -> str | None:
    conn = await _connect(host, port, _HeaderConn)
    status = await conn.exchange(_request(path, f"{host}:{port}", INIT, None))
    session = conn.headers.get(b"mcp-session-id")
    note = b'{"jsonrpc":"2.0","method":"notifications/initialized"}'
    if session:
        await conn.exchange(_request(path, f"{host}:{port}", note, session.decode()))
    assert conn.transport is not None
    conn.transport.close()
    if status != 200:
        raise SystemExit(f"initialize failed with HTTP {status}")
    return session.decode() if session else None


class _LoadConn(_Conn):
    """A load connection that sends its next request from the parser's callback when an answer
    completes: no future and no task switch per request, so the generator spends as little of the
    machine per request as it can (a cache hit costs the server about what a task switch costs)."""

    def drive(self, data: bytes, until_ns: int, lat: list[int], errors: list[int], budget: list[int]) -> asyncio.Future[None]:
        """Send ``data`` back to back until ``until_ns`` or the budget runs out; the future ends then
        (or when the connection is lost: its exception says so)."""
        self.data, self.until_ns, self.lat, self.errors, self.budget = data, until_ns, lat, errors, budget
        self.finished: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._send()
        return self.finished

    def _send(self) -> None:
        if time.perf_counter_ns() >= self.until_ns or self.budget[0] == 0:
            self.finished.set_result(None)
            return
        self.budget[0] -= 1
        self.rpc_error = False
        self.body_seen = False
        self.sent = time.perf_counter_ns()
        assert self.transport is not None
        self.transport.write(self.data)

    def on_message_complete(self) -> None:
        self.lat.append(time.perf_counter_ns() - self.sent)
        if self.parser.get_status_code() != 200 or self.rpc_error:
            self.errors[0] += 1
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        finished = getattr(self, "finished", None)
        if finished is not None and not finished.done():
            finished.set_exception(ConnectionError("closed"))


async def _worker(
    host: str, port: int, data: bytes, until: float, churn: bool, lat: list[int], errors: list[int], budget: list[int]
) -> None:
    if not churn:
        await _keep_alive_worker(host, port, data, until, lat, errors, budget)
        return
    clock = time.perf_counter_ns
    while time.perf_counter() < until and budget[0] != 0:
        budget[0] -= 1
        start = clock()
        try:
            conn = await _connect(host, port)
            status = await conn.exchange(data)
        except (ConnectionError, OSError):
            errors[0] += 1
            continue
        lat.append(clock() - start)
        if status != 200 or conn.rpc_error:
            errors[0] += 1
        if conn.transport is not None:
            conn.transport.close()


async def _keep_alive_worker(
    host: str, port: int, data: bytes, until: float, lat: list[int], errors: list[int], budget: list[int]
) -> None:
    """One keep-alive connection driven from its callbacks; a lost one counts an error (the request
    in flight) and is replaced while time remains."""
    until_ns = time.perf_counter_ns() + int((until - time.perf_counter()) * 1e9)
    while time.perf_counter() < until and budget[0] != 0:
        conn = await _connect(host, port, _LoadConn)  # a server that refuses connections ends the run
        try:
            await conn.drive(data, until_ns, lat, errors, budget)  # type: ignore[attr-defined]
        except ConnectionError:
            errors[0] += 1
            continue
        if conn.transport is not None:
            conn.transport.close()
        return


def _percentile(sorted_ns: list[int], q: float) -> float:
    if not sorted_ns:
        return 0.0
    index = min(len(sorted_ns) - 1, int(q * len(sorted_ns)))
    return sorted_ns[index] / 1000.0


async def hold_idle(args: argparse.Namespace) -> None:
    """Open ``--idle`` keep-alive connections, one request each, then hold them until stdin closes."""
    session = await _initialize(args.host, args.port, args.path) if args.initialize else None
    data = _request(args.path, f"{args.host}:{args.port}", args.body.encode(), session, args.stateless)
    conns: list[_Conn] = []
    for start in range(0, args.idle, 200):  # in batches: do not flood the accept queue
        batch = await asyncio.gather(*(_connect(args.host, args.port) for _ in range(min(200, args.idle - start))))
        await asyncio.gather(*(c.exchange(data) for c in batch))
        conns.extend(batch)
    print(json.dumps({"idle_connections": len(conns), "lost": sum(c.lost for c in conns)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for conn in conns:
        if conn.transport is not None:
            conn.transport.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    """Run one load and return its summary."""
    session = await _initialize(args.host, args.port, args.path) if args.initialize else None
    data = _request(args.path, f"{args.host}:{args.port}", args.body.encode(), session, args.stateless)
    latencies: list[int] = []
    errors = [0]
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    until = started + (args.duration if not args.requests else 1e9)
    budget = [args.requests or -1]  # requests left to send (-1: no limit, the duration decides)
    await asyncio.gather(
        *(_worker(args.host, args.port, data, until, args.churn, latencies, errors, budget) for _ in range(args.concurrency))
    )
    elapsed = time.perf_counter() - started
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    latencies.sort()
    return {
        "requests": len(latencies),
        "errors": errors[0],
        "rps": len(latencies) / elapsed,
        "p50_us": _percentile(latencies, 0.50),
        "p90_us": _percentile(latencies, 0.90),
        "p99_us": _percentile(latencies, 0.99),
        "p999_us": _percentile(latencies, 0.999),
        "loadgen_cpu_s": (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime),
        "elapsed_s": elapsed,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/mcp")
    parser.add_argument("--body", required=True)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--requests", type=int, default=0, help="send exactly this many requests (overrides --duration)")
    parser.add_argument("--initialize", action="store_true")
    parser.add_argument("--header", action="append", default=[], help="NAME: VALUE, sent with every request")
    parser.add_argument("--churn", action="store_true")
    parser.add_argument("--stateless", action="store_true", help="send 2026-07-28 requests (body needs _meta)")
    parser.add_argument("--idle", type=int, default=0, help="hold this many idle keep-alive connections instead")
    args = parser.parse_args(argv)
    global _EXTRA
    _EXTRA = "".join(f"{h.strip()}\r\n" for h in args.header)
    if args.idle:
        uvloop.run(hold_idle(args))
        return
    print(json.dumps(uvloop.run(run(args))), flush=True)


if __name__ == "__main__":
    sys.exit(main())
