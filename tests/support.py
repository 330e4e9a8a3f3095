"""Helpers shared by the end-to-end tests: child processes that announce an
address on stdout, and a raw HTTP/1.1 client over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import pathlib
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVERS = ROOT / "tests" / "servers"
EVERYTHING = ROOT / "node_modules" / ".bin" / "mcp-server-everything"


def compiled_loaded(module: str, *exported: str) -> Any:
    """``gateway._fast.<module>`` as the built extension, checked: the selector chose the compiled
    modules and exports each of ``exported`` from this one. Skips the test under
    ``GATEWAY_NO_EXTENSIONS=1``, which forces the pure-Python twins."""
    import importlib

    import pytest

    if os.environ.get("GATEWAY_NO_EXTENSIONS") == "1":
        pytest.skip("GATEWAY_NO_EXTENSIONS=1 forces the pure-Python twin")
    try:
        compiled = importlib.import_module(f"gateway._fast.{module}")
    except ImportError as exc:
        raise AssertionError(f"gateway._fast.{module} did not load: build it (pip install -e . / make build)") from exc
    selector = importlib.import_module("gateway._fast")
    assert selector.USING_EXTENSIONS
    assert compiled.__file__.endswith((".so", ".pyd")), compiled.__file__
    for name in exported:
        assert getattr(selector, name).__module__ == f"gateway._fast.{module}", name
    return compiled


def selected_without_extensions(*exported: str) -> list[str]:
    """With ``GATEWAY_NO_EXTENSIONS=1``, in a new interpreter: ``USING_EXTENSIONS`` and the module
    each of ``exported`` comes from, as printed words (``["False", "gateway._fast._lru_py"]``)."""
    names = ", ".join(f"f.{name}.__module__" for name in exported)
    code = f"import gateway._fast as f; print(f.USING_EXTENSIONS, {names})"
    env = {**os.environ, "GATEWAY_NO_EXTENSIONS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return out.stdout.split()


class ManualClock:
    """A monotonic clock the test moves by hand (``clock.now += seconds``): time passes only when
    a test says so, so nothing waits and nothing races."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Child:
    """A subprocess whose stdout announces ``... http://host:port/path`` on one line."""

    def __init__(self, args: list[str], marker: str, *, timeout: float = 60.0, env: dict[str, str] | None = None):
        self.args = args
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file(),
            env={**os.environ, **(env or {})},
            cwd=ROOT,
        )
        self.lines: list[str] = []
        self.url = self._wait_for(marker, timeout)

    def _wait_for(self, marker: str, timeout: float) -> str:
        # Read the raw fd: a buffered readline() could hold the marker line in its
        # buffer while select() reports the pipe empty.
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        pending = b""
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.2)
            if not ready:
                if self.proc.poll() is not None:
                    break
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            pending += chunk
            *lines, pending = pending.split(b"\n")
            for raw in lines:
                line = raw.decode()
                self.lines.append(line)
                if marker in line:
                    return line.split()[-1]
        err = self.stderr_text()
        self.stop()
        raise RuntimeError(f"{self.args} did not print {marker!r}; stdout={self.lines} stderr={err[-3000:]}")

    def _stderr_file(self):  # type: ignore[no-untyped-def]
        """Children log to a temporary file (a pipe nobody reads would fill and block them)."""
        self.stderr_log = tempfile.TemporaryFile()
        return self.stderr_log

    def stderr_text(self) -> str:
        self.stderr_log.seek(0)
        return self.stderr_log.read().decode("utf-8", "replace")

    @property
    def port(self) -> int:
        return int(self.url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        """Signal the child and wait; returns its exit code (SIGKILL after the timeout)."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stderr_log.close()
        return self.proc.returncode


def sdk_http_server() -> Child:
    return Child([sys.executable, str(SERVERS / "sdk_http_server.py"), "--port", "0"], "listening on")


def gateway(config_path: pathlib.Path, *extra: str) -> Child:
    return Child(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--port", "0", *extra],
        "mcp-gateway listening on",
    )


# -- raw HTTP -------------------------------------------------------------------------------------


class RawResponse:
    def __init__(self, status: int, headers: dict[str, str], body: bytes, closed: bool):
        self.status = status
        self.headers = headers
        self.body = body
        self.closed = closed

    def json(self) -> Any:
        return json.loads(self.body)


def split_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """A whole HTTP/1.1 response read to its end: status, headers (lower-case names) and the body,
    de-chunked when it came chunked."""
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    if headers.get("transfer-encoding") == "chunked":
        chunks = b""
        while body:
            size, _, body = body.partition(b"\r\n")
            length = int(size, 16)
            chunks, body = chunks + body[:length], body[length + 2 :]
        body = chunks
    return status, headers, body


def raw_exchange(port: int, data: bytes, *, timeout: float = 10.0) -> RawResponse:
    """Send raw bytes, read one response (Content-Length framed), and note whether the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_response(sock, timeout=timeout)


def read_response(sock: socket.socket, *, timeout: float = 10.0) -> RawResponse:
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response head: {buf!r}")
        buf += chunk
    head, _, rest = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    body, extra = rest[:length], rest[length:]
    closed = False
    if headers.get("connection", "").lower() == "close":
        try:
            closed = extra == b"" and sock.recv(1) == b""
        except (ConnectionResetError, TimeoutError):
            closed = True
    return RawResponse(status, headers, body, closed)


def post(path: str, body: bytes, headers: dict[str, str] | None = None, *, port: int) -> bytes:
    """Build a POST request's bytes with sane MCP defaults, overridable per header."""
    base = {
        "host": f"127.0.0.1:{port}",
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "content-length": str(len(body)),
    }
    for name, value in (headers or {}).items():
        if value is None:
            base.pop(name.lower(), None)
        else:
            base[name.lower()] = value
    head = "".join(f"{k}: {v}\r\n" for k, v in base.items())
    return f"POST {path} HTTP/1.1\r\n{head}\r\n".encode() + body


# -- a scripted HTTP backend ----------------------------------------------------------------------

Answer = tuple[int, dict, bytes]


class ScriptedHttp:
    """A tiny HTTP/1.1 server on 127.0.0.1, in the test's event loop, for faults real servers will not make.

    Each request is recorded in ``requests`` as ``{"line", "headers", "body"}`` (the body decoded as JSON)
    and answered with ``await answer(request)``: ``(status, extra headers, body)``, or None to drop the
    connection unanswered. ``async with`` gives its ``/mcp`` URL.
    """

    def __init__(self, answer: Callable[[dict], Awaitable[Answer | None]]) -> None:
        self.answer = answer
        self.requests: list[dict] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/mcp"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode().split("\r\n")
                headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                request = {"line": lines[0], "headers": headers, "body": json.loads(body) if body else None}
                self.requests.append(request)
                answer = await self.answer(request)
                if answer is None:
                    return
                status, extra, payload = answer
                out = f"HTTP/1.1 {status} X\r\ncontent-length: {len(payload)}\r\ncontent-type: application/json\r\n"
                out += "".join(f"{k}: {v}\r\n" for k, v in extra.items())
                writer.write(out.encode() + b"\r\n" + payload)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def handshake_answer(request: dict, sessions: list[str]) -> Answer | None:
    """What a handshake-era MCP server says to everything but its own methods: GET 405, DELETE 200,
    notifications 202, ``server/discover`` refused (no stateless era), ``initialize`` with a new session
    id (``s1``, ``s2``, ... appended to ``sessions``). None for any other request."""
    verb = request["line"].split()[0]
    if verb != "POST":
        return (405 if verb == "GET" else 200), {}, b""
    msg = request["body"]
    if "id" not in msg:
        return 202, {}, b""
    if msg["method"] == "server/discover":
        error = {"code": -32600, "message": "Bad Request: Missing session ID"}
        return 400, {}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "error": error}).encode()
    if msg["method"] == "initialize":
        sessions.append(f"s{len(sessions) + 1}")
        info = {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}}, "serverInfo": {"name": "fake", "version": "1"}}
        return 200, {"mcp-session-id": sessions[-1]}, json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": info}).encode()
    return None


