"""The admin listener, the kill switch and hot reload, as operators use them: a real gateway
process with its admin port, real SDK backends and clients, SIGHUP and POST /admin/reload.

Security checks are tested by attack: each refusal (no credential, a wrong one, a principal
without the admin role, the admin API asked on the MCP port) next to the legitimate case."""

from __future__ import annotations

import asyncio
import hashlib
import json
import pathlib
import shutil
import signal
import subprocess
import sys
from typing import Any

import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from gateway.config import ConfigError, load_config_text
from gateway.ops.admin import effective_config
from tests.support import SERVERS, Child, eventually, gateway, wait_set, watched_transport
from tests.test_auth import Client as KeyClient
from tests.test_e2e import list_all

TOKEN = "admin-token-for-tests-0123"
OPS_KEY = "ops-key-0123456789abcdef"
USER_KEY = "user-key-0123456789abcdef"


def admin_url(child: Child) -> tuple[str, int]:
    """The admin listener's host and port, from the line the gateway printed before it listened."""
    line = next(line for line in child.lines if line.startswith("mcp-gateway admin on "))
    host, port = line.split("://", 1)[1].rsplit(":", 1)
    return host, int(port)


async def call_admin(
    child: Child, method: str, path: str, *, token: str | None = TOKEN, body: Any = None, port: int | None = None
) -> tuple[int, dict[str, str], Any]:
    """One request to the admin listener (or to ``port``): status, headers, the JSON body (or text)."""
    host, admin_port = admin_url(child)
    reader, writer = await asyncio.open_connection(host, port or admin_port)
    payload = b"" if body is None else json.dumps(body).encode()
    head = f"{method} {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\ncontent-length: {len(payload)}\r\n"
    if token is not None:
        head += f"authorization: Bearer {token}\r\n"
    writer.write(head.encode() + b"\r\n" + payload)
    raw = await asyncio.wait_for(reader.read(-1), 30)
    writer.close()
    head_bytes, _, data = raw.partition(b"\r\n\r\n")
    lines = head_bytes.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    status = int(lines[0].split()[1])
    try:
        return status, headers, json.loads(data)
    except ValueError:
        return status, headers, data.decode()


def sdk_backend(name: str, script: str = "sdk_stdio_server.py", **extra: object) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return f"[backends.{name}]\ncommand = {json.dumps(sys.executable)}\nargs = [{json.dumps(str(SERVERS / script))}]\n{lines}"


def admin_table(**extra: object) -> str:
    lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in extra.items())
    return f'[admin]\nport = 0\ntoken = "{TOKEN}"\n{lines}'


def start(tmp_path: pathlib.Path, text: str) -> tuple[Child, pathlib.Path]:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return gateway(path), path


# -- the credential ----------------------------------------------------------------------------


async def test_admin_api_needs_its_credential_and_lives_on_its_own_port(tmp_path: pathlib.Path) -> None:
    child, _ = start(tmp_path, admin_table() + sdk_backend("local"))
    try:
        status, headers, _ = await call_admin(child, "GET", "/admin/backends", token=None)
        assert status == 401 and headers["www-authenticate"].startswith("Bearer")
        assert (await call_admin(child, "GET", "/admin/backends", token="not-the-token-at-all"))[0] == 401
        assert (await call_admin(child, "GET", "/admin/backends", token=TOKEN[:-1] + "X"))[0] == 401
        assert (await call_admin(child, "POST", "/admin/disable", token=None, body={"tool": "local__echo"}))[0] == 401
        # The legitimate case: the token opens every path.
        status, _, body = await call_admin(child, "GET", "/admin/backends")
        assert status == 200 and body["backends"]["local"]["state"] == "ready"
        assert body["backends"]["local"]["items"]["tools"] >= 1
        # The probes are public; nothing of the admin API answers on the MCP port.
        assert (await call_admin(child, "GET", "/healthz", token=None))[0] == 200
        assert (await call_admin(child, "GET", "/readyz", token=None))[0] == 200
        for path in ("/admin/backends", "/readyz", "/metrics", "/admin/config"):
            assert (await call_admin(child, "GET", path, port=child.port))[0] == 404, path
        assert (await call_admin(child, "POST", "/admin/reload", port=child.port))[0] == 404
    finally:
        child.stop()


