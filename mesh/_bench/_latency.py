"""Round-trip latency, one message in flight at a time, client and server in two processes:
a task pushed and its ack back (`push` then `wait_settled`), and a request and its reply over
events (publish, the server publishes back), next to plain pyzmq REQ/REP in the same run.

A run makes round trips for `duration` seconds (at most `count`), after a few untimed ones;
its p50 and p99 are taken; the measurement is the median of the runs' percentiles. With a key
pair (``--keys``) each run measures everything twice, open and then keyed (every node with that
key pair, REQ/REP with CURVE and the same keys).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import trio
import zmq

from ._common import (
    Measurement,
    Pool,
    against_open,
    curve_client,
    curve_server,
    modes,
    payload,
    percentile,
    receive,
    summary,
    wait_command,
)

if TYPE_CHECKING:
    from .._keys import KeyPair

_WARM_UP = 20
_SERVICE = "bench-rtt"


#: Percentiles in microseconds: {"plain" | "tasks" | "events": {"p50" | "p99": one a run}}.
_Percentiles = dict[str, dict[str, list[float]]]


def bench_latency(
    pool: Pool, size: int, runs: int, duration: float, count: int, key: KeyPair | None = None
) -> list[Measurement]:
    """p50 and p99 round trips in microseconds: task+ack and event request/reply through the
    mesh, plain pyzmq REQ/REP as the baseline of both; with `key`, keyed too (`against_open`).
    `pool` has at least 2 processes."""
    kinds = modes(key)
    measured: list[_Percentiles] = [
        {what: {"p50": [], "p99": []} for what in ("plain", "tasks", "events")} for _ in kinds
    ]
    for _ in range(runs):
        for into, kind in zip(measured, kinds, strict=True):
            for what, client, server in (
                ("plain", _plain_client, _plain_server),
                ("tasks", _task_client, _task_server),
                ("events", _event_client, _event_server),
            ):
                samples = _run(pool, client, server, size, duration, count, kind)
                into[what]["p50"].append(percentile(samples, 0.50) * 1e6)
                into[what]["p99"].append(percentile(samples, 0.99) * 1e6)
    results = [_summaries(percentiles, size, runs) for percentiles in measured]
    return results[0] if key is None else against_open(results[0], results[1])


def _summaries(measured: _Percentiles, size: int, runs: int) -> list[Measurement]:
    results = []
    for what, name in (("tasks", "task+ack"), ("events", "event request/reply")):
        for rank in ("p50", "p99"):
            results.append(
                summary(
                    f"round trip {rank} {name} {size} B",
                    "us",
                    measured[what][rank],
                    measured["plain"][rank],
                    runs=runs,
                    digits=1,
                )
            )
    return results


def _run(
    pool: Pool,
    client: Callable[..., None],
    server: Callable[..., None],
    size: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> list[float]:
    serving = pool.start(1, server, key)
    address = receive(serving)
    asking = pool.start(0, client, address, size, duration, count, key)
    samples: list[float] = receive(asking)
    serving.send("done")
    pool.finish(0)
    pool.finish(1)
    return samples


# -- plain pyzmq REQ/REP --------------------------------------------------------------------------


def _plain_server(control: Connection, key: KeyPair | None) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.REP)
    try:
        curve_server(sock, key)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        control.send(f"127.0.0.1:{port}")
        while not control.poll(0):
            if sock.poll(100):
                sock.send(sock.recv())
        wait_command(control)  # done
    finally:
        sock.close(linger=0)
        context.term()


def _plain_client(
    control: Connection,
    address: str,
    size: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    try:
        curve_client(sock, key)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        sock.connect(f"tcp://{address}")
        body = payload(size)
        samples: list[float] = []
        deadline = time.perf_counter() + duration
        for done in range(_WARM_UP + count):
            started = time.perf_counter()
            sock.send(body)
            sock.recv()
            if done >= _WARM_UP:
                samples.append(time.perf_counter() - started)
                if started > deadline:
                    break
        control.send(samples)
    finally:
        sock.close(linger=0)
        context.term()


# -- the mesh: a task and its ack -----------------------------------------------------------------


def _task_server(control: Connection, key: KeyPair | None) -> None:
    trio.run(_serve_tasks, control, key)


async def _serve_tasks(control: Connection, key: KeyPair | None) -> None:
    from .. import open_node

    async with (
        open_node("bench-server", discovery="static", key=key) as node,
        node.work(_SERVICE) as tasks,
    ):
        control.send(node.contact)

        async def work() -> None:
            async for task in tasks:
                async with task:
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            await trio.to_thread.run_sync(wait_command, control)  # done
            nursery.cancel_scope.cancel()


def _task_client(
    control: Connection,
    address: str,
    size: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    trio.run(_ask_tasks, control, address, size, duration, count, key)


async def _ask_tasks(
    control: Connection,
    address: str,
    size: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    from .. import open_node

    async with open_node("bench-client", seeds=[address], discovery="static", key=key) as node:
        await node.wait_for_peers(service=_SERVICE, timeout=20)
        body = payload(size)
        samples: list[float] = []
        deadline = time.perf_counter() + duration
        with trio.fail_after(max(30.0, 3 * duration)):
            for done in range(_WARM_UP + count):
                started = time.perf_counter()
                await node.push(_SERVICE, body)
                await node.wait_settled()
                if done >= _WARM_UP:
                    samples.append(time.perf_counter() - started)
                    if started > deadline:
                        break
        control.send(samples)


# -- the mesh: a request and its reply over events -------------------------------------------------


def _event_server(control: Connection, key: KeyPair | None) -> None:
    trio.run(_serve_events, control, key)


async def _serve_events(control: Connection, key: KeyPair | None) -> None:
    from .. import open_node

    async with (
        open_node("bench-server", discovery="static", key=key) as node,
        node.subscribe("bench.request") as requests,
    ):
        control.send(node.contact)

        async def reply() -> None:
            async for message in requests:
                await node.publish("bench.reply", message.body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reply)
            await trio.to_thread.run_sync(wait_command, control)  # done
            nursery.cancel_scope.cancel()


def _event_client(
    control: Connection,
    address: str,
    size: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    trio.run(_ask_events, control, address, size, duration, count, key)


async def _ask_events(
    control: Connection,
    address: str,
    size: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    from .. import open_node

    async with (
        open_node("bench-client", seeds=[address], discovery="static", key=key) as node,
        node.subscribe("bench.reply") as replies,
    ):
        await node.wait_for_peers(names=["bench-server"], timeout=20)  # subscriptions both ways
        body = payload(size)
        samples: list[float] = []
        deadline = time.perf_counter() + duration
        with trio.fail_after(max(30.0, 3 * duration)):
            for done in range(_WARM_UP + count):
                started = time.perf_counter()
                await node.publish("bench.request", body)
                await replies.receive()
                if done >= _WARM_UP:
                    samples.append(time.perf_counter() - started)
                    if started > deadline:
                        break
        control.send(samples)
