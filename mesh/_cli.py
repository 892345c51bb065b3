"""mesh-cli: the command line.

Commands so far: `bench` (events/s next to plain pyzmq; discovery times). The rest (peers,
run, pub, sub, push, work, demo) arrive with their issues.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from . import __version__


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mesh-cli",
        description="Inspect and drive a brokerless mesh.",
    )
    parser.add_argument("--version", action="version", version=f"mesh-cli {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    bench = commands.add_parser(
        "bench",
        help="measure the mesh next to plain pyzmq, in separate processes on 127.0.0.1",
        description="Measure events/s publish -> subscribe between two processes on 127.0.0.1, "
        "next to plain pyzmq PUB/SUB measured in the same run, and print the ratio.",
        epilog="example: mesh-cli bench --count 100000 --runs 3 --json",
    )
    bench.add_argument("--count", type=_positive, default=200_000, help="events per run")
    bench.add_argument("--size", type=_positive, default=100, help="body size in bytes")
    bench.add_argument("--runs", type=_positive, default=3, help="runs of each side")
    bench.add_argument("--json", action="store_true", help="print JSON, one object per line")
    bench.add_argument(
        "--suite",
        choices=["events", "discovery", "detection", "all"],
        default="events",
        help="what to measure (discovery: open to peer seen, with 2 and 10 nodes; detection: "
        "kill -9 and SIGSTOP of a peer process to suspect and dead)",
    )
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    parser.print_help()
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ._bench import Measurement, bench_detection, bench_discovery, bench_events

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


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