# -- waiting on a condition -------------------------------------------------------------------------


async def eventually(
    predicate: Callable[[], Any], *, timeout: float = 10.0, message: str = "the condition did not hold"
) -> Any:
    """Re-check ``predicate()`` (plain or async) until it is truthy and return that value; at the
    deadline, fail with an AssertionError saying ``message`` (what did not happen).

    Between checks it yields to the loop, pausing 1 ms at first and at most 50 ms, so a condition
    another process brings about is seen at once without spinning a shared core."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    pause = 0.001
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if loop.time() >= deadline:
            raise AssertionError(f"after {timeout} s: {message}")
        await asyncio.sleep(pause)
        pause = min(pause * 2, 0.05)


def eventually_sync(
    predicate: Callable[[], Any], *, timeout: float = 10.0, message: str = "the condition did not hold"
) -> Any:
    """``eventually`` for tests without a loop (blocking sockets and processes)."""
    deadline = time.monotonic() + timeout
    pause = 0.001
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"after {timeout} s: {message}")
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


async def wait_set(event: asyncio.Event, timeout: float, message: str) -> None:
    """Wait for ``event``; at the deadline fail with an AssertionError saying ``message``."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        raise AssertionError(f"after {timeout} s: {message}") from None


async def refuses_connections(port: int, host: str = "127.0.0.1") -> bool:
    """Whether a connection to ``host:port`` is refused now (nothing listens there any more)."""
    try:
        _, writer = await asyncio.open_connection(host, port)
    except ConnectionRefusedError:
        return True
    writer.close()
    return False