async def test_admin_role_of_an_auth_principal_is_an_admin_credential(tmp_path: pathlib.Path) -> None:
    keys = "".join(
        f'[[auth.api_keys]]\nsubject = "{subject}"\nkey_sha256 = "{hashlib.sha256(key.encode()).hexdigest()}"\nroles = {roles}\n'
        for subject, key, roles in (("ops", OPS_KEY, '["admin"]'), ("user", USER_KEY, '["user"]'))
    )
    child, _ = start(tmp_path, '[auth]\n' + keys + '[admin]\nport = 0\nroles = ["admin"]\n' + sdk_backend("local"))
    try:
        assert (await call_admin(child, "GET", "/admin/sessions", token=OPS_KEY))[0] == 200
        status, _, body = await call_admin(child, "GET", "/admin/sessions", token=USER_KEY)
        assert status == 403 and "admin role" in body["error"]
        assert (await call_admin(child, "GET", "/admin/sessions", token="unknown-key-0123456789"))[0] == 401
    finally:
        child.stop()


def test_admin_config_mistakes_are_one_line_errors() -> None:
    for text, key in (
        ('[admin]\nroles = ["admin"]\n', "'admin.roles'"),
        (f'[admin]\nport = 8080\ntoken = "{TOKEN}"\n', "'admin.port'"),
        ('[admin]\ntoken = "short"\n', "'admin.token'"),
        (f'[admin]\ntoken = "{TOKEN}"\nlisten = 1\n', "listen"),
    ):
        with pytest.raises(ConfigError) as caught:
            load_config_text(text, fmt="toml")
        assert key in str(caught.value) and "\n" not in str(caught.value), (text, caught.value)
    assert load_config_text(f'[admin]\ntoken = "{TOKEN}"\n', fmt="toml").admin.public_paths == ["/healthz", "/readyz"]


def test_effective_config_redacts_every_secret() -> None:
    config = load_config_text(
        f'[admin]\ntoken = "{TOKEN}"\n[backends.web]\nurl = "http://127.0.0.1:1/mcp"\nbearer_token = "backend-secret"\n'
        'headers = { x-api-key = "header-secret" }\n[backends.proc]\ncommand = "true"\nenv = { API_TOKEN = "env-secret" }\n',
        fmt="toml",
    )
    shown = json.dumps(effective_config(config))
    for secret in (TOKEN, "backend-secret", "header-secret", "env-secret"):
        assert secret not in shown
    assert '"x-api-key": "***"' in shown and '"API_TOKEN": "***"' in shown and '"url": "http://127.0.0.1:1/mcp"' in shown


# -- readiness ---------------------------------------------------------------------------------


async def test_readiness_follows_the_backends_and_required_ones(tmp_path: pathlib.Path) -> None:
    down = '[backends.gone]\nurl = "http://127.0.0.1:9/mcp"\nconnect_timeout = 1\n'
    child, path = start(tmp_path, admin_table() + down)
    try:
        status, _, body = await call_admin(child, "GET", "/readyz", token=None)
        assert status == 503 and body["reason"] == "no backend is ready"
        # One backend up is enough, until the down one is marked required.
        path.write_text(admin_table() + down + sdk_backend("local"))
        child.proc.send_signal(signal.SIGHUP)

        async def ready() -> bool:
            return (await call_admin(child, "GET", "/readyz", token=None))[0] == 200

        await eventually(ready, timeout=30, message="a ready backend did not make the gateway ready")
        path.write_text(admin_table() + down.replace("connect_timeout = 1\n", "connect_timeout = 1\nrequired = true\n") + sdk_backend("local"))
        status, _, body = await call_admin(child, "POST", "/admin/reload")
        assert status == 200, body
        status, _, body = await call_admin(child, "GET", "/readyz", token=None)
        assert status == 503 and "gone" in body["reason"]
    finally:
        child.stop()


# -- the kill switch ---------------------------------------------------------------------------


