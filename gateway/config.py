"""The gateway's configuration: TOML (or a Claude/Cursor ``mcp.json``) decoded
into frozen msgspec Structs.

Every option has a docstring here, and its type carries its constraints
(``msgspec.Meta``: ranges, patterns), so decoding is most of the validation;
what a type cannot say (one of ``url``/``command``, a URL that parses, unique
namespaces) is checked after. Any problem is a ``ConfigError`` of one line that
names the key and its line: ``gateway.toml:7: 'backends.docs.url': ...``.
``${VAR}`` in any string is replaced by the environment variable VAR
(``${VAR:-default}`` gives a default); a missing variable without a default is
an error.

Example::

    [server]
    port = 8080

    [backends.docs]
    url = "http://127.0.0.1:9000/mcp"
    bearer_token = "${DOCS_TOKEN}"

    [backends.files]
    command = "npx"
    args = ["-y", "@modelcontextprotocol/server-filesystem", "/srv"]
    roots = ["file:///srv"]
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

__all__ = [
    "AdminConfig", "AuditConfig", "BackendConfig", "BreakerConfig", "CacheConfig", "Config", "ConfigError", "CredentialConfig", "GatewayConfig",
    "LimitConfig", "MetricsConfig", "RootConfig", "TracingConfig", "ServerConfig", "ToolShapeConfig",
]


class ConfigError(Exception):
    """A config file that cannot be used; the message (one line) names the key and line."""


# -- value constraints, shared by the tables ------------------------------------------------------

_NAME = r"^[A-Za-z0-9_-]{1,32}$"
_SEPARATOR = r"^[A-Za-z0-9_-]+$"
_PATH = r"^/[^\s?#]*$"
_HOST = r"^[A-Za-z0-9._:%-]+$"
_HEADER_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
_HEADER_VALUE = r"^[\t\x20-\x7e\x80-\xff]*$"
_NO_NUL = r"^[^\x00]*$"
_COMMAND = r"^[^\x00]+$"
_ENV_NAME = r"^[^=\x00]+$"
_FILE_URI = r"^file://"

# What a value that does not match each pattern is told.
_PATTERN_HINTS = {
    _NAME: "must be 1 to 32 characters of A-Z a-z 0-9 _ -",
    _SEPARATOR: "must be one or more of A-Z a-z 0-9 _ -",
    _PATH: "must start with '/' and have no spaces, '?' or '#'",
    _HOST: "must be an IP address or a host name",
    _HEADER_NAME: "must be an HTTP header name (letters, digits and !#$%&'*+.^_`|~-)",
    _HEADER_VALUE: "must be one line of printable characters (no line breaks or control characters)",
    _NO_NUL: "must not contain a NUL character",
    _COMMAND: "must be a program name or path (not empty, no NUL character)",
    _ENV_NAME: "must be a variable name (not empty, no '=' or NUL character)",
    _FILE_URI: "must be a file:// URI",
}

_Port = Annotated[int, Meta(ge=0, le=65535)]
_Seconds = Annotated[float, Meta(gt=0)]
_Count = Annotated[int, Meta(ge=1)]
_Name = Annotated[str, Meta(pattern=_NAME)]
_Text = Annotated[str, Meta(pattern=_NO_NUL)]
_HeaderValue = Annotated[str, Meta(pattern=_HEADER_VALUE)]
_FileUri = Annotated[str, Meta(pattern=_FILE_URI)]

_URL_SCHEMES = ("http", "https")
"""Backend URL schemes the HTTP backend speaks."""


class _Table(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every config table: immutable, keyword-only, and an unknown key is an error."""


class ServerConfig(_Table):
    """``[server]``: the listener and its limits."""

    host: Annotated[str, Meta(pattern=_HOST)] = "127.0.0.1"
    """Address to listen on (an IP address or a host name)."""
    port: _Port = 8080
    """TCP port, 0..65535; 0 picks a free one (the chosen address is printed at startup)."""
    path: Annotated[str, Meta(pattern=_PATH)] = "/mcp"
    """The MCP endpoint's path; starts with ``/``."""
    max_body_bytes: _Count = 4 * 1024 * 1024
    """Largest request body accepted; larger gets 413."""
    max_header_bytes: _Count = 16 * 1024
    """Largest header section (request line + headers); larger gets 431."""
    max_headers: _Count = 100
    """Most header lines in one request; more gets 431."""
    max_url_bytes: _Count = 8 * 1024
    """Longest request target; longer gets 414."""
    header_timeout: _Seconds = 10.0
    """Seconds a client may take to send a request's headers (then 408 and close)."""
    idle_timeout: _Seconds = 75.0
    """Seconds an idle keep-alive connection is kept open."""
    shutdown_timeout: _Seconds = 10.0
    """On SIGTERM/SIGINT, seconds requests in flight get to finish."""
    allowed_origins: list[str] = []
    """Origins allowed besides localhost ones (DNS-rebinding protection). ``"*"`` allows any."""
    allowed_hosts: list[str] = []
    """Host header values allowed besides localhost ones and the bind address. ``"*"`` allows any."""
    session_idle_timeout: _Seconds = 3600.0
    """Seconds after which an unused front session expires (then 404)."""
    sse_keepalive: _Seconds = 15.0
    """Seconds between SSE keep-alive comments on idle GET streams."""
    access_log: bool = False
    """One log line per routed request (logger ``gateway.access``: principal, method, name,
    backend, status, outcome, latency); ``--log-format json`` makes each a JSON object."""
    tls_cert_file: _Text | None = None
    """PEM certificate chain: with ``tls_key_file``, the listener serves HTTPS (HTTP/1.1, ALPN ``http/1.1``)."""
    tls_key_file: _Text | None = None
    """PEM private key of ``tls_cert_file``."""
    tls_client_ca_file: _Text | None = None
    """PEM CA bundle: clients must present a certificate it signed (mutual TLS); the
    certificate's subject is then the caller's principal."""



class GatewayConfig(_Table):
    """``[gateway]``: aggregation and routing."""

    separator: Annotated[str, Meta(pattern=_SEPARATOR)] = "__"
    """Between namespace and name: ``docs__search``. One or more of A-Z a-z 0-9 _ -."""
    passthrough: bool = False
    """Mount the single backend with no prefix (requires exactly one enabled backend)."""
    page_size: _Count = 100
    """Items per page of the aggregated lists."""
    request_timeout: _Seconds = 60.0
    """Default seconds a backend gets to answer a request."""
    list_timeout: _Seconds = 5.0
    """Seconds a backend gets to answer a list request while building the catalog."""
    cache_max_entries: _Count = 100_000
    """Most results the cache holds (all backends together)."""
    cache_max_bytes: _Count = 64 * 1024 * 1024
    """Most bytes the cache holds (keys and results, plus a small overhead per entry)."""
    express: bool = True
    """Answer the common call (a handshake-era ``tools/call`` in a known session, to a ready
    HTTP backend with a shared upstream session) in callbacks, without a task: the lowest
    latency. ``false``: every request takes the general path (same answers, more latency)."""


class RootConfig(_Table):
    """One entry of a backend's ``roots`` written as a table: ``{ uri = "file:///srv", name = "srv" }``."""

    uri: _FileUri
    """The root, a ``file://`` URI."""
    name: str | None = None
    """A name for it that the server may show."""


_OneLine = Annotated[str, Meta(min_length=1, pattern=_HEADER_VALUE)]


