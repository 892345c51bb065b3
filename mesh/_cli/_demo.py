"""``mesh-cli demo``: a small mesh finds itself, shares work, loses a worker part way through,
and heals: nothing is lost.

The demo is a conductor: it starts every node as a process of its own (`_demo_roles`: an
observer, an event subscriber, three workers, a producer), reads what they report on their
stdout, fails one worker, and draws a view: live and in place on a terminal, one line per
event otherwise. By default every node binds to 127.0.0.1 and the failure is a SIGKILL; with
``--netns`` (root) every node gets a network namespace of its own on a virtual switch and the
failure is a cut link, healed later, and the mesh is keyed (a key pair a node, in a temporary
directory, handed over in MESH_KEY and MESH_ALLOW). The mesh has a random name. Every process
and namespace the demo made is removed when it ends, on Ctrl-C and on error too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import trio

from discovery import format_address

from .._keys import KeyPair
from ._common import (
    UserError,
    add_command,
    add_metrics_option,
    positive_float,
    positive_int,
    run_trio,
)

OBSERVER = "demo-view"
SUBSCRIBER = "watcher"
WORKERS = ("worker-1", "worker-2", "worker-3")
PRODUCER = "producer"
VICTIM = "worker-2"
TASK_PAUSE = "0.004"  # seconds a worker spends on a task
HEAL_AFTER = 1.0  # --netns: seconds from the victim's death to repairing its link


def add_to(commands: Any) -> None:
    parser = add_command(
        commands,
        "demo",
        help="watch a mesh on this machine share work, lose a node and heal",
        description="Start a producer, three workers, an event subscriber and an observer as "
        "separate processes on 127.0.0.1; they find each other over mDNS and the producer's "
        "tasks flow to the workers. Part way through, one worker is killed with SIGKILL: watch "
        "the mesh suspect it, declare it dead and move its unacked tasks to the others. Ends "
        "with a summary; exits 0 only if no task was lost.\n\n"
        "With --netns (root), each node runs in a network namespace of its own on a virtual "
        "switch, so discovery and failure cross a real (virtual) network, and the worker's "
        "link is cut instead (and repaired later) rather than its process killed. Off "
        "loopback the mesh is keyed: each node gets a key pair, and all of them are allowed.",
        example="mesh-cli demo",
    )
    parser.add_argument("--tasks", type=positive_int, default=2000, help="tasks to push")
    parser.add_argument("--rate", type=positive_float, default=400.0, help="tasks a second")
    parser.add_argument(
        "--fail-at",
        type=float,
        default=0.4,
        metavar="FRACTION",
        help="fail a worker once this fraction of the tasks is done (default 0.4)",
    )
    parser.add_argument(
        "--netns", action="store_true", help="one network namespace per node (root)"
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=28.0, help="give up after this many seconds"
    )
    add_metrics_option(parser, "the producer")
    parser.set_defaults(run=_run)


class Network(Protocol):
    """Where the nodes run, and how a node fails."""

    def place(self, name: str) -> tuple[list[str], str]: ...
    def cut(self, name: str) -> str: ...
    def heal(self, name: str) -> None: ...
    def close(self) -> None: ...


class Loopback:
    """Every node on 127.0.0.1; failing one kills its process."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def place(self, name: str) -> tuple[list[str], str]:
        return [], "127.0.0.1"

    def cut(self, name: str) -> str:
        os.kill(self.pids[name], signal.SIGKILL)
        return f"SIGKILL {name} (pid {self.pids[name]})"

    def heal(self, name: str) -> None:
        pass  # a killed process stays dead

    def close(self) -> None:
        pass