async def test_kill_switch_takes_a_tool_out_of_lists_and_calls_at_once(tmp_path: pathlib.Path) -> None:
    child, _ = start(tmp_path, admin_table() + sdk_backend("local"))
    changed = asyncio.Event()

    async def on_message(message) -> None:  # type: ignore[no-untyped-def]
        if getattr(getattr(message, "root", message), "method", None) == "notifications/tools/list_changed":
            changed.set()

    try:
        async with watched_transport(child.url) as (transport, stream_open):
            async with Client(transport, mode="legacy", message_handler=on_message) as client:
                assert "local__echo" in {t.name for t in await list_all(client, "tools")}
                await wait_set(stream_open, 15, "the client's GET stream did not open")
                status, _, body = await call_admin(child, "POST", "/admin/disable", body={"tool": "local__echo"})
                assert status == 200 and body["changed"] and body["tools"] == ["local__echo"]
                await wait_set(changed, 15, "no tools/list_changed after the tool was disabled")
                assert "local__echo" not in {t.name for t in await list_all(client, "tools")}
                with pytest.raises(MCPError) as refused:
                    await client.call_tool("local__echo", {"text": "x"})
                assert refused.value.code == -32057 and "disabled" in str(refused.value)
                assert (await client.call_tool("local__add", {"a": 1, "b": 2})).content  # the others still serve
                assert (await call_admin(child, "POST", "/admin/enable", body={"tool": "local__echo"}))[0] == 200
                assert (await client.call_tool("local__echo", {"text": "back"})).content[0].text == "back"
    finally:
        child.stop()


async def test_kill_switch_under_load_refuses_at_once_and_spares_the_rest(tmp_path: pathlib.Path) -> None:
    """Callers hammer two tools; one is disabled mid-load: from the moment the admin API answers,
    every call to it is refused -32057 (none reaches the backend), the other never fails."""
    child, _ = start(tmp_path, admin_table() + sdk_backend("local"))
    stop = asyncio.Event()
    disabled_at: list[int] = []
    counts = {"echo_ok": 0, "echo_refused_after": 0, "echo_ok_after": 0, "add_ok": 0}
    failures: list[BaseException] = []

    async def caller(n: int) -> None:
        async with Client(child.url, mode="legacy") as client:
            while not stop.is_set():
                sent_after = bool(disabled_at)  # the disable had been answered before this call went out
                try:
                    await client.call_tool("local__echo", {"text": f"c{n}"})
                    counts["echo_ok_after" if sent_after else "echo_ok"] += 1
                except MCPError as exc:
                    if exc.code != -32057:
                        failures.append(exc)
                    elif sent_after:
                        counts["echo_refused_after"] += 1
                try:
                    result = await client.call_tool("local__add", {"a": n, "b": 1})
                    assert result.content[0].text == str(n + 1)
                    counts["add_ok"] += 1
                except Exception as exc:  # noqa: BLE001 - every failure of the spared tool is counted
                    failures.append(exc)

    try:
        callers = [asyncio.create_task(caller(n)) for n in range(4)]
        await eventually(lambda: counts["echo_ok"] >= 20, timeout=30, message="the load did not start")
        status, _, _ = await call_admin(child, "POST", "/admin/disable", body={"tool": "local__echo"})
        assert status == 200
        disabled_at.append(counts["add_ok"])
        await eventually(lambda: counts["echo_refused_after"] >= 20 and counts["add_ok"] >= disabled_at[0] + 20,
                         timeout=30, message="the load stopped after the kill switch")
        stop.set()
        await asyncio.gather(*callers)
    finally:
        stop.set()
        child.stop()
    assert not failures, failures[:3]
    assert counts["echo_ok_after"] == 0, counts  # nothing sent after the switch was answered got through


async def test_kill_switch_backend_and_bad_bodies(tmp_path: pathlib.Path) -> None:
    child, _ = start(tmp_path, admin_table() + sdk_backend("local") + sdk_backend("other"))
    try:
        assert (await call_admin(child, "POST", "/admin/disable", body={"backend": "other"}))[0] == 200
        async with Client(child.url, mode="legacy") as client:
            names = {t.name for t in await list_all(client, "tools")}
            assert names and all(n.startswith("local__") for n in names)
            with pytest.raises(MCPError) as refused:
                await client.call_tool("other__echo", {"text": "x"})
            assert refused.value.code == -32057
        for body in ({"backend": "nope"}, {"tool": ""}, {"tool": 3}, {"user": "x"}, {"tool": "a", "backend": "b"}, [1]):
            status, _, answer = await call_admin(child, "POST", "/admin/disable", body=body)
            assert status in (400, 404) and "error" in answer, body
        assert (await call_admin(child, "POST", "/admin/disable", body={"principal": "alice"}))[0] == 409  # no [auth]
        _, _, state = await call_admin(child, "GET", "/admin/disabled")
        assert state == {"tools": [], "backends": ["other"], "principals": []}
    finally:
        child.stop()


