"""Discovery over mDNS on 127.0.0.1: how fast a new node is found, and its first event delivered.

With `nodes - 1` observer nodes running (in one process), one more node opens in another, `runs`
times; each run uses a mesh name of its own, so no other run on the machine shares it. With a key
pair every node has it (a keyed mesh, found over mDNS the same way).
"""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import trio

from discovery import PeerJoined

from ._common import Measurement, Pool, clock, receive, summary, wait_command

if TYPE_CHECKING:
    from .._keys import KeyPair
    from .._streams import PeerWatch, Subscription


def bench_discovery(
    pool: Pool, nodes: int, runs: int, key: KeyPair | None = None
) -> list[Measurement]:
    """How long from the new node's `open_node` returning until it is in every other node's peer
    map, and from its first `publish` after `wait_for_peers` until every other node has the
    event (milliseconds); `pool` has at least 2 processes. The observers stay up for all the
    runs; each run's new node has a name of its own and leaves at the end of its run."""
    joins: list[float] = []
    firsts: list[float] = []
    lost = 0
    mesh_name = f"bench-{uuid.uuid4().hex[:12]}"
    observers = pool.start(0, _observe, mesh_name, nodes - 1, key)
    receive(observers)  # the observers are up and have found each other
    for run in range(runs):
        name = f"joiner{run}"
        observers.send(name)
        receive(observers)  # watching for it
        joiner = pool.start(1, _join, mesh_name, name, nodes - 1, key)
        opened_at = receive(joiner)  # when open_node returned
        published_at = receive(joiner)
        seen_at, got_at = receive(observers)
        joiner.send("done")
        pool.finish(1)
        if len(seen_at) == nodes - 1:
            joins.append((max(seen_at) - opened_at) * 1000)
        if len(got_at) < nodes - 1:
            lost += nodes - 1 - len(got_at)
        else:
            firsts.append((max(got_at) - published_at) * 1000)
    observers.send(None)
    pool.finish(0)
    return [
        summary(
            f"discovery: open to in every peer map, {nodes} nodes",
            "ms",
            joins,
            runs=runs,
            lost=runs - len(joins),
            digits=2,
        ),
        summary(
            f"discovery: first event after wait_for_peers, {nodes} nodes",
            "ms",
            firsts,
            runs=runs,
            lost=lost,
            digits=2,
        ),
    ]


def _observe(control: Connection, mesh_name: str, count: int, key: KeyPair | None) -> None:
    trio.run(_run_observers, control, mesh_name, count, key)


async def _run_observers(
    control: Connection, mesh_name: str, count: int, key: KeyPair | None
) -> None:
    from .. import open_node

    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(open_node(f"observer{i}", mesh=mesh_name, key=key))
            for i in range(count)
        ]
        subscriptions = [await stack.enter_async_context(n.subscribe("first")) for n in nodes]
        for node in nodes:
            await node.wait_for_peers(count - 1, timeout=30)
        control.send("ready")
        while (joiner := await trio.to_thread.run_sync(wait_command, control)) is not None:
            seen_at: list[float] = []
            got_at: list[float] = []
            watches = [node.watch_peers() for node in nodes]
            try:
                control.send("watching")
                with trio.move_on_after(30):
                    async with trio.open_nursery() as nursery:
                        for watch, subscription in zip(watches, subscriptions, strict=True):
                            nursery.start_soon(_wait_join, watch, joiner, seen_at)
                            nursery.start_soon(_wait_event, subscription, got_at)
            finally:
                for watch in watches:
                    watch.close()
            control.send((seen_at, got_at))


async def _wait_join(watch: PeerWatch, joiner: str, seen_at: list[float]) -> None:
    async for change in watch:
        if isinstance(change, PeerJoined) and change.peer.name == joiner:
            seen_at.append(clock())
            return


async def _wait_event(subscription: Subscription, got_at: list[float]) -> None:
    await subscription.receive()
    got_at.append(clock())


def _join(control: Connection, mesh_name: str, name: str, peers: int, key: KeyPair | None) -> None:
    trio.run(_run_joiner, control, mesh_name, name, peers, key)


async def _run_joiner(
    control: Connection, mesh_name: str, name: str, peers: int, key: KeyPair | None
) -> None:
    from .. import open_node

    async with open_node(name, mesh=mesh_name, key=key) as node:
        control.send(clock())
        await node.wait_for_peers(peers, timeout=30)
        published_at = clock()
        await node.publish("first", "hello")
        control.send(published_at)
        await trio.to_thread.run_sync(wait_command, control)  # done
