"""Round-trip latency, one message in flight at a time, client and server in two processes:
a task pushed and its ack back (`push` then `wait_settled`), and a request and its reply over
events (publish, the server publishes back), next to plain pyzmq REQ/REP in the same run.

A run makes round trips for `duration` seconds (at most `count`), after a few untimed ones;
its p50 and p99 are taken; the measurement is the median of the runs' percentiles.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from multiprocessing.connection import Connection

import trio
import zmq

from ._common import Measurement, Pool, payload, percentile, receive, summary, wait_command

_WARM_UP = 20
_SERVICE = "bench-rtt"


def bench_latency(
    pool: Pool, size: int, runs: int, duration: float, count: int
) -> list[Measurement]:
    """p50 and p99 round trips in microseconds: task+ack and event request/reply through the
    mesh, plain pyzmq REQ/REP as the baseline of both; `pool` has at least 2 processes."""
    plain: dict[str, list[float]] = {"p50": [], "p99": []}
    tasks: dict[str, list[float]] = {"p50": [], "p99": []}
    events: dict[str, list[float]] = {"p50": [], "p99": []}
    for _ in range(runs):
        for into, client, server in (
            (plain, _plain_client, _plain_server),
            (tasks, _task_client, _task_server),
            (events, _event_client, _event_server),
        ):
            samples = _run(pool, client, server, size, duration, count)
            into["p50"].append(percentile(samples, 0.50) * 1e6)
            into["p99"].append(percentile(samples, 0.99) * 1e6)
    results = []
    for what, measured in (("task+ack", tasks), ("event request/reply", events)):
        for rank in ("p50", "p99"):
            results.append(
                summary(
                    f"round trip {rank} {what} {size} B",
                    "us",
                    measured[rank],
                    plain[rank],
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
) -> list[float]:
    serving = pool.start(1, server)
    address = receive(serving)
    asking = pool.start(0, client, address, size, duration, count)
    samples: list[float] = receive(asking)
    serving.send("done")
    pool.finish(0)
    pool.finish(1)
    return samples


# -- plain pyzmq REQ/REP --------------------------------------------------------------------------


def _plain_server(control: Connection) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.REP)
    try:
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
    control: Connection, address: str, size: int, duration: float, count: int
) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.REQ)
    try:
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


def _task_server(control: Connection) -> None:
    trio.run(_serve_tasks, control)


async def _serve_tasks(control: Connection) -> None:
    from .. import open_node

    async with (
        open_node("bench-server", discovery="static") as node,
        node.work(_SERVICE) as tasks,
    ):
        control.send(node.address)

        async def work() -> None:
            async for task in tasks:
                async with task:
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            await trio.to_thread.run_sync(wait_command, control)  # done
            nursery.cancel_scope.cancel()


def _task_client(control: Connection, address: str, size: int, duration: float, count: int) -> None:
    trio.run(_ask_tasks, control, address, size, duration, count)


async def _ask_tasks(
    control: Connection, address: str, size: int, duration: float, count: int
) -> None:
    from .. import open_node

    async with open_node("bench-client", seeds=[address], discovery="static") as node:
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


def _event_server(control: Connection) -> None:
    trio.run(_serve_events, control)


async def _serve_events(control: Connection) -> None:
    from .. import open_node

    async with (
        open_node("bench-server", discovery="static") as node,
        node.subscribe("bench.request") as requests,
    ):
        control.send(node.address)

        async def reply() -> None:
            async for message in requests:
                await node.publish("bench.reply", message.body)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(reply)
            await trio.to_thread.run_sync(wait_command, control)  # done
            nursery.cancel_scope.cancel()


def _event_client(
    control: Connection, address: str, size: int, duration: float, count: int
) -> None:
    trio.run(_ask_events, control, address, size, duration, count)


async def _ask_events(
    control: Connection, address: str, size: int, duration: float, count: int
) -> None:
    from .. import open_node

    async with (
        open_node("bench-client", seeds=[address], discovery="static") as node,
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