async def test_kill_switch_principal_is_refused_everything_and_others_are_not(tmp_path: pathlib.Path) -> None:
    keys = "".join(
        f'[[auth.api_keys]]\nsubject = "{subject}"\nkey = "{key}"\n' for subject, key in (("ops", OPS_KEY), ("user", USER_KEY))
    )
    backend = f'[backends.web]\nurl = "{_counting(tmp_path)}"\n'
    child, _ = start(tmp_path, "[auth]\n" + keys + admin_table() + backend)
    try:
        user, ops = KeyClient(child.port, f"Bearer {USER_KEY}"), KeyClient(child.port, f"Bearer {OPS_KEY}")
        assert (await user.open()).status_code == 200 and (await ops.open()).status_code == 200
        assert (await call_admin(child, "POST", "/admin/disable", body={"principal": "user"}))[0] == 200
        refused = await user.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        assert refused.status_code == 403 and json.loads(refused.text)["error"]["code"] == -32057
        assert (await KeyClient(child.port, f"Bearer {USER_KEY}").open()).status_code == 403  # no new session either
        assert (await ops.post({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})).status_code == 200
        assert (await call_admin(child, "POST", "/admin/enable", body={"principal": "user"}))[0] == 200
        assert (await user.post({"jsonrpc": "2.0", "id": 2, "method": "tools/list"})).status_code == 200
    finally:
        child.stop()
        _COUNTING.pop().stop()


_COUNTING: list[Child] = []


def _counting(tmp_path: pathlib.Path) -> str:
    server = Child([sys.executable, str(SERVERS / "counting_server.py"), "--port", "0"], "listening on")
    _COUNTING.append(server)
    return server.url


# -- sessions and cache ------------------------------------------------------------------------


async def test_admin_lists_and_ends_sessions_and_flushes_the_cache(tmp_path: pathlib.Path) -> None:
    backend = f'[backends.web]\nurl = "{_counting(tmp_path)}"\n[backends.web.cache]\ntools = ["lookup"]\n'
    child, _ = start(tmp_path, admin_table() + backend)
    try:
        async with Client(child.url, mode="legacy") as client:
            first = (await client.call_tool("web__lookup", {"q": "a"})).content[0].text
            assert (await client.call_tool("web__lookup", {"q": "a"})).content[0].text == first  # a hit
            _, _, cache = await call_admin(child, "GET", "/admin/cache")
            assert cache["enabled"] and cache["hits"] == 1 and cache["entries"] == 1
            status, _, flushed = await call_admin(child, "POST", "/admin/cache/flush")
            assert status == 200 and flushed["flushed"] == 1
            assert (await client.call_tool("web__lookup", {"q": "a"})).content[0].text != first  # ran again
            _, _, sessions = await call_admin(child, "GET", "/admin/sessions")
            assert sessions["count"] == 1
            session_id = sessions["sessions"][0]["id"]
            assert (await call_admin(child, "DELETE", f"/admin/sessions/{session_id}"))[0] == 200
            assert (await call_admin(child, "DELETE", f"/admin/sessions/{session_id}"))[0] == 404
            with pytest.raises(Exception):  # the session is gone: the SDK client's next request gets 404
                await client.call_tool("web__lookup", {"q": "b"})
    finally:
        child.stop()
        _COUNTING.pop().stop()


# -- reload ------------------------------------------------------------------------------------


