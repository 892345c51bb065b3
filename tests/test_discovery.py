"""Nodes that find each other over mDNS, with no seed, on 127.0.0.1 (real python-zeroconf).

Each test uses a mesh name of its own, so runs on the same machine never see each other.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
import trio

import mesh
from mesh import Node, PeerJoined, PeerLeft, PeerUpdated

from .conftest import new_mesh_name


@asynccontextmanager
async def open_nodes(count: int, mesh_name: str, **options: Any) -> AsyncIterator[list[Node]]:
    async with AsyncExitStack() as stack:
        yield [
            await stack.enter_async_context(mesh.open_node(f"n{i}", mesh=mesh_name, **options))
            for i in range(count)
        ]


async def test_ten_nodes_in_one_process_find_each_other_and_exchange_events() -> None:
    with trio.fail_after(30):
        async with open_nodes(10, new_mesh_name()) as nodes:
            async with AsyncExitStack() as stack:
                subscriptions = [
                    await stack.enter_async_context(node.subscribe("hello")) for node in nodes
                ]
                for node in nodes:  # also makes each subscription live at every peer
                    await node.wait_for_peers(9, timeout=10)
                for node in nodes:
                    await node.publish("hello", node.name)
                for node, subscription in zip(nodes, subscriptions, strict=True):
                    heard = {(await subscription.receive()).body for _ in range(9)}
                    assert heard == {f"n{i}" for i in range(10)} - {node.name}
            for node in nodes:
                assert {peer.name for peer in node.peers.values()} == {
                    f"n{i}" for i in range(10)
                } - {node.name}


CHILD = textwrap.dedent(
    """
    import json, sys, trio, mesh

    async def main(mesh_name, name, count):
        with trio.fail_after(40):
            async with mesh.open_node(name, mesh=mesh_name) as node:
                async with node.subscribe("hello") as events:
                    await node.wait_for_peers(count - 1, timeout=20)
                    print(json.dumps({"ready": name}), flush=True)
                    message = await events.receive()
                    print(json.dumps({"name": name, "got": message.body}), flush=True)

    trio.run(main, sys.argv[1], sys.argv[2], int(sys.argv[3]))
    """
)


async def test_five_nodes_in_separate_processes_find_each_other(mesh_name: str) -> None:
    children = [
        subprocess.Popen(  # noqa: ASYNC220 (starting is quick; lines are read in a thread)
            [sys.executable, "-c", CHILD, mesh_name, f"child{i}", "5"],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(4)
    ]
    try:
        with trio.fail_after(40):
            async with mesh.open_node("parent", mesh=mesh_name) as parent:
                await parent.wait_for_peers(4, timeout=20)
                for child in children:
                    assert child.stdout is not None
                    line = await trio.to_thread.run_sync(child.stdout.readline)
                    assert json.loads(line)["ready"].startswith("child")
                # Every child subscribed before it said ready, and its subscription is
                # confirmed live at every peer it knew, the parent included.
                await parent.publish("hello", "from parent")
                for child in children:
                    assert child.stdout is not None
                    line = await trio.to_thread.run_sync(child.stdout.readline)
                    assert json.loads(line)["got"] == "from parent"
                    assert await trio.to_thread.run_sync(child.wait, 10) == 0
    finally:
        for child in children:
            if child.poll() is None:
                child.kill()
            child.wait()
            if child.stdout is not None:
                child.stdout.close()


async def test_a_closed_node_leaves_every_peer_map_within_a_second(mesh_name: str) -> None:
    with trio.fail_after(20):
        async with open_nodes(2, mesh_name) as (a, b):
            async with mesh.open_node("leaving", mesh=mesh_name) as leaving:
                await a.wait_for_peers(names=["leaving"], timeout=10)
                await b.wait_for_peers(names=["leaving"], timeout=10)
                watches = [a.watch_peers(), b.watch_peers()]
            with trio.fail_after(1):
                for watch in watches:
                    async for change in watch:
                        if isinstance(change, PeerLeft) and change.peer.id == leaving.id:
                            break
            assert leaving.id not in a.peers
            assert leaving.id not in b.peers


async def test_a_restarted_node_comes_back_with_a_new_id(mesh_name: str) -> None:
    with trio.fail_after(20):
        async with mesh.open_node("stays", mesh=mesh_name) as stays:
            async with mesh.open_node("restarts", mesh=mesh_name) as first:
                await stays.wait_for_peers(names=["restarts"], timeout=10)
            async with stays.watch_peers() as changes:
                async with mesh.open_node("restarts", mesh=mesh_name) as second:
                    joined = None
                    # The new one joins; the old one's goodbye may be taken before or after.
                    async for change in changes:
                        if isinstance(change, PeerJoined):
                            joined = change.peer.id
                        if joined and first.id not in stays.peers:
                            break
                    assert joined == second.id
                    assert second.id != first.id
                    assert first.id not in stays.peers
                    assert stays.peers[second.id].name == "restarts"


async def test_watch_peers_reports_joins_updates_and_leaves_with_reasons(mesh_name: str) -> None:
    with trio.fail_after(20):
        async with mesh.open_node("watcher", mesh=mesh_name) as watcher:
            async with watcher.watch_peers() as changes:
                async with mesh.open_node("worker", mesh=mesh_name) as worker:
                    joined = await changes.receive()
                    assert isinstance(joined, PeerJoined)
                    assert joined.peer.name == "worker"
                    async with worker.work("resize"):
                        updated = await changes.receive()
                        assert isinstance(updated, PeerUpdated)
                        assert updated.peer.services == {"resize"}
                        assert updated.previous.services == frozenset()
                    updated = await changes.receive()
                    assert isinstance(updated, PeerUpdated)
                    assert updated.peer.services == frozenset()
                left = await changes.receive()
                assert isinstance(left, PeerLeft)
                assert left.peer.name == "worker"
                assert left.reason in {"goodbye", "mdns goodbye"}
        # The node closed: the watch ended.
        with pytest.raises(trio.ClosedResourceError):
            await changes.receive()


async def test_static_discovery_stays_off_mdns(mesh_name: str) -> None:
    with trio.fail_after(20):
        async with (
            mesh.open_node("quiet", mesh=mesh_name, discovery="static") as quiet,
            mesh.open_node("loud", mesh=mesh_name) as loud,
            mesh.open_node("both", mesh=mesh_name, discovery=["mdns", "static"]) as both,
        ):
            await loud.wait_for_peers(names=["both"], timeout=10)
            with trio.move_on_after(1):
                await loud.wait_for_peers(names=["quiet"])
            assert quiet.id not in loud.peers
            assert quiet.id not in both.peers
            assert not quiet.peers


async def test_mdns_on_the_ipv6_loopback_is_refused_with_a_reason() -> None:
    with trio.fail_after(5), pytest.raises(ValueError, match="IPv6 loopback"):
        async with mesh.open_node("n", mesh=new_mesh_name(), interface="::1"):
            pass


@pytest.mark.parametrize("discovery", ["bogus", [], ["mdns", "carrier pigeon"]])
async def test_bad_discovery_is_refused(discovery: Any) -> None:
    with trio.fail_after(5), pytest.raises(ValueError, match="discovery"):
        async with mesh.open_node("n", mesh=new_mesh_name(), discovery=discovery):
            pass


async def test_a_node_on_two_interfaces_is_found_over_mdns(mesh_name: str) -> None:
    with trio.fail_after(20):
        async with (
            mesh.open_node("multi", mesh=mesh_name, interface=["127.0.0.1", "127.0.0.2"]) as multi,
            mesh.open_node("other", mesh=mesh_name, interface="127.0.0.2") as other,
        ):
            (peer,) = await other.wait_for_peers(names=["multi"], timeout=10)
            assert peer.record.hosts == ("127.0.0.1", "127.0.0.2")
            await multi.wait_for_peers(names=["other"], timeout=10)
            async with multi.subscribe("t") as events:
                await other.publish("t", "hello")
                assert (await events.receive()).body == "hello"
