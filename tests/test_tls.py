"""TLS both ways, with real parts: a test CA (``trustme``), the official SDK client and
server, the gateway as a process (uvloop) and in this process.

- The listener serves HTTPS (``[server] tls_cert_file``/``tls_key_file``), ALPN ``http/1.1``,
  also with ``--workers``; with ``tls_client_ca_file`` it requires a client certificate and
  puts its subject on each request (``Request.tls_subject``).
- ``https://`` backends: the certificate and host name are verified against ``ca_file`` or
  the system trust store (``SSL_CERT_FILE``); a failure leaves the backend DOWN, saying so,
  and it is retried; ``tls_verify = false`` connects to anything, and says so loudly.
- A failed handshake (plain HTTP on the HTTPS port, no or a foreign client certificate)
  closes that connection only: one log line, no traceback, the other clients served.
- At start, a listener beyond loopback without ``[auth]`` is warned about.

Every attack comes with its legitimate twin, so each test can fail both ways.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import pathlib
import ssl
from typing import Any

import pytest
import uvloop
from mcp import Client

from gateway.backends.base import BackendCall, BackendState
from gateway.backends.http import HttpBackend
from gateway.config import BackendConfig, ConfigError, ServerConfig, describe, load_config_text
from gateway.errors import BackendUnavailable
from gateway.server.listener import Server
from tests.support import (
    Child,
    Pki,
    TlsScriptedHttp,
    eventually,
    gateway,
    handshake_answer,
    https_exchange,
    https_transport,
    sdk_https_server,
)
from tests.test_e2e import list_all
from tests.test_express import gateway_for

HEALTHZ = b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https_backend(pki: Pki) -> Child:
    """The SDK HTTP test server over HTTPS, its certificate from the test CA for 127.0.0.1 only."""
    child = sdk_https_server(pki.issue("backend", "127.0.0.1"))
    yield child
    child.stop()


@pytest.fixture
def no_extra_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    """The system trust store as it is: nothing of the test CA's in it."""
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


def tls_server(pki: Pki, *, client_ca: str | None = None) -> str:
    """``[server]`` lines serving HTTPS with the test CA's 127.0.0.1 certificate (mutual TLS with ``client_ca``)."""
    cert, key = pki.server
    lines = f"tls_cert_file = {cert!r}\ntls_key_file = {key!r}\n"
    return lines + (f"tls_client_ca_file = {client_ca!r}\n" if client_ca else "")


def write_config(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def record_subjects(listener: Server) -> list[str | None]:
    """Wrap the app of ``listener`` (each new connection takes it) so every request's
    ``tls_subject`` is recorded as the app gets it, in the express lane or the general path."""
    app = listener.app
    seen: list[str | None] = []

    class Recording:
        async def __call__(self, request: Any, reply: Any) -> None:
            seen.append(request.tls_subject)
            await app(request, reply)

    recording = Recording()
    lane = getattr(app, "express", None)
    if lane is not None:

        def express(request: Any, reply: Any) -> bool:
            taken = lane(request, reply)
            if taken:
                seen.append(request.tls_subject)
            return taken

        recording.express = express  # type: ignore[attr-defined]
    listener.app = recording  # type: ignore[assignment]
    return seen


async def https_get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes = HEALTHZ) -> int:
    """One request on an open (TLS) connection: its response's status (the body is read and dropped)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next((int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length:")), 0)
    await reader.readexactly(length)
    return int(lines[0].split()[1])


async def refused(port: int, context: ssl.SSLContext) -> None:
    """Connect with ``context`` and ask for /healthz: the server must refuse, during the handshake
    or (TLS 1.3 checks the client's certificate after the client's side is done) at once after
    it, with no byte of HTTP."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
    except (ssl.SSLError, ConnectionError):
        return
    try:
        writer.write(HEALTHZ)
        data = await reader.read()
    except (ssl.SSLError, ConnectionError):
        return
    finally:
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
    assert data == b"", f"a refused client was answered: {data[:200]!r}"


def handshake_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("TLS handshake with a client failed")]


