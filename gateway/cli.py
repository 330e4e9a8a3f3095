"""The ``mcp-gateway`` command.

    mcp-gateway serve [--config FILE] [--host HOST] [--port PORT] [--workers N] [--watch] [--log-format json]
    mcp-gateway check FILE
    mcp-gateway stdio [--config FILE]
    mcp-gateway audit verify LOG [--key-env NAME]
    mcp-gateway probe [URL]

``FILE`` is a TOML config or a Claude/Cursor style ``mcp.json``. ``serve`` with
no config runs the bundled demo. ``--port 0`` picks a free port; the address
is printed on one line, ``mcp-gateway listening on http://HOST:PORT/PATH``,
so scripts can find it. ``stdio`` serves the same aggregate to one client over
stdin/stdout (newline-delimited JSON-RPC), for clients that spawn MCP servers;
it prints nothing but JSON-RPC on stdout and logs to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
from collections.abc import Callable
from typing import Any

import msgspec

from gateway import __version__
from gateway.config import Config, ConfigError, describe, load_config

__all__ = ["main"]

log = logging.getLogger("gateway")

_WATCH_INTERVAL = 1.0  # seconds between two looks at the --config file (--watch)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-gateway", description="One MCP endpoint in front of many MCP servers.")
    parser.add_argument("--version", action="version", version=f"mcp-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway (the bundled demo when no --config is given)")
    serve.add_argument("--config", "-c", metavar="FILE", help="TOML config or mcp.json")
    serve.add_argument("--host", help="address to listen on (overrides the config)")
    serve.add_argument("--port", type=_port, help="port to listen on, 0 for any free one (overrides the config)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--log-format", default="plain", choices=["plain", "json"],
                       help="log lines as text (default) or one JSON object each (the access log's fields too)")
    serve.add_argument("--workers", type=int, default=1, help="processes sharing the port (SO_REUSEPORT); default 1")
    serve.add_argument("--watch", action="store_true",
                       help="reload when the --config file changes (checked every second), as SIGHUP does")
    serve.add_argument("--reuse-port", action="store_true", help=argparse.SUPPRESS)  # set for each worker
    check = sub.add_parser("check", help="validate a config file and print what would run")
    check.add_argument("file", metavar="FILE")
    stdio = sub.add_parser("stdio", help="serve one client over stdin/stdout (the bundled demo when no --config)")
    stdio.add_argument("--config", "-c", metavar="FILE", help="TOML config or mcp.json")
    stdio.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    probe = sub.add_parser("probe", help="GET a health URL: exit 0 on 200, else 1 (a container's health check)")
    probe.add_argument("url", nargs="?", default="http://127.0.0.1:9090/healthz", help="default: the admin listener's /healthz")
    probe.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    audit = sub.add_parser("audit", help="work with the [audit] log").add_subparsers(dest="audit_command", required=True)
    verify = audit.add_parser("verify", help="check an audit log's hash chain (with its rotated files LOG.N ... LOG.1)")
    verify.add_argument("logs", nargs="+", metavar="LOG", help="the [audit] path")
    verify.add_argument(
        "--key-env", default="MCP_GATEWAY_AUDIT_KEY", metavar="NAME",
        help="environment variable holding the HMAC key (default MCP_GATEWAY_AUDIT_KEY; unset: no key)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "check":
        return _check(args.file)
    if args.command == "probe":
        return _probe(args.url, args.timeout)
    if args.command == "audit":
        return _audit_verify(args.logs, args.key_env)
    from gateway.ops.logformat import configure

    configure(args.log_level, getattr(args, "log_format", "plain"))
    from gateway.server.listener import install_uvloop

    install_uvloop()
    if args.command == "stdio":
        return _stdio(args)
    if args.workers > 1:
        return _serve_workers(args)
    try:
        return asyncio.run(_serve(args))
    except KeyboardInterrupt:
        return 130


def _serve_workers(args: argparse.Namespace) -> int:
    from gateway.ops.workers import run_workers

    try:
        config = _overrides(load_config(args.config) if args.config else Config(), args.host, args.port)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    argv = ["serve", "--log-level", args.log_level, "--log-format", args.log_format]
    argv += ["--config", args.config] if args.config else []
    argv += ["--watch"] if args.watch else []
    server = config.server
    scheme = "https" if server.tls_cert_file is not None else "http"
    try:
        return asyncio.run(run_workers(args.workers, argv, server.host, server.port, server.path, scheme=scheme))
    except KeyboardInterrupt:
        return 130


def _port(text: str) -> int:
    """``--port``'s value: 0..65535 (a larger number would wrap around in the socket layer)."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is out of range (0..65535)")
    return port