def _tcp_queues() -> dict[tuple[tuple[str, int], tuple[str, int]], tuple[int, int]]:
    """``{(local, remote): (tx_queue, rx_queue)}`` for every IPv4 TCP socket, from /proc/net/tcp (Linux)."""

    def address(field: str) -> tuple[str, int]:
        host, port = field.split(":")
        return socket.inet_ntoa(bytes.fromhex(host)[::-1]), int(port, 16)

    table = {}
    with open("/proc/net/tcp") as f:
        for line in f.read().splitlines()[1:]:
            fields = line.split()
            tx, rx = fields[4].split(":")
            table[(address(fields[1]), address(fields[2]))] = (int(tx, 16), int(rx, 16))
    return table


def peer_has_read(sock: socket.socket) -> bool:
    """Whether the process at the other end of ``sock`` (IPv4, same host) has read everything sent on it:
    nothing of ours is unacknowledged (it all reached the peer's kernel) and nothing waits in the peer's
    receive queue (its process has read it), as the kernel's socket table says."""
    ours, theirs = sock.getsockname()[:2], sock.getpeername()[:2]
    table = _tcp_queues()
    if (ours, theirs) not in table or (theirs, ours) not in table:
        raise AssertionError(f"connection {ours} -> {theirs} is not in /proc/net/tcp")
    return table[(ours, theirs)][0] == 0 and table[(theirs, ours)][1] == 0


@contextlib.asynccontextmanager
async def watched_transport(url: str) -> AsyncIterator[tuple[Any, asyncio.Event]]:
    """The SDK's Streamable HTTP transport to ``url`` (pass it to ``mcp.Client`` instead of the URL) and
    an Event set when the server answers the client's GET (its notification stream) with 200: from then
    on the server has the stream and can push to it."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    opened = asyncio.Event()

    async def on_response(response: httpx2.Response) -> None:
        if response.request.method == "GET" and response.status_code == 200:
            opened.set()

    # The SDK's own client settings (30 s, 300 s to read a stream), plus the hook.
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with httpx2.AsyncClient(timeout=timeout, event_hooks={"response": [on_response]}) as http:
        yield streamable_http_client(url, http_client=http), opened


# -- TLS: a test CA, its certificates, and clients that trust it ----------------------------------


class Pki:
    """Test certificates (``trustme``), written as PEM files under ``directory``: ``ca`` (the
    CA the gateway and the tests trust, ``ca_file``), ``other_ca`` (one nobody trusts,
    ``other_ca_file``), and ``server``, a ``(cert, key)`` pair from ``ca`` for 127.0.0.1 and
    localhost. ``issue`` makes more."""

    def __init__(self, directory: pathlib.Path) -> None:
        import trustme

        self.directory = directory
        self.ca = trustme.CA(organization_name="mcp-gateway test CA")
        self.other_ca = trustme.CA(organization_name="someone else's CA")
        self.ca_file = self._write("ca.pem", self.ca.cert_pem.bytes())
        self.other_ca_file = self._write("other-ca.pem", self.other_ca.cert_pem.bytes())
        self.server = self.issue("server", "127.0.0.1", "localhost")

    def _write(self, name: str, data: bytes) -> str:
        path = self.directory / name
        path.write_bytes(data)
        return str(path)

    def issue(self, name: str, *identities: str, other_ca: bool = False, **subject: str) -> tuple[str, str]:
        """A certificate for ``identities`` (host names, IP addresses, e-mail addresses) from
        ``ca`` (``other_ca``: from the CA nobody trusts), written as ``NAME.pem`` (the chain)
        and ``NAME.key``; ``subject``: trustme's ``common_name``, ``organization_name``,
        ``organization_unit_name``. Returns ``(cert file, key file)``."""
        leaf = (self.other_ca if other_ca else self.ca).issue_cert(*identities, **subject)  # type: ignore[arg-type]
        cert = self._write(f"{name}.pem", b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
        return cert, self._write(f"{name}.key", leaf.private_key_pem.bytes())

    def server_context(self, cert: tuple[str, str] | None = None) -> Any:
        """An ``ssl.SSLContext`` for a test server presenting ``cert`` (default: ``server``)."""
        import ssl

        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*(cert or self.server))
        return context

    def client_context(self, cert: tuple[str, str] | None = None) -> Any:
        """An ``ssl.SSLContext`` trusting ``ca`` only, presenting ``cert`` (mutual TLS) when given."""
        import ssl

        context = ssl.create_default_context(cafile=self.ca_file)
        if cert is not None:
            context.load_cert_chain(*cert)
        return context


def sdk_https_server(cert: tuple[str, str]) -> Child:
    """The SDK Streamable HTTP test server over HTTPS with ``cert`` (``(cert file, key file)``)."""
    args = [sys.executable, str(SERVERS / "sdk_http_server.py"), "--port", "0", "--certfile", cert[0], "--keyfile", cert[1]]
    return Child(args, "listening on")


def https_exchange(port: int, data: bytes, context: Any, *, timeout: float = 10.0) -> RawResponse:
    """``raw_exchange`` over TLS, verifying the server as 127.0.0.1 with ``context``."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as plain:
        with context.wrap_socket(plain, server_hostname="127.0.0.1") as sock:
            sock.sendall(data)
            return read_response(sock, timeout=timeout)


