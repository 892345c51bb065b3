"""Failure detection wired into the node, with real processes: heartbeats, suspicion, death,
revival. (The detector's own rules are tested exactly, with literal times, in test_detector.py.)"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import trio

import mesh
from mesh import DetectorSettings, PeerLeft, PeerState, PeerStateChanged

# Quick to forget, so that a test sees the whole life of a dead peer.
SETTINGS = mesh.Settings(detector=DetectorSettings(forget_after=0.5))
open_node = functools.partial(mesh.open_node, discovery="static", settings=SETTINGS)

CHILD = textwrap.dedent(
    """
    import sys, trio, mesh

    async def main(seed, pause):
        async with mesh.open_node("child", discovery="static", seeds=[seed]) as node:
            async with node.work("job") as tasks:
                await node.wait_for_peers(1, timeout=10)
                print("ready", flush=True)
                async for task in tasks:
                    async with task:
                        if pause:
                            await trio.sleep(pause)  # a task takes a moment

    trio.run(main, sys.argv[1], float(sys.argv[2]))
    """
)


@asynccontextmanager
async def child_node(parent: mesh.Node, pause: float = 0.0) -> AsyncIterator[subprocess.Popen[str]]:
    """A worker node in a process of its own, peered with `parent`; killed (by its pid) at the
    end. Each task takes it `pause` seconds."""
    process = subprocess.Popen(  # noqa: ASYNC220 (starting is quick; its line is read in a thread)
        [sys.executable, "-c", CHILD, parent.address, str(pause)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        assert (await trio.to_thread.run_sync(process.stdout.readline)).strip() == "ready"
        await parent.wait_for_peers(names=["child"], timeout=10)
        yield process
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def next_state(changes: mesh.PeerWatch) -> PeerStateChanged | PeerLeft:
    async for change in changes:
        if isinstance(change, PeerStateChanged | PeerLeft):
            return change
    raise AssertionError("the watch ended")


async def test_a_killed_node_is_declared_dead_then_forgotten() -> None:
    with trio.fail_after(20):
        async with open_node("parent") as parent, child_node(parent) as child:
            async with parent.watch_peers() as changes:
                killed_at = trio.current_time()
                os.kill(child.pid, signal.SIGKILL)
                states = []
                while True:
                    change = await next_state(changes)
                    if isinstance(change, PeerLeft):
                        break
                    states.append((change.peer.state, change.reason))
                    if len(states) == 1:
                        suspected_after = trio.current_time() - killed_at
                    if change.peer.state is PeerState.DEAD:
                        dead_after = trio.current_time() - killed_at
            # The kernel closed the dead process's connections: suspected at once, no new work.
            assert states[0] == (PeerState.SUSPECT, "disconnect")
            assert suspected_after < 0.1, suspected_after
            assert states[-1][0] is PeerState.DEAD
            assert change.reason == "dead"
            assert dead_after < 1.0, dead_after  # and dead, its work taken back, under a second
            assert not parent.peers


async def test_a_frozen_node_dies_and_comes_back_when_it_thaws() -> None:
    with trio.fail_after(20):
        settings = mesh.Settings(detector=DetectorSettings(forget_after=30))
        async with mesh.open_node("parent", discovery="static", settings=settings) as parent:
            async with child_node(parent) as child, parent.watch_peers() as changes:
                os.kill(child.pid, signal.SIGSTOP)
                while (change := await next_state(changes)).peer.state is not PeerState.DEAD:
                    pass
                (peer,) = parent.peers.values()
                assert peer.state is PeerState.DEAD
                # No new work for a dead worker; it waits (and would go to a live one).
                with trio.move_on_after(0.3):
                    await parent.push("job", "while frozen")
                assert parent.statistics().tasks_pushed == 0
                os.kill(child.pid, signal.SIGCONT)
                change = await next_state(changes)
                assert isinstance(change, PeerStateChanged)
                assert (change.peer.state, change.reason) == (PeerState.ALIVE, "heartbeat")
                await parent.push("job", "thawed")
                await parent.wait_settled()
                assert parent.statistics().tasks_acked == 1


async def test_idle_peers_are_never_suspected() -> None:
    with trio.fail_after(20):
        async with (
            open_node("a") as a,
            open_node("b", seeds=[a.address]) as b,
            open_node("c", seeds=[a.address]) as c,
        ):
            for node in (a, b, c):
                await node.wait_for_peers(2, timeout=10)
            watches = [node.watch_peers() for node in (a, b, c)]
            await trio.sleep(2)  # watching for false suspicions: ten heartbeat intervals
            for watch in watches:
                watch.close()
                changes = [change async for change in watch]
                assert not [c for c in changes if isinstance(c, PeerStateChanged | PeerLeft)]
            for node in (a, b, c):
                assert {peer.state for peer in node.peers.values()} == {PeerState.ALIVE}


async def test_a_killed_workers_tasks_are_done_by_the_others() -> None:
    total = 3000
    with trio.fail_after(40):
        async with open_node("producer") as producer, AsyncExitStack() as stack:
            workers = [await stack.enter_async_context(child_node(producer, 0.001)) for _ in "abc"]
            await producer.wait_for_peers(3, service="job", timeout=10)
            async with producer.watch_peers() as changes, trio.open_nursery() as nursery:

                async def push_all() -> None:
                    for i in range(total):
                        await producer.push("job", i)

                nursery.start_soon(push_all)
                while producer.statistics().tasks_acked < total // 5:  # noqa: ASYNC110
                    await trio.sleep(0.01)  # let the run get going (a bounded wait, not a sync)
                os.kill(workers[1].pid, signal.SIGKILL)
                killed_at = trio.current_time()
                while (await next_state(changes)).peer.state is not PeerState.DEAD:
                    pass
                detected_after = trio.current_time() - killed_at
            await producer.wait_settled()
            stats = producer.statistics()
    assert stats.tasks_pushed == total
    assert stats.tasks_acked == total  # every task done, the killed worker's by the others
    assert stats.tasks_given_up == 0
    assert stats.tasks_redelivered > 0
    assert stats.tasks_in_flight == 0
    assert detected_after < 1.0, detected_after