async def test_sighup_and_admin_reload_apply_a_good_file_and_refuse_a_bad_one(tmp_path: pathlib.Path) -> None:
    child, path = start(tmp_path, admin_table() + sdk_backend("local"))
    try:
        async with Client(child.url, mode="legacy") as client:
            assert all(t.name.startswith("local__") for t in await list_all(client, "tools"))
            _, _, before = await call_admin(child, "GET", "/admin/backends")
            path.write_text(admin_table() + sdk_backend("local") + sdk_backend("extra"))
            child.proc.send_signal(signal.SIGHUP)

            async def extra_listed() -> bool:
                return any(t.name.startswith("extra__") for t in await list_all(client, "tools"))

            await eventually(extra_listed, timeout=30, message="the backend added by SIGHUP never appeared")
            assert child.proc.poll() is None  # SIGHUP reloads; it does not end the process
            assert (await client.call_tool("extra__echo", {"text": "new"})).content[0].text == "new"
            # A bad file is refused with its reason; the running config keeps serving.
            path.write_text(admin_table() + sdk_backend("local") + "[backends.broken]\nurl = 'ftp://x'\n")
            status, _, body = await call_admin(child, "POST", "/admin/reload")
            assert status == 400 and not body["reloaded"] and "backends.broken.url" in body["error"]
            child.proc.send_signal(signal.SIGHUP)
            assert (await client.call_tool("extra__echo", {"text": "still"})).content[0].text == "still"
            # What only a restart changes is refused too.
            path.write_text(admin_table() + '[server]\npath = "/other"\n' + sdk_backend("local"))
            status, _, body = await call_admin(child, "POST", "/admin/reload")
            assert status == 400 and "[server] path" in body["error"]
            # Back to one backend: the other is stopped, the kept one was never restarted.
            path.write_text(admin_table() + sdk_backend("local"))
            status, _, body = await call_admin(child, "POST", "/admin/reload")
            assert status == 200 and body["backends"]["stop"] == ["extra"] and body["backends"]["keep"] == ["local"]
            assert all(t.name.startswith("local__") for t in await list_all(client, "tools"))
            _, _, after = await call_admin(child, "GET", "/admin/backends")
            assert list(after["backends"]) == ["local"]
            assert (await client.call_tool("local__echo", {"text": "same session"})).content[0].text == "same session"
        await eventually(lambda: "reload refused" in child.stderr_text(), message="the bad file's SIGHUP was not logged")
        assert "Traceback" not in child.stderr_text()
        assert before["backends"]["local"]["state"] == "ready"
    finally:
        child.stop()