class CredentialConfig(_Table):
    """``[backends.NAME.credential]``: the HTTP backend's own OAuth 2.0 credential, fetched from
    ``token_url`` and sent as ``Authorization: Bearer ...`` (instead of ``bearer_token``). The
    client's own token never goes to a backend.

    ``grant = "client_credentials"`` (RFC 6749 4.4): the gateway's token, fetched when the backend
    starts and refreshed in the background at 80% of its ``expires_in`` (no ``expires_in``: every
    5 min). A refresh that fails keeps the token until it expires, retrying with backoff (1 s,
    doubling, at most 60 s); a backend with no valid token is DOWN (``no token from the token
    endpoint: ...``) and retried like an unreachable one.

    ``grant = "token_exchange"`` (RFC 8693): each call made for a client carries a token the
    endpoint issued for *that client* (the client's token as ``subject_token``, this backend as
    ``audience``), which is what a child gateway needs to apply its own rules. Exchanged tokens
    are cached per caller (issuer, subject, roles, scopes) until their expiry (and never past the
    client's own token's), at most 10,000; concurrent calls of one caller share one exchange. The
    gateway's own requests (initialize, the catalog's lists, the notification stream) carry a
    ``client_credentials`` token of the same client, as above. Needs ``[auth]`` with a JWT
    issuer (the subject token is the caller's JWT; an API key or a client certificate has none,
    and is refused 403) and ``session = "per-client"`` (each caller's upstream session is opened
    with its own token: a child gateway binds sessions to their principal). The endpoint refusing
    the subject token (HTTP 400 ``invalid_request``, ``invalid_grant``, ``invalid_target``,
    ``invalid_scope``) answers the client 403 (-32052, ``token_exchange_refused``); any other
    failure (unreachable, 5xx, the gateway's client refused) 503 (-32054,
    ``token_exchange_failed``). Nothing reaches the backend then.
    """

    grant: Literal["client_credentials", "token_exchange"]
    """``client_credentials`` (the gateway's own token) or ``token_exchange`` (one per caller)."""
    token_url: Annotated[str, Meta(min_length=1, pattern=_NO_NUL)]
    """The authorization server's token endpoint: ``https://`` (``http://`` only on a loopback
    address: the client secret must not cross a network in clear)."""
    client_id: _OneLine
    """The gateway's client id at the token endpoint."""
    client_secret: _OneLine
    """Its secret, usually ``"${ENV_VAR}"``."""
    client_auth: Literal["client_secret_basic", "client_secret_post"] = "client_secret_basic"
    """How the client authenticates (RFC 6749 2.3.1): HTTP Basic (the default), or
    ``client_id`` and ``client_secret`` in the form."""
    scope: Annotated[str, Meta(min_length=1, pattern=_HEADER_VALUE)] | None = None
    """The ``scope`` asked for (space-separated); unset: none is sent."""
    audience: Annotated[str, Meta(min_length=1, pattern=_HEADER_VALUE)] | None = None
    """The ``audience`` asked for. Token exchange: defaults to the backend's ``url``;
    client credentials: unset sends none."""
    resource: Annotated[str, Meta(min_length=1, pattern=_HEADER_VALUE)] | None = None
    """An RFC 8707 ``resource`` to ask for as well (unset: none is sent)."""
    subject_token_type: Literal["access_token", "jwt"] = "access_token"
    """Token exchange: the ``subject_token_type`` declared for the client's token
    (``urn:ietf:params:oauth:token-type:access_token`` or ``...:jwt``)."""
    ca_file: _Text | None = None
    """PEM CA bundle to verify ``token_url``'s certificate (default: the system trust store)."""
    timeout: _Seconds = 10.0
    """Seconds one token request may take."""


class BreakerConfig(_Table):
    """``[backends.NAME.breaker]``: a circuit breaker. Transport errors, timeouts and HTTP 5xx
    count as failures; a JSON-RPC error the backend answered does not (it is an answer). When at
    least ``min_calls`` calls ended in the last ``window`` seconds and ``failure_ratio`` of them
    failed, the circuit opens: for ``open_for`` seconds every call is answered at once with 503
    (-32056 ``CircuitOpen``, ``Retry-After``), nothing sent upstream; then up to
    ``half_open_calls`` probe calls go through: one success closes it, a failure opens it again."""

    failure_ratio: Annotated[float, Meta(gt=0, le=1)] = 0.5
    """The share of failed calls in the window that opens the circuit."""
    min_calls: _Count = 20
    """Fewest calls in the window before the ratio is judged."""
    window: _Seconds = 10.0
    """Seconds of calls the ratio is judged over."""
    open_for: _Seconds = 30.0
    """Seconds the circuit stays open before half-open probes."""
    half_open_calls: _Count = 1
    """Probe calls let through at once while half-open."""


class CacheConfig(_Table):
    """``[backends.NAME.cache]``: cache this backend's successful ``tools/call`` results (and
    ``resources/read``, ``prompts/get`` of the names listed). A hit is answered in admission,
    without touching the backend. Never cached: an error (JSON-RPC, or a result with
    ``isError``), an ``input_required`` round, a call with a progress token. A backend's entries
    are dropped on its ``list_changed`` and ``resources/updated`` notifications. Identical calls
    in flight at once (same key, caller included) share one upstream call (coalescing)."""

    tools: list[Annotated[str, Meta(min_length=1, pattern=_NO_NUL)]] = []
    """Names or globs of the backend's own tool, prompt and resource names (not the exposed,
    namespaced ones) whose results are cached."""
    read_only: bool = False
    """Also cache every tool the backend annotates ``readOnlyHint: true``."""
    ttl: _Seconds = 60.0
    """Seconds a result stays fresh (a stateless-era backend's ``ttlMs`` hint, when smaller, wins)."""
    scope: Literal["principal", "shared"] = "principal"
    """``principal``: each caller has its own entries (a result is never served to another
    caller). ``shared``: one entry for every caller, for results that do not depend on who asks
    (a backend's ``cacheScope: "private"`` hint makes a result per-principal anyway)."""


class ToolShapeConfig(_Table):
    """``[backends.NAME.tools.TOOL]``: how the backend's tool ``TOOL`` (its own name) is exposed."""

    alias: _Name | None = None
    """Expose the tool under this name (namespaced as usual); its own name is no longer exposed."""
    description: _Text | None = None
    """The description listed instead of the backend's."""
    hide: bool = False
    """Neither list the tool nor route calls to it."""
    inject: dict[_Text, Any] = {}
    """Arguments forced to these values on every call (whatever the client sent), and removed
    from the listed input schema."""
    defaults: dict[_Text, Any] = {}
    """Argument values used when the client gives none."""


class BackendConfig(_Table):
    """``[backends.NAME]``: one MCP server. Give ``url`` (HTTP) or ``command`` (stdio)."""

    url: str | None = None
    """Streamable HTTP endpoint of the server: ``http://HOST[:PORT]/PATH`` or ``https://...``
    (TLS, port 443 by default; the certificate and host name are verified)."""
    urls: Annotated[list[str], Meta(min_length=1)] | None = None
    """Replicas of one HTTP server, instead of ``url``: each call goes to the replica with the
    fewest calls outstanding; a replica that refuses or fails is ejected for ``eject_for``
    seconds and its calls go to the others; a per-client upstream session stays on its replica."""
    eject_for: _Seconds = 30.0
    """Seconds a failed replica is left out of the balancing."""
    headers: dict[Annotated[str, Meta(pattern=_HEADER_NAME)], _HeaderValue] = {}
    """Static headers sent to an HTTP backend (never the client's credentials)."""
    bearer_token: _HeaderValue | None = None
    """Sent as ``Authorization: Bearer ...`` to an HTTP backend (a static credential; see
    ``credential`` for one fetched from a token endpoint)."""
    credential: CredentialConfig | None = None
    """The backend's own OAuth credential (``[backends.NAME.credential]``: a client-credentials
    token, or a token exchanged per caller); instead of ``bearer_token``."""
    command: Annotated[str, Meta(pattern=_COMMAND)] | None = None
    """Program to spawn for a stdio backend: a name looked up on ``PATH``, or a path."""
    args: list[_Text] = []
    """Its arguments."""
    env: dict[Annotated[str, Meta(pattern=_ENV_NAME)], _Text] = {}
    """Extra environment variables for the process."""
    cwd: _Text | None = None
    """Working directory for the process."""
    namespace: _Name | None = None
    """Prefix for this backend's names (1-32 of A-Z a-z 0-9 _ -); defaults to the backend's name."""
    session: Literal["shared", "per-client"] = "shared"
    """``shared``: one upstream session for all clients. ``per-client``: one per front session."""
    connect_timeout: _Seconds = 10.0
    """Seconds to connect (HTTP) or to start and initialize (stdio)."""
    request_timeout: _Seconds | None = None
    """Seconds a request may take; defaults to ``[gateway] request_timeout``."""
    pool_size: _Count = 64
    """Most keep-alive connections to an HTTP backend."""
    max_concurrency: _Count | None = None
    """Most calls in flight to this backend at once (all its replicas together); unset: no limit."""
    max_queue: Annotated[int, Meta(ge=0)] = 0
    """Calls that may wait for a free slot beyond ``max_concurrency`` (each no longer than its
    deadline). A call beyond both is answered at once with 503 (-32054, ``overloaded``) and
    ``Retry-After``."""
    retries: Annotated[int, Meta(ge=0, le=10)] = 0
    """Retries of a failed call (transport error, timeout, 5xx, a refused connection), only of
    what is safe to repeat: ``resources/read``, ``prompts/get``, tools annotated ``readOnlyHint``
    or ``idempotentHint``, and any call that never left the gateway. Retries are budgeted: at most
    ``retry_ratio`` of the calls of the last 10 s, plus ``retry_floor``."""
    retry_ratio: Annotated[float, Meta(ge=0, le=1)] = 0.2
    """The retry budget's share of recent calls (0.2: at most 20% extra load)."""
    retry_floor: Annotated[int, Meta(ge=0)] = 3
    """Retries always allowed per 10 s on top of ``retry_ratio`` (so a quiet backend can retry too)."""
    breaker: BreakerConfig | None = None
    """A circuit breaker (``[backends.NAME.breaker]``); unset: none."""
    cache: CacheConfig | None = None
    """A result cache (``[backends.NAME.cache]``); unset: nothing of this backend is cached."""
    tools: dict[Annotated[str, Meta(min_length=1, pattern=_NO_NUL)], ToolShapeConfig] = {}
    """Per tool (the backend's own name): alias, description, hide, inject, defaults."""
    hide_destructive: bool = False
    """Hide every tool the backend annotates ``destructiveHint: true`` (or leaves unannotated
    with ``readOnlyHint`` false or absent: the MCP default for ``destructiveHint`` is true)."""
    read_only: bool = False
    """Expose only the tools the backend annotates ``readOnlyHint: true``."""
    restart_initial_delay: _Seconds = 0.5
    """First delay before restarting a dead stdio process (doubles each time)."""
    restart_max_delay: _Seconds = 30.0
    """Longest delay between restarts."""
    enabled: bool = True
    """Set false to keep a backend in the file but not run it."""
    required: bool = False
    """Readiness (``GET /readyz`` on the admin listener) waits for this backend: when any backend
    is ``required``, the gateway is ready only while all of those are; otherwise while at least one
    backend is."""
    ca_file: _Text | None = None
    """PEM CA bundle to verify an ``https://`` backend's certificate (default: the system trust
    store, which honours ``SSL_CERT_FILE``)."""
    tls_verify: bool = True
    """Set false to skip verifying an ``https://`` backend's certificate and host name (the
    gateway warns loudly at start: anyone on the path can read and change the traffic)."""
    identity_headers: dict[_Text, Annotated[str, Meta(pattern=_HEADER_NAME)]] = {}
    """Claims of the caller's token sent to this backend as headers, ``{ sub = "x-user" }``
    (claim -> header), for backends that trust the gateway. The client's token itself is never
    sent, nor any header the client sent: a client's own ``x-user`` goes nowhere. A claim is
    looked up by its name, then as a dotted path (``realm_access.roles``); a string is sent as
    it is (UTF-8), any other value as its JSON; a missing claim, and a value with a control
    character, leading or trailing white space, or over 4 KiB, sends no header. Calls without a
    verified token (API keys, client certificates, no ``[auth]``) and the gateway's own
    requests send none. Such a backend's calls take the general path, not the express lane."""
    roots: list[_FileUri | RootConfig] | None = None
    """The answer to the server's ``roots/list``: ``file://`` URIs (``"file:///srv"``) or tables
    (``{ uri = "file:///srv", name = "srv" }``). When set, the gateway answers ``roots/list``
    itself in every upstream session of this backend, and never asks a client; ``[]`` answers
    no roots. Unset (the default): a ``roots/list`` sent while a client's request is in
    flight goes to that client, any other is refused."""

    @property
    def transport(self) -> Literal["http", "stdio"]:
        """``http`` when ``url`` is set, else ``stdio``."""
        return "http" if self.url or self.urls else "stdio"

    @property
    def url_list(self) -> list[str]:
        """The HTTP endpoints: ``urls``, or ``[url]``; empty for a stdio backend."""
        if self.urls:
            return list(self.urls)
        return [self.url] if self.url else []

    @property
    def root_list(self) -> list[dict[str, str]] | None:
        """``roots`` as the ``roots/list`` result's entries (``uri``, and ``name`` when given); None when unset."""
        if self.roots is None:
            return None
        out: list[dict[str, str]] = []
        for root in self.roots:
            if isinstance(root, str):
                out.append({"uri": root})
            else:
                out.append({"uri": root.uri} if root.name is None else {"uri": root.uri, "name": root.name})
        return out


