"""Round-trip latency, one message in flight at a time, client and server in two processes:
a task pushed and its ack back (`push` then `wait_settled`), a request and its reply over
events (publish, the server publishes back) and a request and its reply (`request`, the server
`serve`s and replies with the body), next to plain pyzmq REQ/REP (the body echoed) in the same
run. Beside them, the floor: plain pyzmq without the mesh but driven as the mesh drives ZeroMQ
from trio (PUSH to the other's PULL both ways, NOBLOCK sends and receives, waits on the
edge-triggered FD by the rule of `mesh._zmq`), the body echoed: what of the distance to REQ/REP
is that pattern's rather than the mesh's. Which of them are made is the caller's (`trips`): the
latency group's are a task and its ack and a request over events, the requests group's a
request and its reply, a task and its ack and the floor (with both groups, one run makes all
four).

A run makes round trips for `duration` seconds (at most `count`), after a few untimed ones;
its p50 and p99 are taken; the measurement is the median of the runs' percentiles. With a key
pair (``--keys``) each run measures everything twice, open and then keyed (every node with that
key pair, REQ/REP and the floor's sockets with CURVE and the same keys).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Final

import trio
import zmq

from ._common import (
    Measurement,
    Pool,
    against_open,
    curve_client,
    curve_server,
    event_body,
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
# As plain ints, as `mesh._zmq` has them: pyzmq's enum members cost an enum operation at each use.
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)
_NOBLOCK: Final = int(zmq.NOBLOCK)


#: Percentiles in microseconds: {"plain" | a trip: {"p50" | "p99": one a run}}.
_Percentiles = dict[str, dict[str, list[float]]]

#: The round trips measured against REQ/REP, as `bench_latency` takes them, and their
#: measurements' names: three through the mesh, and the floor (trio+pyzmq, no mesh).
TRIPS = {
    "tasks": "task+ack",
    "events": "event request/reply",
    "requests": "request+reply",
    "floor": "trio+pyzmq PUSH/PULL, no mesh",
}


def bench_latency(
    pool: Pool,
    size: int,
    runs: int,
    duration: float,
    count: int,
    key: KeyPair | None = None,
    trips: Sequence[str] = ("tasks", "events"),
) -> list[Measurement]:
    """p50 and p99 round trips in microseconds, each of `trips` (keys of `TRIPS`, measured and
    reported in that order), plain pyzmq REQ/REP as the baseline of all; with `key`, keyed
    too (`against_open`). `pool` has at least 2 processes."""
    if not trips or not set(trips) <= set(TRIPS) or len(set(trips)) < len(trips):
        raise ValueError(f"round trips to measure: some of {', '.join(TRIPS)}, not {trips!r}")
    kinds = modes(key)
    measured: list[_Percentiles] = [
        {what: {"p50": [], "p99": []} for what in ("plain", *trips)} for _ in kinds
    ]
    for _ in range(runs):
        for into, kind in zip(measured, kinds, strict=True):
            for what in ("plain", *trips):
                client, server = _ROLES[what]
                samples = _run(pool, client, server, size, duration, count, kind)
                into[what]["p50"].append(percentile(samples, 0.50) * 1e6)
                into[what]["p99"].append(percentile(samples, 0.99) * 1e6)
    results = [_summaries(percentiles, trips, size, runs) for percentiles in measured]
    return results[0] if key is None else against_open(results[0], results[1])


def _summaries(
    measured: _Percentiles, trips: Sequence[str], size: int, runs: int
) -> list[Measurement]:
    results = []
    for what in trips:
        name = TRIPS[what]
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


async def _time_trips(
    trip: Callable[[], Awaitable[object]], duration: float, count: int
) -> list[float]:
    """Seconds each of `count` round trips (`trip()`) took, after `_WARM_UP` untimed ones;
    fewer once `duration` seconds have passed. Bounded: `trio.TooSlowError` if it hangs."""
    samples: list[float] = []
    deadline = time.perf_counter() + duration
    with trio.fail_after(max(30.0, 3 * duration)):
        for done in range(_WARM_UP + count):
            started = time.perf_counter()
            await trip()
            if done >= _WARM_UP:
                samples.append(time.perf_counter() - started)
                if started > deadline:
                    break
    return samples


async def _serve_until_done(
    control: Connection, contact: object, serve: Callable[[], Awaitable[None]]
) -> None:
    """Tell the runner `contact`, run `serve()` until the runner says it is done."""
    control.send(contact)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await trio.to_thread.run_sync(wait_command, control)  # done
        nursery.cancel_scope.cancel()


# -- the mesh: a task and its ack -----------------------------------------------------------------


async def _serve_tasks(control: Connection, key: KeyPair | None) -> None:
    from .. import open_node

    async with (
        open_node("bench-server", discovery="static", key=key) as node,
        node.work(_SERVICE) as tasks,
    ):

        async def work() -> None:
            async for task in tasks:
                async with task:
                    pass

        await _serve_until_done(control, node.contact, work)


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

        async def trip() -> None:
            await node.push(_SERVICE, body)
            await node.wait_settled()

        control.send(await _time_trips(trip, duration, count))


# -- the mesh: a request and its reply over events -------------------------------------------------


async def _serve_events(control: Connection, key: KeyPair | None) -> None:
    from .. import open_node

    async with (
        open_node("bench-server", discovery="static", key=key) as node,
        node.subscribe("bench.request") as requests,
    ):

        async def reply() -> None:
            async for message in requests:
                await node.publish("bench.reply", event_body(message))

        await _serve_until_done(control, node.contact, reply)


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

        async def trip() -> None:
            await node.publish("bench.request", body)
            await replies.receive()

        control.send(await _time_trips(trip, duration, count))


# -- the mesh: a request and its reply (request/serve) ---------------------------------------------


async def _serve_requests(control: Connection, key: KeyPair | None) -> None:
    from .. import open_node

    async with (
        open_node("bench-server", discovery="static", key=key) as node,
        node.serve(_SERVICE) as requests,
    ):

        async def reply() -> None:
            async for request in requests:
                await request.reply(request.body)  # the body back, as plain REP echoes it

        await _serve_until_done(control, node.contact, reply)


async def _ask_requests(
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
        control.send(
            await _time_trips(lambda: node.request(_SERVICE, body, timeout=10), duration, count)
        )


# -- the floor: plain pyzmq PUSH/PULL both ways, driven from trio as the mesh drives ZeroMQ --------
#
# No mesh: the client's PUSH to the server's PULL, the server's PUSH to the client's PULL (the
# server binds both, so that the runner's one answer, its addresses, is all the client needs).
# Every send and receive goes as in `mesh._zmq`: NOBLOCK first; on `zmq.Again`, read `EVENTS`;
# wait on the FD only if it says the operation cannot proceed, and try again after each wake-up.


async def _floor_receive(sock: zmq.Socket[bytes]) -> bytes:
    while True:
        try:
            return sock.recv(_NOBLOCK)
        except zmq.Again:
            pass
        if not sock.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
            await trio.lowlevel.wait_readable(sock.FD)


async def _floor_send(sock: zmq.Socket[bytes], frame: bytes) -> None:
    while True:
        try:
            sock.send(frame, _NOBLOCK)
            return
        except zmq.Again:  # no peer yet: PUSH takes nothing until one is connected
            pass
        if not sock.getsockopt(_EVENTS) & _POLLOUT:  # type: ignore[operator]
            await trio.lowlevel.wait_readable(sock.FD)


async def _serve_floor(control: Connection, key: KeyPair | None) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    pull, push = context.socket(zmq.PULL), context.socket(zmq.PUSH)
    try:
        addresses = []
        for sock in (pull, push):
            curve_server(sock, key)
            addresses.append(f"127.0.0.1:{sock.bind_to_random_port('tcp://127.0.0.1')}")

        async def echo() -> None:
            while True:
                await _floor_send(push, await _floor_receive(pull))

        await _serve_until_done(control, tuple(addresses), echo)
    finally:
        pull.close(linger=0)
        push.close(linger=0)
        context.term()


async def _ask_floor(
    control: Connection,
    addresses: tuple[str, str],
    size: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    push, pull = context.socket(zmq.PUSH), context.socket(zmq.PULL)
    try:
        for sock, address in zip((push, pull), addresses, strict=True):
            curve_client(sock, key)
            sock.connect(f"tcp://{address}")
        body = payload(size)

        async def trip() -> None:
            await _floor_send(push, body)
            await _floor_receive(pull)

        control.send(await _time_trips(trip, duration, count))
    finally:
        push.close(linger=0)
        pull.close(linger=0)
        context.term()


#: (client, server) of each round trip: the client sends `samples` (seconds), one a round trip.
def _in_trio(role: Callable[..., Awaitable[None]]) -> Callable[..., None]:
    """A role that runs in trio, as a process's role: `role` run by `trio.run` with the
    arguments the pool gives it (a partial of two module-level functions: it pickles)."""
    return functools.partial(trio.run, role)


_ROLES: dict[str, tuple[Callable[..., None], Callable[..., None]]] = {
    "plain": (_plain_client, _plain_server),
    "tasks": (_in_trio(_ask_tasks), _in_trio(_serve_tasks)),
    "events": (_in_trio(_ask_events), _in_trio(_serve_events)),
    "requests": (_in_trio(_ask_requests), _in_trio(_serve_requests)),
    "floor": (_in_trio(_ask_floor), _in_trio(_serve_floor)),
}
