"""Failure detection wired into the node, with real processes: heartbeats, suspicion, death,
revival. (The detector's own rules are tested exactly, with literal times, in test_detector.py.)"""

from __future__ import annotations

import functools
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio

import mesh
from mesh import DetectorSettings, PeerJoined, PeerLeft, PeerState, PeerStateChanged

from . import inside
from .conftest import new_mesh_env, peered_nodes, wait_until

# Quick to forget, so that a test sees the whole life of a dead peer.
SETTINGS = mesh.Settings(detector=DetectorSettings(forget_after=0.5))
open_node = functools.partial(mesh.open_node, discovery="static", settings=SETTINGS)

CHILD = textwrap.dedent(
    """
    import signal, sys, trio, mesh

    async def drain_on_sigterm(node):
        with trio.open_signal_receiver(signal.SIGTERM) as signals:
            async for _ in signals:
                print("draining", flush=True)
                await node.drain(grace=5)
                print("drained", flush=True)
                return

    async def main(seed, pause, prefetch):
        settings = mesh.Settings(prefetch=prefetch or None)
        async with mesh.open_node(
            "child", discovery="static", seeds=[seed], settings=settings
        ) as node, trio.open_nursery() as nursery:
            async with node.work("job") as tasks:
                nursery.start_soon(drain_on_sigterm, node)
                await node.wait_for_peers(1, timeout=10)
                print("ready", flush=True)
                async for task in tasks:  # ends when the node drains
                    async with task:
                        if pause:
                            await trio.sleep(pause)  # a task takes a moment
                        print("done", task.body, flush=True)

    trio.run(main, sys.argv[1], float(sys.argv[2]), int(sys.argv[3]))
    """
)


@dataclass
class Child:
    """A worker node's process, and every line it printed so far (read by a thread as they
    come: a pipe nobody reads would fill and freeze the worker)."""

    process: subprocess.Popen[str]
    output: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line.strip())


@asynccontextmanager
async def child_node(
    parent: mesh.Node, pause: float = 0.0, prefetch: int = 0
) -> AsyncIterator[Child]:
    """A worker node in a process of its own, peered with `parent`; killed (by its pid) at the
    end. Each task takes it `pause` seconds; it prints "done <body>" for each."""
    process = subprocess.Popen(  # noqa: ASYNC220 (starting is quick; its line is read in a thread)
        [sys.executable, "-c", CHILD, parent.address, str(pause), str(prefetch)],
        stdout=subprocess.PIPE,
        text=True,
    )
    child = Child(process)
    try:
        assert process.stdout is not None
        assert (await trio.to_thread.run_sync(process.stdout.readline)).strip() == "ready"
        child.reader = threading.Thread(target=child.read, daemon=True)
        child.reader.start()
        await parent.wait_for_peers(names=["child"], timeout=10)
        yield child
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait()
        if child.reader is not None:
            child.reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


async def next_state(changes: mesh.PeerWatch) -> PeerStateChanged | PeerLeft:
    async for change in changes:
        if isinstance(change, PeerStateChanged | PeerLeft):
            return change
    raise AssertionError("the watch ended")


def peer_lines(caplog: pytest.LogCaptureFixture, name: str) -> list[tuple[str, str, str]]:
    """The mesh's log lines about the peer `name`: (its state, the reason, the message)."""
    return [
        (record.peer_state, record.reason, record.getMessage())
        for record in caplog.records
        if record.name == "mesh" and getattr(record, "peer_name", None) == name
    ]


