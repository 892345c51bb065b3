"""mesh-cli: the command line.

Commands so far: `bench` (events/s next to plain pyzmq). The rest (peers, run, pub, sub, push,
work, demo) arrive with their issues.
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
    args = parser.parse_args(argv)
    if args.command == "bench":
        return _bench(args)
    parser.print_help()
    return 0


def _bench(args: argparse.Namespace) -> int:
    from ._bench import bench_events

    result = bench_events(args.count, args.size, args.runs)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(
            f"{result.name}: {result.value:,.0f} {result.unit} (min {result.min:,.0f}, "
            f"max {result.max:,.0f}, {result.runs} runs); plain pyzmq {result.baseline:,.0f}; "
            f"ratio {result.ratio:.2f}; lost {result.lost}"
        )
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


if __name__ == "__main__":
    sys.exit(main())
