"""One mesh node in its own process, driven by tests/test_netns.py (run inside a network namespace).

Usage: ``python tests/netns_node.py NAME MESH INTERFACE PEERS TIMEOUT``

The node opens on INTERFACE with mDNS discovery and no seeds (and the `mesh.Settings` fields
given as a JSON object in MESH_SETTINGS, if set), subscribes to ``netns/``, waits for
PEERS peers (at most TIMEOUT seconds), then obeys commands read from stdin, one a line:

* ``publish TOPIC JSON``: publish one event;
* ``watch``: report every change `watch_peers` sees from now on;
* ``work SERVICE PAUSE``: work for SERVICE, each task taking PAUSE seconds;
* ``workers SERVICE COUNT``: wait for COUNT peers offering SERVICE (at most TIMEOUT seconds);
* ``push SERVICE COUNT MARK``: push tasks 0 to COUNT - 1 to SERVICE in the background, report
  when MARK of them are acked, then wait until every one is settled;
* ``stream TOPIC COUNT RATE SIZE``: publish events ``[i, "x" * SIZE]`` for i from 0 to
  COUNT - 1, RATE a second, in the background; report when done;
* ``stats``: report the node's statistics (``stats``, with ``statistics``);
* ``quit`` (or end of input): close the node and exit.

It reports on stdout, one JSON object a line, each with ``kind`` and ``t`` (seconds since the
process started, before the imports) and ``clock`` (`time.monotonic()`, which every namespace
shares):

* ``open``: the node is open (``id``, ``address``);
* ``peers``: `wait_for_peers` returned (``peers``: their names; ``addresses``: their hosts, by
  name; ``joined``: the ``clock`` at which each joined, by name; ``wait``: seconds it took, which
  includes confirming the subscription at each peer);
* ``event``: an event arrived (``topic``, ``body``, ``sender``: the publisher's name); on a
  topic under ``netns/stream``, ``item`` instead (``seq``, ``i``: the body's first item);
* ``gap``: events missed for good (``topic``, ``first``, ``last``, ``reason``);
* ``streamed``: every event of ``stream`` is published (``statistics``: the node's);
* ``peer``: a change seen by ``watch`` (``change``: joined, updated, state or left; ``peer``: its
  name; ``state``: its state now; ``reason``: for state and left);
* ``progress``: MARK pushed tasks are acked (``acked``);
* ``settled``: every pushed task is acked or given up on (``statistics``: the node's);
* ``published``, ``watching``, ``working``, ``workers`` (``peers``: their names), ``closed``;
* ``error``: something failed (``error``: what); the process then exits with status 1.
"""

from __future__ import annotations

import time

STARTED = time.monotonic()

import dataclasses  # noqa: E402  (the clock starts before the imports, which take most of a second)
import json  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import aclosing  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

import mesh  # noqa: E402

TOPIC = "netns/"
STREAM = "netns/stream"


def report(kind: str, **fields: Any) -> None:
    now = time.monotonic()
    line = json.dumps({"kind": kind, "t": round(now - STARTED, 4), "clock": now, **fields})
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def commands() -> AsyncIterator[str]:
    """Lines from stdin, stripped; stops at end of input."""
    while True:
        line = await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True)
        if not line:
            return
        yield line.strip()


async def print_events(node: mesh.Node, subscription: mesh.Subscription) -> None:
    async for message in subscription:
        if isinstance(message, mesh.Gap):
            report(
                "gap",
                topic=message.topic,
                first=message.first_seq,
                last=message.last_seq,
                reason=message.reason,
            )
        elif message.topic.startswith(STREAM):
            report("item", seq=message.seq, i=message.body[0])
        else:
            peer = node.peers.get(message.sender)
            sender = message.sender if peer is None else peer.name
            report("event", topic=message.topic, body=message.body, sender=sender)


async def print_changes(watch: mesh.PeerWatch) -> None:
    async with watch:
        async for change in watch:
            kind = {
                mesh.PeerJoined: "joined",
                mesh.PeerUpdated: "updated",
                mesh.PeerStateChanged: "state",
                mesh.PeerLeft: "left",
            }[type(change)]
            reason = getattr(change, "reason", None)
            peer = change.peer
            report("peer", change=kind, peer=peer.name, state=peer.state.value, reason=reason)


