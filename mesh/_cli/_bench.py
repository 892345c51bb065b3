"""``mesh-cli bench``: the mesh measured next to plain pyzmq, in separate processes."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from ._common import UserError, add_command, positive_float, positive_int

_DESCRIPTION = """\
Measure the mesh next to plain pyzmq, every role in a process of its own on 127.0.0.1, plain
pyzmq with the same process layout in the same run. Groups (--suite):
  events     events/s publish -> subscribe, each size, 1 and 4 subscribers (plain: PUB/SUB)
  tasks      tasks/s push -> work, acked, each size, 1 and 3 workers (plain: PUSH/PULL with
             acks, 1,000 unacked a worker at most; then again vs plain PUSH/PULL without acks)
  latency    round trip p50/p99: a task and its ack, an event request and its reply (plain: REQ/REP)
  requests   round trip p50/p99: a request and its reply (request/serve), a task and its ack,
             and the floor: trio+pyzmq PUSH/PULL both ways without the mesh, driven as the
             mesh drives ZeroMQ (plain: REQ/REP, for all three); tasks/s acked, smallest size,
             1 worker (as tasks); what another chosen group measures too is measured and shown
             once
  discovery  open to in every peer map, and first event, over mDNS with 2 and 10 nodes
  detection  kill -9 and SIGSTOP of a peer to suspect and dead
  reroute    kill -9 of a worker holding tasks to the first of them done by another worker
  all        every group (the default; under a minute on 2 cores)
