"""SWIM in real nodes (real sockets on 127.0.0.1, workers in processes of their own): past
`heartbeat_all_up_to` an idle node sends no heartbeats, only one probe a period; the peers it
pushes to are watched by heartbeats (a freeze is seen in under a second); the rest are judged by
probes, rumours and refused ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

import mesh
from mesh import DetectorSettings, PeerLeft, PeerState, PeerStateChanged, ProbeSettings

from .conftest import peered_nodes, wait_until

pytestmark = pytest.mark.timeout(60)

# Every node here watches no peer by default (a mesh "past one room" from its first peer), beats
# every 50 ms (its loop reads datagrams that often) and probes every 0.2 s.
FAST = dict(
    heartbeat_all_up_to=0,
    detector=DetectorSettings(heartbeat_interval=0.05, forget_after=30),
    probing=ProbeSettings(probe_interval=0.2, probe_timeout=0.15),
)
SETTINGS = mesh.Settings(**FAST)  # type: ignore[arg-type]

WORKER = textwrap.dedent(
    """
    import sys, trio, mesh
    from mesh import DetectorSettings, ProbeSettings

    async def main(seed):
        settings = mesh.Settings(
            heartbeat_all_up_to=0,
            detector=DetectorSettings(heartbeat_interval=0.05, forget_after=30),
            probing=ProbeSettings(probe_interval=0.2, probe_timeout=0.15),
        )
        async with mesh.open_node(
            "worker", discovery="static", seeds=[seed], settings=settings
        ) as node:
            async with node.work("job") as tasks:
                await node.wait_for_peers(2, timeout=10)
                print("ready", flush=True)
                async for task in tasks:
                    async with task:
                        pass

    trio.run(main, sys.argv[1])
    """
)


@asynccontextmanager
async def worker_process(seed: mesh.Node, *others: mesh.Node) -> AsyncIterator[int]:
    """A worker node in a process of its own, peered with `seed` and `others`: its pid. Killed
    (by its pid) at the end."""
    process = subprocess.Popen(  # noqa: ASYNC220 (starting is quick)
        [sys.executable, "-c", WORKER, seed.address], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout is not None
        assert (await trio.to_thread.run_sync(process.stdout.readline)).strip() == "ready"
        for node in (seed, *others):
            await node.wait_for_peers(names=["worker"], timeout=10)
        yield process.pid
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGCONT)
            process.kill()
        process.wait()
        if process.stdout is not None:
            process.stdout.close()


async def states_of(changes: mesh.PeerWatch, name: str, until: PeerState) -> list[tuple[str, str]]:
    """The (state, reason) changes of peer `name` up to the first into `until` (or its leaving)."""
    seen = []
    async for change in changes:
        if change.peer.record.name != name:
            continue
        if isinstance(change, PeerStateChanged):
            seen.append((change.peer.state.value, change.reason))
            if change.peer.state is until:
                return seen
        elif isinstance(change, PeerLeft):
            seen.append(("left", change.reason))
            return seen
    raise AssertionError("the watch ended")


async def test_an_idle_node_past_the_small_mesh_sends_probes_and_no_heartbeats() -> None:
    with trio.fail_after(30):
        async with peered_nodes("a", "b", "c", settings=SETTINGS) as nodes:
            # One probe a period each (0.2 s), answered: about ten datagrams a second in, each.
            await wait_until(
                lambda: all(n.statistics().probe_datagrams >= 20 for n in nodes),
                "probes going round",
            )
            assert [n.statistics().heartbeat_datagrams for n in nodes] == [0, 0, 0]
            assert all(p.state is PeerState.ALIVE for n in nodes for p in n.peers.values())


async def test_a_worker_pushed_to_is_watched_and_its_freeze_is_seen_at_once() -> None:
    with trio.fail_after(40):
        async with (
            peered_nodes("producer", "bystander", settings=SETTINGS) as (producer, bystander),
            worker_process(producer, bystander) as pid,
        ):
            await producer.push("job", "first")
            await producer.wait_settled()
            # Pushing to it made the producer watch the worker: heartbeats both ways now.
            await wait_until(
                lambda: producer.statistics().heartbeat_datagrams >= 10, "heartbeats to the worker"
            )
            assert bystander.statistics().heartbeat_datagrams == 0  # it watches nobody
            async with producer.watch_peers() as changes:
                os.kill(pid, signal.SIGSTOP)
                frozen_at = trio.current_time()
                states = await states_of(changes, "worker", PeerState.DEAD)
                dead_after = trio.current_time() - frozen_at
            # Judged by its heartbeats (phi), not by probes and a suspicion's timeout (seconds).
            assert states[-1] == ("dead", "phi"), states
            assert dead_after < 2.0, dead_after


async def test_an_unwatched_frozen_peer_is_suspected_by_probes_and_refutes_when_thawed() -> None:
    with trio.fail_after(40):
        async with (
            peered_nodes("a", "b", settings=SETTINGS) as (a, b),
            worker_process(a, b) as pid,
            a.watch_peers() as changes,
        ):
            os.kill(pid, signal.SIGSTOP)
            suspected = await states_of(changes, "worker", PeerState.SUSPECT)
            assert suspected[-1][1] in ("probe", "rumour"), suspected
            # Thawed before its suspicion runs out (0.8 s at the least, with two accusers): the
            # next probe carries the suspicion, which it refutes.
            os.kill(pid, signal.SIGCONT)
            back = await states_of(changes, "worker", PeerState.ALIVE)
            assert back == [("alive", "rumour")], back  # (never dead meanwhile)
            (worker,) = [p for p in a.peers.values() if p.record.name == "worker"]
            assert worker.state is PeerState.ALIVE


async def test_an_unwatched_crashed_peer_is_dead_at_once_by_its_refused_port() -> None:
    with trio.fail_after(40):
        async with (
            peered_nodes("a", "b", settings=SETTINGS) as (a, b),
            worker_process(a, b) as pid,
            a.watch_peers() as changes,
        ):
            os.kill(pid, signal.SIGKILL)
            killed_at = trio.current_time()
            states = await states_of(changes, "worker", PeerState.DEAD)
            dead_after = trio.current_time() - killed_at
            # Its connection dropped and its heartbeat port refused: no suspicion to wait for.
            assert states == [("dead", "refused")], states
            assert dead_after < 1.0, dead_after
            await wait_until(
                lambda: all(
                    p.state is PeerState.DEAD for p in b.peers.values() if p.record.name == "worker"
                ),
                "the other node knows too",
            )
