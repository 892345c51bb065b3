"""``mesh-cli bench``: the mesh measured next to plain pyzmq, in separate processes."""

from __future__ import annotations

import argparse
import json
from typing import Any

from ._common import add_command, positive_int


def add_to(commands: Any) -> None:
    bench = add_command(
        commands,
        "bench",
        help="measure the mesh next to plain pyzmq, in separate processes on 127.0.0.1",
        description="Measure events/s publish -> subscribe between two processes on 127.0.0.1, "
        "next to plain pyzmq PUB/SUB measured in the same run, and print the ratio.",
        example="mesh-cli bench --count 100000 --runs 3 --json",
    )
    bench.add_argument("--count", type=positive_int, default=200_000, help="events per run")
    bench.add_argument("--size", type=positive_int, default=100, help="body size in bytes")
    bench.add_argument("--runs", type=positive_int, default=3, help="runs of each side")
    bench.add_argument("--json", action="store_true", help="print JSON, one object per line")
    bench.add_argument(
        "--suite",
        choices=["events", "discovery", "detection", "all"],
        default="events",
        help="what to measure (discovery: open to peer seen, with 2 and 10 nodes; detection: "
        "kill -9 and SIGSTOP of a peer process to suspect and dead)",
    )
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._bench import Measurement, bench_detection, bench_discovery, bench_events

    results: list[Measurement] = []
    if args.suite in ("events", "all"):
        results.append(bench_events(args.count, args.size, args.runs))
    if args.suite in ("discovery", "all"):
        for nodes in (2, 10):
            results.extend(bench_discovery(nodes, args.runs))
    if args.suite in ("detection", "all"):
        results.extend(bench_detection(args.runs))
    for result in results:
        if args.json:
            print(json.dumps(result.to_json()), flush=True)
            continue
        digits = 0 if result.unit.endswith("/s") else 2
        line = (
            f"{result.name}: {result.value:,.{digits}f} {result.unit} "
            f"(min {result.min:,.{digits}f}, max {result.max:,.{digits}f}, {result.runs} runs)"
        )
        if result.baseline is not None and result.ratio is not None:
            line += f"; plain pyzmq {result.baseline:,.0f}; ratio {result.ratio:.2f}"
        print(f"{line}; lost {result.lost}", flush=True)
    return 0