def _audit_verify(logs: list[str], key_env: str) -> int:
    """``audit verify``: one line, ``ok: N records, chain intact`` (0), the first problem (1), or
    why the log cannot be checked (2: unreadable, or not an audit log)."""
    from os import environ

    from gateway.ops.audit import verify

    key = environ.get(key_env)
    result = verify(logs, key.encode("utf-8") if key else None)
    if result.exit_code == 2:
        print(f"error: {result.message}", file=sys.stderr)
    else:
        print(result.message)
    return result.exit_code


def _probe(url: str, timeout: float) -> int:
    """``probe``: 0 when ``url`` answers 200, else 1, with one line saying what it got."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - an operator's own URL
            status = response.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except (OSError, ValueError) as exc:
        print(f"probe: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"probe: {url}: HTTP {status}", file=sys.stderr)
    return 0 if status == 200 else 1


def _check(path: str) -> int:
    """Validate like ``serve`` does, and also what this machine must provide (stdio commands, cwd)."""
    try:
        config = load_config(path, check_environment=True)
        if config.auth is not None:
            from gateway.policy.auth import Authenticator

            Authenticator(config.auth, path=config.server.path)  # reads and checks each jwks_file
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(describe(config))
    return 0


def _overrides(config: Config, host: str | None, port: int | None) -> Config:
    server = config.server
    if host is not None:
        server = msgspec.structs.replace(server, host=host)
    if port is not None:
        server = msgspec.structs.replace(server, port=port)
    return msgspec.structs.replace(config, server=server)


def _tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path.

    A request's objects die by reference counting; the collector rarely finds
    anything, yet at the default threshold (700 new container objects) it ran
    every couple of dozen requests and walked the young objects each time. What
    exists after startup (modules, config, catalog) lives for the whole run:
    ``freeze`` moves it out of the collector's view, so full collections stay
    cheap too.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def _load(args: argparse.Namespace, say: Callable[[str], None]) -> tuple[Config, Any] | int:
    """The config of ``serve`` and ``stdio`` (``--config``, or the bundled demo, which is started
    here) and the demo's process (or None); an exit code after a one-line error."""
    if args.config:
        try:
            return load_config(args.config), None
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    from gateway.demo import DemoUnavailable, start_demo

    try:
        config, demo_proc = await start_demo(Config().server)
    except DemoUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    say("no --config given: running the bundled demo (backends 'notes' over stdio, 'time' over HTTP)")
    return config, demo_proc


async def _stop_demo(demo_proc: Any) -> None:
    if demo_proc is not None and demo_proc.returncode is None:
        demo_proc.terminate()
        await demo_proc.wait()


async def _serve(args: argparse.Namespace) -> int:
    from gateway.app import Gateway
    from gateway.ops.audit import AuditError
    from gateway.server.listener import Server

    loaded = await _load(args, print)
    if isinstance(loaded, int):
        return loaded
    config, demo_proc = loaded
    config = _overrides(config, args.host, args.port)
    try:
        gateway = Gateway(config)  # reads files the config names (a jwks_file)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        await _stop_demo(demo_proc)
        return 2
    try:
        await gateway.start()
    except AuditError as exc:
        await gateway.stop()
        await _stop_demo(demo_proc)
        print(f"error: [audit]: {exc}", file=sys.stderr)  # last: the line an operator reads
        return 2
    _tune_gc()
    # The front is the App itself (not the Gateway wrapper): one coroutine level less per request.
    server = Server(gateway.front, config.server)
    try:
        host, port = await server.start(reuse_port=args.reuse_port)
    except OSError as exc:
        print(f"error: cannot listen on {config.server.host}:{config.server.port}: {exc}", file=sys.stderr)
        await gateway.stop()
        return 1
    for name, state, error in gateway.status():
        print(f"backend {name}: {state}" + (f" ({error})" if error else ""))
    _exposure_warnings(config, port)
    shown = f"[{host}]" if ":" in host else host
    reload = _reloader(gateway, args) if args.config else None
    admin = await _start_admin(gateway, config, reload)
    if admin is None and config.admin is not None:
        await server.shutdown()
        await gateway.stop()
        return 1
    loop = asyncio.get_running_loop()
    watcher = loop.create_task(_watch(args.config, reload)) if reload is not None and args.watch else None
    if reload is not None:
        loop.add_signal_handler(signal.SIGHUP, lambda: gateway._spawn(_reload_quietly(reload)))
    else:  # the demo has no file to read again: SIGHUP is logged, not fatal
        loop.add_signal_handler(signal.SIGHUP, lambda: log.warning("SIGHUP: no --config file to reload"))

    def ready() -> None:
        print(f"mcp-gateway listening on {server.scheme}://{shown}:{port}{config.server.path}", flush=True)

    def draining() -> None:
        gateway.draining = True  # /readyz answers 503 from now on

    try:
        await server.serve_until_signal(ready, draining)
    finally:
        if watcher is not None:
            watcher.cancel()
        loop.remove_signal_handler(signal.SIGHUP)
        await gateway.stop()
        if admin is not None:
            await admin.shutdown()
        await _stop_demo(demo_proc)
    return 0


