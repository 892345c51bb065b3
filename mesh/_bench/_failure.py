"""Failures: how fast a killed (SIGKILL) or frozen (SIGSTOP) peer is seen, and how fast the tasks
a killed worker held are done by another worker.

The observing and sending nodes run in the benchmark's own process; each victim is a node in a
pool process of its own, signalled by pid (ours only) and reaped with the pool. Times run from
the signal. With a key pair every node has it.
"""

from __future__ import annotations

import contextlib
import os
import signal
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import trio

from ._common import Measurement, Pool, clock, receive, summary, wait_command

if TYPE_CHECKING:
    from .._keys import KeyPair

_SERVICE = "bench-reroute"


def bench_detection(
    pool: Pool, runs: int, first: int = 0, key: KeyPair | None = None
) -> list[Measurement]:
    """kill -9 and SIGSTOP of a peer, `runs` times each, to the observer's verdicts (suspect: no
    new work; dead: its work goes elsewhere), in milliseconds. Uses pool processes `first` to
    `first + 2 * runs - 1`, one per run (a victim is not reused)."""
    return trio.run(_bench_detection, pool, runs, first, key)


async def _bench_detection(
    pool: Pool, runs: int, first: int, key: KeyPair | None
) -> list[Measurement]:
    from .. import PeerState, PeerStateChanged, open_node

    results: list[Measurement] = []
    index = first
    for name, number in (("kill -9", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
        suspected: list[float] = []
        dead: list[float] = []
        for _ in range(runs):
            pid = pool.pid(index)
            async with open_node("observer", discovery="static", key=key) as observer:
                pool.start(index, _victim, observer.contact, key)
                index += 1
                try:
                    await observer.wait_for_peers(names=["victim"], timeout=20)
                    with trio.fail_after(20):
                        async with observer.watch_peers() as changes:
                            os.kill(pid, number)
                            signalled = clock()
                            async for change in changes:
                                if not isinstance(change, PeerStateChanged):
                                    continue
                                elapsed = (clock() - signalled) * 1000
                                if change.peer.state is PeerState.SUSPECT:
                                    suspected.append(elapsed)
                                elif change.peer.state is PeerState.DEAD:
                                    dead.append(elapsed)
                                    break
                finally:
                    _kill(pid)  # SIGKILL ends a stopped process too
        for verdict, samples in (("suspect", suspected), ("dead", dead)):
            results.append(
                summary(
                    f"failure: {name} to {verdict}",
                    "ms",
                    samples,
                    runs=runs,
                    lost=runs - len(samples),
                    digits=2,
                )
            )
    return results


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


def _victim(control: Connection, seed: str, key: KeyPair | None) -> None:
    trio.run(_run_victim, control, seed, key)


async def _run_victim(control: Connection, seed: str, key: KeyPair | None) -> None:
    from .. import open_node

    async with open_node("victim", discovery="static", seeds=[seed], key=key):
        # Killed before this returns; it returns (the pipe closed) if the benchmark ends first.
        await trio.to_thread.run_sync(wait_command, control)


# -- reroute -------------------------------------------------------------------------------------


def bench_reroute(
    pool: Pool, runs: int, first: int = 0, hold: int = 10, key: KeyPair | None = None
) -> Measurement:
    """A worker holding `hold` unacked tasks is killed (SIGKILL) while another offers the same
    service: milliseconds from the kill to the first of those tasks done (acked) by the other.
    Uses pool processes `first` to `first + runs - 1`."""
    return trio.run(_bench_reroute, pool, runs, first, hold, key)


async def _bench_reroute(
    pool: Pool, runs: int, first: int, hold: int, key: KeyPair | None
) -> Measurement:
    from .. import open_node

    samples: list[float] = []
    lost = 0
    for index in range(first, first + runs):
        pid = pool.pid(index)
        try:
            async with open_node("sender", discovery="static", key=key) as sender:
                holder = pool.start(index, _holder, sender.contact, hold, key)
                await sender.wait_for_peers(names=["holder"], service=_SERVICE, timeout=20)
                for number in range(hold):
                    await sender.push(_SERVICE, number, timeout=10)
                await trio.to_thread.run_sync(receive, holder, 20)  # holding them all
                async with (
                    open_node(
                        "taker", discovery="static", seeds=[sender.contact], key=key
                    ) as taker,
                    taker.work(_SERVICE) as tasks,
                ):
                    await sender.wait_for_peers(names=["holder", "taker"], timeout=20)
                    await taker.wait_for_peers(names=["sender"], timeout=20)
                    os.kill(pid, signal.SIGKILL)
                    killed = clock()
                    done_at: float | None = None
                    done = 0
                    with trio.fail_after(20):
                        async for task in tasks:
                            async with task:
                                pass
                            done += 1
                            if task.redelivered and done_at is None:
                                done_at = clock()
                            if done == hold:
                                break
                        await sender.wait_settled()
                    assert done_at is not None
                    samples.append((done_at - killed) * 1000)
                    lost += hold - sender.statistics().tasks_acked
        finally:
            _kill(pid)
    return summary(
        "reroute: kill -9 to first task done elsewhere",
        "ms",
        samples,
        runs=runs,
        lost=lost,
        digits=2,
    )


def _holder(control: Connection, seed: str, hold: int, key: KeyPair | None) -> None:
    trio.run(_run_holder, control, seed, hold, key)


async def _run_holder(control: Connection, seed: str, hold: int, key: KeyPair | None) -> None:
    from .. import open_node

    async with (
        open_node("holder", discovery="static", seeds=[seed], key=key) as node,
        node.work(_SERVICE) as tasks,
    ):
        held = []
        async for task in tasks:  # taken, never acked: the worker is "busy" until killed
            held.append(task)
            if len(held) == hold:
                break
        control.send("holding")
        await trio.to_thread.run_sync(wait_command, control)  # killed before this returns