async def test_watch_reloads_a_changed_file_and_refuses_a_bad_one(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text(admin_table() + sdk_backend("local"))
    child = gateway(path, "--watch")

    async def backends() -> set[str]:
        return set((await call_admin(child, "GET", "/admin/backends"))[2]["backends"])

    try:
        assert await backends() == {"local"}
        path.write_text(admin_table() + sdk_backend("local") + sdk_backend("other"))
        async def reloaded() -> bool:
            return await backends() == {"local", "other"}

        await eventually(reloaded, timeout=30, message="--watch did not reload")
        path.write_text(admin_table() + sdk_backend("local") + "[backends.bad]\nurl = 1\n")
        await eventually(lambda: "changed: reload refused, the running config is kept" in child.stderr_text(),
                         timeout=30, message="a bad file was not refused")
        assert await backends() == {"local", "other"}  # the running config keeps serving
        assert "Traceback" not in child.stderr_text()
    finally:
        child.stop()


async def test_kill_switch_survives_a_reload(tmp_path: pathlib.Path) -> None:
    child, path = start(tmp_path, admin_table() + sdk_backend("local"))
    try:
        assert (await call_admin(child, "POST", "/admin/disable", body={"tool": "local__echo"}))[0] == 200
        path.write_text(admin_table() + sdk_backend("local", request_timeout=30))  # local is restarted
        status, _, body = await call_admin(child, "POST", "/admin/reload")
        assert status == 200 and body["backends"]["restart"] == ["local"]
        async with Client(child.url, mode="legacy") as client:
            names = {t.name for t in await list_all(client, "tools")}
            assert "local__echo" not in names and "local__add" in names
            with pytest.raises(MCPError):
                await client.call_tool("local__echo", {"text": "x"})
    finally:
        child.stop()


async def test_reload_under_load_fails_no_request(tmp_path: pathlib.Path) -> None:
    """Clients call in a loop while the config is reloaded three times (one file is bad): every call
    is answered, none fails."""
    child, path = start(tmp_path, admin_table() + sdk_backend("local") + sdk_backend("other"))
    failures: list[BaseException] = []
    answered = [0]
    stop = asyncio.Event()

    async def caller(n: int) -> None:
        async with Client(child.url, mode="legacy") as client:
            while not stop.is_set():
                try:
                    text = f"c{n}-{answered[0]}"
                    result = await client.call_tool("local__echo", {"text": text})
                    assert result.content[0].text == text
                    answered[0] += 1
                except Exception as exc:  # noqa: BLE001 - every failure is what this test counts
                    failures.append(exc)

    try:
        callers = [asyncio.create_task(caller(n)) for n in range(4)]
        await eventually(lambda: answered[0] >= 20, timeout=30, message="the load did not start")
        for text in (
            admin_table() + sdk_backend("local") + sdk_backend("other", request_timeout=30),  # other restarts
            admin_table() + sdk_backend("local") + "[backends.bad]\nurl = 1\n",  # refused
            admin_table() + sdk_backend("local") + sdk_backend("third"),  # other stops, third starts
        ):
            path.write_text(text)
            mark = answered[0]
            status, _, body = await call_admin(child, "POST", "/admin/reload")
            assert status == (400 if "bad" in text else 200), body
            await eventually(lambda: answered[0] >= mark + 20, timeout=30, message="calls stopped after a reload")
        stop.set()
        await asyncio.gather(*callers)
    finally:
        stop.set()
        child.stop()
    assert not failures, failures[:3]
    assert answered[0] >= 80


# -- drain -------------------------------------------------------------------------------------


async def test_sigterm_drains_readiness_503_in_flight_finish_exit_0(tmp_path: pathlib.Path) -> None:
    child, _ = start(tmp_path, admin_table() + sdk_backend("local"))
    try:
        client = KeyClient(child.port, None)
        assert (await client.open()).status_code == 200
        slow = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": {"name": "local__slow", "arguments": {"seconds": 1.5}}}
        call = asyncio.create_task(client.post(slow))

        async def in_flight() -> bool:
            _, _, body = await call_admin(child, "GET", "/admin/sessions")
            return any(s["in_flight"] for s in body["sessions"])

        await eventually(in_flight, message="the slow call never reached the gateway")
        child.proc.send_signal(signal.SIGTERM)

        async def draining() -> bool:
            return (await call_admin(child, "GET", "/readyz", token=None))[0] == 503

        await eventually(draining, message="readiness did not turn 503 on SIGTERM")
        with pytest.raises(OSError):  # new connections are refused while the call in flight finishes
            await asyncio.open_connection("127.0.0.1", child.port)
        answer = await asyncio.wait_for(call, 30)
        assert answer.status_code == 200 and "slept 1.5" in answer.text
        assert child.proc.wait(30) == 0
    finally:
        child.stop()


# -- the container -----------------------------------------------------------------------------

DOCKER = pathlib.Path(__file__).resolve().parent.parent / "docker"


def test_container_health_check_probes_the_admin_listener(tmp_path: pathlib.Path) -> None:
    """The Dockerfile's HEALTHCHECK command against a gateway run with the image's own config
    (on free ports): 0 while it serves, 1 once it is gone."""
    dockerfile = (DOCKER / "Dockerfile").read_text()
    line = next(line for line in dockerfile.splitlines() if line.strip().startswith('CMD ["mcp-gateway", "probe"'))
    argv = json.loads(line.strip()[len("CMD "):])
    text = (DOCKER / "gateway.toml").read_text().replace('host = "0.0.0.0"', 'host = "127.0.0.1"').replace("port = 9090", "port = 0")
    config = load_config_text(text, fmt="toml")
    assert "/metrics" in config.admin.public_paths and config.admin.token is None
    child, _ = start(tmp_path, text)
    _, port = admin_url(child)
    probe = [sys.executable, "-m", "gateway", *argv[1:-1], argv[-1].replace(":9090", f":{port}")]
    try:
        assert subprocess.run(probe, timeout=30).returncode == 0
        # The admin API proper needs a credential the default config does not set.
        assert subprocess.run([*probe[:-1], f"http://127.0.0.1:{port}/admin/backends"], timeout=30).returncode == 1
    finally:
        assert child.stop() == 0
    assert subprocess.run(probe, timeout=30, capture_output=True).returncode == 1


def test_node_variant_and_compose_file_scrape_the_admin_listener() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "FROM gateway AS node" in dockerfile and "nodejs npm" in dockerfile and "pip install --no-cache-dir uv" in dockerfile
    compose = (DOCKER / "compose.yaml").read_text()
    assert "prom/prometheus" in compose and "target: node" in compose
    prometheus = DOCKER / "prometheus.yml"
    assert 'targets: ["gateway:9090"]' in prometheus.read_text()
    promtool = shutil.which("promtool")
    if promtool is not None:  # Debian's prometheus package (.ci/run installs it): a real check of the file
        checked = subprocess.run([promtool, "check", "config", str(prometheus)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stdout + checked.stderr
