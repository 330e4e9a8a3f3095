"""Instructions per request, counted by valgrind's callgrind: a measure the machine's noise cannot move.

Requests per second on a shared 2-core machine drift by tens of percent from
run to run; the number of instructions a process executes for the same work
does not. This runs the floor backend, then the floor proxy and the gateway
(each under ``valgrind --tool=callgrind`` with counting off), warms each one
up, counts exactly ``--requests`` requests, and reports user-space
instructions per request and the gateway/floor ratio::

    python -m benchmarks.instructions                      # call and call_stateless, 2,000 requests each
    python -m benchmarks.instructions --scenarios call --requests 5000 --concurrency 16
    python -m benchmarks.instructions --scenarios call,call_rbac --targets gateway   # what 20 [rbac] rules cost
    python -m benchmarks.instructions --scenarios call,call_auth --targets gateway   # a JWT and 20 rules
    python -m benchmarks.instructions --scenarios call,call_limited --targets gateway   # a [[limits]] that never refuses
    python -m benchmarks.instructions --scenarios call,call_cached  # every call a cache hit, against the floor proxy's forwarding
    python -m benchmarks.instructions --scenarios call,call_shaped,call_guarded --targets gateway   # defaults; the backend guards
    python -m benchmarks.instructions --scenarios call,call_metrics,call_observed,call_traced --targets gateway   # [metrics]; [audit]; [tracing]
    python -m benchmarks.instructions --save               # update the committed benchmarks/results/instructions.json

Writes ``instructions.json`` into a new folder ``benchmarks/results/runs/<UTC time>/``
(gitignored), into ``benchmarks/results/`` with ``--save``, or to ``--out``.

Kernel time (the syscalls) is not counted, so this shows the Python and C work
of each process, which is what the code can change. Under valgrind a process
runs about 50 times slower; the counts do not depend on that.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import subprocess
import sys
import tempfile
from typing import Any

from benchmarks.auth_setup import auth_setup, rbac_rules
from benchmarks.run import ROOT, Child, body_for, output_folder

SCENARIOS = (
    "call", "call_stateless", "call_rbac", "call_auth", "call_limited", "call_cached", "call_shaped", "call_guarded",
    "call_metrics", "call_observed", "call_traced",
)
# call_limited: one bucket per caller and tool that never runs dry, so every call pays a take.
LIMIT_NEVER_REFUSING = '[[limits]]\nname = "bench"\nkey = ["principal", "tool"]\nrate = 1e9\nburst = 1e9\n'
# call_cached: the call scenario with the backend's tool cached, so every call after the first is a hit
# (answered in admission, in the express lane); the floor proxy still forwards each one.
CACHE_ECHO = '[backends.floor.cache]\ntools = ["echo"]\nttl = 3600\n'
# call_shaped: the echo tool with a default argument, so every call's arguments are rewritten in admission.
SHAPE_ECHO = '[backends.floor.tools.echo]\ndefaults = { lang = "en" }\n'
# call_metrics: [metrics] on (the observer's counters on every call); call_observed: metrics and a
# keyed audit log (a record per call, its writer task, the chain's HMAC-SHA256).
METRICS = "[metrics]\n"
# call_traced: [tracing] without an exporter: every call continues or starts a trace and passes it on
# (the general path: the express lane declines traced calls).
TRACED = "[tracing]\n"
OBSERVED = '[metrics]\n[audit]\npath = "{path}"\nkey = "bench-audit-key-0123456789abcdef"\n'
# call_guarded: every per-backend guard on, none ever refusing: the gate, the retry budget, the breaker.
GUARDS = 'max_concurrency = 1000\nmax_queue = 100\nretries = 1\n[backends.floor.breaker]\n'


def _loadgen(
    port: int, scenario: str, target: str, requests: int, concurrency: int, headers: tuple[str, ...] = ()
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--concurrency", str(concurrency),
        "--requests", str(requests), "--body", body_for(scenario, target),
    ]
    for header in headers:
        cmd += ["--header", header]
    if target == "gateway":
        cmd.append("--stateless" if scenario == "call_stateless" else "--initialize")
    elif target == "hop":
        cmd.append("--initialize")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True, timeout=900)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _total_instructions(path: pathlib.Path) -> int:
    """The ``totals:`` (or ``summary:``) line of a callgrind dump: instructions executed."""
    text = path.read_text(errors="replace")
    match = re.search(r"^(?:totals|summary):\s*(\d+)", text, re.M)
    if match is None:
        raise RuntimeError(f"no totals in {path}")
    return int(match.group(1))


def count(
    cmd: list[str], scenario: str, target: str, requests: int, concurrency: int, workdir: pathlib.Path,
    headers: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Instructions per request of the server ``cmd`` (told to listen on port 0; it prints the port) for one scenario."""
    out = workdir / f"{target}-{scenario}.cg"
    vg = [
        "valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", "--dump-instr=no", *cmd,
    ]
    child = Child(vg)
    proc = child.proc
    try:
        # Slow under valgrind; the gateway prints its line only after its catalog is built.
        port = child.ready(timeout=300.0)
        _loadgen(port, scenario, target, 200, concurrency, headers)  # warm up: connections, caches, lazy imports
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True, timeout=120)
        load = _loadgen(port, scenario, target, requests, concurrency, headers)
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True, timeout=120)
    finally:
        proc.terminate()
        try:
            proc.wait(60)  # callgrind writes its last dump on the way out: give it time
        finally:
            child.stop()
    dumps = sorted(workdir.glob(f"{out.name}.*"))
    if not dumps:
        raise RuntimeError("callgrind wrote no dump")
    total = _total_instructions(dumps[-1])
    return {"instructions": total, "requests": load["requests"], "errors": load["errors"], "per_request": total / load["requests"]}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Count the floor proxy and the gateway for each scenario, against one floor backend."""
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.keep or pathlib.Path(tmp)
        backend = Child([sys.executable, "-m", "benchmarks.floor_backend", "0"])
        try:
            backend_port = backend.ready()
            for scenario in args.scenarios:
                config = workdir / f"gateway-{scenario}.toml"
                config.write_text(f'[backends.floor]\nurl = "http://127.0.0.1:{backend_port}/mcp"\n')
                headers: tuple[str, ...] = ()
                if scenario == "call_rbac":  # the call scenario, through 20 RBAC rules
                    config.write_text(config.read_text() + rbac_rules())
                elif scenario == "call_limited":  # the call scenario, through a limit that never refuses
                    config.write_text(config.read_text() + LIMIT_NEVER_REFUSING)
                elif scenario == "call_cached":  # the call scenario, every call a cache hit
                    config.write_text(config.read_text() + CACHE_ECHO)
                elif scenario == "call_shaped":  # the call scenario, its arguments rewritten (a default added)
                    config.write_text(config.read_text() + SHAPE_ECHO)
                elif scenario == "call_guarded":  # the call scenario through the gate, the retry budget and the breaker
                    config.write_text(config.read_text() + GUARDS)
                elif scenario == "call_metrics":  # the call scenario with metrics on
                    config.write_text(config.read_text() + METRICS)
                elif scenario == "call_traced":  # the call scenario with trace context on
                    config.write_text(config.read_text() + TRACED)
                elif scenario == "call_observed":  # the call scenario with metrics and the audit log on
                    config.write_text(config.read_text() + OBSERVED.format(path=workdir / "audit.jsonl"))
                elif scenario == "call_auth":  # a JWT (verified once, then remembered) and 20 RBAC rules
                    text, authorization = auth_setup(workdir)
                    config.write_text(config.read_text() + text)
                    headers = (f"authorization: {authorization}",)
                row: dict[str, Any] = {}
                for target in args.targets:
                    if target == "floor":
                        cmd = [sys.executable, "-m", "benchmarks.floor_proxy", "0", str(backend_port)]
                    elif target == "hop":
                        if scenario != "call":
                            continue  # the minimal hop speaks the handshake era only (and knows no RBAC)
                        cmd = [sys.executable, "-m", "benchmarks.mcp_hop", "0", str(backend_port)]
                    else:
                        cmd = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0",
                               "--log-level", "warning"]
                    print(f"{scenario}: counting {target} ...", file=sys.stderr, flush=True)
                    row[target] = count(cmd, scenario, target, args.requests, args.concurrency, workdir,
                                        headers if target == "gateway" else ())
                if "floor" in row and "gateway" in row:
                    row["gateway_over_floor"] = row["gateway"]["per_request"] / row["floor"]["per_request"]
                results[scenario] = row
        finally:
            backend.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module's docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=["call", "call_stateless"])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--targets", type=lambda s: s.split(","), default=["floor", "gateway"], help="floor,hop,gateway (hop: benchmarks.mcp_hop)")
    parser.add_argument("--keep", type=pathlib.Path, help="write the callgrind dumps here (for callgrind_annotate)")
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/instructions.json (the committed file) instead of a new folder "
                             "benchmarks/results/runs/<UTC time>/")
    parser.add_argument("--out", type=pathlib.Path, help="write the JSON here (overrides --save)")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {sorted(unknown)} (this tool counts {', '.join(SCENARIOS)})")
    os.environ.setdefault("PYTHONHASHSEED", "0")  # the same dict layouts each run, so the same counts
    results = run(args)
    print("| scenario | floor instr/req | hop instr/req | gateway instr/req | gateway/floor |")
    print("|---|---|---|---|---|")
    for scenario, row in results.items():
        cells = [f"{row[t]['per_request']:,.0f}" if t in row else "-" for t in ("floor", "hop", "gateway")]
        ratio = f"{row['gateway_over_floor']:.2f}" if "gateway_over_floor" in row else "-"
        print(f"| {scenario} | {cells[0]} | {cells[1]} | {cells[2]} | {ratio} |")
    out = args.out or output_folder(args.save) / "instructions.json"  # made only now: a failed run leaves no folder
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
