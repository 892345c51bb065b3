"""``mesh-cli demo``: a small mesh on this machine finds itself, shares work, loses a worker to
SIGKILL part way through, and heals: nothing is lost.

The demo is a conductor: it starts each node as a process of its own (`_demo_roles`), joins the
mesh itself as an observer (to see states change as every node does), reads what the nodes
report on their stdout, and draws a view: live and in place on a terminal, one line per event
otherwise. Everything binds to 127.0.0.1 and lives in a mesh with a random name; every process
it starts is killed (by its pid) when it ends, on Ctrl-C and on error too.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import secrets
import signal
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import trio

from .. import PeerLeft, PeerStateChanged
from .._node import open_node
from .._streams import PeerWatch
from ._common import add_command, positive_float, positive_int, run_trio

INTERFACE = "127.0.0.1"
WORKERS = ("worker-1", "worker-2", "worker-3")
VICTIM = "worker-2"
SUBSCRIBER = "watcher"


def add_to(commands: Any) -> None:
    parser = add_command(
        commands,
        "demo",
        help="watch a mesh on this machine share work, lose a node and heal",
        description="Start a producer, three workers and an event subscriber as separate "
        "processes on 127.0.0.1; they find each other over mDNS and the producer's tasks flow "
        "to the workers. Part way through, one worker is killed with SIGKILL: watch the mesh "
        "suspect it, declare it dead and move its unacked tasks to the others. Ends with a "
        "summary; exits 0 only if no task was lost.",
        example="mesh-cli demo",
    )
    parser.add_argument("--tasks", type=positive_int, default=2000, help="tasks to push")
    parser.add_argument(
        "--rate", type=positive_float, default=400.0, help="tasks pushed per second"
    )
    parser.add_argument(
        "--kill-at",
        type=float,
        default=0.4,
        metavar="FRACTION",
        help="kill a worker once this fraction of the tasks is done (default 0.4)",
    )
    parser.add_argument(
        "--timeout", type=positive_float, default=28.0, help="give up after this many seconds"
    )
    parser.set_defaults(run=lambda args: run_trio(_demo, args))


@dataclass
class Node:
    """A node process of the demo and what it reported."""

    name: str
    process: trio.Process
    ready: trio.Event = field(default_factory=trio.Event)
    done: Counter[int] = field(default_factory=Counter)  # task number -> times done here
    last: dict[str, Any] = field(default_factory=dict)  # latest report of each kind
    state: str = "starting"
    killed_at: float | None = None


@dataclass
class Demo:
    args: argparse.Namespace
    mesh: str
    started: float
    live: bool
    nodes: dict[str, Node] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    events: int = 0
    last_event: Any = None
    killed_at: float | None = None
    suspected_after: float | None = None
    dead_after: float | None = None
    rerouted_after: float | None = None
    finished: dict[str, Any] | None = None
    finished_event: trio.Event = field(default_factory=trio.Event)

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


async def _demo(args: argparse.Namespace) -> int:
    demo = Demo(
        args,
        mesh=f"demo-{secrets.token_hex(3)}",
        started=trio.current_time(),
        live=sys.stdout.isatty(),
    )
    print(
        f"mesh-cli demo: mesh {demo.mesh!r} on {INTERFACE}: a producer, "
        f"{len(WORKERS)} workers and a subscriber, each a process; {args.tasks} tasks",
        flush=True,
    )
    try:
        with trio.fail_after(args.timeout):
            await _conduct(demo)
    except trio.TooSlowError:
        demo.note(f"gave up after {args.timeout:g} s")
        _summary(demo)
        return 1
    return _summary(demo)


async def _conduct(demo: Demo) -> None:
    async with (
        open_node("demo-view", mesh=demo.mesh, interface=INTERFACE) as observer,
        trio.open_nursery() as nursery,
    ):
        try:
            nursery.start_soon(_follow_membership, demo, observer.watch_peers())
            if demo.live:
                nursery.start_soon(_draw, demo)
            for name in (SUBSCRIBER, *WORKERS):
                role = ["subscriber"] if name == SUBSCRIBER else ["worker", name]
                await _start(demo, nursery, name, role, *([] if name == SUBSCRIBER else ["0.004"]))
            for node in list(demo.nodes.values()):
                await node.ready.wait()
            demo.note("workers and subscriber are up; starting the producer")
            await _start(
                demo,
                nursery,
                "producer",
                ["producer"],
                str(demo.args.tasks),
                str(demo.args.rate),
                ",".join((SUBSCRIBER, *WORKERS)),
            )
            await _kill_part_way(demo)
            await demo.finished_event.wait()
        finally:
            for node in demo.nodes.values():
                _kill(node)
            nursery.cancel_scope.cancel()


async def _start(
    demo: Demo, nursery: trio.Nursery, name: str, role: list[str], *arguments: str
) -> None:
    command = [
        sys.executable,
        "-m",
        "mesh._cli._demo_roles",
        role[0],
        *role[1:],
        demo.mesh,
        INTERFACE,
        *arguments,
    ]
    process = await trio.lowlevel.open_process(
        command, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    node = Node(name, process)
    demo.nodes[name] = node
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
    if node.killed_at is None and not demo.finished_event.is_set():
        demo.note(f"{node.name} exited unexpectedly (status {node.process.returncode})")


def _on_report(demo: Demo, node: Node, report: dict[str, Any]) -> None:
    kind = report["kind"]
    node.last[kind] = report
    if kind == "ready":
        node.state = "alive"
        node.ready.set()
    elif kind == "done":
        node.done[report["n"]] += 1
        if report["attempt"] > 1 and demo.killed_at is not None and demo.rerouted_after is None:
            demo.rerouted_after = trio.current_time() - demo.killed_at
            demo.note(f"{node.name} did a task {VICTIM} held: rerouted")
    elif kind == "event":
        demo.events += 1
        demo.last_event = report["body"]
    elif kind == "started":
        demo.note("producer found every node; pushing tasks")
    elif kind == "finished":
        demo.finished = report
        demo.note("producer: every task acked")
        demo.finished_event.set()


async def _kill_part_way(demo: Demo) -> None:
    victim = demo.nodes[VICTIM]
    target = math.ceil(demo.args.tasks * demo.args.kill_at)
    while len(demo.done()) < target and not demo.finished_event.is_set():  # noqa: ASYNC110
        await trio.sleep(0.01)  # a progress check: the workers' reports come as they come
    if demo.finished_event.is_set():
        return
    demo.killed_at = victim.killed_at = trio.current_time()
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.state = "killed"
    demo.note(f"SIGKILL {VICTIM} (pid {victim.process.pid}) with {len(demo.done())} tasks done")


async def _follow_membership(demo: Demo, watch: PeerWatch) -> None:
    async with watch:
        async for change in watch:
            name = change.peer.name
            node = demo.nodes.get(name)
            if isinstance(change, PeerStateChanged):
                state = change.peer.state.value
                if node is not None and (node.killed_at is None or state != "alive"):
                    node.state = state
                since = (
                    ""
                    if demo.killed_at is None
                    else (f" {(trio.current_time() - demo.killed_at) * 1000:.0f} ms after the kill")
                )
                demo.note(f"{name} is {state} ({change.reason}){since}")
                if name == VICTIM and demo.killed_at is not None:
                    after = trio.current_time() - demo.killed_at
                    if state == "suspect" and demo.suspected_after is None:
                        demo.suspected_after = after
                    elif state == "dead" and demo.dead_after is None:
                        demo.dead_after = after
            elif isinstance(change, PeerLeft):
                demo.note(f"{name} left ({change.reason})")
                if node is not None and node.state != "killed":
                    node.state = "left"
            else:
                kind = type(change).__name__.removeprefix("Peer").lower()
                if kind == "joined":
                    demo.note(f"{name} joined")


async def _draw(demo: Demo) -> None:
    while True:
        lines = [
            f"mesh {demo.mesh!r} on {INTERFACE}"
            f"   {trio.current_time() - demo.started:5.1f} s   Ctrl-C stops",
            "",
            f"{'NODE':<10} {'STATE':<8} DONE / NOTE",
        ]
        for node in demo.nodes.values():
            if node.name == "producer":
                stats = node.last.get("finished") or node.last.get("stats") or {}
                note = (
                    f"pushed {stats.get('tasks_pushed', 0)}, acked {stats.get('tasks_acked', 0)},"
                    f" redelivered {stats.get('tasks_redelivered', 0)}"
                )
            elif node.name == SUBSCRIBER:
                note = f"{demo.events} events, last {json.dumps(demo.last_event)}"
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
    print()
    print(
        f"summary: {sent} tasks sent, {len(done)} done, {lost} lost, {duplicates} done twice"
        f" (at-least-once), {finished.get('tasks_redelivered', 0)} redelivered,"
        f" {given_up} given up; {demo.events} progress events received"
    )
    if demo.killed_at is not None:

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f} ms"

        print(
            f"{VICTIM} killed: suspected after {ms(demo.suspected_after)}, declared dead after"
            f" {ms(demo.dead_after)}; first of its tasks done elsewhere after"
            f" {ms(demo.rerouted_after)}"
        )
    ok = demo.finished is not None and lost == 0 and given_up == 0
    print("ok: nothing lost" if ok else "FAILED")
    return 0 if ok else 1