def _run(args: argparse.Namespace) -> int:
    if args.metrics is not None:
        if args.netns:
            raise UserError("--metrics is for the demo on 127.0.0.1, not --netns", status=2)
        _check_bindable(*args.metrics)
    names = [OBSERVER, SUBSCRIBER, *WORKERS, PRODUCER]
    if args.netns:
        from ._netns import Switch

        network: Network = Switch(names)
    else:
        network = Loopback()
    try:
        with tempfile.TemporaryDirectory(prefix="mesh-demo-keys-") as keys:
            if args.netns:
                # Off loopback the mesh is members only: a key pair for each node, and every
                # public key (the .pub files) is the allow list.
                for name in names:
                    KeyPair.generate().save(Path(keys, name))
            return run_trio(_demo, args, network, keys if args.netns else None)
    finally:
        network.close()


@dataclass
class Node:
    """A node process of the demo and what it reported."""

    name: str
    process: trio.Process
    ready: trio.Event = field(default_factory=trio.Event)
    done: Counter[int] = field(default_factory=Counter)  # task number -> times done here
    last: dict[str, Any] = field(default_factory=dict)  # latest report of each kind
    state: str = "starting"


@dataclass
class Demo:
    args: argparse.Namespace
    network: Network
    keys: str | None  # the directory of the nodes' key pairs, if keyed
    mesh: str
    started: float
    live: bool
    nodes: dict[str, Node] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    events: int = 0
    last_event: Any = None
    failed_at: float | None = None
    suspected_after: float | None = None
    dead_after: float | None = None
    rerouted_after: float | None = None
    healed_at: float | None = None
    back_after: float | None = None
    finished: dict[str, Any] | None = None
    finished_event: trio.Event = field(default_factory=trio.Event)
    victim_dead: trio.Event = field(default_factory=trio.Event)
    interrupted: bool = False

    def note(self, text: str) -> None:
        line = f"{trio.current_time() - self.started:6.2f} s  {text}"
        self.log.append(line)
        if not self.live:
            print(line, flush=True)

    def done(self) -> Counter[int]:
        total: Counter[int] = Counter()
        for node in self.nodes.values():
            total.update(node.done)
        return total

    def since_failure(self) -> float:
        assert self.failed_at is not None
        return trio.current_time() - self.failed_at


async def _demo(args: argparse.Namespace, network: Network, keys: str | None) -> int:
    demo = Demo(
        args,
        network,
        keys=keys,
        mesh=f"demo-{secrets.token_hex(3)}",
        started=trio.current_time(),
        live=sys.stdout.isatty(),
    )
    where = "network namespaces on a virtual switch" if args.netns else "127.0.0.1"
    print(
        f"mesh-cli demo: mesh {demo.mesh!r} on {where}: a producer, {len(WORKERS)} workers, "
        f"a subscriber and an observer, each a process; {args.tasks} tasks",
        flush=True,
    )
    try:
        with trio.fail_after(args.timeout), trio.CancelScope() as interruptible:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_stop_on_signal, demo, interruptible)
                await _conduct(demo)
                nursery.cancel_scope.cancel()
    except trio.TooSlowError:
        demo.note(f"gave up after {args.timeout:g} s")
    except NodeFailed as exc:
        demo.note(str(exc))
    return _summary(demo)


async def _stop_on_signal(demo: Demo, scope: trio.CancelScope) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            demo.note(f"{signal.Signals(signum).name}: stopping every node")
            demo.interrupted = True
            scope.cancel()


