"""What one hop adds at concurrency 1, against the least any MCP-aware hop adds here.

The latency target (added p50 over direct at c=1) depends on the machine more
than any other number: every process sleeps between requests and wakes with
cold caches. So this runs, in one process tree and alternated round by round,
the floor backend reached five ways:

- **direct**: the backend itself;
- **floor**: the floor proxy (forwards bytes, reads nothing);
- **hop**: ``benchmarks/mcp_hop.py``, the least an MCP-aware hop must do in this
  stack (decode, route, re-encode, match the id), in plain callbacks;
- **general**: the gateway with ``[gateway] express = false``: every call takes
  the general (coroutine) path, as before the express lane (``gateway.front.express``);
- **gateway**: ``mcp-gateway serve`` with its default configuration.

and reports, per round and as medians over the rounds, each one's p50 and p99
and what it adds over direct::

    python -m benchmarks.latency                    # 7 rounds of 2 s
    python -m benchmarks.latency --rounds 3 --duration 1 --concurrency 1
    python -m benchmarks.latency --save             # update the committed benchmarks/results/latency.json

Writes ``latency.json`` into a new folder ``benchmarks/results/runs/<UTC time>/``
(gitignored), into ``benchmarks/results/`` with ``--save``, or to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
from typing import Any

from benchmarks.run import Stack, load, output_folder, progress

TARGETS = ("direct", "floor", "hop", "general", "gateway")


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Alternate the targets ``args.rounds`` times; return every round and the medians."""
    rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack("call", pathlib.Path(tmp))
        try:
            hop = stack.spawn([sys.executable, "-m", "benchmarks.mcp_hop", "0", str(stack.backend_ports[0])])
            config = pathlib.Path(tmp) / "general.toml"
            config.write_text(f'[gateway]\nexpress = false\n[backends.floor]\nurl = "http://127.0.0.1:{stack.backend_ports[0]}/mcp"\n')
            general = stack.spawn([sys.executable, "-m", "gateway", "serve", "--config", str(config), "--port", "0", "--log-level", "warning"])
            hop_port, general_port = hop.ready(), general.ready()
            ports = {
                "direct": stack.backend_ports[0], "floor": stack.floor_port, "hop": hop_port, "general": general_port,
                "gateway": stack.gateway_port,
            }
            total = args.rounds * len(TARGETS)
            for index in range(args.rounds):
                cells: dict[str, Any] = {}
                for offset, target in enumerate(TARGETS):
                    progress(index * len(TARGETS) + offset, total, f"round {index + 1} {target}")
                    cells[target] = load(ports[target], "call", args.concurrency, args.duration, target in ("hop", "general", "gateway"))
                direct = cells["direct"]
                for target in TARGETS[1:]:
                    cells[target]["added_p50_us"] = cells[target]["p50_us"] - direct["p50_us"]
                    cells[target]["added_p99_us"] = cells[target]["p99_us"] - direct["p99_us"]
                rounds.append(cells)
            progress(total, total, "done")
            sys.stderr.write("\n")
        finally:
            stack.stop()
    medians = {
        target: {key: statistics.median(r[target][key] for r in rounds) for key in ("p50_us", "p99_us", "added_p50_us", "added_p99_us")}
        for target in TARGETS[1:]
    }
    medians["direct"] = {key: statistics.median(r["direct"][key] for r in rounds) for key in ("p50_us", "p99_us")}
    return {"concurrency": args.concurrency, "duration_s": args.duration, "rounds": rounds, "medians": medians}


def table(results: dict[str, Any]) -> str:
    """Markdown: one row per round, then the medians."""
    head = "| round | direct p50 us | " + " | ".join(f"{t} +p50 us | {t} +p99 us" for t in TARGETS[1:]) + " |"
    rows = [head, "|" + "---|" * (2 + 2 * (len(TARGETS) - 1))]
    for index, cells in enumerate(results["rounds"], 1):
        added = " | ".join(f"{cells[t]['added_p50_us']:.0f} | {cells[t]['added_p99_us']:.0f}" for t in TARGETS[1:])
        rows.append(f"| {index} | {cells['direct']['p50_us']:.0f} | {added} |")
    med = results["medians"]
    added = " | ".join(f"**{med[t]['added_p50_us']:.0f}** | **{med[t]['added_p99_us']:.0f}**" for t in TARGETS[1:])
    rows.append(f"| median | {med['direct']['p50_us']:.0f} | {added} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module's docstring."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per measurement")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--save", action="store_true",
                        help="write benchmarks/results/latency.json (the committed file) instead of a new folder "
                             "benchmarks/results/runs/<UTC time>/")
    parser.add_argument("--out", type=pathlib.Path, help="write the JSON here (overrides --save)")
    args = parser.parse_args(argv)
    results = run(args)
    out = args.out or output_folder(args.save) / "latency.json"  # made only now: a failed run leaves no folder
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"json: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
