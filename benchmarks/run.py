"""The benchmark runner: the same backend reached directly, through the floor
proxy, and through the gateway, alternated (A B C A B C ...) in one run so that
the machine's drift cancels out.

    python -m benchmarks.run                       # every scenario, concurrency 1 16 64 256
    python -m benchmarks.run --scenarios call --concurrency 16 --duration 2 --rounds 1
    python -m benchmarks.run --save                # update the committed benchmarks/results/latest.*

For each scenario, concurrency and target it records requests/s, p50/p90/p99/p99.9
latency, the server side's CPU seconds per 1,000 requests and peak RSS (the
process under test: the backend when direct, the proxy otherwise), and the load
generator's own CPU; then the ratios gateway/floor and gateway/direct. Writes
JSON and, when matplotlib is installed, a PNG chart: into a new folder
``benchmarks/results/runs/<UTC time>/`` (gitignored), or with ``--save`` over the
committed ``benchmarks/results/latest.json`` and ``latest.png`` (``--out`` and
``--chart`` name the files outright). The floor backend and the floor proxy are
``benchmarks/floor_backend.py`` and ``benchmarks/floor_proxy.py``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import pathlib
import re
import select
import subprocess
import sys
import tempfile
import threading
import time
from typing import IO, Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
RUNS = RESULTS / "runs"
TARGETS = ("direct", "floor", "gateway")
SCENARIOS = (
    "call", "call_stateless", "call_64k", "list_250", "stdio", "churn", "call_auth", "call_limited", "call_cached",
    "call_metrics", "call_observed",
)
_META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
_TICK = os.sysconf("SC_CLK_TCK")
# The line every server of the harness prints once it accepts connections (the gateway's included).
_READY = re.compile(rb"listening on http://\S+:(\d+)")


def run_folder() -> pathlib.Path:
    """A new folder ``benchmarks/results/runs/<UTC time>/`` for one run's files (a suffix if two runs share a second)."""
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    for n in itertools.count(1):
        folder = RUNS / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
        except FileExistsError:
            continue
        return folder
    raise AssertionError("unreachable")


def output_folder(save: bool) -> pathlib.Path:
    """Where a run's files go: the committed ``benchmarks/results/`` with ``--save``, else a new run folder."""
    return RESULTS if save else run_folder()


class Child:
    """A process of the harness, started at once; ``ready()`` waits for its ``listening on`` line.

    Its stderr goes to a temporary file, shown when it fails to start (a pipe nobody
    reads could fill and block it).
    """

    def __init__(self, cmd: list[str], *, stdin: bool = False) -> None:
        self.cmd = cmd
        self.stderr: IO[bytes] = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdin=subprocess.PIPE if stdin else subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self.stderr
        )
        self.pid = self.proc.pid
        self._pending = b""

    def line(self, pattern: re.Pattern[bytes], timeout: float) -> bytes:
        """Read stdout up to the first line ``pattern`` matches, and return that line; RuntimeError (with
        its stderr) if the process closes stdout first or ``timeout`` seconds pass."""
        assert self.proc.stdout is not None
        # The raw fd, not readline(): a buffered reader could hold the line while select() sees an empty pipe.
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        seen: list[bytes] = []
        while (left := deadline - time.monotonic()) > 0:
            while b"\n" in self._pending:
                raw, self._pending = self._pending.split(b"\n", 1)
                seen.append(raw)
                if pattern.search(raw):
                    return raw
            if not select.select([fd], [], [], min(left, 1.0))[0]:
                continue
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self._pending += chunk
        self.stderr.seek(0)
        err = self.stderr.read().decode("utf-8", "replace")[-3000:]
        raise RuntimeError(f"{self.cmd} did not print {pattern.pattern!r}: stdout={seen} stderr={err}")

    def ready(self, timeout: float = 60.0) -> int:
        """Wait for the ``listening on http://HOST:PORT`` line; the port. Its later output is read and dropped."""
        match = _READY.search(self.line(_READY, timeout))
        assert match is not None
        port = int(match.group(1))
        threading.Thread(target=self._drain, daemon=True).start()
        return port

    def _drain(self) -> None:
        assert self.proc.stdout is not None
        while os.read(self.proc.stdout.fileno(), 65536):
            pass

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()


def proc_cpu(pid: int) -> float:
    """utime + stime of a process, in seconds."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def tree_cpu(pid: int) -> float:
    """CPU of a process plus its worker children (for ``--workers``; backends are not its children here)."""
    total = proc_cpu(pid)
    children = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        for child in children.read_text().split():
            try:
                if "gateway" in pathlib.Path(f"/proc/{child}/cmdline").read_text():
                    total += proc_cpu(int(child))
            except OSError:
                pass
    return total


def proc_rss_kib(pid: int) -> int:
    """Resident memory of a process now, in KiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def proc_peak_rss_kib(pid: int) -> int:
    """Peak resident memory of a process so far (VmHWM), in KiB."""
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


