"""``python -m mesh._sim``: run the simulation over many seeds, one seed, or a schedule given as
JSON, and print what it found. Exit status 1 if an invariant failed."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import FAULT_KINDS, Result, Schedule, SimSettings, count_faults, generate, run


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mesh._sim",
        description="Deterministic simulation of a mesh under seeded faults, in virtual time.",
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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