def assert_quiet(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing above INFO and no traceback was logged (a failed handshake is one INFO line)."""
    loud = [(r.name, r.levelname, r.getMessage()) for r in caplog.records if r.levelno > logging.INFO or r.exc_info]
    assert loud == [], loud


# -- the official SDK client, over HTTPS, to an https backend ------------------------------------


async def test_sdk_client_over_https_through_the_gateway_to_an_https_backend(
    tmp_path: pathlib.Path, pki: Pki, https_backend: Child, no_extra_trust: None
) -> None:
    assert https_backend.url.startswith("https://127.0.0.1:")
    config = write_config(
        tmp_path,
        f"[server]\n{tls_server(pki)}\n[backends.web]\nurl = {https_backend.url!r}\nca_file = {pki.ca_file!r}\n"
        # The same server, checked against a CA that did not sign its certificate.
        f"[backends.wary]\nurl = {https_backend.url!r}\nca_file = {pki.other_ca_file!r}\n",
    )
    child = gateway(config)
    try:
        assert child.url.startswith("https://127.0.0.1:"), child.lines
        assert "backend web: ready" in child.lines, child.lines
        assert (
            "backend wary: down (backend 'wary' is unreachable: certificate verify failed: "
            "unable to get local issuer certificate)"
        ) in child.lines, child.lines
        progress: list[float] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append(done)

        async with https_transport(child.url, pki.client_context()) as transport:
            async with Client(transport, mode="legacy") as client:
                names = {t.name for t in await list_all(client, "tools")}
                assert {"web__echo", "web__multiply", "web__progress"} <= names
                assert not [n for n in names if n.startswith("wary__")]
                assert (await client.call_tool("web__echo", {"text": "over TLS"})).content[0].text == "over TLS"
                assert (await client.call_tool("web__multiply", {"a": 6, "b": 7})).content[0].text == "42.0"
                # SSE (progress first) through both TLS hops.
                result = await client.call_tool("web__progress", {"steps": 2}, progress_callback=on_progress)
                assert result.content[0].text == "done 2" and progress == [1.0, 2.0]
        # The same gateway, to a client that does not trust the test CA: its certificate is refused.
        with pytest.raises(ssl.SSLCertVerificationError):
            https_exchange(child.port, HEALTHZ, ssl.create_default_context())
        assert "Traceback" not in child.stderr_text()
    finally:
        assert child.stop() == 0


async def test_workers_serve_https(tmp_path: pathlib.Path, pki: Pki, http_backend: Child) -> None:
    """--workers 2 with TLS: each worker reads the TLS config, the one address line says https."""
    config = write_config(tmp_path, f"[server]\n{tls_server(pki)}\n[backends.web]\nurl = {http_backend.url!r}\n")
    child = gateway(config, "--workers", "2")
    try:
        assert child.lines[-1].endswith("(2 workers)")
        url = child.lines[-1].split()[3]
        assert url.startswith("https://127.0.0.1:"), child.lines
        for _ in range(4):  # fresh connections land on either worker; every one speaks TLS
            async with https_transport(url, pki.client_context()) as transport, Client(transport, mode="legacy") as client:
                assert (await client.call_tool("web__echo", {"text": "w"})).content[0].text == "w"
    finally:
        assert child.stop() == 0


# -- https backends: what is trusted, and what is not --------------------------------------------


async def backend_state(url: str, **options: Any) -> tuple[BackendState, str | None, Any]:
    """Start an HttpBackend for ``url``; its state, its error, and a tools/list answer when READY."""
    backend = HttpBackend("web", BackendConfig(url=url, connect_timeout=5, **options), default_timeout=5)
    try:
        await backend.start()
        if backend.state is not BackendState.READY:
            with pytest.raises(BackendUnavailable):
                await backend.request(BackendCall("tools/list"))
            return backend.state, backend.last_error, None
        return backend.state, backend.last_error, await backend.request(BackendCall("tools/list"))
    finally:
        await backend.stop()


@pytest.mark.parametrize(
    ("host", "trusted", "problem"),
    [
        # A certificate from a CA the gateway does not trust.
        ("127.0.0.1", "other", "certificate verify failed: unable to get local issuer certificate"),
        # A trusted certificate for another name than the URL's (127.0.0.1 only, asked for localhost).
        ("localhost", "right", "certificate verify failed: Hostname mismatch, certificate is not valid for 'localhost'"),
    ],
    ids=["foreign-ca", "wrong-host-name"],
)
async def test_a_backend_certificate_that_fails_verification_leaves_it_down(
    pki: Pki, https_backend: Child, host: str, trusted: str, problem: str
) -> None:
    url = https_backend.url.replace("127.0.0.1", host)
    ca_file = pki.ca_file if trusted == "right" else pki.other_ca_file
    state, error, _ = await backend_state(url, ca_file=ca_file)
    assert state is BackendState.DOWN
    assert error == f"backend 'web' is unreachable: {problem}", error
    # Legit: the right CA, the certificate's own name.
    state, error, answer = await backend_state(https_backend.url, ca_file=pki.ca_file)
    assert state is BackendState.READY, error
    assert answer.result is not None


async def test_the_system_trust_store_honours_ssl_cert_file(
    pki: Pki, https_backend: Child, monkeypatch: pytest.MonkeyPatch, no_extra_trust: None
) -> None:
    state, error, _ = await backend_state(https_backend.url)
    assert state is BackendState.DOWN and "certificate verify failed" in (error or ""), error
    monkeypatch.setenv("SSL_CERT_FILE", pki.ca_file)
    state, error, _ = await backend_state(https_backend.url)
    assert state is BackendState.READY, error


async def test_tls_verify_false_connects_to_any_certificate_and_warns(
    pki: Pki, caplog: pytest.LogCaptureFixture, no_extra_trust: None
) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pki.issue("rogue", "127.0.0.1", other_ca=True))
    sessions: list[str] = []

    async def answer(request: dict) -> Any:
        return handshake_answer(request, sessions) or (200, {}, b'{"jsonrpc": "2.0", "id": %d, "result": {}}' % request["body"]["id"])

    async with TlsScriptedHttp(answer, context) as url:
        # Verified (the default): refused, and nothing was sent to it.
        with caplog.at_level(logging.WARNING, logger="gateway.backend.web"):
            state, error, _ = await backend_state(url)
        assert state is BackendState.DOWN and "certificate verify failed" in (error or ""), error
        assert not [r for r in caplog.records if "tls_verify" in r.getMessage()]
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gateway.backend.web"):
            state, error, answer_ = await backend_state(url, tls_verify=False)
        assert state is BackendState.READY, error
        assert answer_.result is not None
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "tls_verify = false" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    assert warnings[0].getMessage().startswith("web: TLS WITHOUT VERIFICATION") and url in warnings[0].getMessage()


async def test_a_backend_down_on_its_certificate_is_retried_and_recovers(pki: Pki, no_extra_trust: None) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*pki.issue("impostor", "127.0.0.1", other_ca=True))
    sessions: list[str] = []

    async def answer(request: dict) -> Any:
        return handshake_answer(request, sessions)

    fake = TlsScriptedHttp(answer, context)
    async with fake as url:
        backend = HttpBackend("web", BackendConfig(url=url, ca_file=pki.ca_file, connect_timeout=5), default_timeout=5)
        try:
            await backend.start()
            assert backend.state is BackendState.DOWN
            assert "certificate verify failed" in (backend.last_error or ""), backend.last_error
            assert fake.requests == []  # not one byte of a request went to the impostor
            context.load_cert_chain(*pki.issue("genuine", "127.0.0.1"))  # the backend now shows a trusted one
            await eventually(lambda: backend.state is BackendState.READY, message="the backend did not recover")
            assert [r["body"]["method"] for r in fake.requests if r["body"]][:1] == ["server/discover"]
        finally:
            await backend.stop()


# -- the listener: failed handshakes, mutual TLS, ALPN --------------------------------------------


async def plain_http_on_the_https_port(pki: Pki, backend_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with gateway_for(backend_url, server=tls_server(pki)) as gw:
        context = pki.client_context()
        reader, writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=context, server_hostname="127.0.0.1")
        assert await https_get(reader, writer) == 200
        # A plain-HTTP client gets nothing: no HTTP, the connection closed.
        plain_reader, plain_writer = await asyncio.open_connection("127.0.0.1", gw.port)
        plain_writer.write(HEALTHZ)
        assert await plain_reader.read() == b""
        plain_writer.close()
        # The HTTPS client's keep-alive connection and a new one are served as before.
        assert await https_get(reader, writer) == 200
        other_reader, other_writer = await asyncio.open_connection("127.0.0.1", gw.port, ssl=context, server_hostname="127.0.0.1")
        assert await https_get(other_reader, other_writer) == 200
        for w in (writer, other_writer):
            w.close()
    lines = handshake_lines(caplog)
    assert len(lines) == 1 and "http request" in lines[0].lower(), lines
    assert_quiet(caplog)


async def test_plain_http_on_the_https_port_gets_nothing_and_others_are_served(
    pki: Pki, http_backend: Child, caplog: pytest.LogCaptureFixture
) -> None:
    await plain_http_on_the_https_port(pki, http_backend.url, caplog)


def test_plain_http_on_the_https_port_under_uvloop(pki: Pki, http_backend: Child, caplog: pytest.LogCaptureFixture) -> None:
    uvloop.run(plain_http_on_the_https_port(pki, http_backend.url, caplog))


async def mutual_tls(pki: Pki, backend_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    subject = {"organization_name": "Example Corp", "organization_unit_name": "ops"}
    alice = pki.issue("alice", "alice@example.com", common_name="alice", **subject)
    # The same subject from a CA the gateway does not trust.
    mallory = pki.issue("mallory", "alice@example.com", common_name="alice", other_ca=True, **subject)
    # A common name written to read as two attributes.
    crafted = pki.issue("crafted", "eve@example.com", common_name="eve,O=admins", **subject)
    async with gateway_for(backend_url, server=tls_server(pki, client_ca=pki.ca_file)) as gw:
        seen = record_subjects(gw.server)
        await refused(gw.port, pki.client_context())  # no client certificate
        await refused(gw.port, pki.client_context(mallory))
        assert seen == []  # nothing reached the app
        url = f"https://127.0.0.1:{gw.port}/mcp"
        async with https_transport(url, pki.client_context(alice)) as transport, Client(transport, mode="legacy") as client:
            assert "web__echo" in {t.name for t in await list_all(client, "tools")}
            for _ in range(3):  # the express lane's and the general path's requests alike
                assert (await client.call_tool("web__echo", {"text": "m"})).content[0].text == "m"
        assert len(seen) >= 5 and set(seen) == {"CN=alice,OU=ops,O=Example Corp"}, seen
        seen.clear()
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", gw.port, ssl=pki.client_context(crafted), server_hostname="127.0.0.1"
        )
        assert await https_get(reader, writer) == 200
        writer.close()
        assert seen == ["CN=eve\\,O=admins,OU=ops,O=Example Corp"]
    lines = handshake_lines(caplog)
    assert len(lines) == 2, lines
    assert "peer did not return a certificate" in lines[0], lines
    assert "client certificate verify failed: unable to get local issuer certificate" in lines[1], lines
    assert_quiet(caplog)


async def test_mutual_tls_requires_a_client_certificate_and_names_its_subject(
    pki: Pki, http_backend: Child, caplog: pytest.LogCaptureFixture
) -> None:
    await mutual_tls(pki, http_backend.url, caplog)


def test_mutual_tls_under_uvloop(pki: Pki, http_backend: Child, caplog: pytest.LogCaptureFixture) -> None:
    uvloop.run(mutual_tls(pki, http_backend.url, caplog))


class Hello:
    """An app that answers 200 and records each request's ``tls_subject``."""

    def __init__(self) -> None:
        self.subjects: list[str | None] = []

    async def __call__(self, request: Any, reply: Any) -> None:
        self.subjects.append(request.tls_subject)
        reply.send(200, [("content-type", "text/plain")], b"hello")


async def test_one_way_tls_and_plain_http_requests_have_no_subject(pki: Pki) -> None:
    cert, key = pki.server
    for config, context in [
        (ServerConfig(port=0, tls_cert_file=cert, tls_key_file=key), pki.client_context()),
        (ServerConfig(port=0), None),
    ]:
        app = Hello()
        listener = Server(app, config)
        _, port = await listener.start()
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1" if context else None
            )
            assert await https_get(reader, writer) == 200
            writer.close()
        finally:
            await listener.shutdown()
        assert app.subjects == [None]
        assert listener.scheme == ("https" if context else "http")


