"""``python -m mesh._sim``: run the simulation over many seeds, one seed, or a schedule given as
JSON, and print what it found. Exit status 1 if an invariant failed. ``python -m mesh._sim swim``:
SWIM membership at scale (`_swim_world`), one row of figures per mesh size."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import FAULT_KINDS, Result, Schedule, SimSettings, count_faults, generate, run
from ._swim_world import SwimResult, SwimSettings, generate_swim, run_swim


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    if arguments[:1] == ["swim"]:
        return swim(arguments[1:])
    parser = argparse.ArgumentParser(
        prog="python -m mesh._sim",
        description="Deterministic simulation of a mesh under seeded faults, in virtual time.",
        epilog="SWIM membership at scale: python -m mesh._sim swim --help",
    )
    runs = parser.add_mutually_exclusive_group()
    runs.add_argument("--seeds", type=int, default=100, help="how many seeds to run (100)")
    runs.add_argument("--seed", type=int, help="run this one seed and show its schedule")
    runs.add_argument("--replay", metavar="JSON", help="run this schedule (as a report prints)")
    parser.add_argument("--start", type=int, default=0, help="first seed (0)")
    parser.add_argument("--nodes", type=int, default=6, help="nodes in the mesh (6)")
    parser.add_argument("--duration", type=float, help="seconds of faults and pushes")
    parser.add_argument("--faults", type=int, help="most faults per schedule")
    parser.add_argument("--interval", type=float, help="heartbeat interval, seconds")
    parser.add_argument("--drop", type=float, help="chance a message is lost (0.02)")
    parser.add_argument("--jitter", type=float, help="most random delay, seconds (0.01)")
    args = parser.parse_args(arguments)

    if args.replay is not None:
        try:
            schedule = Schedule.from_json(args.replay)
        except (ValueError, KeyError, TypeError) as exc:
            parser.error(f"not a schedule: {exc}")
        return _one(schedule)
    changes: dict[str, object] = {}
    if args.duration is not None:
        changes["duration"] = args.duration
    if args.faults is not None:
        changes["max_faults"] = args.faults
    if args.drop is not None:
        changes["drop"] = args.drop
    if args.jitter is not None:
        changes["jitter"] = args.jitter
    try:
        settings = SimSettings.for_nodes(args.nodes, **changes)
        if args.interval is not None:
            settings = SimSettings.from_dict(
                {**settings.to_dict(), "detector": {"heartbeat_interval": args.interval}}
            )
    except ValueError as exc:
        parser.error(str(exc))
    if args.seed is not None:
        return _one(generate(args.seed, settings))

    faults = dict.fromkeys(FAULT_KINDS, 0)
    failed: list[Result] = []
    events = heartbeats = pushed = acked = given_up = 0
    started = time.perf_counter()
    for seed in range(args.start, args.start + args.seeds):
        result = run(generate(seed, settings))
        for kind, n in count_faults(result.schedule.faults).items():
            faults[kind] += n
        events += result.events
        heartbeats += result.heartbeats
        pushed, acked, given_up = (
            pushed + result.pushed,
            acked + result.acked,
            given_up + result.given_up,
        )
        if not result.ok:
            failed.append(result)
            print(result.report(), flush=True)
    wall = time.perf_counter() - started
    print(
        f"{args.seeds} seeds from {args.start}, {args.nodes} nodes: {wall:.1f} s wall,"
        f" {events} events, {heartbeats} heartbeats taken in"
    )
    print("faults: " + ", ".join(f"{kind} {n}" for kind, n in faults.items()))
    print(f"tasks: {pushed} pushed, {acked} acked, {given_up} given up")
    seeds = ", ".join(str(r.schedule.seed) for r in failed)
    print(f"violations: {sum(len(r.violations) for r in failed)} in {len(failed)} seeds {seeds}")
    return 1 if failed else 0


def _one(schedule: Schedule) -> int:
    print(schedule.to_json())
    started = time.perf_counter()
    result = run(schedule)
    wall = time.perf_counter() - started
    print(
        f"{schedule.settings.nodes} nodes: {wall:.2f} s wall, {result.end:.2f} s virtual,"
        f" {result.events} events, {result.heartbeats} heartbeats taken in,"
        f" {result.ticks} detector ticks;"
        f" tasks {result.pushed} pushed, {result.acked} acked, {result.given_up} given up;"
        f" trace {result.trace}"
    )
    if not result.ok:
        print(result.report())
        return 1
    print("no violations")
    return 0


def swim(argv: Sequence[str]) -> int:
    """``python -m mesh._sim swim``: one SWIM run per mesh size, a row of figures each."""
    parser = argparse.ArgumentParser(
        prog="python -m mesh._sim swim",
        description="SWIM membership (mesh/_probing.py) at scale, in virtual time: how soon a"
        " crash is known, how often a member that is up is suspected, messages per node.",
    )
    parser.add_argument("--nodes", default="16,100,1000", help="mesh sizes (16,100,1000)")
    parser.add_argument("--seconds", type=float, default=120.0, help="virtual seconds (120)")
    parser.add_argument("--loss", type=float, default=0.0, help="chance a message is lost (0)")
    parser.add_argument("--crashes", type=int, default=4, help="nodes that crash (4)")
    parser.add_argument("--pauses", type=int, default=4, help="pauses, 0.5 to 5 s (4)")
    parser.add_argument("--partitions", type=int, default=0, help="partitions, 1 to 10 s (0)")
    parser.add_argument("--seed", type=int, default=0, help="the run's seed (0)")
    parser.add_argument(
        "--read-every", type=float, default=0.2, help="seconds between a node's reads (0.2)"
    )
    args = parser.parse_args(argv)
    try:
        sizes = [int(n) for n in args.nodes.split(",")]
        settings = [
            SwimSettings(
                nodes=n,
                seconds=args.seconds,
                loss=args.loss,
                crashes=args.crashes,
                pauses=args.pauses,
                partitions=args.partitions,
                read_every=args.read_every,
            )
            for n in sizes
        ]
    except ValueError as exc:
        parser.error(str(exc))
    print(
        f"seed {args.seed}, {args.seconds:g} s, loss {args.loss:g}, crashes {args.crashes},"
        f" pauses {args.pauses}, partitions {args.partitions}, read every {args.read_every:g} s"
    )
    print("crash known: seconds from the crash, median/p99/max over the crashes; false suspicions:")
    print("SUSPECT changes at any node (first hand: its own probe failed) per node-hour")
    print(
        f"{'nodes':>5}  {'msgs/node/s':>11}  {'first known':>15}  {'known by all':>15}"
        f"  {'unknown':>7}  {'false susp/h':>12}  {'first hand/h':>12}  {'false deaths':>12}"
        f"  {'refutations':>11}  {'cpu s':>6}"
    )
    for each in settings:
        started = time.process_time()
        result = run_swim(generate_swim(args.seed, each))
        print(_swim_row(result, time.process_time() - started), flush=True)
    return 0


def _swim_row(result: SwimResult, cpu: float) -> str:
    def spread(figures: tuple[float, float, float] | None) -> str:
        return "-" if figures is None else "/".join(f"{x:.1f}" for x in figures)

    return (
        f"{result.schedule.settings.nodes:>5}  {result.msgs_per_node_second:>11.2f}"
        f"  {spread(result.first_known()):>15}  {spread(result.known_everywhere()):>15}"
        f"  {result.undetected:>7}  {result.per_node_hour(result.false_suspicions):>12.1f}"
        f"  {result.per_node_hour(result.false_accusations):>12.1f}  {result.false_deaths:>12}"
        f"  {result.refutations:>11}  {cpu:>6.1f}"
    )


if __name__ == "__main__":
    sys.exit(main())