async def _conduct(demo: Demo) -> None:
    async with trio.open_nursery() as nursery:
        try:
            if demo.live:
                nursery.start_soon(_draw, demo)
            await _start(demo, nursery, OBSERVER, "observer")
            await demo.nodes[OBSERVER].ready.wait()
            await _start(demo, nursery, SUBSCRIBER, "subscriber")
            for name in WORKERS:
                await _start(demo, nursery, name, "worker", name, TASK_PAUSE)
            for node in list(demo.nodes.values()):
                await node.ready.wait()
            demo.note("workers and subscriber are up; starting the producer")
            peers = ",".join((SUBSCRIBER, *WORKERS))
            tasks, rate = str(demo.args.tasks), str(demo.args.rate)
            metrics = "" if demo.args.metrics is None else format_address(*demo.args.metrics)
            await _start(demo, nursery, PRODUCER, "producer", tasks, rate, peers, metrics)
            await _fail_part_way(demo)
            await demo.finished_event.wait()
            if demo.args.netns and demo.failed_at is not None:
                await demo.victim_dead.wait()
                await trio.sleep(max(0.0, HEAL_AFTER - (trio.current_time() - demo.failed_at)))
                demo.network.heal(VICTIM)
                demo.healed_at = trio.current_time()
                demo.note(f"repaired {VICTIM}'s link")
                with trio.move_on_after(10):
                    while demo.back_after is None:  # noqa: ASYNC110 (a bounded wait)
                        await trio.sleep(0.05)
        finally:
            for node in demo.nodes.values():
                _kill(node)
            nursery.cancel_scope.cancel()


#: How the demo tells its role processes its own -v.
_VERBOSITY = "MESH_DEMO_VERBOSITY"


async def _start(demo: Demo, nursery: trio.Nursery, name: str, *role: str) -> None:
    prefix, address = demo.network.place(name)
    command = [*prefix, sys.executable, "-m", "mesh._cli._demo_roles", role[0], demo.mesh,
               address, *role[1:]]  # fmt: skip
    # The roles log as the demo's own -v asks (peers joining, dying, coming back: on stderr).
    env = {**os.environ, _VERBOSITY: str(demo.args.verbose)}
    if demo.keys is not None:
        env |= {"MESH_KEY": str(Path(demo.keys, name)), "MESH_ALLOW": demo.keys}
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env
    )
    node = Node(name, process)
    demo.nodes[name] = node
    if isinstance(demo.network, Loopback):
        demo.network.pids[name] = process.pid
    nursery.start_soon(_read_reports, demo, node)


async def _read_reports(demo: Demo, node: Node) -> None:
    assert node.process.stdout is not None
    pending = b""
    async for chunk in node.process.stdout:
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            _on_report(demo, node, json.loads(line))
    await node.process.wait()
    if node.state != "failed" and not demo.finished_event.is_set():
        raise NodeFailed(f"{node.name} exited unexpectedly (status {node.process.returncode})")