@contextlib.asynccontextmanager
async def https_transport(url: str, context: Any) -> AsyncIterator[Any]:
    """The SDK's Streamable HTTP transport to ``url`` (pass it to ``mcp.Client`` instead of the URL),
    its HTTP client verifying the server (and presenting a client certificate) with ``context``."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(timeout=httpx2.Timeout(30.0, read=300.0), verify=context) as http:
        yield streamable_http_client(url, http_client=http)


class TlsScriptedHttp(ScriptedHttp):
    """``ScriptedHttp`` over TLS: ``context`` is its server ``ssl.SSLContext`` (load another
    certificate into it to change what new connections are shown). ``async with`` gives its
    ``https://127.0.0.1:PORT/mcp`` URL."""

    def __init__(self, answer: Callable[[dict], Awaitable[Answer | None]], context: Any) -> None:
        super().__init__(answer)
        self.context = context

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.context)
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/mcp"


class InProcess:
    """A gateway running in this test's event loop: the ``Gateway``, its listener and port, and each
    verdict of its express lane in ``taken`` (True: the lane took the request)."""

    def __init__(self, gateway: Any, listener: Any, port: int, taken: list[bool]) -> None:
        self.gateway = gateway
        self.listener = listener
        self.port = port
        self.taken = taken

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@contextlib.asynccontextmanager
async def in_process_gateway(config: Any, admission: Any = None) -> AsyncIterator[InProcess]:
    """Start ``Gateway(config, admission)`` and its listener here, with the express lane's verdicts counted."""
    from gateway.app import Gateway
    from gateway.server.listener import Server

    gateway = Gateway(config, admission)
    await gateway.start()
    try:
        front = gateway.front
        taken: list[bool] = []
        lane = front.express
        if lane is not None:

            def counted(request: Any, reply: Any) -> bool:
                verdict = lane(request, reply)
                taken.append(verdict)
                return verdict

            front.express = counted
        listener = Server(front, config.server)
        _, port = await listener.start()
        try:
            yield InProcess(gateway, listener, port, taken)
        finally:
            await listener.shutdown()
    finally:
        await gateway.stop()


async def post_closing(port: int, data: bytes, headers: dict[str, str], *, timeout: float = 30.0) -> bytes:
    """One POST /mcp on a new connection that asks the server to close after it: the whole raw
    response (parse it with ``split_response``). ``headers``: extra header lines (session, version, key)."""
    head = (
        f"POST /mcp HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\naccept: application/json, text/event-stream\r\n"
        f"content-type: application/json\r\nconnection: close\r\ncontent-length: {len(data)}\r\n"
    )
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head.encode() + b"\r\n" + data)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()