@pytest.mark.parametrize(("offered", "selected"), [(["h2", "http/1.1"], "http/1.1"), (["h2"], None)])
async def test_alpn_selects_http11_and_never_h2(pki: Pki, offered: list[str], selected: str | None) -> None:
    cert, key = pki.server
    listener = Server(Hello(), ServerConfig(port=0, tls_cert_file=cert, tls_key_file=key))
    _, port = await listener.start()
    try:
        context = pki.client_context()
        context.set_alpn_protocols(offered)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="127.0.0.1")
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == selected
        assert await https_get(reader, writer) == 200  # and it speaks HTTP/1.1 there
        writer.close()
    finally:
        await listener.shutdown()


async def test_tls_files_that_do_not_load_are_named(pki: Pki, tmp_path: pathlib.Path) -> None:
    cert, _ = pki.server
    missing = str(tmp_path / "missing.key")
    listener = Server(Hello(), ServerConfig(port=0, tls_cert_file=cert, tls_key_file=missing))
    with pytest.raises(OSError, match=r"cannot load the TLS certificate, key or client CA \(.*missing\.key"):
        await listener.start()


# -- start-up warnings ----------------------------------------------------------------------------

AUTH = '[[auth.api_keys]]\nsubject = "ci"\nkey_sha256 = "' + "ab" * 32 + '"\n'
NO_AUTH_WARNING = "WITHOUT [auth]: anyone who can reach port"
NO_TLS_WARNING = "beyond loopback without TLS"


