"""The gateway's configuration: TOML (or a Claude/Cursor ``mcp.json``) decoded
into frozen msgspec Structs.

Every option has a docstring here; an unknown or mistyped key is an error that
names the key and its line. ``${VAR}`` in any string is replaced by the
environment variable VAR (``${VAR:-default}`` gives a default); a missing
variable without a default is an error.

Example::

    [server]
    port = 8080

    [backends.docs]
    url = "http://127.0.0.1:9000/mcp"
    bearer_token = "${DOCS_TOKEN}"

    [backends.files]
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]
    session = "per-client"
"""

from __future__ import annotations

from typing import Literal

import msgspec

__all__ = ["BackendConfig", "Config", "ConfigError", "GatewayConfig", "ServerConfig"]


class ConfigError(Exception):
    """A config file that cannot be used; the message names the key and line."""


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[server]``: the listener and its limits."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: int = 8080
    """TCP port; 0 picks a free one (the chosen address is printed at startup)."""
    path: str = "/mcp"
    """The MCP endpoint's path."""
    max_body_bytes: int = 4 * 1024 * 1024
    """Largest request body accepted; larger gets 413."""
    max_header_bytes: int = 16 * 1024
    """Largest header section (request line + headers); larger gets 431."""
    max_headers: int = 100
    """Most header lines in one request; more gets 431."""
    max_url_bytes: int = 8 * 1024
    """Longest request target; longer gets 414."""
    header_timeout: float = 10.0
    """Seconds a client may take to send a request's headers (then 408 and close)."""
    idle_timeout: float = 75.0
    """Seconds an idle keep-alive connection is kept open."""
    shutdown_timeout: float = 10.0
    """On SIGTERM/SIGINT, seconds requests in flight get to finish."""
    allowed_origins: list[str] = []
    """Origins allowed besides localhost ones (DNS-rebinding protection). ``"*"`` allows any."""
    allowed_hosts: list[str] = []
    """Host header values allowed besides localhost ones and the bind address. ``"*"`` allows any."""
    session_idle_timeout: float = 3600.0
    """Seconds after which an unused front session expires (then 404)."""
    sse_keepalive: float = 15.0
    """Seconds between SSE keep-alive comments on idle GET streams."""


class GatewayConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[gateway]``: aggregation and routing."""

    separator: str = "__"
    """Between namespace and name: ``docs__search``."""
    passthrough: bool = False
    """Mount the single backend with no prefix (requires exactly one backend)."""
    page_size: int = 100
    """Items per page of the aggregated lists."""
    request_timeout: float = 60.0
    """Default seconds a backend gets to answer a request."""
    list_timeout: float = 5.0
    """Seconds a backend gets to answer a list request while building the catalog."""
    express: bool = True
    """Answer the common call (a handshake-era ``tools/call`` in a known session, to a ready
    HTTP backend with a shared upstream session) in callbacks, without a task: the lowest
    latency. ``false``: every request takes the general path (same answers, more latency)."""


class BackendConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[backends.NAME]``: one MCP server. Give ``url`` (HTTP) or ``command`` (stdio)."""

    url: str | None = None
    """Streamable HTTP endpoint of the server."""
    headers: dict[str, str] = {}
    """Static headers sent to an HTTP backend (never the client's credentials)."""
    bearer_token: str | None = None
    """Sent as ``Authorization: Bearer ...`` to an HTTP backend."""
    command: str | None = None
    """Program to spawn for a stdio backend."""
    args: list[str] = []
    """Its arguments."""
    env: dict[str, str] = {}
    """Extra environment variables for the process."""
    cwd: str | None = None
    """Working directory for the process."""
    namespace: str | None = None
    """Prefix for this backend's names; defaults to the backend's name."""
    session: Literal["shared", "per-client"] = "shared"
    """``shared``: one upstream session for all clients. ``per-client``: one per front session."""
    connect_timeout: float = 10.0
    """Seconds to connect (HTTP) or to start and initialize (stdio)."""
    request_timeout: float | None = None
    """Seconds a request may take; defaults to ``[gateway] request_timeout``."""
    pool_size: int = 64
    """Most keep-alive connections to an HTTP backend."""
    restart_initial_delay: float = 0.5
    """First delay before restarting a dead stdio process (doubles each time)."""
    restart_max_delay: float = 30.0
    """Longest delay between restarts."""
    enabled: bool = True
    """Set false to keep a backend in the file but not run it."""

    @property
    def transport(self) -> Literal["http", "stdio"]:
        """``http`` when ``url`` is set, else ``stdio``."""
        return "http" if self.url else "stdio"


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The whole file."""

    server: ServerConfig = ServerConfig()
    """The listener."""
    gateway: GatewayConfig = GatewayConfig()
    """Aggregation and routing."""
    backends: dict[str, BackendConfig] = {}
    """The MCP servers behind the gateway, by name."""


# -- loading ---------------------------------------------------------------------------------------

import json  # noqa: E402 - the loader's own imports, kept next to it
import os  # noqa: E402
import re  # noqa: E402
import tomllib  # noqa: E402
from collections.abc import Mapping  # noqa: E402
from typing import Any  # noqa: E402

__all__ += ["describe", "load_config", "load_config_text"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SEPARATOR_RE = re.compile(r"^[A-Za-z0-9_-]+$")
_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Read a TOML config or a Claude/Cursor ``mcp.json`` (by extension or a leading ``{``)."""
    source = os.fspath(path)
    try:
        with open(source, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror}") from None
    fmt = "json" if source.endswith(".json") or text.lstrip().startswith("{") else "toml"
    return load_config_text(text, fmt=fmt, source=source, env=env)  # type: ignore[arg-type]


