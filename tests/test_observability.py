"""Metrics, the audit log and the access log of a running gateway, as operators use them: a real
gateway process, real SDK backends and clients, ``/metrics`` scraped and checked by ``promtool``
(Debian's ``prometheus``) and parsed, the audit file verified by ``mcp-gateway audit verify``
after SIGTERM with a call in flight, the JSON access log read off stderr."""

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
from prometheus_client.parser import text_string_to_metric_families

from gateway.ops.audit import verify
from tests.support import ROOT, Child, eventually
from tests.test_admin import admin_table, call_admin, sdk_backend
from tests.test_auth import Client as KeyClient

AUDIT_KEY = "audit-key-for-the-tests-0123456789"
USER_KEY = "user-key-0123456789abcdef"


def start(tmp_path: pathlib.Path, text: str, *extra: str, env: dict[str, str] | None = None) -> Child:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return Child(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0", *extra],
        "mcp-gateway listening on",
        env=env,
    )


def call(name: str, request_id: int, **arguments: Any) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def scrape(child: Child) -> tuple[str, dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    """``/metrics`` as text and as {(sample name, labels): value}."""
    status, headers, text = await call_admin(child, "GET", "/metrics", token=None)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4"), (status, text)
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return text, samples


def value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def user_keys() -> str:
    digest = hashlib.sha256(USER_KEY.encode()).hexdigest()
    return f'[auth]\n[[auth.api_keys]]\nsubject = "alice"\nkey_sha256 = "{digest}"\nroles = ["user"]\n'


# -- metrics ---------------------------------------------------------------------------------------


async def test_metrics_count_what_happened_and_promtool_accepts_them(tmp_path: pathlib.Path) -> None:
    text = (
        user_keys() + admin_table(public_paths=["/healthz", "/metrics"]) + "[metrics]\n"
        + '[[limits]]\nname = "tight"\nkey = ["principal"]\ntools = ["local__add"]\nrate = 0.001\nburst = 1\n'
        + sdk_backend("local") + "[backends.local.breaker]\n"
    )
    child = start(tmp_path, text)
    try:
        client = KeyClient(child.port, f"Bearer {USER_KEY}")
        assert (await client.open()).status_code == 200
        for i in range(3):
            assert (await client.post(call("local__echo", i, text=f"t{i}"))).status_code == 200
        assert "error" not in json.loads((await client.post(call("local__add", 10, a=1, b=2))).text)
        limited = await client.post(call("local__add", 11, a=1, b=2))
        assert limited.status_code == 429
        for bad in ("Bearer not-a-key-at-all-0123456789", None):
            assert (await KeyClient(child.port, bad).open()).status_code == 401
        exposition, samples = await scrape(child)
        ok = {"method": "tools/call", "backend": "local", "outcome": "ok"}
        assert value(samples, "mcp_gateway_requests_total", **ok, tool="local__echo") == 3
        assert value(samples, "mcp_gateway_requests_total", **ok, tool="local__add") == 1
        assert value(samples, "mcp_gateway_requests_total", method="tools/call", backend="local",
                     outcome="limited", tool="local__add") == 1
        assert value(samples, "mcp_gateway_limiter_refusals_total", limit="tight") == 1
        assert value(samples, "mcp_gateway_request_duration_seconds_count", backend="local") == 5
        assert value(samples, "mcp_gateway_backend_up", backend="local") == 1
        assert value(samples, "mcp_gateway_stdio_restarts_total", backend="local") == 0
        assert value(samples, "mcp_gateway_breaker_state", backend="local") == 0  # closed
        assert value(samples, "mcp_gateway_breaker_trips_total", backend="local") == 0
        assert value(samples, "mcp_gateway_sessions") == 1
        assert value(samples, "mcp_gateway_in_flight") == 0
        failures = {dict(labels)["reason"]: n for (name, labels), n in samples.items()
                    if name == "mcp_gateway_auth_failures_total"}
        assert sum(failures.values()) == 2 and set(failures) <= {"invalid_token", "unauthenticated"}, failures
        assert all(name.startswith("mcp_gateway_") for name, _ in samples)
        promtool = shutil.which("promtool")
        if promtool is not None:  # .ci/run installs it; the parser above checked the format anyway
            checked = subprocess.run([promtool, "check", "metrics"], input=exposition, capture_output=True,
                                     text=True, timeout=60)
            assert checked.returncode == 0, checked.stdout + checked.stderr
    finally:
        child.stop()


async def test_metrics_off_is_404_and_reload_keeps_the_counters(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "gateway.toml"
    child = start(tmp_path, admin_table(public_paths=["/metrics"]) + sdk_backend("local"))
    try:
        status, _, body = await call_admin(child, "GET", "/metrics", token=None)
        assert status == 404 and body["error"] == "metrics are not enabled"
        path.write_text(admin_table(public_paths=["/metrics"]) + "[metrics]\n" + sdk_backend("local"))
        assert (await call_admin(child, "POST", "/admin/reload"))[0] == 200
        client = KeyClient(child.port, None)
        assert (await client.open()).status_code == 200
        assert (await client.post(call("local__echo", 1, text="x"))).status_code == 200
        _, samples = await scrape(child)
        labels = {"method": "tools/call", "backend": "local", "outcome": "ok", "tool": "local__echo"}
        assert value(samples, "mcp_gateway_requests_total", **labels) == 1
        path.write_text(admin_table(public_paths=["/metrics"]) + "[metrics]\n" + sdk_backend("local", request_timeout=30))
        assert (await call_admin(child, "POST", "/admin/reload"))[0] == 200
        assert (await client.post(call("local__echo", 2, text="y"))).status_code == 200
        _, samples = await scrape(child)
        assert value(samples, "mcp_gateway_requests_total", **labels) == 2  # one family across reloads
    finally:
        child.stop()


async def test_a_stdio_backend_that_dies_is_counted_down_then_restarted(tmp_path: pathlib.Path) -> None:
    child = start(tmp_path, admin_table(public_paths=["/metrics"]) + "[metrics]\n"
                  + sdk_backend("local", restart_initial_delay=0.2))
    try:
        client = KeyClient(child.port, None)
        assert (await client.open()).status_code == 200
        await client.post(call("local__crash", 1))  # the process exits: the call fails, the backend restarts

        async def restarted() -> bool:
            _, samples = await scrape(child)
            return (value(samples, "mcp_gateway_stdio_restarts_total", backend="local") == 1
                    and value(samples, "mcp_gateway_backend_up", backend="local") == 1)

        await eventually(restarted, timeout=30, message="the restart was not counted, or the backend stayed down")
    finally:
        child.stop()


# -- audit -----------------------------------------------------------------------------------------


async def test_audit_log_loses_nothing_on_sigterm_and_verifies(tmp_path: pathlib.Path) -> None:
    log_path = tmp_path / "audit.jsonl"
    text = (
        user_keys() + admin_table()
        + f'[audit]\npath = "{log_path}"\nkey = "${{AUDIT_KEY}}"\nredact = ["text"]\nfsync = "never"\n'
        + sdk_backend("local")
    )
    child = start(tmp_path, text, env={"AUDIT_KEY": AUDIT_KEY})
    try:
        client = KeyClient(child.port, f"Bearer {USER_KEY}")
        assert (await client.open()).status_code == 200
        answers = await asyncio.gather(*(client.post(call("local__echo", i, text=f"secret-{i}")) for i in range(20)))
        assert all(a.status_code == 200 for a in answers)
        assert (await KeyClient(child.port, "Bearer wrong-key-0123456789abcdef").open()).status_code == 401
        assert (await call_admin(child, "POST", "/admin/disable", body={"tool": "local__add"}))[0] == 200
        refused = await client.post(call("local__add", 50, a=1, b=2))
        assert refused.status_code == 403
        slow = asyncio.create_task(client.post(call("local__slow", 99, seconds=1.0)))

        async def in_flight() -> bool:
            _, _, body = await call_admin(child, "GET", "/admin/sessions")
            return any(s["in_flight"] for s in body["sessions"])

        await eventually(in_flight, message="the slow call never reached the gateway")
        child.proc.send_signal(signal.SIGTERM)
        assert (await asyncio.wait_for(slow, 30)).status_code == 200
        assert child.proc.wait(30) == 0
    finally:
        child.stop()
    result = verify([str(log_path)], AUDIT_KEY.encode())
    assert result.ok, result.message
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    calls = [r for r in records if r.get("method") == "tools/call"]
    assert sorted(r["name"] for r in calls if r["outcome"] == "ok") == ["local__echo"] * 20 + ["local__slow"]
    echo = next(r for r in calls if r["name"] == "local__echo")
    assert echo["principal"]["subject"] == "alice" and echo["backend"] == "local" and echo["decision"] == "allow"
    assert len(echo["arguments_sha256"]) == 64 and "secret-" not in log_path.read_text()  # digest, redacted
    denied = next(r for r in calls if r["name"] == "local__add")
    assert denied["decision"] == "deny" and denied["outcome"] == "refused" and denied["code"] == -32057
    assert any(r.get("event") == "auth" and r["decision"] == "deny" for r in records)
    assert any(r.get("event") == "admin" and r["action"] == "kill_switch" and r["name"] == "local__add" for r in records)
    assert records[-1]["event"] == "close"
    cli = subprocess.run(
        [sys.executable, "-m", "gateway", "audit", "verify", str(log_path)], capture_output=True, text=True,
        cwd=ROOT, timeout=60, env={"MCP_GATEWAY_AUDIT_KEY": AUDIT_KEY, "PATH": "/usr/bin:/bin"},
    )
    assert cli.returncode == 0 and cli.stdout.startswith(f"ok: {len(records)} records"), cli.stdout + cli.stderr


async def test_a_reload_that_changes_the_audit_table_loses_no_record(tmp_path: pathlib.Path) -> None:
    """The same file, other options, reloaded while a call is in flight: the call admitted under
    the old log is recorded by the new one, and the chain stays one chain."""
    log_path = tmp_path / "audit.jsonl"
    audit = f'[audit]\npath = "{log_path}"\nkey = "${{AUDIT_KEY}}"\n'
    path = tmp_path / "gateway.toml"
    child = start(tmp_path, admin_table() + audit + sdk_backend("local"), env={"AUDIT_KEY": AUDIT_KEY})
    try:
        client = KeyClient(child.port, None)
        assert (await client.open()).status_code == 200
        slow = asyncio.create_task(client.post(call("local__slow", 1, seconds=1.0)))

        async def in_flight() -> bool:
            _, _, body = await call_admin(child, "GET", "/admin/sessions")
            return any(s["in_flight"] for s in body["sessions"])

        await eventually(in_flight, message="the slow call never reached the gateway")
        path.write_text(admin_table() + audit + 'redact = ["text"]\n' + sdk_backend("local"))
        status, _, body = await call_admin(child, "POST", "/admin/reload")
        assert status == 200, body
        assert (await asyncio.wait_for(slow, 30)).status_code == 200
        assert (await client.post(call("local__echo", 2, text="after"))).status_code == 200
    finally:
        assert child.stop() == 0
    result = verify([str(log_path)], AUDIT_KEY.encode())
    assert result.ok, result.message
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [r["name"] for r in records if r.get("method") == "tools/call"] == ["local__slow", "local__echo"]
    assert [r["event"] for r in records if r.get("event") in ("start", "close")] == ["start", "close", "start", "close"]


def test_an_audit_log_that_cannot_be_opened_is_a_one_line_error(tmp_path: pathlib.Path) -> None:
    (tmp_path / "audit.jsonl").write_text("this is not an audit log\n")
    path = tmp_path / "gateway.toml"
    path.write_text(f'[audit]\npath = "{tmp_path / "audit.jsonl"}"\n' + sdk_backend("local"))
    run = subprocess.run([sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1].startswith("error: [audit]: "), run.stderr
    assert "not an audit record" in run.stderr


# -- the access log --------------------------------------------------------------------------------


async def test_access_log_in_json_names_who_called_what(tmp_path: pathlib.Path) -> None:
    text = user_keys() + "[server]\naccess_log = true\n" + sdk_backend("local")
    child = start(tmp_path, text, "--log-format", "json")
    try:
        client = KeyClient(child.port, f"Bearer {USER_KEY}")
        assert (await client.open()).status_code == 200  # initialize, notifications/initialized
        assert (await client.post(call("local__echo", 1, text="x"))).status_code == 200
        assert (await client.post(call("local__nope", 2))).status_code == 200  # answered with a JSON-RPC error
        assert (await client.post({"jsonrpc": "2.0", "id": 3, "method": "tools/list"})).status_code == 200
        assert (await KeyClient(child.port, "Bearer not-a-key-0123456789abcdef").open()).status_code == 401

        def access() -> list[dict[str, Any]]:
            lines = [json.loads(line) for line in child.stderr_text().splitlines() if line.startswith("{")]
            return [line for line in lines if line["logger"] == "gateway.access"]

        await eventually(lambda: len(access()) >= 6, message="not one access log line per request")
        init, initialized, line, unknown, listed, refused = access()[:6]
        assert (init["method"], init["status"], init["outcome"]) == ("initialize", 200, "ok")
        assert (initialized["method"], initialized["status"]) == ("notifications/initialized", 202)
        assert (listed["method"], listed["status"], listed["name"], listed["backend"]) == ("tools/list", 200, None, None)
        assert (refused["principal"], refused["method"], refused["status"], refused["outcome"]) == (
            "-", "initialize", 401, "refused")
        assert unknown["name"] == "local__nope" and unknown["outcome"] == "error" and unknown["backend"] is None
        assert line["principal"].endswith("/alice") and line["method"] == "tools/call"
        assert line["name"] == "local__echo" and line["backend"] == "local" and line["status"] == 200
        assert line["outcome"] == "ok" and line["latency_ms"] > 0 and line["level"] == "info"
        every = [json.loads(line) for line in child.stderr_text().splitlines() if line.strip()]
        assert every and all("time" in line and "logger" in line for line in every)  # every line is JSON
    finally:
        child.stop()


@pytest.mark.parametrize("fmt", ["plain"])
async def test_access_log_plain(tmp_path: pathlib.Path, fmt: str) -> None:
    child = start(tmp_path, "[server]\naccess_log = true\n" + sdk_backend("local"), "--log-format", fmt)
    try:
        client = KeyClient(child.port, None)
        assert (await client.open()).status_code == 200
        assert (await client.post(call("local__echo", 1, text="x"))).status_code == 200
        await eventually(lambda: "gateway.access" in child.stderr_text(), message="no access log line")
        await eventually(lambda: "tools/call" in child.stderr_text(), message="no access log line for the call")
        lines = [line for line in child.stderr_text().splitlines() if "gateway.access" in line]
        assert " - initialize - backend=- status=200 outcome=ok " in lines[0], lines
        line = next(line for line in lines if "tools/call" in line)
        assert " - tools/call local__echo backend=local status=200 outcome=ok " in line, line
    finally:
        child.stop()


async def test_each_worker_writes_its_own_audit_chain(tmp_path: pathlib.Path) -> None:
    """--workers 2: one chain per process (PATH.w0, PATH.w1), each intact after SIGTERM, all calls in them."""
    log_path = tmp_path / "audit.jsonl"
    path = tmp_path / "gateway.toml"
    path.write_text(f'[audit]\npath = "{log_path}"\nfsync = "never"\n' + sdk_backend("local"))
    child = Child(
        [sys.executable, "-m", "gateway", "serve", "--config", str(path), "--port", "0", "--workers", "2"],
        "mcp-gateway listening on",
    )
    try:
        assert child.lines[-1].endswith("(2 workers)")
        port = int(child.lines[-1].split()[3].rsplit(":", 1)[1].split("/")[0])
        for i in range(8):  # fresh connections: either worker may take each
            client = KeyClient(port, None)
            assert (await client.open()).status_code == 200
            assert (await client.post(call("local__echo", i, text=f"w{i}"))).status_code == 200
    finally:
        assert child.stop() == 0
    files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("audit.jsonl"))
    assert files == ["audit.jsonl.w0", "audit.jsonl.w1"], files
    names = []
    for name in files:
        result = verify([str(tmp_path / name)])
        assert result.ok, result.message
        names += [json.loads(line).get("name") for line in (tmp_path / name).read_text().splitlines()]
    assert names.count("local__echo") == 8
