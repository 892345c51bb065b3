"""Benchmarks (``mesh-cli bench``): the mesh next to plain pyzmq, measured in the same run, with
every role in a process of its own on 127.0.0.1.

Groups, one module each: throughput (`_throughput`: events/s publish -> subscribe, tasks/s
push -> work with acks), latency (`_latency`: round trips), discovery (`_discovery`), failures
(`_failure`: detection of a killed or frozen peer, rerouting of a killed worker's tasks) and
scale (`_scale`: N node processes in one mesh). The requests group puts what request/reply
costs beside what a task costs, from two modules: round trips of a request and its reply, of a
task and its ack and of the floor, plain pyzmq PUSH/PULL driven from trio as the mesh drives
ZeroMQ (`_latency`, all three beside the same REQ/REP), and tasks/s with acks to 1 worker
(`_throughput`). A measurement that two chosen groups share is made once, for the first of them:
with latency, the round trips are one run of the latency measurements; with tasks (1 worker among
`Options.workers`), tasks/s is the tasks group's. Roles run in a `Pool` of spawned (never forked)
processes that is reused from run to run and always reaped; every wait is bounded. Times are
taken with CLOCK_MONOTONIC, common to every process of the machine. Absolute figures on a shared
machine are noisy: compare the ratio to plain pyzmq measured in the same run.

With `Options.keys` every measurement is made open and keyed (CurveZMQ on: one key pair, made
for the suite, in every node, and CURVE on every plain socket), each keyed one after its open
twin with its cost against it (`against_open`). Throughput and latency alternate open and keyed
within each run; discovery and failures, whose figures are the detector's and mDNS's timing
rather than the machine's load, measure all their open runs and then all their keyed ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

from .._keys import KeyPair
from ._common import Measurement, Pool, against_open
from ._discovery import bench_discovery
from ._failure import bench_detection, bench_reroute
from ._latency import bench_latency
from ._scale import bench_scale
from ._throughput import bench_events, bench_tasks

#: The groups of measurements, in the order they run.
GROUPS = ("events", "tasks", "latency", "requests", "discovery", "detection", "reroute")
#: Names that stand for several groups.
ALIASES = {"all": GROUPS, "throughput": ("events", "tasks"), "failure": ("detection", "reroute")}

__all__ = [
    "ALIASES",
    "GROUPS",
    "Measurement",
    "Options",
    "bench_detection",
    "bench_discovery",
    "bench_events",
    "bench_latency",
    "bench_reroute",
    "bench_scale",
    "bench_tasks",
    "run_scale",
    "run_suite",
]


@dataclass(frozen=True, slots=True)
class Options:
    """What to measure and how long: the defaults are the suite `mesh-cli bench` runs (under a
    minute on 2 cores)."""

    groups: Sequence[str] = GROUPS
    #: Body sizes in bytes, for events, tasks and round trips.
    sizes: Sequence[int] = (100, 1024)
    subscribers: Sequence[int] = (1, 4)
    workers: Sequence[int] = (1, 3)
    #: Runs of each measurement (mesh and plain pyzmq alternate); medians are reported.
    runs: int = 3
    #: Seconds each throughput or latency run sends for.
    duration: float = 0.3
    #: Most messages (or round trips) in one run.
    count: int = 1_000_000
    discovery_nodes: Sequence[int] = (2, 10)
    #: Measure each thing open and keyed (CurveZMQ on), side by side.
    keys: bool = False


def run_suite(options: Options) -> Iterator[Measurement]:
    """Run the groups in `options.groups`, yielding each measurement as soon as it is made."""
    groups = set(options.groups)
    unknown = groups - set(GROUPS)
    if unknown:
        raise ValueError(f"unknown benchmark groups: {', '.join(sorted(unknown))}")
    # One key pair for every node and socket of the suite: a node always allows its own key,
    # so no allow list is needed, and each role gets it as an argument (no file, no environment).
    key = KeyPair.generate() if options.keys else None
    runs, duration, count = options.runs, options.duration, options.count
    size = 2
    if "events" in groups:
        size = max(size, 1 + max(options.subscribers))
    if "tasks" in groups:
        size = max(size, 1 + max(options.workers))
    if groups & {"events", "tasks", "latency", "requests", "discovery"}:
        with Pool(size) as pool:
            if "events" in groups:
                for body in options.sizes:
                    for subscribers in options.subscribers:
                        yield from bench_events(pool, body, subscribers, runs, duration, count, key)
            if "tasks" in groups:
                for body in options.sizes:
                    for workers in options.workers:
                        yield from bench_tasks(pool, body, workers, runs, duration, count, key)
            # Round trips are about per-message cost: the smallest size says it.
            smallest = min(options.sizes)
            trips = _round_trips(groups)
            if trips:
                yield from bench_latency(pool, smallest, runs, duration, count, key, trips)
            if "requests" in groups and not ("tasks" in groups and 1 in options.workers):
                yield from bench_tasks(pool, smallest, 1, runs, duration, count, key)
            if "discovery" in groups:
                for nodes in options.discovery_nodes:
                    opened = bench_discovery(pool, nodes, runs)
                    yield from _keyed_too(opened, key, partial(bench_discovery, pool, nodes, runs))
    yield from _failures(groups, runs, key)


def _round_trips(groups: set[str]) -> tuple[str, ...]:
    """The round trips (`bench_latency`'s `trips`) that `groups` want, each once."""
    trips: list[str] = []
    if "latency" in groups:
        trips += ["tasks", "events"]
    if "requests" in groups:
        trips += [trip for trip in ("requests", "tasks", "floor") if trip not in trips]
    return tuple(trips)


def _failures(groups: set[str], runs: int, key: KeyPair | None) -> Iterator[Measurement]:
    """Detection and reroute: a victim process per run, open (and keyed) each."""
    passes = 1 if key is None else 2
    detection = 2 * runs if "detection" in groups else 0
    reroute = runs if "reroute" in groups else 0
    if not detection + reroute:
        return
    with Pool(passes * (detection + reroute)) as pool:
        if detection:
            opened = bench_detection(pool, runs)
            yield from _keyed_too(opened, key, partial(bench_detection, pool, runs, detection))
        if reroute:
            first = passes * detection
            opened = [bench_reroute(pool, runs, first)]
            yield from _keyed_too(
                opened, key, lambda key: [bench_reroute(pool, runs, first + reroute, key=key)]
            )


def _keyed_too(
    opened: list[Measurement],
    key: KeyPair | None,
    keyed: Callable[[KeyPair], list[Measurement]],
) -> list[Measurement]:
    """`opened`, or with `key` each of them followed by its keyed twin, which `keyed(key)`
    measures."""
    return opened if key is None else against_open(opened, keyed(key))


def run_scale(
    nodes: Sequence[int],
    idle: float = 3.0,
    duration: float = 0.5,
    count: int = 1_000_000,
    *,
    netns: bool = False,
) -> Iterator[Measurement]:
    """The scale measurements for each number of nodes, in order (each node in a network
    namespace of its own if `netns`)."""
    for number in nodes:
        yield from bench_scale(number, idle, duration, count, netns=netns)