async def do_work(stream: mesh.TaskStream, pause: float) -> None:
    async for task in stream:
        async with task:
            await trio.sleep(pause)


async def work(
    node: mesh.Node, service: str, pause: float, task_status: trio.TaskStatus[None]
) -> None:
    async with node.work(service) as stream:
        task_status.started()
        await do_work(stream, pause)


async def push(node: mesh.Node, service: str, count: int, mark: int) -> None:
    async def watch_progress() -> None:
        while node.statistics().tasks_acked < mark:  # noqa: ASYNC110 (a progress poll)
            await trio.sleep(0.005)
        report("progress", acked=node.statistics().tasks_acked)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch_progress)
        for i in range(count):
            await node.push(service, i)
        await node.wait_settled()
    report("settled", statistics=dataclasses.asdict(node.statistics()))


async def stream(node: mesh.Node, topic: str, count: int, rate: float, size: int) -> None:
    padding = "x" * size
    start = trio.current_time()
    for i in range(count):
        await node.publish(topic, [i, padding])
        await trio.sleep_until(start + (i + 1) / rate)
    report("streamed", statistics=dataclasses.asdict(node.statistics()))


async def obey(node: mesh.Node, nursery: trio.Nursery, timeout: float) -> int:
    """Carry out the commands on stdin; the exit status."""
    async with aclosing(commands()) as lines:
        async for command in lines:
            verb, _, rest = command.partition(" ")
            args = rest.split()
            if verb == "publish":
                topic, _, body = rest.partition(" ")
                await node.publish(topic, json.loads(body))
                report("published", topic=topic)
            elif verb == "watch":
                nursery.start_soon(print_changes, node.watch_peers())
                report("watching")
            elif verb == "work":
                await nursery.start(work, node, args[0], float(args[1]))
                report("working", service=args[0])
            elif verb == "workers":
                try:
                    peers = await node.wait_for_peers(
                        int(args[1]), service=args[0], timeout=timeout
                    )
                except mesh.MissingPeersError as exc:
                    report("error", error=str(exc))
                    return 1
                report("workers", peers=sorted(peer.name for peer in peers))
            elif verb == "push":
                nursery.start_soon(push, node, args[0], int(args[1]), int(args[2]))
            elif verb == "stream":
                count, rate, size = int(args[1]), float(args[2]), int(args[3])
                nursery.start_soon(stream, node, args[0], count, rate, size)
            elif verb == "stats":
                report("stats", statistics=dataclasses.asdict(node.statistics()))
            elif verb == "quit":
                break
            elif verb:
                report("error", error=f"unknown command {command!r}")
                return 1
    return 0


async def main(name: str, mesh_name: str, interface: str, count: int, timeout: float) -> int:
    # Keyed, as a node off loopback must be: the lab hands the key pair over in MESH_KEY.
    key = os.environ.get("MESH_KEY") or None
    settings = mesh.Settings(**json.loads(os.environ.get("MESH_SETTINGS") or "{}"))
    async with mesh.open_node(
        name, mesh=mesh_name, interface=interface, key=key, settings=settings
    ) as node:
        report("open", id=node.id, address=node.address)
        async with node.subscribe(TOPIC) as subscription:
            opened = time.monotonic()
            try:
                peers = await node.wait_for_peers(count, timeout=timeout)
            except mesh.MissingPeersError as exc:
                known = sorted(peer.name for peer in node.peers.values())
                report("error", error=str(exc), peers=known)
                return 1
            to_clock = time.monotonic() - trio.current_time()  # trio's clock has an offset
            report(
                "peers",
                peers=sorted(peer.name for peer in peers),
                addresses={peer.name: peer.record.host for peer in peers},
                joined={peer.name: peer.since + to_clock for peer in peers},
                wait=round(time.monotonic() - opened, 4),
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(print_events, node, subscription)
                status = await obey(node, nursery, timeout)
                nursery.cancel_scope.cancel()
    report("closed")
    return status


if __name__ == "__main__":
    name, mesh_name, interface, count, timeout = sys.argv[1:]
    sys.exit(trio.run(main, name, mesh_name, interface, int(count), float(timeout)))
