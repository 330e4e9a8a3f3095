"""Helpers shared by the end-to-end tests: child processes that announce an
address on stdout, and a raw HTTP/1.1 client over real sockets."""

from __future__ import annotations

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
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
SERVERS = ROOT / "tests" / "servers"
EVERYTHING = ROOT / "node_modules" / ".bin" / "mcp-server-everything"


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
