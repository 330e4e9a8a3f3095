"""The benchmark harness runs end to end (briefly), so it cannot rot. Not a speed test:
it checks that every target answered and that the report has what it promises."""

from __future__ import annotations

import json
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
    cmd = [sys.executable, "-m", "benchmarks.run", "--scenarios", "call,churn", "--concurrency", "2",
           "--duration", "0.3", "--rounds", "1", "--out", str(out), "--chart", str(tmp_path / "r.png")]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads(out.read_text())
    for scenario in ("call", "churn"):
        cell = results["scenarios"][scenario]["2"]
        for target in ("direct", "floor", "gateway"):
            assert cell[target]["requests"] > 0 and cell[target]["errors"] == 0, (scenario, target, cell[target])
            for key in ("p50_us", "p99_us", "p999_us", "server_cpu_s_per_1k", "server_peak_rss_kib", "loadgen_cpu_s"):
                assert cell[target][key] >= 0
        assert cell["gateway_over_floor"] > 0
    assert "| call | 2 |" in done.stdout
