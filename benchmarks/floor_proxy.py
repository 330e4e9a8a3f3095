"""The floor proxy: a hop that forwards and does nothing else, the benchmarks' "fastest Python proxy here".

A gateway's requests/s over this proxy's, measured in the same run against the
same backend, says how close the gateway comes to what a do-nothing Python hop
manages on this machine. Two modes:

- default, **relay**: HTTP framing only. Each request's body goes upstream
  unchanged over a pool of keep-alive connections, and the upstream's status and
  body come back unchanged. Nothing inside a body is read (no JSON, no routing,
  no policy); the headers sent are the proxy's own (``content-type:
  application/json``), which suits a JSON-answering backend like
  ``benchmarks.floor_backend``. Each request costs one task and one future, the
  least an asyncio proxy that waits for its upstream spends. This is the
  reference every committed number in ``benchmarks/results/`` was measured
  against. It expects one request in flight per client connection (as
  ``benchmarks.loadgen`` sends): pipelined requests may be answered out of order.
- ``--splice``: plain TCP. One upstream connection per client connection, bytes
  copied both ways as they come, nothing parsed at all. Cheaper per request than
  the relay, but a client's connect becomes an upstream connect too (``churn``)
  and every idle client holds two sockets, so its numbers are not comparable
  with the relay's; the harness does not use it.

::

    python -m benchmarks.floor_proxy LISTEN_PORT UPSTREAM_PORT [--splice]   # LISTEN_PORT 0: any free port

Once it listens it prints ``floor_proxy listening on http://127.0.0.1:PORT/mcp``.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
from http import HTTPStatus

import httptools
import uvloop

__all__ = ["main", "serve"]

_UPSTREAM_HEAD = b"POST /mcp HTTP/1.1\r\nhost: upstream\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_RESPONSE_HEAD = b"%s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n"
_BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n"
_BAD_REQUEST = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


def _status_line(code: int) -> bytes:
    try:
        return b"HTTP/1.1 %d %s" % (code, HTTPStatus(code).phrase.encode())
    except ValueError:
        return b"HTTP/1.1 %d Unknown" % code


# Built once: a status line per answer would otherwise be formatted on every request.
_STATUS = {code: _status_line(code) for code in (200, 202, 400, 404, 405, 500)}


class _Upstream(asyncio.Protocol):
    """One keep-alive connection to the backend; one exchange at a time."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.chunks: list[bytes] = []
        self.pending: asyncio.Future[tuple[int, bytes]] | None = None
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.pending is not None and not self.pending.done():
            self.pending.set_exception(ConnectionError("the backend closed the connection"))

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            assert self.transport is not None
            self.transport.close()
            if self.pending is not None and not self.pending.done():
                self.pending.set_exception(ConnectionError(f"the backend sent bad HTTP: {exc}"))

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        pending, self.pending = self.pending, None
        if pending is not None and not pending.done():
            pending.set_result((self.parser.get_status_code(), body))

    def send(self, body: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Write one request; the future gets the response's ``(status, body)``."""
        assert self.transport is not None
        self.pending = asyncio.get_running_loop().create_future()
        self.transport.write(_UPSTREAM_HEAD % len(body) + body)
        return self.pending


class _Pool:
    """Idle upstream connections; a new one is opened whenever none is idle (no limit: the load is bounded)."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.idle: collections.deque[_Upstream] = collections.deque()

    async def exchange(self, body: bytes) -> tuple[int, bytes]:
        """Send ``body`` upstream; the response's status and body."""
        conn = self.idle.pop() if self.idle else None
        if conn is None or conn.closed:
            _, conn = await asyncio.get_running_loop().create_connection(_Upstream, self.host, self.port)
        status, out = await conn.send(body)
        self.idle.append(conn)
        return status, out


class _Relay(asyncio.Protocol):
    """One client connection of the relay mode."""

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.parser = httptools.HttpRequestParser(self)
        self.chunks: list[bytes] = []
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            assert self.transport is not None
            self.transport.write(_BAD_REQUEST)
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        self.chunks.append(body)

    def on_message_complete(self) -> None:
        body = self.chunks[0] if len(self.chunks) == 1 else b"".join(self.chunks)
        self.chunks = []
        asyncio.get_running_loop().create_task(self._forward(body, self.parser.should_keep_alive()))

    async def _forward(self, body: bytes, keep_alive: bool) -> None:
        transport = self.transport
        assert transport is not None
        try:
            status, out = await self.pool.exchange(body)
        except OSError:  # ConnectionError included: the backend went away or refused
            data = _BAD_GATEWAY
        else:
            line = _STATUS.get(status) or _status_line(status)
            data = _RESPONSE_HEAD % (line, len(out)) + out
        if transport.is_closing():
            return
        if keep_alive:
            transport.write(data)
        else:  # the client asked to close (or spoke HTTP/1.0): say so, then close
            transport.write(data.replace(b"\r\n", b"\r\nconnection: close\r\n", 1))
            transport.close()


class _Splice(asyncio.Protocol):
    """One side of a spliced pair: what arrives here is written to the peer, unread.

    No flow control: a benchmark's messages are small and answered one at a time,
    so neither side's write buffer grows.
    """

    def __init__(self, peer: _Splice | None = None) -> None:
        self.peer = peer
        self.transport: asyncio.Transport | None = None
        self.early: list[bytes] = []  # client bytes that came before the upstream connection was up

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        peer = self.peer.transport if self.peer is not None else None
        if peer is None:
            self.early.append(data)
        else:
            peer.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


class _SpliceClient(_Splice):
    """The client's side: connecting it opens its own upstream connection."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.upstream = (host, port)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(lambda: _Splice(self), *self.upstream)
        except OSError:
            self.transport.close()
            return
        assert upstream.transport is not None
        if self.transport.is_closing():  # the client left while the upstream connect was under way
            upstream.transport.close()
            return
        self.peer = upstream
        for data in self.early:
            upstream.transport.write(data)
        self.early = []


async def serve(listen: int, upstream: int, *, splice: bool = False, host: str = "127.0.0.1") -> None:
    """Listen on ``host:listen`` (0: any free port), forward to ``host:upstream``, print the ready line, serve forever."""
    loop = asyncio.get_running_loop()
    if splice:
        server = await loop.create_server(lambda: _SpliceClient(host, upstream), host, listen, backlog=4096)
    else:
        pool = _Pool(host, upstream)
        server = await loop.create_server(lambda: _Relay(pool), host, listen, backlog=4096)
    bound = server.sockets[0].getsockname()[1]
    print(f"floor_proxy listening on http://{host}:{bound}/mcp", flush=True)
    await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    """Command line: ``python -m benchmarks.floor_proxy LISTEN_PORT UPSTREAM_PORT [--splice]``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("listen", type=int, help="port to listen on (0: any free port)")
    parser.add_argument("upstream", type=int, help="the backend's port on 127.0.0.1")
    parser.add_argument("--splice", action="store_true", help="plain TCP: one upstream connection per client, bytes unread")
    args = parser.parse_args(argv)
    uvloop.run(serve(args.listen, args.upstream, splice=args.splice))


if __name__ == "__main__":
    main()
