"""The processes of ``mesh-cli demo``: ``python -m mesh._cli._demo_roles ROLE MESH INTERFACE ...``.

Each role is one node. It reports to the demo on stdout, one JSON object a line, each with a
``kind`` (see the roles below); the demo reads them to draw its view and to count.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import trio

import mesh

from ._common import configure_logging, metrics_address

SERVICE = "demo.job"
TOPIC = "demo.progress"
PEERS_TIMEOUT = 15.0


def _keyed() -> dict[str, Any]:
    """A keyed node's key and allow list, as the demo hands them over (``--netns``): in
    MESH_KEY and MESH_ALLOW, as for every mesh-cli command."""
    key = os.environ.get("MESH_KEY")
    return {} if not key else {"key": key, "allow": os.environ.get("MESH_ALLOW") or ()}


def report(kind: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"kind": kind, **fields}) + "\n")
    sys.stdout.flush()


async def worker(mesh_name: str, interface: str, name: str, pause: str) -> None:
    """Do `SERVICE` tasks, each taking `pause` seconds; report each one done *before* acking it,
    so the demo never misses a task done by a worker killed between the two."""
    async with (
        mesh.open_node(name, mesh=mesh_name, interface=interface, **_keyed()) as node,
        node.work(SERVICE) as tasks,
    ):
        report("ready", id=node.id, address=node.address)
        async for task in tasks:
            async with task:
                await trio.sleep(float(pause))
                report("done", n=task.body["n"], attempt=task.attempt)


async def producer(
    mesh_name: str, interface: str, count: str, rate: str, peers: str, metrics: str = ""
) -> None:
    """Wait for the `peers` (names, comma-separated), push `count` tasks at `rate` a second,
    publish progress events, then wait until every task is acked (or given up) and report the
    statistics. With `metrics` (``host:port``), serve ``GET /metrics`` there meanwhile."""
    options: dict[str, Any] = {}
    if metrics:
        host, port = metrics_address(metrics)
        options = {"metrics_host": host, "metrics_port": port}
    async with mesh.open_node(
        "producer", mesh=mesh_name, interface=interface, **options, **_keyed()
    ) as node:
        report("ready", id=node.id, address=node.address, metrics=node.metrics_address)
        await node.wait_for_peers(names=peers.split(","), timeout=PEERS_TIMEOUT)
        report("started")
        interval = 1.0 / float(rate)
        next_at = trio.current_time()
        for n in range(int(count)):
            await trio.sleep_until(next_at)
            next_at += interval
            await node.push(SERVICE, {"n": n})
            if n % 50 == 49:
                stats = node.statistics()
                await node.publish(TOPIC, {"pushed": n + 1, "acked": stats.tasks_acked})
                report("stats", **_counts(node))
        await node.wait_settled()
        await node.publish(TOPIC, {"pushed": int(count), "acked": node.statistics().tasks_acked})
        report("finished", **_counts(node))
        await trio.sleep(0.2)  # let the last event reach the subscriber before leaving


def _counts(node: mesh.Node) -> dict[str, Any]:
    stats = dataclasses.asdict(node.statistics())
    return {
        key: stats[key]
        for key in (
            "tasks_pushed",
            "tasks_acked",
            "tasks_nacked",
            "tasks_redelivered",
            "tasks_given_up",
            "tasks_in_flight",
        )
    }


async def subscriber(mesh_name: str, interface: str) -> None:
    """Report every progress event."""
    async with (
        mesh.open_node("watcher", mesh=mesh_name, interface=interface, **_keyed()) as node,
        node.subscribe(TOPIC) as events,
    ):
        report("ready", id=node.id, address=node.address)
        async for message in events:
            if isinstance(message, mesh.Gap):
                report("gap", topic=message.topic, first=message.first_seq, last=message.last_seq)
            else:
                report("event", topic=message.topic, body=message.body)


async def observer(mesh_name: str, interface: str) -> None:
    """Offer nothing; report every membership change this node sees."""
    async with (
        mesh.open_node("demo-view", mesh=mesh_name, interface=interface, **_keyed()) as node,
        node.watch_peers() as changes,
    ):
        report("ready", id=node.id, address=node.address)
        async for change in changes:
            kind = type(change).__name__.removeprefix("Peer").lower()  # joined, left...
            report(
                "peer",
                change="state" if kind == "statechanged" else kind,
                name=change.peer.name,
                state=change.peer.state.value,
                reason=getattr(change, "reason", None),
            )


ROLES: dict[str, Callable[..., Awaitable[None]]] = {
    "observer": observer,
    "worker": worker,
    "producer": producer,
    "subscriber": subscriber,
}

if __name__ == "__main__":
    role, *arguments = sys.argv[1:]
    # A node's warnings, named, among the demo's lines; with the demo's -v, its peers' comings,
    # goings and deaths too.
    configure_logging(f"demo {role}", int(os.environ.get("MESH_DEMO_VERBOSITY", "0")))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C at the demo reaches its nodes too
        trio.run(ROLES[role], *arguments)