_JWT_ALGORITHMS = Literal["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
_Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-fA-F]{64}$")]


class ApiKeyConfig(_Table):
    """``[[auth.api_keys]]``: one API key, presented as ``Authorization: Bearer KEY``."""

    subject: Annotated[str, Meta(min_length=1, pattern=_NO_NUL)]
    """Who the key belongs to: the principal's subject (RBAC ``subjects``, audit)."""
    key_sha256: _Sha256Hex | None = None
    """The key's SHA-256, in hex (the key itself stays out of the file)."""
    key: Annotated[str, Meta(min_length=16, pattern=_HEADER_VALUE)] | None = None
    """The key itself, usually ``"${ENV_VAR}"``; give this or ``key_sha256``."""
    roles: list[_Text] = []
    """Roles of this principal (RBAC ``roles``)."""
    scopes: list[_Text] = []
    """Scopes of this principal (RBAC ``scopes``)."""


class JwtIssuerConfig(_Table):
    """``[[auth.jwt]]``: one token issuer whose JWTs are accepted."""

    issuer: Annotated[str, Meta(min_length=1, pattern=_NO_NUL)]
    """The ``iss`` a token must carry, exactly."""
    audiences: Annotated[list[_Text], Meta(min_length=1)]
    """A token's ``aud`` must contain one of these (usually this gateway's ``[auth] resource``)."""
    jwks_url: _Text | None = None
    """Where the issuer publishes its keys (``https://``; fetched off the request path)."""
    jwks_file: _Text | None = None
    """A local JWKS file instead of ``jwks_url``."""
    algorithms: Annotated[list[_JWT_ALGORITHMS], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["RS256"])
    """Signature algorithms accepted from this issuer; a token's own ``alg`` is checked against
    this list and never trusted (no ``none``, no HMAC: a public key is never a shared secret)."""
    roles_claim: _Text | None = None
    """Dotted path of the claim that lists the principal's roles (``realm_access.roles``)."""
    scopes_claim: _Text = "scope"
    """Dotted path of the claim with the scopes (a space-separated string or a list)."""
    leeway: Annotated[float, Meta(ge=0, le=300)] = 30.0
    """Seconds of clock skew allowed on ``exp``, ``nbf`` and ``iat``."""
    ca_file: _Text | None = None
    """PEM CA bundle to verify ``jwks_url``'s certificate (default: the system trust store)."""


class AuthConfig(_Table):
    """``[auth]``: who may call. Without it every client that reaches the port may call every tool."""

    api_keys: list[ApiKeyConfig] = []
    """Static API keys."""
    jwt: list[JwtIssuerConfig] = []
    """Accepted JWT issuers, one table each."""
    resource: _Text | None = None
    """This endpoint's canonical URL (OAuth 2.1 resource server; RFC 9728 metadata). Configured,
    never guessed from the bind address."""
    authorization_servers: list[_Text] = []
    """Authorization servers listed in the protected-resource metadata."""
    scopes_supported: list[_Text] = []
    """Scopes listed in the protected-resource metadata."""


_Glob = Annotated[str, Meta(min_length=1, pattern=_NO_NUL)]


class RbacRule(_Table):
    """``[[rbac.rules]]``: who (any of ``roles``, ``scopes``, ``subjects``; none: every
    authenticated caller) may (``effect``) call what (globs over exposed names and URIs)."""

    name: Annotated[str, Meta(min_length=1, pattern=_NO_NUL)]
    """Named in refusals and decision logs."""
    effect: Literal["allow", "deny"] = "allow"
    """Deny beats allow, whatever the order of the rules."""
    roles: list[_Text] = []
    """The rule applies to a principal with any of these roles."""
    scopes: list[_Text] = []
    """... or any of these scopes."""
    subjects: list[_Text] = []
    """... or one of these subjects."""
    tools: list[_Glob] = []
    """Globs over exposed tool names (``docs__*``)."""
    prompts: list[_Glob] = []
    """Globs over exposed prompt names."""
    resources: list[_Glob] = []
    """Globs over exposed resource URIs (``docs+file:///public/*``)."""
    arguments: dict[_Text, _Glob] = {}
    """An allow rule's conditions on a call's string arguments: ``{ path = "/public/*" }``."""


class RbacConfig(_Table):
    """``[rbac]``: what each caller may call."""

    default: Literal["deny", "allow"] | None = None
    """What no rule decides: ``deny`` when rules exist and this is unset, ``allow`` without rules."""
    mode: Literal["enforce", "shadow"] = "enforce"
    """``shadow`` decides and logs, but never refuses: the way to roll rules out safely."""
    rules: list[RbacRule] = []
    """The rules; deny beats allow."""

    @property
    def default_effect(self) -> Literal["deny", "allow"]:
        """``default``, or what it means when unset."""
        if self.default is not None:
            return self.default
        return "deny" if self.rules else "allow"