class Stack:
    """The processes of one scenario: backends, floor proxy, gateway; every port chosen by the OS (port 0)."""

    def __init__(self, scenario: str, workdir: pathlib.Path, workers: int = 1) -> None:
        self.children: list[Child] = []
        try:
            self._start(scenario, workdir, workers)
        except BaseException:
            self.stop()
            raise

    def _start(self, scenario: str, workdir: pathlib.Path, workers: int) -> None:
        many = scenario == "list_250"
        count = 5 if many else 1
        if many:
            cmd = [sys.executable, "-m", "benchmarks.many_tools_backend", "0", "--tools", "50"]
        else:
            cmd = [sys.executable, "-m", "benchmarks.floor_backend", "0"]
        backends = [self.spawn(cmd) for _ in range(count)]  # started together, then waited for
        self.backend_ports = [child.ready() for child in backends]
        self.backend = backends[0]  # the direct target
        config = workdir / f"{scenario}.toml"
        names = [f"b{i}" for i in range(count)] if many else ["floor"]
        if scenario == "stdio":  # the gateway's backend is the floor backend's stdio twin, a child process
            backends_toml = f'[backends.floor]\ncommand = {sys.executable!r}\nargs = ["-m", "benchmarks.stdio_echo_backend"]\n'
            backends_toml += f"cwd = {str(ROOT)!r}\n"
        else:
            backends_toml = "".join(f'[backends.{n}]\nurl = "http://127.0.0.1:{p}/mcp"\n' for n, p in zip(names, self.backend_ports))
        config.write_text("[server]\nmax_body_bytes = 8388608\n" + backends_toml)
        self.headers: tuple[str, ...] = ()
        if scenario == "call_limited":  # every call takes a token of a bucket that never runs dry
            from benchmarks.instructions import LIMIT_NEVER_REFUSING

            config.write_text(config.read_text() + LIMIT_NEVER_REFUSING)
        elif scenario == "call_cached":  # every gateway call after the first is a cache hit; floor and direct still forward
            from benchmarks.instructions import CACHE_ECHO

            config.write_text(config.read_text() + CACHE_ECHO)
        elif scenario == "call_metrics":  # [metrics]: the observer counts every call
            from benchmarks.instructions import METRICS

            config.write_text(config.read_text() + METRICS)
        elif scenario == "call_observed":  # [metrics] and a keyed [audit]: a chained record per call, on this CPU's SHA
            from benchmarks.instructions import OBSERVED

            config.write_text(config.read_text() + OBSERVED.format(path=workdir / f"{scenario}-audit.jsonl"))
        if scenario == "call_auth":  # a JWT and 20 RBAC rules; every target gets the same header bytes
            from benchmarks.auth_setup import auth_setup

            text, authorization = auth_setup(workdir)
            config.write_text(config.read_text() + text)
            self.headers = (f"authorization: {authorization}",)
        serve = [sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0", "--log-level", "warning"]
        self.floor = self.spawn([sys.executable, "-m", "benchmarks.floor_proxy", "0", str(self.backend_ports[0])])
        # The gateway prints its line after its catalog is built (Gateway.start, then listen), so once it
        # is read the gateway answers tools/call at once; with --workers, after every worker has.
        self.gateway = self.spawn(serve)
        self.workers: Child | None = self.spawn([*serve, "--workers", str(workers)]) if workers > 1 else None
        self.floor_port = self.floor.ready()
        self.gateway_port = self.gateway.ready()
        self.workers_port = self.workers.ready() if self.workers is not None else 0

    def spawn(self, cmd: list[str]) -> Child:
        """Start one more process of the stack (stopped with the rest); call ``ready()`` on it for its port."""
        child = Child(cmd)
        self.children.append(child)
        return child

    def target(self, name: str) -> tuple[int, Child]:
        """(port, process under test) for a target."""
        if name.startswith("gateway_w"):
            assert self.workers is not None
            return self.workers_port, self.workers
        return {
            "direct": (self.backend_ports[0], self.backend),
            "floor": (self.floor_port, self.floor),
            "gateway": (self.gateway_port, self.gateway),
        }[name]

    def stop(self) -> None:
        """Stop every process of the stack."""
        for child in self.children:
            if child.proc.poll() is None:
                child.proc.terminate()  # all at once, then wait: their shutdowns overlap
        for child in self.children:
            child.stop()


def body_for(scenario: str, target: str) -> str:
    """The JSON-RPC request a scenario sends to a target (the gateway sees the tool by its namespaced name)."""
    if scenario == "list_250":
        return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
    name = "floor__echo" if target.startswith("gateway") else "echo"
    text = "x" * 65536 if scenario == "call_64k" else "hello"
    params: dict[str, Any] = {"name": name, "arguments": {"text": text}}
    if scenario == "call_stateless":
        params["_meta"] = _META  # the stateless era: the client's envelope on every request
    return json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params})