Each figure is the median of --runs runs, with min and max; ratio is mesh / plain pyzmq.
With --keys every measurement is made open and keyed (CurveZMQ on: one key pair for every node,
CURVE on every plain pyzmq socket), in the same runs; each keyed row (", keyed") follows its
open one, its ratio against plain pyzmq with CURVE, "vs open" its cost: keyed mesh / open mesh,
"plain vs open" the same for plain pyzmq.
With --scale: N node processes in one mesh for each N of --nodes: time to full mesh, idle CPU
and memory per node, events/s from one node to the N - 1 others; with --netns (root) each node
in a network namespace of its own on one virtual switch, so the wire is real."""


def add_to(commands: Any) -> None:
    from .._bench import ALIASES, GROUPS

    bench = add_command(
        commands,
        "bench",
        help="measure the mesh next to plain pyzmq, in separate processes on 127.0.0.1",
        description=_DESCRIPTION,
        example="mesh-cli bench --suite events,latency --runs 5 --json",
    )
    choices = [*GROUPS, *ALIASES]
    bench.add_argument(
        "--suite",
        type=_names(choices),
        default=["all"],
        metavar="GROUP[,GROUP]",
        help=f"what to measure: {', '.join(choices)} (default: all)",
    )
    bench.add_argument(
        "--size",
        "--sizes",
        dest="sizes",
        type=_numbers(positive_int),
        default=[100, 1024],
        metavar="BYTES[,BYTES]",
        help="body sizes for events and tasks; round trips and requests use the smallest"
        " (default: 100,1024)",
    )
    bench.add_argument(
        "--subscribers",
        type=_numbers(positive_int),
        default=[1, 4],
        metavar="N[,N]",
        help="subscriber processes for events (default: 1,4)",
    )
    bench.add_argument(
        "--workers",
        type=_numbers(positive_int),
        default=[1, 3],
        metavar="N[,N]",
        help="worker processes for tasks (default: 1,3)",
    )
    bench.add_argument(
        "--discovery-nodes",
        type=_numbers(_at_least_two),
        default=[2, 10],
        metavar="N[,N]",
        help="mesh sizes for discovery (default: 2,10)",
    )
    bench.add_argument("--runs", type=positive_int, default=3, help="runs of each (default: 3)")
    bench.add_argument(
        "--duration",
        type=positive_float,
        default=0.3,
        metavar="SECONDS",
        help="how long each throughput or latency run sends (default: 0.3)",
    )
    bench.add_argument(
        "--count",
        type=positive_int,
        default=1_000_000,
        help="most messages (or round trips) in one run (default: 1000000)",
    )
    bench.add_argument(
        "--keys",
        action="store_true",
        help="measure each thing keyed (CurveZMQ, plain pyzmq with CURVE) beside open",
    )
    bench.add_argument(
        "--scale",
        action="store_true",
        help="measure N node processes in one mesh instead of the suite",
    )
    bench.add_argument(
        "--nodes",
        type=_numbers(_at_least_two),
        default=[2, 8, 16, 32],
        metavar="N[,N]",
        help="with --scale: the numbers of nodes (default: 2,8,16,32)",
    )
    bench.add_argument(
        "--idle",
        type=positive_float,
        default=3.0,
        metavar="SECONDS",
        help="with --scale: how long idle CPU is measured (default: 3)",
    )
    bench.add_argument(
        "--netns",
        action="store_true",
        help="with --scale: each node in a network namespace of its own on one virtual switch "
        "(root)",
    )
    bench.add_argument("--json", action="store_true", help="print JSON, one object per line")
    bench.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from .._bench import ALIASES, Options, run_scale, run_suite

    if args.scale and args.keys:
        raise UserError("--keys measures the suite, not --scale", status=2)
    if args.netns and not args.scale:
        raise UserError("--netns is for --scale", status=2)
    if args.scale:
        results = run_scale(args.nodes, args.idle, args.duration, args.count, netns=args.netns)
    else:
        groups: list[str] = []
        for name in args.suite:
            for group in ALIASES.get(name, (name,)):
                if group not in groups:
                    groups.append(group)
        options = Options(
            groups=groups,
            sizes=args.sizes,
            subscribers=args.subscribers,
            workers=args.workers,
            runs=args.runs,
            duration=args.duration,
            count=args.count,
            discovery_nodes=args.discovery_nodes,
            keys=args.keys,
        )
        results = run_suite(options)
    # With --keys the rows are longer (", keyed") and two columns more: the cost against open.
    widths = _KEYED_WIDTHS if args.keys else _WIDTHS
    if not args.json:
        print(_row(_KEYED_HEADER if args.keys else _HEADER, widths), flush=True)
    for result in results:
        if args.json:
            print(json.dumps(result.to_json()), flush=True)
        else:
            print(_row(_cells(result, args.keys), widths), flush=True)
    return 0


_HEADER = ("measurement", "mesh", "unit", "plain pyzmq", "ratio", "min", "max", "runs", "lost")
_WIDTHS = (52, 10, 11, 11, 6, 10, 10, 4, 6)
_KEYED_HEADER = (*_HEADER, "vs open", "plain vs open")
_KEYED_WIDTHS = (59, *_WIDTHS[1:], 7, 13)
_UNIT = 2  # the column written from the left


def _row(cells: tuple[str, ...], widths: tuple[int, ...] = _WIDTHS) -> str:
    first, *rest = cells
    line = first.ljust(widths[0])
    for column, (cell, width) in enumerate(zip(rest, widths[1:], strict=True), 1):
        line += "  " + (cell.ljust(width) if column == _UNIT else cell.rjust(width))
    return line.rstrip()


def _cells(result: Any, keys: bool = False) -> tuple[str, ...]:
    cells = (
        f"{result.name}, keyed" if result.keys else result.name,
        _number(result.value),
        result.unit,
        _number(result.baseline),
        _ratio(result.ratio),
        _number(result.min),
        _number(result.max),
        str(result.runs),
        str(result.lost),
    )
    if not keys:
        return cells
    return (*cells, _ratio(result.vs_open), _ratio(result.baseline_vs_open))


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _number(value: float | None) -> str:
    if value is None or math.isnan(value):
        return "-"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _names(choices: list[str]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        unknown = [name for name in names if name not in choices]
        if unknown or not names:
            raise argparse.ArgumentTypeError(
                f"{text!r}: pick from {', '.join(choices)} (comma-separated)"
            )
        return names

    return parse


def _numbers(parse_one: Callable[[str], int]) -> Callable[[str], list[int]]:
    def parse(text: str) -> list[int]:
        numbers = [parse_one(part.strip()) for part in text.split(",") if part.strip()]
        if not numbers:
            raise argparse.ArgumentTypeError("give at least one number")
        return numbers

    return parse


def _at_least_two(text: str) -> int:
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError("must be at least 2")
    return value