def load_config_text(
    text: str, *, fmt: Literal["toml", "json"], source: str = "<string>", env: Mapping[str, str] | None = None
) -> Config:
    """Parse, substitute ``${VAR}``, convert to ``Config`` and validate; ConfigError on any problem.

    ``${VAR}`` takes the environment variable VAR, ``${VAR:-default}`` a default
    when it is unset, and ``$$`` is a literal ``$``.
    """
    env = os.environ if env is None else env
    if fmt == "json":
        data = _from_mcp_json(text, source)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{source}: invalid TOML: {exc}") from None
    data = _substitute(data, env, source, text, ())
    backends = data.get("backends") if isinstance(data, dict) else None
    if isinstance(backends, dict):
        # msgspec does not name dict keys in its error paths, so check each backend by name.
        for name, entry in backends.items():
            try:
                msgspec.convert(entry, BackendConfig)
            except msgspec.ValidationError as exc:
                raise _located(exc, source, text, ("backends", str(name))) from None
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise _located(exc, source, text) from None
    _validate(config, source, text)
    return config


def _from_mcp_json(text: str, source: str) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    servers = doc.get("mcpServers") if isinstance(doc, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f"{source}: an mcp.json needs an object 'mcpServers'")
    backends: dict[str, Any] = {}
    for name, entry in servers.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}:{_line_of(text, name)}: 'mcpServers.{name}' must be an object")
        kind = entry.get("type")
        if kind == "sse":
            raise ConfigError(
                f"{source}:{_line_of(text, name)}: 'mcpServers.{name}': the old SSE transport is not supported; "
                "use the server's Streamable HTTP URL"
            )
        backend = {k: entry[k] for k in ("command", "args", "env", "cwd", "url", "headers") if k in entry}
        if entry.get("disabled") is True:
            backend["enabled"] = False
        unknown = set(entry) - {"command", "args", "env", "cwd", "url", "headers", "type", "disabled"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(f"{source}:{_line_of(text, key)}: unknown key 'mcpServers.{name}.{key}'")
        backends[name] = backend
    return {"backends": backends}


def _substitute(value: Any, env: Mapping[str, str], source: str, text: str, path: tuple[str, ...]) -> Any:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            key = ".".join(path)
            raise ConfigError(f"{source}:{_line_of(text, path[-1] if path else '')}: '{key}' uses ${{{name}}}, which is not set")

        return _VAR_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, env, source, text, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, source, text, (*path, str(i))) for i, v in enumerate(value)]
    return value


def _line_of(text: str, key: str, table: str | None = None) -> int:
    """Best-effort line number of ``key`` (inside ``[table]`` when given); 0 if not found."""
    lines = text.splitlines()
    start = 0
    if table:
        header = re.compile(r"^\s*\[\s*" + re.escape(table).replace(r"\.", r"\s*\.\s*") + r"\s*\]")
        for i, line in enumerate(lines):
            if header.match(line):
                start = i
                break
    pattern = re.compile(r'^\s*"?' + re.escape(key) + r'"?\s*[=:]|"' + re.escape(key) + r'"\s*:')
    for i in range(start, len(lines)):
        if pattern.search(lines[i]):
            return i + 1
    header_key = re.compile(r"^\s*\[\s*(?:[\w.-]+\.)?" + re.escape(key) + r"\s*\]")
    for i, line in enumerate(lines):
        if header_key.match(line):
            return i + 1
    return 0


def _located(exc: msgspec.ValidationError, source: str, text: str, prefix: tuple[str, ...] = ()) -> ConfigError:
    """Turn msgspec's ``... - at `$.server.x``` into ``file:LINE: ... 'server.x'``."""
    message = str(exc)
    match = re.search(r"at `\$((?:\.[^.`\[]+|\[[^\]]*\])*)`", message)
    path = [*prefix, *(p for p in re.split(r"\.|\[[^\]]*\]", match.group(1)) if p)] if match else [*prefix]
    reason = message.split(" - at ", 1)[0]
    unknown = re.match(r"Object contains unknown field `([^`]+)`", reason)
    if unknown:
        path.append(unknown.group(1))
        reason = "unknown key"
    key = ".".join(path)
    table = ".".join(path[:-1]) if len(path) > 1 else None
    line = _line_of(text, path[-1], table) if path else 0
    return ConfigError(f"{source}:{line}: {reason} '{key}'" if key else f"{source}: {reason}")