def _check_bindable(host: str, port: int) -> None:
    """Fail now, in one line, if the producer could not serve its metrics there (it binds
    them itself once the other nodes are up)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except OSError as exc:
        where = format_address(host, port)
        raise UserError(f"--metrics: cannot serve on {where}: {exc.strerror or exc}") from None


class NodeFailed(Exception):
    """A node of the demo ended by itself (its stderr, shown above, says why)."""


def _on_report(demo: Demo, node: Node, report: dict[str, Any]) -> None:
    kind = report["kind"]
    node.last[kind] = report
    if kind == "ready":
        node.state = "alive"
        node.ready.set()
        if report.get("metrics"):
            demo.note(f"{node.name} serves its metrics at http://{report['metrics']}/metrics")
    elif kind == "done":
        node.done[report["n"]] += 1
        if report["attempt"] > 1 and demo.failed_at is not None and demo.rerouted_after is None:
            demo.rerouted_after = demo.since_failure()
            demo.note(f"{node.name} did a task {VICTIM} held: rerouted")
    elif kind == "event":
        demo.events += 1
        demo.last_event = report["body"]
    elif kind == "peer":
        _on_membership(demo, report)
    elif kind == "started":
        demo.note("producer found every node; pushing tasks")
    elif kind == "finished":
        demo.finished = report
        demo.note("producer: every task acked")
        demo.finished_event.set()


def _on_membership(demo: Demo, report: dict[str, Any]) -> None:
    """A change the observer saw."""
    name, state, change = report["name"], report["state"], report["change"]
    node = demo.nodes.get(name)
    if change == "joined":
        demo.note(f"{name} joined")
    elif change == "left":
        demo.note(f"{name} left ({report['reason']})")
    elif change == "state":
        since = "" if demo.failed_at is None else f", {demo.since_failure() * 1000:.0f} ms after"
        demo.note(f"{name} is {state} ({report['reason']}{since})")
        if node is not None and node.name == VICTIM and demo.failed_at is not None:
            if state == "suspect" and demo.suspected_after is None:
                demo.suspected_after = demo.since_failure()
            elif state == "dead" and demo.dead_after is None:
                demo.dead_after = demo.since_failure()
                demo.victim_dead.set()
            elif state == "alive" and demo.healed_at is not None:
                demo.back_after = trio.current_time() - demo.healed_at
    if node is not None and (node.state != "failed" or state == "alive"):
        node.state = state if change != "left" else "left"


async def _fail_part_way(demo: Demo) -> None:
    target = math.ceil(demo.args.tasks * demo.args.fail_at)
    while len(demo.done()) < target and not demo.finished_event.is_set():  # noqa: ASYNC110
        await trio.sleep(0.01)  # a progress check: the workers' reports come as they come
    if demo.finished_event.is_set():
        return
    what = demo.network.cut(VICTIM)
    demo.failed_at = trio.current_time()
    demo.nodes[VICTIM].state = "failed"
    demo.note(f"{what} with {len(demo.done())} tasks done")


async def _draw(demo: Demo) -> None:
    while True:
        lines = [
            f"mesh {demo.mesh!r}   {trio.current_time() - demo.started:5.1f} s   Ctrl-C stops",
            "",
            f"{'NODE':<10} {'STATE':<8} DONE / NOTE",
        ]
        for node in demo.nodes.values():
            if node.name == PRODUCER:
                stats = node.last.get("finished") or node.last.get("stats") or {}
                note = (
                    f"pushed {stats.get('tasks_pushed', 0)}, acked {stats.get('tasks_acked', 0)},"
                    f" redelivered {stats.get('tasks_redelivered', 0)}"
                )
            elif node.name == SUBSCRIBER:
                note = f"{demo.events} events, last {json.dumps(demo.last_event)}"
            elif node.name == OBSERVER:
                note = "watches membership"
            else:
                count = sum(node.done.values())
                note = f"{count:5d} " + "#" * min(40, count // 25)
            lines.append(f"{node.name:<10} {node.state:<8} {note}")
        lines += ["", *demo.log[-12:]]
        sys.stdout.write("\x1b[H\x1b[J" + "\n".join(lines) + "\n")
        sys.stdout.flush()
        await trio.sleep(0.2)


def _kill(node: Node) -> None:
    if node.process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(node.process.pid, signal.SIGKILL)


def _summary(demo: Demo) -> int:
    done = demo.done()
    sent = demo.args.tasks
    lost = sum(1 for n in range(sent) if n not in done)
    duplicates = sum(done.values()) - len(done)
    finished = demo.finished or {}
    given_up = finished.get("tasks_given_up", 0)

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f} ms"

    print()
    if demo.interrupted:
        print(f"interrupted with {len(done)} of {sent} tasks done; every node is stopped")
        return 130
    print(
        f"summary: {sent} tasks sent, {len(done)} done, {lost} lost, {duplicates} done twice"
        f" (at-least-once), {finished.get('tasks_redelivered', 0)} redelivered,"
        f" {given_up} given up; {demo.events} progress events received"
    )
    if demo.failed_at is not None:
        how = "cut off" if demo.args.netns else "killed"
        print(
            f"{VICTIM} {how}: suspected after {ms(demo.suspected_after)}, declared dead after"
            f" {ms(demo.dead_after)}; first of its tasks done elsewhere after"
            f" {ms(demo.rerouted_after)}"
            + (f"; alive again {ms(demo.back_after)} after the repair" if demo.args.netns else "")
        )
    ok = demo.finished is not None and lost == 0 and given_up == 0
    print("ok: nothing lost" if ok else "FAILED")
    return 0 if ok else 1