async def _start_admin(gateway: Any, config: Config, reload: Any) -> Any:
    """The admin listener of ``[admin]`` (None without one, or, after a one-line error, when it
    cannot listen). With ``--workers``, worker i listens on ``[admin] port`` + i."""
    if config.admin is None:
        return None
    from gateway.ops.admin import AdminApp
    from gateway.server.listener import Server

    admin = config.admin
    port = admin.port + int(os.environ.get("MCP_GATEWAY_WORKER", "0")) if admin.port else 0
    listener = msgspec.structs.replace(
        config.server, host=admin.host, port=port, tls_cert_file=None, tls_key_file=None, tls_client_ca_file=None
    )
    server = Server(AdminApp(gateway, admin, reload), listener)
    try:
        host, bound = await server.start()
    except OSError as exc:
        print(f"error: cannot listen on {admin.host}:{port} for [admin]: {exc}", file=sys.stderr)
        return None
    shown = f"[{host}]" if ":" in host else host
    print(f"mcp-gateway admin on http://{shown}:{bound}", flush=True)
    return server


def _reloader(gateway: Any, args: argparse.Namespace) -> Callable[[], Any]:
    """``reload()``: read ``--config`` again and apply it (one at a time); raises ``ConfigError`` or
    ``ReloadRefused`` with the reason when it cannot, and the running config keeps serving."""
    lock = asyncio.Lock()

    async def reload() -> dict[str, Any]:
        async with lock:
            config = _overrides(load_config(args.config), args.host, args.port)
            plan = await gateway.reload(config)
            return {"backends": msgspec.to_builtins(plan)}

    return reload


async def _reload_quietly(reload: Callable[[], Any], why: str = "SIGHUP") -> None:
    """SIGHUP (or ``--watch``): reload, and say in one log line what happened (never a
    traceback for a bad file)."""
    from gateway.ops.reload import ReloadRefused

    try:
        done = await reload()
    except (ConfigError, ReloadRefused) as exc:
        log.error("%s: reload refused, the running config is kept: %s", why, exc)
    else:
        log.info("%s: reloaded (%s)", why, done["backends"])


def _stamp(path: str) -> tuple[int, int, int] | None:
    """What tells a changed file: modification time, size and inode (an editor's rename-over
    changes the inode); None while it is missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


async def _watch(path: str, reload: Callable[[], Any], interval: float = _WATCH_INTERVAL) -> None:
    """``--watch``: reload whenever the config file changes (polled every ``interval`` seconds:
    no inotify dependency, and it works on every filesystem a config is mounted from). A file
    that is missing (mid-rename) is waited for; a bad one is refused like SIGHUP's."""
    last = _stamp(path)
    while True:
        await asyncio.sleep(interval)
        now = _stamp(path)
        if now is not None and now != last:
            last = now
            await _reload_quietly(reload, f"{path} changed")


def _exposure_warnings(config: Config, port: int) -> None:
    """Say plainly, at start, when a listener beyond loopback lets anyone call every tool (no
    ``[auth]``), or carries credentials in clear text (``[auth]`` but no TLS)."""
    import ipaddress

    server = config.server
    host = server.host
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:  # a host name other than localhost
        loopback = False
    if loopback:
        return
    if config.auth is None:
        log.warning(
            "listening on %s beyond loopback WITHOUT [auth]: anyone who can reach port %d may call every tool; "
            "configure [auth] or listen on 127.0.0.1", host, port,
        )
    elif server.tls_cert_file is None:
        log.warning(
            "listening on %s beyond loopback without TLS: API keys and tokens cross the network in clear text; "
            "set [server] tls_cert_file and tls_key_file, or keep a TLS proxy in front", host,
        )


def _stdio(args: argparse.Namespace) -> int:
    from gateway.front.stdio import claim_stdout

    out_fd = claim_stdout()  # from here on fd 1 and print() go to stderr: stdout is JSON-RPC only
    try:
        return asyncio.run(_run_stdio(args, out_fd))
    except KeyboardInterrupt:
        return 130


async def _run_stdio(args: argparse.Namespace, out_fd: int) -> int:
    from gateway.app import Gateway
    from gateway.front.stdio import serve_stdio

    loaded = await _load(args, log.info)
    if isinstance(loaded, int):
        return loaded
    config, demo_proc = loaded
    try:
        try:
            gateway = Gateway(config)
        except ConfigError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return await serve_stdio(gateway, stdout_fd=out_fd)
    finally:
        await _stop_demo(demo_proc)