@pytest.mark.parametrize(
    ("host", "auth", "tls", "warnings"),
    [
        ("0.0.0.0", False, False, [NO_AUTH_WARNING]),
        ("0.0.0.0", False, True, [NO_AUTH_WARNING]),  # TLS does not say who may call
        ("127.0.0.1", False, False, []),
        ("0.0.0.0", True, False, [NO_TLS_WARNING]),
        ("0.0.0.0", True, True, []),
    ],
    ids=["any-no-auth", "any-tls-no-auth", "loopback-no-auth", "any-auth-no-tls", "any-auth-tls"],
)
def test_a_listener_beyond_loopback_is_warned_about(
    tmp_path: pathlib.Path, pki: Pki, host: str, auth: bool, tls: bool, warnings: list[str]
) -> None:
    text = f"[server]\nhost = {host!r}\n" + (tls_server(pki) if tls else "") + (AUTH if auth else "")
    child = gateway(write_config(tmp_path, text))
    try:
        assert child.url.startswith("https://" if tls else "http://")
        # Written before the address line, so all there now.
        err = child.stderr_text()
        found = [w for w in (NO_AUTH_WARNING, NO_TLS_WARNING) if w in err]
        assert found == warnings, err
        if warnings:
            line = next(line for line in err.splitlines() if warnings[0] in line)
            assert " WARNING " in line and host in line
            if warnings == [NO_AUTH_WARNING]:
                assert f"port {child.port} may call every tool" in line
    finally:
        assert child.stop() == 0