async def test_a_killed_node_is_declared_dead_then_forgotten(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mesh")
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
            # Its heartbeat port, probed at once, refuses: nothing listens there, it is dead.
            assert states[-1] == (PeerState.DEAD, "refused")
            assert change.reason == "dead"
            assert dead_after < 1.0, dead_after  # and dead, its work taken back, at once
            assert not parent.peers
    # The operator is told each step, with its evidence.
    lines = peer_lines(caplog, "child")
    assert [(state, reason) for state, reason, _ in lines] == [
        ("alive", "joined"),
        ("suspect", "disconnect"),
        ("dead", "refused"),
        ("left", "dead"),
    ]
    assert lines[1][2].startswith("child suspect: its connection dropped, no heartbeat for ")
    assert re.fullmatch(
        r"child dead: its connection dropped and nothing listens at its heartbeat port any "
        r"more, no heartbeat for [\d.]+ s",
        lines[2][2],
    )
    assert lines[3][2] == "child left: dead too long, forgotten"


async def test_a_frozen_node_dies_and_comes_back_when_it_thaws(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="mesh")
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
    lines = peer_lines(caplog, "child")
    assert [(state, reason) for state, reason, _ in lines[:4]] == [
        ("alive", "joined"),
        ("suspect", "phi"),
        ("dead", "phi"),
        ("alive", "heartbeat"),
    ]
    assert re.fullmatch(r"child dead: no heartbeat for [\d.]+ s \(phi [\d.]+\)", lines[2][2])
    assert re.fullmatch(
        r"child alive again: a heartbeat after [\d.]+ s of silence \(was dead\)", lines[3][2]
    )


async def test_idle_peers_are_never_suspected() -> None:
    with trio.fail_after(20):
        async with peered_nodes("a", "b", "c", timeout=10, settings=SETTINGS) as (a, b, c):
            watches = [node.watch_peers() for node in (a, b, c)]
            await trio.sleep(2)  # watching for false suspicions: ten heartbeat intervals
            for watch in watches:
                watch.close()
                changes = [change async for change in watch]
                assert not [c for c in changes if isinstance(c, PeerStateChanged | PeerLeft)]
            for node in (a, b, c):
                assert {peer.state for peer in node.peers.values()} == {PeerState.ALIVE}


async def test_a_killed_workers_tasks_are_done_by_the_others() -> None:
    total = 10_000  # as many as the reliability claim in the README counts
    with trio.fail_after(40):
        async with open_node("producer") as producer, AsyncExitStack() as stack:
            workers = [await stack.enter_async_context(child_node(producer)) for _ in "abc"]
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
            done = [await done_by(worker) for worker in workers]
    assert set().union(*map(set, done)) == set(range(total))  # every id done somewhere
    assert stats.tasks_pushed == total
    assert stats.tasks_acked == total  # every task done, the killed worker's by the others
    assert stats.tasks_given_up == 0
    assert stats.tasks_redelivered > 0
    assert stats.tasks_in_flight == 0
    assert detected_after < 1.0, detected_after


async def done_by(child: Child) -> list[int]:
    """Stop a worker process (by its pid) if it still runs, and read which tasks it did."""
    if child.process.poll() is None:
        os.kill(child.pid, signal.SIGCONT)
        child.process.kill()
    await trio.to_thread.run_sync(child.process.wait)
    if child.reader is not None:
        await trio.to_thread.run_sync(child.reader.join)  # until the end of its output
    return [int(line.split()[1]) for line in child.output if line.startswith("done ")]


async def push_all(producer: mesh.Node, total: int) -> None:
    for i in range(total):
        await producer.push("job", i)


async def acked(producer: mesh.Node, count: int) -> None:
    while producer.statistics().tasks_acked < count:  # noqa: ASYNC110 (a bounded progress wait)
        await trio.sleep(0.01)


async def test_two_of_three_workers_killed_one_after_the_other() -> None:
    total = 10_000  # as many as the reliability claim in the README counts
    with trio.fail_after(40):
        async with open_node("producer") as producer, AsyncExitStack() as stack:
            workers = [await stack.enter_async_context(child_node(producer)) for _ in "abc"]
            await producer.wait_for_peers(3, service="job", timeout=10)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(push_all, producer, total)
                await acked(producer, total // 5)
                os.kill(workers[0].pid, signal.SIGKILL)
                await acked(producer, total // 2)
                os.kill(workers[1].pid, signal.SIGKILL)
            await producer.wait_settled()
            stats = producer.statistics()
            done = [await done_by(worker) for worker in workers]
    assert stats.tasks_acked == total
    assert stats.tasks_given_up == 0
    assert set().union(*map(set, done)) == set(range(total))  # every id done somewhere


async def test_a_worker_sent_sigterm_drains_and_leaves_and_no_task_waits_for_a_deadline() -> None:
    total = 3000
    # No ack deadline at all: a task left behind by the leaving worker would never move.
    settings = mesh.Settings(ack_timeout=None, detector=SETTINGS.detector)
    with trio.fail_after(40):
        async with (
            mesh.open_node("producer", discovery="static", settings=settings) as producer,
            AsyncExitStack() as stack,
        ):
            workers = [await stack.enter_async_context(child_node(producer, 0.001)) for _ in "abc"]
            leaving = workers[1]
            await producer.wait_for_peers(3, service="job", timeout=10)
            async with producer.watch_peers() as changes, trio.open_nursery() as nursery:
                nursery.start_soon(push_all, producer, total)
                await acked(producer, total // 5)
                os.kill(leaving.pid, signal.SIGTERM)
                while not isinstance(change := await next_state(changes), PeerLeft):
                    assert change.peer.state is not PeerState.DEAD
            await producer.wait_settled()
            stats = producer.statistics()
            status = await trio.to_thread.run_sync(leaving.process.wait, 10)
            done = [await done_by(worker) for worker in workers]
    assert status == 0
    assert change.reason == "goodbye"  # it left, and was never declared dead
    assert stats.tasks_acked == total
    assert stats.tasks_given_up == 0
    assert stats.tasks_nacked > 0  # what it held but had not taken went back at once
    assert set().union(*map(set, done)) == set(range(total))


async def test_a_frozen_workers_tasks_move_and_it_comes_back() -> None:
    total, credit = 2000, 20
    with trio.fail_after(40):
        # Not forgotten while frozen (the module's nodes forget the dead after 0.5 s).
        async with (
            mesh.open_node("producer", discovery="static") as producer,
            AsyncExitStack() as stack,
        ):
            workers = [
                await stack.enter_async_context(child_node(producer, 0.002, credit)) for _ in "abc"
            ]
            frozen = workers[0]
            await producer.wait_for_peers(3, service="job", timeout=10)
            async with producer.watch_peers() as changes, trio.open_nursery() as nursery:
                nursery.start_soon(push_all, producer, total)
                await acked(producer, total // 5)
                os.kill(frozen.pid, signal.SIGSTOP)
                while (await next_state(changes)).peer.state is not PeerState.DEAD:
                    pass
                acked_when_dead = producer.statistics().tasks_acked
                await trio.sleep(3)  # frozen for 3 s: the others go on with its tasks
                assert producer.statistics().tasks_acked > acked_when_dead
                os.kill(frozen.pid, signal.SIGCONT)
                while (change := await next_state(changes)).peer.state is not PeerState.ALIVE:
                    pass
                assert change.reason == "heartbeat"
            await producer.wait_settled()
            stats = producer.statistics()
            done = [await done_by(worker) for worker in workers]
    assert stats.tasks_acked == total
    assert set().union(*map(set, done)) == set(range(total))
    duplicates = sum(map(len, done)) - total
    assert duplicates <= credit, duplicates  # at most what the frozen worker held


async def test_a_peer_forgotten_while_frozen_rejoins_when_it_thaws() -> None:
    with trio.fail_after(20):
        async with open_node("parent") as parent, child_node(parent) as child:
            async with parent.watch_peers() as changes:
                os.kill(child.pid, signal.SIGSTOP)
                while not isinstance(await next_state(changes), PeerLeft):
                    pass  # suspect, dead, then forgotten (after 0.5 s here)
                assert not parent.peers
                os.kill(child.pid, signal.SIGCONT)
                async for change in changes:
                    if isinstance(change, PeerJoined):
                        break
                assert change.peer.name == "child"
                assert parent.peers[change.peer.id].state is PeerState.ALIVE


BURN = textwrap.dedent(
    """
    import sys, time
    end = time.monotonic() + float(sys.argv[1])
    while time.monotonic() < end:
        pass
    """
)


async def test_no_false_deaths_with_both_cores_saturated() -> None:
    """Two busy processes keep both cores at 100 % for 30 s while 5 nodes exchange events and
    tasks: nobody may be declared dead (the detector forgives this node's own lateness, and a
    starved peer's heartbeats still arrive, only late)."""
    seconds = 30
    with trio.fail_after(seconds + 30):
        burners = [
            subprocess.Popen([sys.executable, "-c", BURN, str(seconds)])  # noqa: ASYNC220
            for _ in range(2)
        ]
        try:
            names = [f"n{i}" for i in range(5)]
            async with peered_nodes(*names, timeout=20, settings=SETTINGS) as nodes:
                first = nodes[0]
                watches = [node.watch_peers() for node in nodes]
                async with AsyncExitStack() as work:
                    for node in nodes[1:]:
                        await work.enter_async_context(node.work("job"))
                    async with trio.open_nursery() as nursery:

                        async def traffic() -> None:
                            for i in range(10**9):
                                await first.publish("load", i)
                                with trio.move_on_after(1):
                                    await first.push("job", i)
                                await trio.sleep(0.005)

                        nursery.start_soon(traffic)
                        await trio.sleep(seconds)
                        nursery.cancel_scope.cancel()
                deaths = []
                for watch in watches:
                    watch.close()
                    deaths += [
                        c
                        async for c in watch
                        if isinstance(c, PeerStateChanged) and c.peer.state is PeerState.DEAD
                    ]
                assert deaths == []
        finally:
            for burner in burners:
                burner.kill()
                burner.wait()


def stall(seconds: float) -> None:
    """Hold this thread, and with it the trio loop of every node in this process, for `seconds`:
    the fault injected, as when a process is starved of CPU (not a way to wait for anything)."""
    time.sleep(seconds)


async def test_a_node_that_stalled_gives_its_peers_as_much_more_time() -> None:
    """a's loop stalls for 0.45 s just as b falls silent. b's silence crosses the death
    threshold (0.692 s after its last beat) after a's loop runs again, on time, so the stall's
    grace for late ticks does not cover it; but a's heartbeat loop woke at least 0.25 s late,
    and for 2 s after that a gives every peer as much more (`stall_memory`: a node starved of
    CPU is likely on a machine whose other processes are starved too). So b is not dead 0.75 s
    after its last beat; with the stall not remembered it was dead at 0.692 s."""
    # Four intervals per peer, so that the second of steady beats below is all a knows of b's
    # (a peer's first intervals can be uneven, and its deviation then lets it live longer).
    settings = mesh.Settings(detector=DetectorSettings(window=4))
    with trio.fail_after(15):
        async with (
            open_node("a", settings=settings) as a,
            open_node("b", seeds=[a.address], settings=settings) as b,
        ):
            await a.wait_for_peers(1, timeout=10)
            await b.wait_for_peers(1, timeout=10)
            await trio.sleep(1.0)  # steady beats: b's intervals are learnt
            last_beat: list[float] = []
            silent = trio.Event()

            def fall_silent() -> None:  # right after b's last beat
                last_beat.append(trio.current_time())
                inside.silence_heartbeats(b)
                stall(0.45)
                silent.set()

            inside.after_next_beat(b, fall_silent)
            await silent.wait()
            await trio.sleep_until(last_beat[0] + 0.75)
            assert a.peers[b.id].state is not PeerState.DEAD  # silent all along: never revived


async def test_a_node_killed_and_restarted_at_its_address_takes_its_old_place() -> None:
    # A record at a live peer's address is refused (anyone can claim an address), but a node
    # killed and started again at its address is taken: its old self's connection dropped, so
    # the old peer is suspected, and its address is free for the new one.
    env = new_mesh_env()
    with socket.socket() as probe:  # a free port for the worker's inbox, both times
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with trio.fail_after(30):
        async with mesh.open_node("a", mesh=env["MESH_NAME"], discovery="static") as a:
            command = [sys.executable, "-m", "mesh._cli", "run", "--name", "w"]
            command += ["--pull-port", str(port), "--seed", a.address]
            quiet = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
            first = await trio.lowlevel.open_process(command, env=env, **quiet)
            try:
                (old,) = await a.wait_for_peers(names=["w"], timeout=15)
            finally:
                first.kill()
                await first.wait()
            second = await trio.lowlevel.open_process(command, env=env, **quiet)
            try:
                await wait_until(
                    lambda: (
                        [peer.id for peer in a.peers.values() if peer.name == "w"]
                        not in (
                            [],
                            [old.id],
                        )
                    ),
                    "the new w takes the old one's place",
                    timeout=15,
                )
                assert old.id not in a.peers
            finally:
                second.kill()
                await second.wait()


async def test_a_refused_datagram_costs_no_other_peer_its_heartbeats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # ghost's heartbeat port closes while ghost lives on (its PUB still beats), so each beat the
    # parent sends there is refused, and Linux reports that on the next send of the same UDP
    # socket, whatever it goes to: other's datagram, right after ghost's in each beat, must still
    # go out. And a refusal alone, with ghost's connection up, makes nobody dead.
    with trio.fail_after(20):
        async with (
            open_node("parent") as parent,
            open_node("ghost", seeds=[parent.contact]) as ghost,
        ):
            await parent.wait_for_peers(names=["ghost"])  # first in the parent's beats
            async with open_node("other", seeds=[parent.contact]) as other:
                await parent.wait_for_peers(names=["ghost", "other"])
                await other.wait_for_peers(names=["parent"])
                for sock in inside.datagram_sockets(ghost):
                    sock.close()
                counted = other.statistics().heartbeat_datagrams
                await wait_until(
                    lambda: other.statistics().heartbeat_datagrams >= counted + 10,
                    "other takes ten more datagrams",
                )
                assert parent.peers[ghost.id].state is PeerState.ALIVE
    # (ghost's own closed sockets are logged; the parent drops nothing for a refusal.)
    assert "Connection refused" not in caplog.text