class LimitConfig(_Table):
    """``[[limits]]``: a token bucket per key over routed calls (``tools/call``, ``resources/read``,
    ``prompts/get``; never ``initialize``, lists, notifications or pings). A call takes one token
    of ``rate`` (and its request bytes of ``bytes_rate``); the answer's bytes are debited when it
    has passed. A call without a token is refused 429 (-32053, ``Retry-After``, ``RateLimit`` and
    ``RateLimit-Policy`` headers, ``data.retryAfterMs``) and never reaches a backend. Counted per
    worker process: with ``--workers N`` each worker keeps its own buckets."""

    name: Annotated[str, Meta(min_length=1, pattern=_HEADER_VALUE)]
    """Named in refusals (``RateLimit-Policy``) and logs; unique."""
    key: list[Literal["principal", "tool", "backend", "client_ip"]] = []
    """What gets its own bucket: any of ``principal`` (the caller), ``tool`` (the exposed name),
    ``backend``, ``client_ip``; ``[]``: one bucket for everyone."""
    tools: list[_Glob] = msgspec.field(default_factory=lambda: ["*"])
    """Globs over exposed tool and prompt names and resource URIs the limit applies to."""
    rate: Annotated[float, Meta(gt=0)] | None = None
    """Calls per second, refilled continuously."""
    burst: Annotated[float, Meta(ge=1)] | None = None
    """Calls allowed at once (the bucket's size); default: ``max(rate, 1)``."""
    bytes_rate: Annotated[float, Meta(gt=0)] | None = None
    """Bytes per second, request plus response."""
    bytes_burst: Annotated[float, Meta(ge=1)] | None = None
    """Bytes allowed at once; default: ``max(bytes_rate, 1)``."""

    @property
    def calls_burst(self) -> float:
        """``burst``, or its default."""
        return self.burst if self.burst is not None else max(self.rate or 1.0, 1.0)

    @property
    def bytes_capacity(self) -> float:
        """``bytes_burst``, or its default."""
        return self.bytes_burst if self.bytes_burst is not None else max(self.bytes_rate or 1.0, 1.0)


class AdminConfig(_Table):
    """``[admin]``: the admin listener, on its own port (nothing of it is reachable from the MCP
    port): health and readiness, ``/metrics``, backends, sessions, cache, limits, the effective
    config (secrets redacted), reload, and the kill switch. Every path but ``public_paths`` needs
    the admin credential (``Authorization: Bearer ...``): ``token``, or a principal of ``[auth]``
    with one of ``roles``; without it, 401 (with neither set, only ``public_paths`` are served)."""

    host: Annotated[str, Meta(pattern=_HOST)] = "127.0.0.1"
    """Address the admin listener binds (loopback by default: keep it off public networks)."""
    port: _Port = 9090
    """Its TCP port; 0 picks a free one (printed at startup as ``mcp-gateway admin on ...``)."""
    token: Annotated[str, Meta(min_length=16, pattern=_HEADER_VALUE)] | None = None
    """The admin bearer token, usually ``"${ADMIN_TOKEN}"`` (at least 16 characters)."""
    roles: list[_Text] = []
    """Principals of ``[auth]`` (API keys, JWTs) with any of these roles are admins too."""
    public_paths: list[Annotated[str, Meta(pattern=_PATH)]] = msgspec.field(
        default_factory=lambda: ["/healthz", "/readyz"]
    )
    """Paths served without the credential (probes); add ``"/metrics"`` for an open scrape."""


class AuditConfig(_Table):
    """``[audit]``: a tamper-evident audit log (``gateway.ops.audit``): one JSON object per line,
    each carrying ``seq``, the ``prev`` record's hash and its own ``hash`` (HMAC-SHA256 under
    ``key``, or SHA-256 without one), so an edited, deleted, reordered or cut record is found by
    ``mcp-gateway audit verify PATH``. Records are queued by the request path and written in
    batches by a task; a restart continues the file's chain."""

    path: Annotated[str, Meta(min_length=1, pattern=_NO_NUL)]
    """The JSON-lines file (appended to, created with mode 0600); ``"-"`` writes to stdout."""
    key: Annotated[str, Meta(min_length=16, pattern=_NO_NUL)] | None = None
    """The HMAC-SHA256 key (its UTF-8 bytes, at least 16 characters), usually ``"${AUDIT_KEY}"``:
    without the key nobody can rewrite the chain to hide an edit. Unset: plain SHA-256, which
    finds accidents but not a careful forger."""
    on_full: Literal["block", "drop"] = "block"
    """When ``queue_size`` records wait: ``block`` writes them in the caller (nothing is lost,
    the request waits for the disk); ``drop`` drops the record, counts it and logs a warning (at
    most once a second), and the log gets a ``dropped`` record saying how many."""
    queue_size: _Count = 10_000
    """Records that may wait for the writer."""
    fsync: Literal["every", "interval", "never"] = "interval"
    """``every``: fsync after each batch; ``interval``: at most every ``fsync_interval`` seconds;
    ``never``: leave it to the OS."""
    fsync_interval: Annotated[float, Meta(gt=0, le=3600)] = 1.0
    """Seconds between fsyncs with ``fsync = "interval"``."""
    max_bytes: _Count | None = None
    """Rotate when the file reaches this size: it becomes ``PATH.1`` (older ones ``PATH.2``...,
    all kept) and the chain goes on in a new ``PATH``. Unset: never rotate."""
    redact: list[Annotated[str, Meta(min_length=1, pattern=_NO_NUL)]] = []
    """Argument names (at any depth) whose values are recorded as ``"***"``, and left out of the digest."""
    arguments: Literal["digest", "full"] = "digest"
    """How a call's arguments are recorded: ``digest``, the SHA-256 of their canonical JSON
    (``arguments_sha256``); ``full``, the arguments themselves, ``redact`` applied."""


class MetricsConfig(_Table):
    """``[metrics]``: Prometheus metrics (``gateway.ops.metrics``), served at the admin listener's
    ``/metrics``. The table turns them on; without it ``/metrics`` answers 404."""

    tool_labels: Annotated[int, Meta(ge=0, le=10_000)] = 100
    """Most distinct ``tool`` label values on ``mcp_gateway_requests_total``; calls to tools past
    that are counted under ``tool="_other"`` (bounded cardinality). 0: all under ``_other``."""
    buckets: list[Annotated[float, Meta(gt=0)]] = msgspec.field(
        default_factory=lambda: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0]
    )
    """Upper bounds, in seconds, of the latency histogram's buckets (increasing)."""


class TracingConfig(_Table):
    """``[tracing]``: W3C trace context (``gateway.ops.tracing``). The table turns it on: a
    client's ``traceparent``/``tracestate`` (header, or ``params._meta``) is continued, or a new
    trace started, and passed on to the backend (HTTP header and ``params._meta``); with
    ``otlp_endpoint`` set, one span per routed request is exported (OTLP/HTTP, JSON)."""

    otlp_endpoint: _Text | None = None
    """The OTLP/HTTP traces URL, e.g. ``http://collector:4318/v1/traces``; unset: trace ids are
    propagated (and audited) but no span is exported."""
    headers: dict[str, _HeaderValue] = {}
    """Headers sent with each export (an API key, usually ``"${OTLP_TOKEN}"``)."""
    service_name: _Text = "mcp-gateway"
    """The ``service.name`` resource attribute of exported spans."""
    sample_ratio: Annotated[float, Meta(ge=0, le=1)] = 1.0
    """Share of new traces (started by the gateway) that are sampled; a client's ``traceparent``
    keeps its own sampled flag."""
    export_interval: Annotated[float, Meta(gt=0, le=60)] = 1.0
    """Seconds between two exports of the finished spans."""
    max_queue: _Count = 10_000
    """Finished spans that may wait for export; past it, spans are dropped (counted)."""


class Config(_Table):
    """The whole file."""

    server: ServerConfig = ServerConfig()
    """The listener."""
    gateway: GatewayConfig = GatewayConfig()
    """Aggregation and routing."""
    backends: dict[_Name, BackendConfig] = {}
    """The MCP servers behind the gateway, by name (1-32 of A-Z a-z 0-9 _ -)."""
    auth: AuthConfig | None = None
    """Authentication; unset: no authentication (fine on loopback only)."""
    rbac: RbacConfig | None = None
    """Authorization rules; unset: every authenticated caller may call everything."""
    limits: list[LimitConfig] = []
    """Rate limits (``[[limits]]``), each applied to every call it matches."""
    admin: AdminConfig | None = None
    """The admin listener (``[admin]``); unset: none."""
    audit: AuditConfig | None = None
    """The tamper-evident audit log (``[audit]``); unset: none."""
    metrics: MetricsConfig | None = None
    """Prometheus metrics (``[metrics]``); unset: none."""
    tracing: TracingConfig | None = None
    """W3C trace context and OTLP span export (``[tracing]``); unset: none."""


# -- loading ---------------------------------------------------------------------------------------

import difflib  # noqa: E402 - the loader's own imports, kept next to it
import ipaddress  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tomllib  # noqa: E402
import types  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from typing import Union, get_args, get_origin  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

__all__ += ["describe", "load_config", "load_config_text", "stdio_problem", "url_problem"]