def load(
    port: int, scenario: str, concurrency: int, duration: float, mcp: bool, headers: tuple[str, ...] = ()
) -> dict[str, Any]:
    """One load generator run against ``port``; ``mcp``: the target speaks MCP (namespaced tool,
    a session made first) rather than being the bare backend or the floor proxy."""
    cmd = [
        sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--concurrency", str(concurrency),
        "--duration", str(duration), "--body", body_for(scenario, "gateway" if mcp else "direct"),
    ]
    for header in headers:
        cmd += ["--header", header]
    if scenario == "call_stateless":
        cmd.append("--stateless")
    elif mcp:
        cmd.append("--initialize")
    if scenario == "churn":
        cmd.append("--churn")
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=duration + 60)
    if out.returncode != 0:
        raise RuntimeError(f"loadgen failed against port {port}: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(stack: Stack, scenario: str, target: str, concurrency: int, duration: float) -> dict[str, Any]:
    """One load against one target, with the CPU and peak RSS of the process under test."""
    port, proc = stack.target(target)
    cpu0 = tree_cpu(proc.pid)
    result = load(port, scenario, concurrency, duration, target.startswith("gateway"), stack.headers)
    cpu1 = tree_cpu(proc.pid)
    result["server_cpu_s_per_1k"] = (cpu1 - cpu0) / max(result["requests"], 1) * 1000
    result["server_peak_rss_kib"] = proc_peak_rss_kib(proc.pid)
    return result


def measure_idle(stack: Stack, target: str, count: int) -> dict[str, Any]:
    """RSS of the process under test at rest and with ``count`` idle keep-alive connections."""
    port, proc = stack.target(target)
    cmd = [sys.executable, "-m", "benchmarks.loadgen", "--port", str(port), "--idle", str(count),
           "--body", body_for("call", target)]
    if target.startswith("gateway"):
        cmd.append("--initialize")
    before = proc_rss_kib(proc.pid)
    holder = Child(cmd, stdin=True)
    try:
        # Printed once every connection has had its answer: the server holds all of them now.
        info = json.loads(holder.line(re.compile(rb'"idle_connections"'), timeout=300.0))
        during = proc_rss_kib(proc.pid)
        assert holder.proc.stdin is not None
        holder.proc.stdin.close()  # the holder lets its connections go when stdin closes
        holder.proc.wait(60)
    finally:
        holder.stop()
    held = max(info["idle_connections"], 1)
    return {"rss_at_rest_mib": before / 1024, "rss_with_idle_mib": during / 1024,
            "kib_per_connection": (during - before) / held, "connections": info["idle_connections"]}


def summarize(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """The round with the median requests/s stands for the cell (its latencies with it)."""
    ordered = sorted(samples, key=lambda s: s["rps"])
    chosen = dict(ordered[len(ordered) // 2])
    chosen["rps_rounds"] = [round(s["rps"], 1) for s in samples]
    return chosen


def progress(done: int, total: int, label: str) -> None:
    """Redraw the progress bar on stderr."""
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} {label:<40}")
    sys.stderr.flush()


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Every scenario, concurrency, round and target of ``args``; the results as saved in the JSON."""
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]}, "scenarios": {}}
    targets = list(TARGETS) + ([f"gateway_w{args.workers}"] if args.workers > 1 else [])
    total = len(args.scenarios) * len(args.concurrency) * args.rounds * len(targets)
    done = 0
    with tempfile.TemporaryDirectory() as tmp:
        if args.idle:
            stack = Stack("idle", pathlib.Path(tmp))
            try:
                results["idle"] = {t: measure_idle(stack, t, args.idle) for t in ("floor", "gateway")}
            finally:
                stack.stop()
        for scenario in args.scenarios:
            stack = Stack(scenario, pathlib.Path(tmp), args.workers)
            try:
                cells: dict[str, Any] = {}
                for concurrency in args.concurrency:
                    samples: dict[str, list[dict[str, Any]]] = {t: [] for t in targets}
                    for _ in range(args.rounds):
                        for target in targets:  # A B C, A B C: drift hits all of them alike
                            progress(done, total, f"{scenario} c={concurrency} {target}")
                            samples[target].append(measure(stack, scenario, target, concurrency, args.duration))
                            done += 1
                    cell = {t: summarize(samples[t]) for t in targets}
                    if args.workers > 1:
                        workers_target = f"gateway_w{args.workers}"
                        cell["workers_over_one"] = cell[workers_target]["rps"] / max(cell["gateway"]["rps"], 1e-9)
                    cell["gateway_over_floor"] = cell["gateway"]["rps"] / max(cell["floor"]["rps"], 1e-9)
                    cell["gateway_over_direct"] = cell["gateway"]["rps"] / max(cell["direct"]["rps"], 1e-9)
                    cell["added_p50_us"] = cell["gateway"]["p50_us"] - cell["direct"]["p50_us"]
                    cell["added_p99_us"] = cell["gateway"]["p99_us"] - cell["direct"]["p99_us"]
                    # What the hop costs the floor proxy on this machine: the scale for the gateway's +p50.
                    cell["floor_added_p50_us"] = cell["floor"]["p50_us"] - cell["direct"]["p50_us"]
                    cells[str(concurrency)] = cell
                results["scenarios"][scenario] = cells
            finally:
                stack.stop()
    progress(total, total, "done")
    sys.stderr.write("\n")
    return results


def table(results: dict[str, Any]) -> str:
    """A Markdown table of the results."""
    rows = [
        "| scenario | conc | direct rps | floor rps | gateway rps | gw/floor | gw/direct | gw p50 us | gw p99 us | +p50 us | +p99 us | floor +p50 us | gw CPU s/1k | gw peak RSS MiB | loadgen CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for scenario, cells in results["scenarios"].items():
        for conc, cell in cells.items():
            g = cell["gateway"]
            rows.append(
                f"| {scenario} | {conc} | {cell['direct']['rps']:.0f} | {cell['floor']['rps']:.0f} | {g['rps']:.0f} | "
                f"{cell['gateway_over_floor']:.2f} | {cell['gateway_over_direct']:.2f} | {g['p50_us']:.0f} | {g['p99_us']:.0f} | "
                f"{cell['added_p50_us']:.0f} | {cell['added_p99_us']:.0f} | {cell['floor_added_p50_us']:.0f} | {g['server_cpu_s_per_1k']:.3f} | {g['server_peak_rss_kib'] / 1024:.1f} | "
                f"{g['loadgen_cpu_s']:.1f} |"
            )
    for target, idle in results.get("idle", {}).items():
        rows.append(
            f"\nidle {target}: RSS at rest {idle['rss_at_rest_mib']:.1f} MiB, with {idle['connections']} idle connections "
            f"{idle['rss_with_idle_mib']:.1f} MiB ({idle['kib_per_connection']:.1f} KiB per connection)"
        )
    for scenario, cells in results["scenarios"].items():
        for conc, cell in cells.items():
            if "workers_over_one" in cell:
                rows.append(f"\n{scenario} c={conc}: --workers N gives {cell['workers_over_one']:.2f}x the one-worker gateway")
    return "\n".join(rows)


def chart(results: dict[str, Any], path: pathlib.Path) -> bool:
    """A PNG of requests/s per target, one panel per scenario; False if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    scenarios = list(results["scenarios"])
    fig, axes = plt.subplots(1, len(scenarios), figsize=(4.5 * len(scenarios), 4), squeeze=False)
    for ax, scenario in zip(axes[0], scenarios):
        cells = results["scenarios"][scenario]
        concs = list(cells)
        width = 0.27
        for i, target in enumerate(TARGETS):
            xs = [j + (i - 1) * width for j in range(len(concs))]
            ax.bar(xs, [cells[c][target]["rps"] for c in concs], width, label=target)
        ax.set_xticks(range(len(concs)), [f"c={c}" for c in concs])
        ax.set_title(scenario)
        ax.set_ylabel("requests/s")
    axes[0][0].legend()
    fig.suptitle("mcp-gateway vs floor proxy vs direct (same run, alternated)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", type=lambda s: s.split(","), default=list(SCENARIOS))
    parser.add_argument("--concurrency", type=lambda s: [int(x) for x in s.split(",")], default=[1, 16, 64, 256])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=2, help="A B C repetitions per cell")
    parser.add_argument("--idle", type=int, default=0, help="also measure memory with this many idle connections")
    parser.add_argument("--workers", type=int, default=1, help="also measure the gateway with --workers N")
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/latest.json and latest.png (the committed files) instead of "
                             "a new folder benchmarks/results/runs/<UTC time>/")
    parser.add_argument("--out", type=pathlib.Path, help="write the JSON here (overrides --save for it)")
    parser.add_argument("--chart", type=pathlib.Path, help="write the chart here (default: beside the JSON)")
    args = parser.parse_args(argv)
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios {sorted(unknown)}; choose from {SCENARIOS}")
    results = run(args)
    # The folder is made only now: a run that failed leaves none behind.
    out = args.out or output_folder(args.save) / "latest.json"
    chart_path = args.chart or out.with_name(out.stem + ".png")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    if chart(results, chart_path):
        print(f"chart: {chart_path}")
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