def _validate(config: Config, source: str, text: str) -> None:
    def fail(key: str, why: str) -> None:
        parts = key.split(".")
        line = _line_of(text, parts[-1], ".".join(parts[:-1]) or None)
        raise ConfigError(f"{source}:{line}: '{key}': {why}")

    server, gateway = config.server, config.gateway
    if not 0 <= server.port <= 65535:
        fail("server.port", "must be 0..65535")
    if not server.path.startswith("/"):
        fail("server.path", "must start with '/'")
    for key in ("max_body_bytes", "max_header_bytes", "max_headers", "max_url_bytes"):
        if getattr(server, key) <= 0:
            fail(f"server.{key}", "must be positive")
    for key in ("header_timeout", "idle_timeout", "shutdown_timeout", "session_idle_timeout", "sse_keepalive"):
        if getattr(server, key) <= 0:
            fail(f"server.{key}", "must be positive")
    if not _SEPARATOR_RE.match(gateway.separator):
        fail("gateway.separator", "must be one or more of A-Z a-z 0-9 _ -")
    if gateway.page_size <= 0 or gateway.request_timeout <= 0 or gateway.list_timeout <= 0:
        fail("gateway.page_size", "page_size and timeouts must be positive")
    enabled = {name: b for name, b in config.backends.items() if b.enabled}
    if gateway.passthrough and len(enabled) != 1:
        fail("gateway.passthrough", f"needs exactly one enabled backend, found {len(enabled)}")
    namespaces: dict[str, str] = {}
    for name, backend in config.backends.items():
        _validate_backend(name, backend, fail)
        namespace = backend.namespace or name
        if backend.enabled and namespace in namespaces:
            fail(f"backends.{name}.namespace", f"namespace {namespace!r} is also used by backend {namespaces[namespace]!r}")
        namespaces[namespace] = name


def _validate_backend(name: str, backend: BackendConfig, fail: Any) -> None:
    if not _NAME_RE.match(name):
        fail(f"backends.{name}", "backend names must match ^[A-Za-z0-9_-]{1,32}$")
    if backend.namespace is not None and not _NAME_RE.match(backend.namespace):
        fail(f"backends.{name}.namespace", "must match ^[A-Za-z0-9_-]{1,32}$")
    if (backend.url is None) == (backend.command is None):
        fail(f"backends.{name}", "give exactly one of 'url' (HTTP) or 'command' (stdio)")
    if backend.url is not None and not backend.url.startswith("http://"):
        fail(f"backends.{name}.url", "must be an http:// URL (https backends are not supported yet)")
    for key in ("connect_timeout", "restart_initial_delay", "restart_max_delay"):
        if getattr(backend, key) <= 0:
            fail(f"backends.{name}.{key}", "must be positive")
    if backend.request_timeout is not None and backend.request_timeout <= 0:
        fail(f"backends.{name}.request_timeout", "must be positive")
    if backend.pool_size <= 0:
        fail(f"backends.{name}.pool_size", "must be positive")


def describe(config: Config) -> str:
    """What ``mcp-gateway serve`` would run with this config, secrets redacted."""
    s, g = config.server, config.gateway
    lines = [
        f"listen: http://{s.host}:{s.port}{s.path}",
        f"limits: body {s.max_body_bytes} B, headers {s.max_header_bytes} B / {s.max_headers} lines, "
        f"url {s.max_url_bytes} B, header timeout {s.header_timeout:g} s, idle {s.idle_timeout:g} s",
        f"routing: {'passthrough (no prefix)' if g.passthrough else f'namespaces, separator {g.separator!r}'}, "
        f"page size {g.page_size}, request timeout {g.request_timeout:g} s",
        f"backends: {len(config.backends)}",
    ]
    for name, b in config.backends.items():
        if b.url:
            target = b.url
            extras = [f"{k}: ***" for k in b.headers] + (["bearer token ***"] if b.bearer_token else [])
            if extras:
                target += f" ({', '.join(extras)})"
        else:
            target = " ".join([b.command or "", *b.args])
            if b.env:
                target += f" (env: {', '.join(f'{k}=***' for k in b.env)})"
        state = "" if b.enabled else " [disabled]"
        lines.append(f"  {name}: {b.transport} {target}, namespace {b.namespace or name!r}, session {b.session}{state}")
    return "\n".join(lines)
