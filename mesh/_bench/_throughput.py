"""Throughput: events/s publish -> subscribe and tasks/s push -> work (acked), next to plain pyzmq
with the same process layout (one sender process, one process per receiver) in the same run.

Plain pyzmq does for tasks what the mesh does at the least: the sender PUSHes each task with an
id, each worker PUSHes the id back as its ack, and the sender keeps at most `max_in_flight` (1,000
by default) tasks unacked per worker, as the mesh does. Plain PUSH/PULL without acks is measured
too, as context: the cost of acking itself.

A run sends for `duration` seconds (at most `count` messages), then an end marker. Times come
from CLOCK_MONOTONIC, common to every process: events/s is the events each subscriber received
over the time from the first subscriber's first event to the last subscriber's last one; tasks/s
is the tasks acked (plain pyzmq without acks: received) over the time from the sender's first
send to the last ack (without acks: the last worker's last receive). Process start-up and
peering are not counted.

With a key pair (``--keys``) each run measures everything twice, open and then keyed: every
mesh node with that key pair, every plain socket with CURVE and the same keys.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import trio
import zmq

from .._types import Settings
from ._common import (
    QUIET,
    Measurement,
    Pool,
    against_open,
    clock,
    curve_client,
    curve_server,
    event_body,
    modes,
    payload,
    receive,
    summary,
    wait_command,
)

if TYPE_CHECKING:
    from .._keys import KeyPair

_TOPIC = "bench.events"
_SERVICE = "bench"
_END = b"end"
_CHECK_EVERY = 64  # messages between two looks at the clock in a sending loop


# -- events ------------------------------------------------------------------------------------


def bench_events(
    pool: Pool,
    size: int,
    subscribers: int,
    runs: int,
    duration: float,
    count: int,
    key: KeyPair | None = None,
) -> list[Measurement]:
    """Events/s from one publisher to `subscribers` subscribers (each in its own process), mesh vs
    plain pyzmq PUB/SUB; with `key`, keyed too (`against_open`). `pool` has at least
    `subscribers + 1` processes."""
    kinds = modes(key)
    mesh_rates: list[list[float]] = [[] for _ in kinds]
    plain_rates: list[list[float]] = [[] for _ in kinds]
    lost = [0 for _ in kinds]
    for _ in range(runs):
        for mode, kind in enumerate(kinds):
            for rates, publisher, subscriber in (
                (plain_rates[mode], _plain_publisher, _plain_subscriber),
                (mesh_rates[mode], _mesh_publisher, _mesh_subscriber),
            ):
                rate, missing = _run_events(
                    pool, publisher, subscriber, size, subscribers, duration, count, kind
                )
                rates.append(rate)
                if publisher is _mesh_publisher:
                    lost[mode] += missing
    plural = "s" if subscribers > 1 else ""
    results = [
        summary(
            f"events/s pub->sub {size} B, {subscribers} subscriber{plural}",
            "events/s",
            mesh_rates[mode],
            plain_rates[mode],
            runs=runs,
            lost=lost[mode],
        )
        for mode in range(len(kinds))
    ]
    return results if key is None else against_open(results[:1], results[1:])


def _run_events(
    pool: Pool,
    publisher: Callable[..., None],
    subscriber: Callable[..., None],
    size: int,
    subscribers: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> tuple[float, int]:
    """One run; (events/s per subscriber, events lost over all subscribers)."""
    pub = pool.start(0, publisher, size, subscribers, duration, count, key)
    address = receive(pub)
    subs = [pool.start(1 + i, subscriber, address, i, count, key) for i in range(subscribers)]
    for sub in subs:
        receive(sub)  # subscribed
    pub.send("go")
    sent = receive(pub)
    reports = [receive(sub) for sub in subs]
    pub.send("done")
    for index in range(subscribers + 1):
        pool.finish(index)
    received = [r for r, _, _ in reports]
    first = min(f for r, f, _ in reports if r) if any(received) else 0.0
    last = max(t for r, _, t in reports if r) if any(received) else 0.0
    rate = (sum(received) / subscribers - 1) / (last - first) if last > first else 0.0
    return rate, sum(sent - r for r in received)


def _plain_publisher(
    control: Connection,
    size: int,
    subscribers: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    context = zmq.Context()
    # XPUB, so that the publisher knows when every subscription has arrived (no sleep needed).
    sock = context.socket(zmq.XPUB)
    try:
        curve_server(sock, key)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        sock.setsockopt(zmq.RCVTIMEO, 10_000)
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        control.send(f"127.0.0.1:{port}")
        wait_command(control)  # go
        for _ in range(subscribers):
            sock.recv()  # a subscription (zmq.Again after 10 s: the run fails)
        topic, body = _TOPIC.encode(), payload(size)
        sent = 0
        deadline = clock() + duration
        while sent < count and (sent % _CHECK_EVERY or clock() < deadline):
            sock.send_multipart([topic, body])
            sent += 1
        sock.send_multipart([topic, _END])
        control.send(sent)
        wait_command(control)  # done: the subscribers have counted
    finally:
        sock.close(linger=0)
        context.term()


def _plain_subscriber(
    control: Connection, address: str, index: int, count: int, key: KeyPair | None
) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    try:
        curve_client(sock, key)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.SUBSCRIBE, _TOPIC.encode())
        sock.setsockopt(zmq.RCVTIMEO, round(QUIET * 1000))
        sock.connect(f"tcp://{address}")
        control.send("subscribed")
        control.send(_count_stream(lambda: sock.recv_multipart()[1], count))
    finally:
        sock.close(linger=0)
        context.term()


def _count_stream(receive_one: Callable[[], bytes], count: int) -> tuple[int, float, float]:
    """Receive until the end marker, `count` messages or `QUIET` seconds of silence;
    (received, time of the first, time of the last)."""
    received = 0
    first = last = 0.0
    while received < count:
        try:
            body = receive_one()
        except zmq.Again:  # quiet for too long: the rest was lost
            break
        now = clock()
        if body == _END:
            break
        if received == 0:
            first = now
        last = now
        received += 1
    return received, first, last


def _mesh_publisher(
    control: Connection,
    size: int,
    subscribers: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    trio.run(_mesh_publish, control, size, subscribers, duration, count, key)


async def _mesh_publish(
    control: Connection,
    size: int,
    subscribers: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    from .. import open_node

    async with open_node("bench-pub", discovery="static", key=key) as node:
        control.send(node.contact)
        await trio.to_thread.run_sync(wait_command, control)  # go
        names = [f"bench-sub{i}" for i in range(subscribers)]
        await node.wait_for_peers(names=names, timeout=20)  # their subscriptions are live here
        body = payload(size)
        sent = 0
        deadline = clock() + duration
        while sent < count and (sent % _CHECK_EVERY or clock() < deadline):
            await node.publish(_TOPIC, body)
            sent += 1
        await node.publish(_TOPIC, _END)
        control.send(sent)
        # Stay until the subscribers have everything: a closing PUB drops what it still holds.
        await trio.to_thread.run_sync(wait_command, control)


def _mesh_subscriber(
    control: Connection, address: str, index: int, count: int, key: KeyPair | None
) -> None:
    trio.run(_mesh_subscribe, control, address, index, count, key)


async def _mesh_subscribe(
    control: Connection, address: str, index: int, count: int, key: KeyPair | None
) -> None:
    from .. import open_node

    async with (
        open_node(f"bench-sub{index}", seeds=[address], discovery="static", key=key) as node,
        node.subscribe(_TOPIC) as events,
    ):
        await node.wait_for_peers(names=["bench-pub"], timeout=20)
        control.send("subscribed")
        received = 0
        first = last = 0.0

        async def read() -> None:
            nonlocal received, first, last
            async for message in events:  # as an application reads: one event at a time
                now = clock()
                if event_body(message) == _END:
                    return
                if received == 0:
                    first = now
                last = now
                received += 1
                if received == count:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(stop_when_quiet, nursery.cancel_scope, lambda: received)
            await read()
            nursery.cancel_scope.cancel()
        control.send((received, first, last))


async def stop_when_quiet(scope: trio.CancelScope, progress: Callable[[], int]) -> None:
    """Cancel `scope` once `progress()` stops growing for `QUIET` seconds (the rest was lost)."""
    seen = -1
    while progress() != seen:
        seen = progress()
        await trio.sleep(QUIET)
    scope.cancel()


# -- tasks -------------------------------------------------------------------------------------


def bench_tasks(
    pool: Pool,
    size: int,
    workers: int,
    runs: int,
    duration: float,
    count: int,
    key: KeyPair | None = None,
) -> list[Measurement]:
    """Tasks/s from one sender to `workers` workers (each in its own process), each task acked
    back, vs plain pyzmq PUSH/PULL with acks and the same window of unacked tasks per worker as
    the mesh's default `max_in_flight`; then the same mesh figures vs plain PUSH/PULL without
    acks, as context; with `key`, keyed too (`against_open`). `pool` has at least `workers + 1`
    processes."""
    kinds = modes(key)
    mesh_rates: list[list[float]] = [[] for _ in kinds]
    acked_rates: list[list[float]] = [[] for _ in kinds]
    unacked_rates: list[list[float]] = [[] for _ in kinds]
    lost = [0 for _ in kinds]
    for _ in range(runs):
        for mode, kind in enumerate(kinds):
            rate, _ = _run_plain_tasks(pool, size, workers, duration, count, kind)
            unacked_rates[mode].append(rate)
            rate, _ = _run_plain_acked_tasks(pool, size, workers, duration, count, kind)
            acked_rates[mode].append(rate)
            rate, missing = _run_mesh_tasks(pool, size, workers, duration, count, kind)
            mesh_rates[mode].append(rate)
            lost[mode] += missing
    plural = "s" if workers > 1 else ""
    results = [
        [
            summary(
                f"tasks/s push->work+ack {size} B, {workers} worker{plural}",
                "tasks/s",
                mesh_rates[mode],
                acked_rates[mode],
                runs=runs,
                lost=lost[mode],
            ),
            summary(
                f"tasks/s vs plain without acks {size} B, {workers} worker{plural}",
                "tasks/s",
                mesh_rates[mode],
                unacked_rates[mode],
                runs=runs,
                lost=lost[mode],
            ),
        ]
        for mode in range(len(kinds))
    ]
    return results[0] if key is None else against_open(results[0], results[1])


def _run_plain_tasks(
    pool: Pool, size: int, workers: int, duration: float, count: int, key: KeyPair | None
) -> tuple[float, int]:
    pulls = [pool.start(1 + i, _plain_worker, count, key) for i in range(workers)]
    addresses = [receive(pull) for pull in pulls]
    push = pool.start(0, _plain_pusher, addresses, size, duration, count, key)
    receive(push)  # connected
    push.send("go")
    sent, started = receive(push)
    reports = [receive(pull) for pull in pulls]
    push.send("done")
    for index in range(workers + 1):
        pool.finish(index)
    received = sum(r for r, _ in reports)
    last = max(t for _, t in reports)
    rate = received / (last - started) if received and last > started else 0.0
    return rate, sent - received


def _plain_pusher(
    control: Connection,
    addresses: list[str],
    size: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PUSH)
    try:
        curve_client(sock, key)
        sock.setsockopt(zmq.SNDHWM, 0)
        for address in addresses:
            # Connected pipes exist at once, so round-robin spreads tasks (and one end marker
            # to each) over every worker from the first send.
            sock.connect(f"tcp://{address}")
        control.send("connected")
        wait_command(control)  # go
        body = payload(size)
        sent = 0
        started = clock()
        deadline = started + duration
        while sent < count and (sent % _CHECK_EVERY or clock() < deadline):
            sock.send(body)
            sent += 1
        for _ in addresses:
            sock.send(_END)
        control.send((sent, started))
        wait_command(control)  # done: the workers have counted (closing drops what is queued)
    finally:
        sock.close(linger=0)
        context.term()


def _plain_worker(control: Connection, count: int, key: KeyPair | None) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PULL)
    try:
        curve_server(sock, key)
        sock.setsockopt(zmq.RCVHWM, 0)
        sock.setsockopt(zmq.RCVTIMEO, round(QUIET * 1000))
        port = sock.bind_to_random_port("tcp://127.0.0.1")
        control.send(f"127.0.0.1:{port}")
        received, _, last = _count_stream(sock.recv, count)
        control.send((received, last))
    finally:
        sock.close(linger=0)
        context.term()


#: Most tasks per worker the plain pyzmq sender has sent and not yet seen acked, as the mesh's
#: `Settings.max_in_flight` (round-robin spreads them evenly over the workers).
_WINDOW = Settings().max_in_flight


def _run_plain_acked_tasks(
    pool: Pool, size: int, workers: int, duration: float, count: int, key: KeyPair | None
) -> tuple[float, int]:
    push = pool.start(0, _plain_acked_pusher, size, workers, duration, count, key)
    ack_address = receive(push)
    pulls = [pool.start(1 + i, _plain_acking_worker, ack_address, key) for i in range(workers)]
    push.send([receive(pull) for pull in pulls])
    receive(push)  # connected
    push.send("go")
    sent, acked, started, last = receive(push)
    for index in range(workers + 1):
        pool.finish(index)
    rate = acked / (last - started) if acked and last > started else 0.0
    return rate, sent - acked


def _plain_acked_pusher(
    control: Connection,
    size: int,
    workers: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    """PUSH tasks ([id, body]) to the workers, PULL their acks (the id back), and keep at most
    `_WINDOW` tasks a worker unacked, tracking which: the least a sender that retries must do."""
    context = zmq.Context()
    push = context.socket(zmq.PUSH)
    acks = context.socket(zmq.PULL)
    try:
        curve_client(push, key)
        curve_server(acks, key)
        push.setsockopt(zmq.SNDHWM, 0)
        acks.setsockopt(zmq.RCVHWM, 0)
        acks.setsockopt(zmq.RCVTIMEO, round(QUIET * 1000))
        port = acks.bind_to_random_port("tcp://127.0.0.1")
        control.send(f"127.0.0.1:{port}")
        for address in wait_command(control):
            # Connected pipes exist at once, so round-robin spreads tasks (and one end marker
            # to each) over every worker from the first send.
            push.connect(f"tcp://{address}")
        control.send("connected")
        wait_command(control)  # go
        body = payload(size)
        unacked: set[bytes] = set()
        window = _WINDOW * workers
        sent = acked = 0
        last = started = clock()
        deadline = started + duration

        def take_ack(flags: int = 0) -> None:
            nonlocal acked, last
            unacked.discard(acks.recv(flags))  # zmq.Again after QUIET s: the rest was lost
            acked += 1
            last = clock()

        while sent < count and (sent % _CHECK_EVERY or clock() < deadline):
            if len(unacked) >= window:
                take_ack()
                with contextlib.suppress(zmq.Again):
                    while True:
                        take_ack(zmq.NOBLOCK)
            task = sent.to_bytes(8, "little")
            push.send_multipart([task, body])
            unacked.add(task)
            sent += 1
        with contextlib.suppress(zmq.Again):
            while unacked:
                take_ack()
        for _ in range(workers):
            push.send_multipart([_END, b""])
        control.send((sent, acked, started, last))
    finally:
        push.close(linger=1000)  # the end markers go out before the workers' QUIET runs out
        acks.close(linger=0)
        context.term()


def _plain_acking_worker(control: Connection, ack_address: str, key: KeyPair | None) -> None:
    context = zmq.Context()
    pull = context.socket(zmq.PULL)
    acks = context.socket(zmq.PUSH)
    try:
        curve_server(pull, key)
        curve_client(acks, key)
        pull.setsockopt(zmq.RCVHWM, 0)
        pull.setsockopt(zmq.RCVTIMEO, round(QUIET * 1000))
        acks.setsockopt(zmq.SNDHWM, 0)
        acks.connect(f"tcp://{ack_address}")
        port = pull.bind_to_random_port("tcp://127.0.0.1")
        control.send(f"127.0.0.1:{port}")
        with contextlib.suppress(zmq.Again):  # quiet for too long: the sender is gone
            while True:
                task, _ = pull.recv_multipart()
                if task == _END:
                    break
                acks.send(task)
    finally:
        pull.close(linger=0)
        acks.close(linger=1000)
        context.term()


def _run_mesh_tasks(
    pool: Pool, size: int, workers: int, duration: float, count: int, key: KeyPair | None
) -> tuple[float, int]:
    push = pool.start(0, _mesh_pusher, size, workers, duration, count, key)
    address = receive(push)
    works = [pool.start(1 + i, _mesh_worker, address, i, key) for i in range(workers)]
    for work in works:
        receive(work)  # offering the service
    push.send("go")
    pushed, acked, started, settled = receive(push)
    for work in works:
        work.send("done")
    for index in range(workers + 1):
        pool.finish(index)
    rate = acked / (settled - started) if settled > started else 0.0
    return rate, pushed - acked


def _mesh_pusher(
    control: Connection,
    size: int,
    workers: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    trio.run(_mesh_push, control, size, workers, duration, count, key)


async def _mesh_push(
    control: Connection,
    size: int,
    workers: int,
    duration: float,
    count: int,
    key: KeyPair | None,
) -> None:
    from .. import open_node

    async with open_node("bench-pusher", discovery="static", key=key) as node:
        control.send(node.contact)
        await trio.to_thread.run_sync(wait_command, control)  # go
        await node.wait_for_peers(workers, service=_SERVICE, timeout=20)
        body = payload(size)
        pushed = 0
        started = clock()
        deadline = started + duration
        while pushed < count and (pushed % _CHECK_EVERY or clock() < deadline):
            await node.push(_SERVICE, body, timeout=10)
            pushed += 1
        with trio.fail_after(30):
            await node.wait_settled()
        settled = clock()
        control.send((pushed, node.statistics().tasks_acked, started, settled))


def _mesh_worker(control: Connection, address: str, index: int, key: KeyPair | None) -> None:
    trio.run(_mesh_work, control, address, index, key)


async def _mesh_work(control: Connection, address: str, index: int, key: KeyPair | None) -> None:
    from .. import open_node

    async with (
        open_node(f"bench-worker{index}", seeds=[address], discovery="static", key=key) as node,
        node.work(_SERVICE) as tasks,
    ):
        await node.wait_for_peers(names=["bench-pusher"], timeout=20)
        control.send("working")

        async def work() -> None:
            async for task in tasks:  # as an application works: one task at a time
                async with task:
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(work)
            await trio.to_thread.run_sync(wait_command, control)  # done
            nursery.cancel_scope.cancel()