# -- config: https URLs, what check prints ---------------------------------------------------------


def test_https_urls_are_accepted_and_tls_options_belong_to_them() -> None:
    backend = HttpBackend("x", BackendConfig(url="https://example.com/mcp"))
    assert (backend.host, backend.port, backend.tls) == ("example.com", 443, True)
    assert HttpBackend("x", BackendConfig(url="http://example.com/mcp")).port == 80
    load_config_text('[backends.a]\nurl = "https://h:8443/mcp"\nca_file = "/ca.pem"\n', fmt="toml", env={})
    bad = [
        ('[backends.a]\nurl = "http://h/"\nca_file = "/ca.pem"\n', "'backends.a.ca_file': is for https:// backends"),
        ('[backends.a]\nurl = "http://h/"\ntls_verify = false\n', "'backends.a.tls_verify': is for https:// backends"),
        ('[backends.a]\ncommand = "x"\nca_file = "/ca.pem"\n', "'backends.a.ca_file': is for HTTP backends"),
        ('[backends.a]\ncommand = "x"\ntls_verify = false\n', "'backends.a.tls_verify': is for HTTP backends"),
    ]
    for text, message in bad:
        with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("[", r"\[")):
            load_config_text(text, fmt="toml", source="g.toml", env={})


def test_describe_shows_tls() -> None:
    plain = describe(load_config_text('[backends.a]\nurl = "http://h/mcp"\n', fmt="toml", env={}))
    assert "listen: http://127.0.0.1:8080/mcp" in plain and "tls: off" in plain
    text = describe(load_config_text(
        '[server]\ntls_cert_file = "/c.pem"\ntls_key_file = "/k.pem"\ntls_client_ca_file = "/clients.pem"\n'
        '[backends.a]\nurl = "https://h/mcp"\nca_file = "/ca.pem"\n'
        '[backends.b]\nurl = "https://b/mcp"\ntls_verify = false\n',
        fmt="toml", env={},
    ))
    assert "listen: https://127.0.0.1:8080/mcp" in text
    assert "tls: on (cert /c.pem, key /k.pem), mutual TLS: client certificates signed by /clients.pem required" in text
    assert "a: http https://h/mcp, namespace 'a', session shared, ca_file /ca.pem" in text
    assert "b: http https://b/mcp, namespace 'b', session shared, tls_verify = false (certificate NOT verified)" in text
    one_way = describe(load_config_text('[server]\ntls_cert_file = "/c.pem"\ntls_key_file = "/k.pem"\n', fmt="toml", env={}))
    assert "mutual TLS: off" in one_way
