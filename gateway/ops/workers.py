"""``mcp-gateway serve --workers N``: N share-nothing gateway processes on one port.

Each worker is a full ``mcp-gateway serve`` (its own backends, catalog and
sessions) bound with SO_REUSEPORT, so the kernel spreads connections across
them and nothing is shared on the hot path. The parent only supervises: it
prints one address line when every worker listens, forwards SIGTERM/SIGINT
and SIGHUP (reload),
and starts a new worker if one dies unexpectedly.

A client's connections may land on different workers, so session ids are
signed with a key the parent gives every worker (``MCP_GATEWAY_SESSION_SECRET``):
any worker accepts a session another one made. A DELETE ends the session in
the worker that receives it; the others forget it when it goes idle.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
import socket
import sys

__all__ = ["run_workers"]


def _reserve_port(host: str, port: int) -> tuple[socket.socket, int]:
    """Bind (not listen) a SO_REUSEPORT socket so port 0 resolves once for every worker."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock, sock.getsockname()[1]


async def _start_worker(argv: list[str], index: int) -> tuple[asyncio.subprocess.Process, list[str]]:
    # The worker's index: in its access log lines, and its admin listener's port is [admin] port + index.
    env = {**os.environ, "MCP_GATEWAY_WORKER": str(index)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "gateway", *argv, stdout=asyncio.subprocess.PIPE, env=env)
    assert proc.stdout is not None
    lines: list[str] = []
    while True:
        raw = await proc.stdout.readline()
        if not raw:
            raise RuntimeError(f"worker exited before listening (code {await proc.wait()})")
        line = raw.decode().rstrip("\n")
        lines.append(line)
        if line.startswith("mcp-gateway listening on "):
            return proc, lines


async def run_workers(
    count: int, serve_argv: list[str], host: str, port: int, path: str, *, scheme: str = "http"
) -> int:
    """Run ``count`` workers (``serve_argv`` is the serve command line without host/port; each
    worker reads the config itself, TLS included). ``scheme``: ``https`` when they serve TLS."""
    # One signing key for all workers, so each accepts sessions the others made.
    os.environ.setdefault("MCP_GATEWAY_SESSION_SECRET", secrets.token_urlsafe(32))
    reserve, port = _reserve_port(host, port)
    argv = [*serve_argv, "--host", host, "--port", str(port), "--reuse-port"]
    try:
        started = await asyncio.gather(*(_start_worker(argv, i) for i in range(count)))
    finally:
        reserve.close()
    procs = [proc for proc, _ in started]
    for line in started[0][1][:-1]:
        print(line)
    for _, lines in started[1:]:  # each worker's own admin listener
        for line in lines:
            if line.startswith("mcp-gateway admin on "):
                print(line)
    shown = f"[{host}]" if ":" in host else host
    print(f"mcp-gateway listening on {scheme}://{shown}:{port}{path} ({count} workers)", flush=True)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    def reload_all() -> None:  # SIGHUP: every worker reloads its config
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGHUP)

    loop.add_signal_handler(signal.SIGHUP, reload_all)
    watchers = {asyncio.ensure_future(p.wait()): i for i, p in enumerate(procs)}
    stop_task = asyncio.ensure_future(stopping.wait())
    while not stopping.is_set():
        done, _ = await asyncio.wait([*watchers, stop_task], return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task is stop_task:
                continue
            index = watchers.pop(task)
            if stopping.is_set():
                continue
            print(f"worker {index} exited with code {task.result()}; starting a new one", file=sys.stderr, flush=True)
            procs[index], _ = await _start_worker(argv, index)
            watchers[asyncio.ensure_future(procs[index].wait())] = index
    for proc in procs:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
    codes = await asyncio.gather(*(p.wait() for p in procs))
    for task in watchers:
        task.cancel()
    return 0 if all(code == 0 for code in codes) else 1