_VAR_RE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SECRET_KEYS = frozenset({"bearer_token", "headers", "env", "client_secret", "token", "key"})
# Headers the HTTP backend writes itself; a static one would contradict or break the request.
_RESERVED_HEADERS = frozenset(
    {"host", "content-length", "transfer-encoding", "connection", "content-type", "mcp-session-id", "mcp-protocol-version"}
)


def load_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None, *, check_environment: bool = False
) -> Config:
    """Read a TOML config or a Claude/Cursor ``mcp.json`` (by extension or a leading ``{``).

    ``check_environment``: also check what this machine must provide (see ``load_config_text``).
    """
    source = os.fspath(path)
    try:
        with open(source, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{source}:{line}: not UTF-8 text (byte {raw[exc.start]:#04x})") from None
    fmt = "json" if source.endswith(".json") or text.lstrip().startswith("{") else "toml"
    return load_config_text(text, fmt=fmt, source=source, env=env, check_environment=check_environment)


def load_config_text(
    text: str,
    *,
    fmt: Literal["toml", "json"],
    source: str = "<string>",
    env: Mapping[str, str] | None = None,
    check_environment: bool = False,
) -> Config:
    """Parse, substitute ``${VAR}``, convert to ``Config`` and validate; ConfigError on any problem.

    ``${VAR}`` takes the environment variable VAR, ``${VAR:-default}`` a default
    when it is unset, and ``$$`` is a literal ``$``. ``check_environment`` (what
    ``mcp-gateway check`` does) also refuses what would leave an enabled backend
    down on this machine: a stdio ``command`` not found on PATH (or a path that
    does not exist or is not executable) and a ``cwd`` that is not a directory.
    """
    env = os.environ if env is None else env
    where = _Where(source, text, fmt)
    if fmt == "json":
        data = _from_mcp_json(text, where)
    else:
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise _toml_error(exc, source) from None
    data = _substitute(data, env, where, ())
    backends = data.get("backends") if isinstance(data, dict) else None
    if isinstance(backends, dict):
        # msgspec names no dict key in its error paths, so check each backend by name first.
        for name, entry in backends.items():
            try:
                msgspec.convert(name, _Name)
            except msgspec.ValidationError as exc:
                why = _explain(str(exc).partition(" - at ")[0], ())[0]
                raise where.error(("backends", str(name)), f"backend names {why}") from None
            try:
                msgspec.convert(entry, BackendConfig)
            except msgspec.ValidationError as exc:
                raise _from_validation(exc, data, where, ("backends", str(name))) from None
    try:
        config = msgspec.convert(data, Config)
    except msgspec.ValidationError as exc:
        raise _from_validation(exc, data, where) from None
    _validate(config, where)
    if check_environment:
        for name, backend in config.backends.items():
            if backend.enabled and backend.transport == "stdio":
                problem = stdio_problem(backend)
                if problem is not None:
                    raise where.error(("backends", name, problem[0]), problem[1])
    return config


def url_problem(url: str) -> str | None:
    """What is wrong with a backend URL (None: it is an ``http(s)://HOST[:PORT]/PATH`` the HTTP backend can use)."""
    if not url.isascii():
        return "must be ASCII (percent-encode other characters; use the punycode form of a host name)"
    if any(c.isspace() or ord(c) < 0x20 or c == "\x7f" for c in url):
        return "must not contain spaces or control characters"
    scheme, sep, _ = url.partition("://")
    if not sep or not re.fullmatch(r"[A-Za-z][A-Za-z0-9+.-]*", scheme):
        return "is not a URL: expected http://HOST[:PORT]/PATH"
    scheme = scheme.lower()
    if scheme not in _URL_SCHEMES:
        supported = ", ".join(f"{s}://" for s in _URL_SCHEMES)
        return f"unknown URL scheme {scheme!r}; supported: {supported}"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"is not a valid URL ({exc})"
    if "@" in parts.netloc:
        return "must not contain user:password@ (use 'bearer_token' or 'headers')"
    if not parts.hostname:
        return "has no host: expected http://HOST[:PORT]/PATH"
    port = parts.netloc.rpartition("]")[2] if parts.netloc.startswith("[") else parts.netloc
    port = port.rpartition(":")[2] if ":" in port else ""
    if port and not port.isdigit():
        return f"port {port!r} is not a number"
    if port and not 1 <= int(port) <= 65535:
        return f"port {int(port)} is out of range (1..65535)"
    return None


def stdio_problem(backend: BackendConfig) -> tuple[str, str] | None:
    """Why ``backend``'s process cannot be started on this machine: ``(key, reason)`` with key
    ``command`` or ``cwd``; None when it can, as far as can be told without starting it.

    ``command`` is looked up the way the process is spawned: a name on the ``PATH`` of the
    process's environment (the gateway's, with ``env`` over it), a path relative to ``cwd``.
    """
    cwd = backend.cwd
    if cwd is not None:
        if not os.path.exists(cwd):
            return "cwd", f"working directory {cwd!r} does not exist"
        if not os.path.isdir(cwd):
            return "cwd", f"working directory {cwd!r} is not a directory"
    command = backend.command
    if not command:
        return None
    if "/" in command:
        full = os.path.join(cwd or os.getcwd(), command)
        if not os.path.exists(full):
            return "command", f"command {command!r} does not exist"
        if os.path.isdir(full):
            return "command", f"command {command!r} is a directory"
        if not os.access(full, os.X_OK) or not os.stat(full).st_mode & 0o111:
            return "command", f"command {command!r} is not executable"
        return None
    search = {**os.environ, **backend.env}.get("PATH", os.defpath)
    if shutil.which(command, path=search) is None:
        return "command", f"command {command!r} is not found on PATH"
    return None


# -- where a key is, and errors that say so --------------------------------------------------------

_TOML_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|\'[^\']*\')'
_TOML_KEY_PATH = rf"{_TOML_KEY}(?:\s*\.\s*{_TOML_KEY})*"
_TOML_HEADER = re.compile(rf"^\s*\[\[?\s*({_TOML_KEY_PATH})\s*\]\]?")
_TOML_ASSIGN = re.compile(rf"^\s*({_TOML_KEY_PATH})\s*=")
_TOML_PART = re.compile(_TOML_KEY)
_JSON_TOKEN = re.compile(r'"(?:[^"\\\n]|\\.)*"|[{}\[\]:\n]')


def _toml_keys(path: str) -> tuple[str, ...]:
    keys = []
    for match in _TOML_PART.finditer(path):
        key = match.group(0)
        if key.startswith('"'):
            try:
                key = json.loads(key)
            except ValueError:
                key = key[1:-1]
        elif key.startswith("'"):
            key = key[1:-1]
        keys.append(key)
    return tuple(keys)


class _Where:
    """The source text's key locations: each dotted path (tables, keys) and the line it is first on."""

    def __init__(self, source: str, text: str, fmt: str) -> None:
        self.source = source
        self.fmt = fmt
        self.lines: dict[tuple[str, ...], int] = {}
        if fmt == "json":
            self._scan_json(text)
        else:
            self._scan_toml(text)

    def _record(self, path: tuple[str, ...], line: int) -> None:
        for end in range(1, len(path) + 1):
            self.lines.setdefault(path[:end], line)

    def _scan_toml(self, text: str) -> None:
        table: tuple[str, ...] = ()
        closing: str | None = None  # the delimiter of a multi-line string we are inside
        arrays: dict[tuple[str, ...], int] = {}  # [[array.of.tables]] -> how many seen so far
        for number, line in enumerate(text.splitlines(), 1):
            if closing is not None:
                if line.count(closing) % 2:
                    closing = None
                continue
            header = _TOML_HEADER.match(line)
            if header:
                table = _toml_keys(header.group(1))
                if line.lstrip().startswith("[["):  # the next element: its index is part of the path
                    index = arrays.get(table, 0)
                    arrays[table] = index + 1
                    table = (*table, str(index))
                self._record(table, number)
                continue
            assign = _TOML_ASSIGN.match(line)
            if assign:
                self._record((*table, *_toml_keys(assign.group(1))), number)
            for delimiter in ('"""', "'''"):
                if line.count(delimiter) % 2:
                    closing = delimiter
                    break

    def _scan_json(self, text: str) -> None:
        stack: list[list[Any]] = []  # [bracket, current key]
        pending: tuple[str, int] | None = None
        number = 1
        for match in _JSON_TOKEN.finditer(text):
            token = match.group(0)
            if token == "\n":
                number += 1
                continue
            if token.startswith('"'):
                try:
                    pending = (json.loads(token), number)
                except ValueError:
                    pending = (token[1:-1], number)
                continue
            if token == ":" and pending is not None and stack and stack[-1][0] == "{":
                stack[-1][1] = pending[0]
                self._record(tuple(key for bracket, key in stack if bracket == "{" and key is not None), pending[1])
            elif token in "{[":
                stack.append([token, None])
            elif token in "}]" and stack:
                stack.pop()
            pending = None

    def line(self, path: Sequence[str | int]) -> int:
        """The line of ``path`` or, when it is not written out (a default, an inline table's key),
        of its closest enclosing key; 0 when none is found."""
        keys = tuple(str(p) for p in path)
        if self.fmt == "json" and keys[:1] == ("backends",):
            keys = ("mcpServers", *keys[1:])
        while keys:
            if keys in self.lines:
                return self.lines[keys]
            keys = keys[:-1]
        return 0

    def prefix(self, path: Sequence[str | int]) -> str:
        """``source:LINE: `` (or ``source: `` when the line is unknown)."""
        line = self.line(path)
        return f"{self.source}:{line}: " if line else f"{self.source}: "

    def name(self, path: Sequence[str | int]) -> str:
        """``path`` as the file spells it: ``backends.a.url``, in an mcp.json ``mcpServers.a.url``."""
        if self.fmt == "json" and path[:1] == ("backends",):
            path = ("mcpServers", *path[1:])
        return _dotted(path)

    def error(self, path: Sequence[str | int], why: str) -> ConfigError:
        """``source:LINE: 'a.b': why``."""
        return ConfigError(f"{self.prefix(path)}'{self.name(path)}': {why}")


def _dotted(path: Sequence[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _toml_error(exc: tomllib.TOMLDecodeError, source: str) -> ConfigError:
    message = str(exc)
    at = re.search(r"\s*\(at line (\d+), column (\d+)\)$", message)
    if at:
        return ConfigError(f"{source}:{at.group(1)}: invalid TOML: {message[: at.start()]} (column {at.group(2)})")
    return ConfigError(f"{source}: invalid TOML: {message}")


def _unwrap(tp: Any) -> Any:
    """The type under ``Annotated`` and ``X | None``; of a union of a Struct and others, the Struct."""
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif get_origin(tp) in (Union, types.UnionType):
            members = [a for a in get_args(tp) if a is not type(None)]
            structs = [a for a in members if isinstance(a, type) and issubclass(a, msgspec.Struct)]
            if len(members) == 1:
                tp = members[0]
            elif structs:
                tp = structs[0]
            else:
                return tp
        else:
            return tp


def _type_at(path: Sequence[str | int]) -> Any:
    """The declared type of the value at ``path`` in a ``Config`` (None if there is none)."""
    tp: Any = Config
    for part in path:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            fields = {f.name: f.type for f in msgspec.structs.fields(tp)}
            if part not in fields:
                return None
            tp = fields[part]
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        else:
            return None
    return _unwrap(tp)


_KINDS = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false",
          "array": "a list", "object": "a table", "null": "empty"}


def _kinds(names: str) -> str:
    return " or ".join(_KINDS.get(n, n) for n in names.split(" | ") if n != "null") or "empty"


def _explain(reason: str, path: Sequence[str | int]) -> tuple[str, bool]:
    """msgspec's reason for a bad value, as what the value must be; and whether showing the
    value itself helps (not for a value of the wrong type, which the reason names)."""
    if match := re.fullmatch(r"Expected `[^`]+` matching regex (.+)", reason):
        hints = {repr(pattern): hint for pattern, hint in _PATTERN_HINTS.items()}
        return hints.get(match.group(1), f"must match {match.group(1)}"), True
    if match := re.fullmatch(r"Expected `[^`]+` ([<>]=?) (\S+)", reason):
        bound = match.group(2)
        return f"must be {match.group(1)} {bound[:-2] if bound.endswith('.0') else bound}", True
    if match := re.fullmatch(r"Expected `([^`]+)`, got `([^`]+)`", reason):
        return f"must be {_kinds(match.group(1))}, not {_kinds(match.group(2))}", False
    if reason.startswith("Invalid enum value"):
        tp = _type_at(path)
        choices = get_args(tp) if get_origin(tp) is Literal else ()
        if choices:
            return "must be one of " + ", ".join(repr(c) for c in choices), True
    if match := re.fullmatch(r"Object missing required field `([^`]+)`", reason):
        return f"needs '{match.group(1)}'", False
    return (reason[0].lower() + reason[1:] if reason else "is invalid"), False


def _value_at(data: Any, path: Sequence[str | int]) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


def _failing_key(data: Any, path: Sequence[str | int], *, key: bool) -> str | None:
    """Of the table at ``path``, the first key (``key=True``) or the key of the first value
    that does not convert to its declared type: msgspec writes ``[...]`` for it."""
    table, declared = _value_at(data, path), _type_at(path)
    if not isinstance(table, dict) or get_origin(declared) is not dict:
        return None
    key_type, value_type = get_args(declared)
    for name, value in table.items():
        try:
            msgspec.convert(name if key else value, key_type if key else value_type)
        except msgspec.ValidationError:
            return str(name)
    return None


def _from_validation(
    exc: msgspec.ValidationError, data: Any, where: _Where, prefix: tuple[str, ...] = ()
) -> ConfigError:
    """Turn msgspec's ``<reason> - at `$.server.x``` into ``file:LINE: 'server.x': <what it must be>``."""
    reason, _, at = str(exc).partition(" - at `")
    is_key = at.startswith("key` in `")
    if is_key:
        at = at[len("key` in `") :]
    path: list[str | int] = [*prefix]
    for name, index, some in re.findall(r"\.([^.\[`]+)|\[(\d+)\]|\[(\.\.\.)\]", at.rstrip("`")):
        if some:
            found = _failing_key(data, path, key=False)
            if found is None:
                break
            path.append(found)
        else:
            path.append(name if name else int(index))
    unknown = re.fullmatch(r"Object contains unknown field `([^`]+)`", reason)
    if unknown:
        key = unknown.group(1)
        path.append(key)
        table = _type_at(path[:-1])
        is_table = isinstance(table, type) and issubclass(table, msgspec.Struct)
        close = difflib.get_close_matches(key, [f.name for f in msgspec.structs.fields(table)] if is_table else [], 1, 0.6)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        return ConfigError(f"{where.prefix(path)}unknown key '{where.name(path)}'{hint}")
    why, show = _explain(reason, path)
    if is_key:
        bad = _failing_key(data, path, key=True)
        return where.error(path, f"key {bad!r} {why}" if bad is not None else f"a key {why}")
    value = _value_at(data, path)
    secret = _SECRET_KEYS & {p for p in path if isinstance(p, str)}
    if show and isinstance(value, (int, float, str)) and not isinstance(value, bool) and not secret:
        text = repr(value)
        why += f", got {text if len(text) <= 60 else text[:57] + '...'}"
    if not path:
        return ConfigError(f"{where.source}: the file {why}")
    return where.error(path, why)


def _from_mcp_json(text: str, where: _Where) -> dict[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{where.source}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    servers = doc.get("mcpServers") if isinstance(doc, dict) else None
    if not isinstance(servers, dict):
        raise ConfigError(f"{where.source}: an mcp.json needs an object 'mcpServers'")
    known = {"command", "args", "env", "cwd", "url", "headers"}
    backends: dict[str, Any] = {}
    for name, entry in servers.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{where.prefix(('backends', name))}'mcpServers.{name}' must be an object")
        if entry.get("type") == "sse":
            raise ConfigError(
                f"{where.prefix(('backends', name, 'type'))}'mcpServers.{name}': the old SSE transport is not "
                "supported; use the server's Streamable HTTP URL"
            )
        backend = {k: entry[k] for k in known if k in entry}
        if entry.get("disabled") is True:
            backend["enabled"] = False
        unknown = set(entry) - known - {"type", "disabled"}
        if unknown:
            key = sorted(unknown)[0]
            raise ConfigError(f"{where.prefix(('backends', name, key))}unknown key '{where.name(('backends', name, key))}'")
        backends[name] = backend
    return {"backends": backends}


def _substitute(value: Any, env: Mapping[str, str], where: _Where, path: tuple[str | int, ...]) -> Any:
    if isinstance(value, str):

        def repl(match: re.Match[str]) -> str:
            if match.group(0) == "$$":
                return "$"
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise where.error(path, f"uses ${{{name}}}, which is not set")

        return _VAR_RE.sub(repl, value)
    if isinstance(value, dict):
        return {k: _substitute(v, env, where, (*path, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, env, where, (*path, i)) for i, v in enumerate(value)]
    return value


def _validate_auth(config: Config, where: _Where) -> None:
    """``[auth]`` and ``[server]`` TLS: what the types cannot say."""
    server = config.server
    if (server.tls_cert_file is None) != (server.tls_key_file is None):
        raise where.error(("server", "tls_cert_file"), "needs 'tls_key_file' too (and the other way round)")
    if server.tls_client_ca_file is not None and server.tls_cert_file is None:
        raise where.error(("server", "tls_client_ca_file"), "mutual TLS needs 'tls_cert_file' and 'tls_key_file'")
    auth = config.auth
    if auth is None:
        return
    for i, key in enumerate(auth.api_keys):
        if (key.key is None) == (key.key_sha256 is None):
            raise where.error(("auth", "api_keys", i), "give exactly one of 'key' or 'key_sha256'")
    for i, issuer in enumerate(auth.jwt):
        if (issuer.jwks_url is None) == (issuer.jwks_file is None):
            raise where.error(("auth", "jwt", i), "give exactly one of 'jwks_url' or 'jwks_file'")
        if issuer.jwks_url is not None and not issuer.jwks_url.startswith(("https://", "http://")):
            raise where.error(("auth", "jwt", i, "jwks_url"), "must be an https:// URL")


def _validate(config: Config, where: _Where) -> None:
    """What the types cannot say: one of url/command, URLs, options of the other transport,
    headers the gateway writes itself, unique namespaces, passthrough's single backend."""
    _validate_auth(config, where)
    _validate_limits(config, where)
    _validate_admin(config, where)
    _validate_audit(config, where)
    _validate_observability(config, where)
    enabled = {name: b for name, b in config.backends.items() if b.enabled}
    if config.gateway.passthrough and len(enabled) != 1:
        raise where.error(("gateway", "passthrough"), f"needs exactly one enabled backend, found {len(enabled)}")
    if config.gateway.passthrough:
        # Passthrough sends a name the catalog does not list to the backend as it is: a hidden or
        # aliased-away tool would still be reachable by its own name.
        for name, backend in enabled.items():
            for key, set_ in (("hide_destructive", backend.hide_destructive), ("read_only", backend.read_only)):
                if set_:
                    raise where.error(("backends", name, key), "cannot hide tools under [gateway] passthrough (unlisted names reach the backend)")
            for tool, shape in backend.tools.items():
                for key, set_ in (("hide", shape.hide), ("alias", shape.alias is not None)):
                    if set_:
                        raise where.error(
                            ("backends", name, "tools", tool, key),
                            "cannot hide or rename a tool under [gateway] passthrough (unlisted names reach the backend)",
                        )
    namespaces: dict[str, str] = {}
    for name, backend in config.backends.items():
        _validate_backend(("backends", name), backend, where)
        _validate_credential(("backends", name), backend, config, where)
        namespace = backend.namespace or name
        if not backend.enabled:
            continue
        if namespace in namespaces:
            key = "namespace" if backend.namespace else None
            raise where.error(
                ("backends", name, key) if key else ("backends", name),
                f"namespace {namespace!r} is also used by backend {namespaces[namespace]!r}",
            )
        namespaces[namespace] = name


def _validate_backend(path: tuple[str, str], backend: BackendConfig, where: _Where) -> None:
    given = [key for key in ("url", "urls", "command") if getattr(backend, key) is not None]
    if len(given) != 1:
        raise where.error(path, "give exactly one of 'url' or 'urls' (HTTP) or 'command' (stdio)")
    if backend.command is None:
        for i, url in enumerate(backend.url_list):
            problem = url_problem(url)
            if problem:
                raise where.error((*path, "url") if backend.url is not None else (*path, "urls", i), problem)
        if backend.urls is not None and len(set(backend.urls)) != len(backend.urls):
            raise where.error((*path, "urls"), "lists a replica twice")
        for key in ("args", "env", "cwd"):
            if getattr(backend, key):
                raise where.error((*path, key), "is for stdio backends ('command'); this one has 'url'")
        if not any(url.lower().startswith("https://") for url in backend.url_list):
            for key, set_ in (("ca_file", backend.ca_file is not None), ("tls_verify", not backend.tls_verify)):
                if set_:
                    raise where.error((*path, key), "is for https:// backends; this one's url is plain http://")
        for header in backend.headers:
            if header.lower() in _RESERVED_HEADERS:
                raise where.error((*path, "headers", header), "is set by the gateway itself")
            if header.lower() == "authorization" and backend.bearer_token:
                raise where.error((*path, "headers", header), "conflicts with 'bearer_token': give one of them")
    else:
        for key in ("headers", "bearer_token", "ca_file"):
            if getattr(backend, key):
                raise where.error((*path, key), "is for HTTP backends ('url'); this one has 'command'")
        if not backend.tls_verify:
            raise where.error((*path, "tls_verify"), "is for HTTP backends ('url'); this one has 'command'")
    _validate_traffic(path, backend, where)
    if backend.restart_initial_delay > backend.restart_max_delay:
        raise where.error(
            (*path, "restart_initial_delay"),
            f"must not exceed restart_max_delay ({backend.restart_max_delay:g})",
        )


def _validate_traffic(path: tuple[str, str], backend: BackendConfig, where: _Where) -> None:
    """Queue, replicas and tool shaping: what the types cannot say."""
    if backend.max_queue and backend.max_concurrency is None:
        raise where.error((*path, "max_queue"), "needs 'max_concurrency' (a queue waits for a free slot)")
    if backend.urls is None and backend.eject_for != 30.0:  # the default: set only with replicas
        raise where.error((*path, "eject_for"), "is for HTTP backends with replicas ('urls')")
    aliases: dict[str, str] = {}
    for tool, shape in backend.tools.items():
        tpath = (*path, "tools", tool)
        if shape.hide and (shape.alias or shape.description or shape.inject or shape.defaults):
            raise where.error((*tpath, "hide"), "a hidden tool takes no alias, description, inject or defaults")
        both = sorted(set(shape.inject) & set(shape.defaults))
        if both:
            raise where.error((*tpath, "defaults", both[0]), "is also in 'inject' (an injected value always wins)")
        if shape.alias is not None:
            if shape.alias in aliases:
                raise where.error((*tpath, "alias"), f"{shape.alias!r} is also the alias of tool {aliases[shape.alias]!r}")
            other = backend.tools.get(shape.alias)
            if shape.alias != tool and other is not None and other.alias is None and not other.hide:
                raise where.error((*tpath, "alias"), f"{shape.alias!r} is the name of another tool of this backend")
            aliases[shape.alias] = tool


def _validate_admin(config: Config, where: _Where) -> None:
    """``[admin]``: roles only with ``[auth]``, a port of its own. (Without ``token`` or ``roles``
    only ``public_paths`` are served: a probes-and-metrics listener.)"""
    admin = config.admin
    if admin is None:
        return
    if admin.roles and config.auth is None:
        raise where.error(("admin", "roles"), "needs [auth]: roles are read from authenticated principals")
    if admin.port != 0 and admin.port == config.server.port:
        raise where.error(("admin", "port"), f"{admin.port} is the MCP port too: the admin listener needs its own")


def _validate_audit(config: Config, where: _Where) -> None:
    """``[audit]``: options that only mean something with others."""
    audit = config.audit
    if audit is None:
        return
    if audit.fsync_interval != 1.0 and audit.fsync != "interval":  # the default: set only with "interval"
        raise where.error(("audit", "fsync_interval"), f"is for fsync = \"interval\"; this log has fsync = {audit.fsync!r}")
    if audit.path == "-" and audit.max_bytes is not None:
        raise where.error(("audit", "max_bytes"), "cannot rotate stdout (path = \"-\")")


def _validate_observability(config: Config, where: _Where) -> None:
    """``[metrics]`` buckets in increasing order; ``[tracing] otlp_endpoint`` an HTTP URL."""
    metrics = config.metrics
    if metrics is not None:
        buckets = metrics.buckets
        if not buckets or any(not a < b for a, b in zip(buckets, [*buckets[1:], math.inf])):
            raise where.error(("metrics", "buckets"), "must be one or more finite bounds in increasing order")
    tracing = config.tracing
    if tracing is not None and tracing.otlp_endpoint is not None:
        problem = url_problem(tracing.otlp_endpoint)
        if problem is not None:
            raise where.error(("tracing", "otlp_endpoint"), problem)


def _validate_limits(config: Config, where: _Where) -> None:
    """``[[limits]]``: unique names, a rate for each, no key twice."""
    names: dict[str, int] = {}
    for i, limit in enumerate(config.limits):
        lpath = ("limits", i)
        if limit.name in names:
            raise where.error((*lpath, "name"), f"{limit.name!r} is also the name of limit {names[limit.name]}")
        names[limit.name] = i
        if limit.rate is None and limit.bytes_rate is None:
            raise where.error(lpath, "give 'rate' (calls per second) or 'bytes_rate' (bytes per second), or both")
        if limit.burst is not None and limit.rate is None:
            raise where.error((*lpath, "burst"), "needs 'rate'")
        if limit.bytes_burst is not None and limit.bytes_rate is None:
            raise where.error((*lpath, "bytes_burst"), "needs 'bytes_rate'")
        if len(set(limit.key)) != len(limit.key):
            raise where.error((*lpath, "key"), "names a part twice")
        for field in ("rate", "burst", "bytes_rate", "bytes_burst"):
            value = getattr(limit, field)
            if value is not None and not math.isfinite(value):
                raise where.error((*lpath, field), "must be a finite number (leave out a limit that never refuses)")


# Header names an identity header may not take: what the gateway writes itself, the credential,
# and the MCP transport's own (mcp-method, mcp-name, mcp-param-* of the stateless era).
_IDENTITY_RESERVED = _RESERVED_HEADERS | {"authorization", "accept", "user-agent", "cookie"}


def _loopback(host: str | None) -> bool:
    if host is None:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _validate_credential(path: tuple[str, str], backend: BackendConfig, config: Config, where: _Where) -> None:
    """``credential`` and ``identity_headers``: HTTP backends only, no second credential, a token
    URL that keeps the client secret off the network in clear, what token exchange needs."""
    credential = backend.credential
    for key, set_ in (("credential", credential is not None), ("identity_headers", bool(backend.identity_headers))):
        if set_ and backend.command is not None:
            raise where.error((*path, key), "is for HTTP backends ('url'); this one has 'command'")
    if credential is not None:
        cpath = (*path, "credential")
        if backend.bearer_token:
            raise where.error(cpath, "conflicts with 'bearer_token': give one of them")
        for header in backend.headers:
            if header.lower() == "authorization":
                raise where.error((*path, "headers", header), "conflicts with 'credential': give one of them")
        url = credential.token_url
        problem = url_problem(url)
        if problem:
            raise where.error((*cpath, "token_url"), problem)
        parts = urlsplit(url)
        if parts.scheme.lower() != "https" and not _loopback(parts.hostname):
            raise where.error(
                (*cpath, "token_url"),
                "must be an https:// URL (http:// only on a loopback address: the client secret must not cross a network in clear)",
            )
        if credential.ca_file is not None and parts.scheme.lower() != "https":
            raise where.error((*cpath, "ca_file"), "is for an https:// token_url; this one is plain http://")
        if credential.grant == "token_exchange":
            if backend.session != "per-client":
                raise where.error(
                    (*path, "session"),
                    "grant 'token_exchange' needs session = \"per-client\": each caller's upstream session is opened "
                    "with that caller's exchanged token (a child gateway binds sessions to their principal)",
                )
            if config.auth is None or not config.auth.jwt:
                raise where.error(
                    (*cpath, "grant"),
                    "'token_exchange' needs [auth] with a JWT issuer ([[auth.jwt]]): the token exchanged is the caller's JWT",
                )
    seen: dict[str, str] = {}
    static = {h.lower() for h in backend.headers}
    for claim, header in backend.identity_headers.items():
        hpath = (*path, "identity_headers", claim)
        lower = header.lower()
        if not claim:
            raise where.error((*path, "identity_headers"), "a claim name must not be empty")
        if lower in _IDENTITY_RESERVED or lower.startswith("mcp-"):
            raise where.error(hpath, f"header {header!r} is set by the gateway itself")
        if lower in static:
            raise where.error(hpath, f"header {header!r} is also a static header in 'headers'")
        if lower in seen:
            raise where.error(hpath, f"header {header!r} is also given to claim {seen[lower]!r}")
        seen[lower] = claim


def describe(config: Config) -> str:
    """What ``mcp-gateway serve`` would run with this config, secrets redacted."""
    s, g = config.server, config.gateway
    if s.tls_cert_file is None:
        tls = "tls: off (plain HTTP)"
    else:
        tls = f"tls: on (cert {s.tls_cert_file}, key {s.tls_key_file}), " + (
            f"mutual TLS: client certificates signed by {s.tls_client_ca_file} required"
            if s.tls_client_ca_file else "mutual TLS: off"
        )
    lines = [
        f"listen: {'https' if s.tls_cert_file is not None else 'http'}://{s.host}:{s.port}{s.path}",
        tls,
        f"limits: body {s.max_body_bytes} B, headers {s.max_header_bytes} B / {s.max_headers} lines, "
        f"url {s.max_url_bytes} B, header timeout {s.header_timeout:g} s, idle {s.idle_timeout:g} s",
        f"routing: {'passthrough (no prefix)' if g.passthrough else f'namespaces, separator {g.separator!r}'}, "
        f"page size {g.page_size}, request timeout {g.request_timeout:g} s",
        f"backends: {len(config.backends)}",
    ]
    if config.admin is not None:
        a = config.admin
        who = " or ".join(x for x in ("token ***" if a.token else "", f"roles {', '.join(a.roles)}" if a.roles else "") if x)
        lines.insert(-1, f"admin: http://{a.host}:{a.port} (credential: {who}; public: {', '.join(a.public_paths) or 'none'})")
    for limit in config.limits:
        rates = []
        if limit.rate is not None:
            rates.append(f"{limit.rate:g}/s burst {limit.calls_burst:g}")
        if limit.bytes_rate is not None:
            rates.append(f"{limit.bytes_rate:g} B/s burst {limit.bytes_capacity:g} B")
        per = ", ".join(limit.key) if limit.key else "everyone together"
        lines.insert(-1, f"limit {limit.name!r}: {' and '.join(rates)} per {per}, tools {', '.join(limit.tools)}")
    if config.audit is not None:
        lines.insert(-1, _describe_audit(config.audit))
    for name, b in config.backends.items():
        if b.command is None:
            target = " ".join(b.url_list)
            extras = [f"{k}: ***" for k in b.headers] + (["bearer token ***"] if b.bearer_token else [])
            c = b.credential
            if c is not None:
                extras.append(f"credential {c.grant} from {c.token_url} (client {c.client_id!r}, secret ***)")
            if b.identity_headers:
                extras.append("identity headers " + ", ".join(f"{k} -> {v}" for k, v in b.identity_headers.items()))
            if extras:
                target += f" ({', '.join(extras)})"
        else:
            target = " ".join([b.command or "", *b.args])
            if b.env:
                target += f" (env: {', '.join(f'{k}=***' for k in b.env)})"
        state = "" if b.enabled else " [disabled]"
        if b.ca_file is not None:
            state = f", ca_file {b.ca_file}" + state
        if not b.tls_verify:
            state = ", tls_verify = false (certificate NOT verified)" + state
        roots = b.root_list
        if roots is not None:
            state = f", roots [{', '.join(r['uri'] for r in roots)}]" + state
        lines.append(f"  {name}: {b.transport} {target}, namespace {b.namespace or name!r}, session {b.session}{state}")
        traffic = _describe_traffic(b)
        if traffic:
            lines.append(f"    {traffic}")
    return "\n".join(lines)


def _describe_audit(a: AuditConfig) -> str:
    """One line of ``[audit]``, the key redacted."""
    where = "stdout" if a.path == "-" else a.path
    chain = "HMAC-SHA256 (key ***)" if a.key is not None else "SHA-256 (no key)"
    sync = f"every {a.fsync_interval:g} s" if a.fsync == "interval" else a.fsync
    rotate = f", rotate at {a.max_bytes} B" if a.max_bytes is not None else ""
    redact = f", redact {', '.join(a.redact)}" if a.redact else ""
    return (
        f"audit: {where}, chain {chain}, fsync {sync}{rotate}, queue {a.queue_size} ({a.on_full} when full), "
        f"arguments {a.arguments}{redact}"
    )


def _describe_traffic(b: BackendConfig) -> str:
    """One line of a backend's traffic options (replicas, concurrency, retries, breaker, cache, shaping)."""
    parts = []
    if b.urls:
        parts.append(f"{len(b.urls)} replicas (ejected for {b.eject_for:g} s)")
    if b.max_concurrency is not None:
        parts.append(f"max {b.max_concurrency} in flight, {b.max_queue} queued")
    if b.retries:
        parts.append(f"{b.retries} retries (budget {b.retry_ratio:.0%} + {b.retry_floor} per 10 s)")
    if b.breaker is not None:
        k = b.breaker
        parts.append(
            f"breaker at {k.failure_ratio:.0%} of >= {k.min_calls} calls in {k.window:g} s, open {k.open_for:g} s"
        )
    if b.cache is not None:
        c = b.cache
        what = ", ".join(c.tools) + (" + readOnlyHint tools" if c.read_only else "")
        parts.append(f"cache {what or 'nothing'} for {c.ttl:g} s per {c.scope}")
    shaped = [f"{t} as {s.alias}" if s.alias else t for t, s in b.tools.items() if not s.hide]
    hidden = [t for t, s in b.tools.items() if s.hide]
    if shaped:
        parts.append("shaped " + ", ".join(shaped))
    if hidden:
        parts.append("hidden " + ", ".join(hidden))
    if b.hide_destructive:
        parts.append("destructive tools hidden")
    if b.read_only:
        parts.append("read-only tools only")
    return "; ".join(parts)
