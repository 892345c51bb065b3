"""Benchmarks: the mesh next to plain pyzmq, measured in the same run, in separate processes.

Each measurement runs a publisher and a subscriber in two fresh processes (spawned, never forked)
on 127.0.0.1. The subscriber times the stream from its first to its last message, so process
start-up and peering are not counted. Absolute numbers on a shared machine are noisy; the ratio
to plain pyzmq in the same run is what to compare.
"""

from __future__ import annotations

import multiprocessing
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from typing import Any

import trio
import zmq

_TOPIC = "bench.events"
_QUIET = 2.0  # seconds without a message after which a subscriber stops waiting for the rest


@dataclass(frozen=True, slots=True)
class Measurement:
    """One benchmark result: the median over `runs`, with the plain pyzmq baseline beside it
    (None where plain pyzmq has no such thing, as for discovery)."""

    name: str
    value: float
    unit: str
    baseline: float | None
    ratio: float | None
    runs: int
    min: float
    max: float
    lost: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def bench_events(count: int, size: int, runs: int) -> Measurement:
    """Events/s from one publisher to one subscriber, mesh vs plain pyzmq PUB/SUB."""
    mesh_rates, plain_rates, lost = [], [], 0
    for _ in range(runs):
        rate, missing = _run_pair(_plain_publisher, _plain_subscriber, count, size)
        plain_rates.append(rate)
        lost += missing
        rate, missing = _run_pair(_mesh_publisher, _mesh_subscriber, count, size)
        mesh_rates.append(rate)
        lost += missing
    value = statistics.median(mesh_rates)
    baseline = statistics.median(plain_rates)
    return Measurement(
        name=f"events/s pub->sub {size} B",
        value=round(value),
        unit="events/s",
        baseline=round(baseline),
        ratio=round(value / baseline, 3),
        runs=runs,
        min=round(min(mesh_rates)),
        max=round(max(mesh_rates)),
        lost=lost,
    )


Role = Callable[[Connection, int, int], None]


def _run_pair(publisher: Role, subscriber: Role, count: int, size: int) -> tuple[float, int]:
    """Start both roles; the subscriber reports (rate, lost). Bounded: a stuck child is killed."""
    spawn = multiprocessing.get_context("spawn")
    pub_end, pub_child = spawn.Pipe()
    sub_end, sub_child = spawn.Pipe()
    processes = [
        spawn.Process(target=publisher, args=(pub_child, count, size), daemon=True),
        spawn.Process(target=subscriber, args=(sub_child, count, size), daemon=True),
    ]
    try:
        for process in processes:
            process.start()
        sub_end.send(_receive(pub_end, 30))  # the publisher's address, for the subscriber
        pub_end.send(_receive(sub_end, 30))  # "ready": the subscription is live; go
        rate, lost = _receive(sub_end, 120)
        pub_end.send("done")
        return float(rate), int(lost)
    finally:
        _reap(processes)


def _reap(processes: list[Any]) -> None:
    """Wait for the benchmark's processes to end; kill (by pid, ours only) any that hang."""
    for process in processes:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()


def _receive(connection: Connection, timeout: float) -> Any:
    if not connection.poll(timeout):
        raise TimeoutError(f"benchmark process did not answer within {timeout:g} s")
    return connection.recv()


def _payload(size: int) -> bytes:
    return bytes(range(256)) * (size // 256) + bytes(size % 256)


# -- plain pyzmq: the baseline --------------------------------------------------------------------


def _plain_publisher(control: Connection, count: int, size: int) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    control.send(f"127.0.0.1:{port}")
    control.recv()  # the subscriber is connected and has seen a warm-up message
    topic, body = _TOPIC.encode(), _payload(size)
    for _ in range(count):
        sock.send_multipart([topic, body])
    sock.send_multipart([topic, b"end"])
    control.recv()  # the subscriber has counted
    sock.close(linger=0)
    context.term()


def _plain_subscriber(control: Connection, count: int, size: int) -> None:
    context = zmq.Context()
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    address = control.recv()
    sock.connect(f"tcp://{address}")
    sock.setsockopt(zmq.RCVTIMEO, round(_QUIET * 1000))
    # A subscription reaches the PUB asynchronously and plain pyzmq cannot tell when: the usual
    # answer, used here, is to give it time (the mesh's subscribe() confirms it instead).
    time.sleep(0.5)
    control.send("ready")
    received, first, last = _count_stream(lambda: sock.recv_multipart()[1], count)
    control.send((_rate(received, first, last), count - received))
    sock.close(linger=0)
    context.term()


def _count_stream(receive: Callable[[], bytes], count: int) -> tuple[int, float, float]:
    received = 0
    first = last = 0.0
    while True:
        try:
            body = receive()
        except zmq.Again:  # quiet for too long: the rest was lost
            return received, first, last
        last = time.perf_counter()
        if body == b"end":
            return received, first, last
        if received == 0:
            first = last
        received += 1
        if received == count:
            return received, first, last


def _rate(received: int, first: float, last: float) -> float:
    return (received - 1) / (last - first) if received > 1 and last > first else 0.0


# -- the mesh -------------------------------------------------------------------------------------


def _mesh_publisher(control: Connection, count: int, size: int) -> None:
    trio.run(_mesh_publish, control, count, size)


async def _mesh_publish(control: Connection, count: int, size: int) -> None:
    from . import open_node

    async with open_node("bench-pub", discovery="static") as node:
        control.send(node.address)
        await trio.to_thread.run_sync(control.recv)
        body = _payload(size)
        for _ in range(count):
            await node.publish(_TOPIC, body)
        await node.publish(_TOPIC, b"end")
        # Stay until the subscriber has everything: a closing PUB drops what it still holds.
        await trio.to_thread.run_sync(control.recv)


def _mesh_subscriber(control: Connection, count: int, size: int) -> None:
    trio.run(_mesh_subscribe, control, count, size)


async def _mesh_subscribe(control: Connection, count: int, size: int) -> None:
    from . import open_node

    address = control.recv()
    async with (
        open_node("bench-sub", seeds=[address], discovery="static") as node,
        node.subscribe(_TOPIC) as events,
    ):
        await node.wait_for_peers(1, timeout=10)  # and the subscription is live there
        control.send("ready")
        received = 0
        first = last = 0.0

        async def read() -> None:
            nonlocal received, first, last
            async for message in events:  # as an application reads: one event at a time
                last = time.perf_counter()
                if message.body == b"end":
                    return
                if received == 0:
                    first = last
                received += 1
                if received == count:
                    return

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_when_quiet, nursery.cancel_scope, lambda: received)
            await read()
            nursery.cancel_scope.cancel()
        control.send((_rate(received, first, last), count - received))


async def _stop_when_quiet(scope: trio.CancelScope, progress: Callable[[], int]) -> None:
    """Cancel `scope` once `progress()` stops growing for `_QUIET` seconds (events were lost)."""
    seen = -1
    while progress() != seen:
        seen = progress()
        await trio.sleep(_QUIET)
    scope.cancel()


# -- discovery -------------------------------------------------------------------------------------


def bench_discovery(nodes: int, runs: int) -> list[Measurement]:
    """With `nodes - 1` nodes running (in one process), start one more in a fresh process, `runs`
    times: how long from its `open_node` returning until it is in every other node's peer map,
    and from its first `publish` after `wait_for_peers` until every other node has the event.
    Each run uses a mesh name of its own; everything stays on 127.0.0.1."""
    import uuid

    spawn = multiprocessing.get_context("spawn")
    joins: list[float] = []
    firsts: list[float] = []
    lost = 0
    for _ in range(runs):
        mesh_name = f"bench-{uuid.uuid4().hex[:12]}"
        observer_end, observer_child = spawn.Pipe()
        joiner_end, joiner_child = spawn.Pipe()
        processes = [
            spawn.Process(
                target=_observe, args=(observer_child, mesh_name, nodes - 1), daemon=True
            ),
            spawn.Process(target=_join, args=(joiner_child, mesh_name, nodes - 1), daemon=True),
        ]
        try:
            processes[0].start()
            _receive(observer_end, 60)  # the observers are up and have found each other
            processes[1].start()
            opened_at = _receive(joiner_end, 60)  # wall clock when open_node returned
            published_at = _receive(joiner_end, 60)
            seen_at, got_at = _receive(observer_end, 60)
            joiner_end.send("done")
            joins.append(max(seen_at) - opened_at)
            if len(got_at) < nodes - 1:
                lost += nodes - 1 - len(got_at)
            else:
                firsts.append(max(got_at) - published_at)
        finally:
            _reap(processes)
    return [
        _latency(f"discovery: open to in every peer map, {nodes} nodes", joins, runs, 0),
        _latency(f"discovery: first event after wait_for_peers, {nodes} nodes", firsts, runs, lost),
    ]


def _latency(name: str, samples: list[float], runs: int, lost: int) -> Measurement:
    ms = [sample * 1000 for sample in samples] or [float("nan")]
    return Measurement(
        name=name,
        value=round(statistics.median(ms), 2),
        unit="ms",
        baseline=None,
        ratio=None,
        runs=runs,
        min=round(min(ms), 2),
        max=round(max(ms), 2),
        lost=lost,
    )


def _observe(control: Connection, mesh_name: str, count: int) -> None:
    trio.run(_run_observers, control, mesh_name, count)


async def _run_observers(control: Connection, mesh_name: str, count: int) -> None:
    from contextlib import AsyncExitStack

    from . import PeerJoined, open_node

    seen_at: list[float] = []
    got_at: list[float] = []
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(open_node(f"observer{i}", mesh=mesh_name))
            for i in range(count)
        ]
        subscriptions = [await stack.enter_async_context(n.subscribe("first")) for n in nodes]
        for node in nodes:
            await node.wait_for_peers(count - 1, timeout=30)
        watches = [node.watch_peers() for node in nodes]
        control.send("ready")

        async def wait_join(watch: Any) -> None:
            async for change in watch:
                if isinstance(change, PeerJoined) and change.peer.name == "joiner":
                    seen_at.append(time.time())
                    return

        async def wait_event(subscription: Any) -> None:
            await subscription.receive()
            got_at.append(time.time())

        with trio.move_on_after(30):
            async with trio.open_nursery() as nursery:
                for watch, subscription in zip(watches, subscriptions, strict=True):
                    nursery.start_soon(wait_join, watch)
                    nursery.start_soon(wait_event, subscription)
        control.send((seen_at, got_at))


def _join(control: Connection, mesh_name: str, peers: int) -> None:
    trio.run(_run_joiner, control, mesh_name, peers)


async def _run_joiner(control: Connection, mesh_name: str, peers: int) -> None:
    from . import open_node

    async with open_node("joiner", mesh=mesh_name) as node:
        control.send(time.time())
        await node.wait_for_peers(peers, timeout=30)
        published_at = time.time()
        await node.publish("first", "hello")
        control.send(published_at)
        await trio.to_thread.run_sync(control.recv)


# -- failure detection -----------------------------------------------------------------------------


def bench_detection(runs: int) -> list[Measurement]:
    """How fast a peer's failure is seen: a node in a fresh process is killed (SIGKILL) or frozen
    (SIGSTOP), `runs` times each; time from the signal to the observer's verdicts (suspect: no
    new work; dead: its work goes elsewhere). Everything on 127.0.0.1."""
    return trio.run(_bench_detection, runs)


async def _bench_detection(runs: int) -> list[Measurement]:
    import signal

    from . import PeerState, PeerStateChanged, open_node

    results: list[Measurement] = []
    for name, number in (("kill -9", signal.SIGKILL), ("SIGSTOP", signal.SIGSTOP)):
        suspected: list[float] = []
        dead: list[float] = []
        for _ in range(runs):
            spawn = multiprocessing.get_context("spawn")
            async with open_node("observer", discovery="static") as observer:
                process = spawn.Process(target=_victim, args=(observer.address,), daemon=True)
                process.start()
                try:
                    await observer.wait_for_peers(names=["victim"], timeout=20)
                    async with observer.watch_peers() as changes:
                        assert process.pid is not None
                        os.kill(process.pid, number)
                        signalled = trio.current_time()
                        async for change in changes:
                            if not isinstance(change, PeerStateChanged):
                                continue
                            elapsed = trio.current_time() - signalled
                            if change.peer.state is PeerState.SUSPECT:
                                suspected.append(elapsed)
                            elif change.peer.state is PeerState.DEAD:
                                dead.append(elapsed)
                                break
                finally:
                    if process.is_alive():
                        process.kill()  # ours, by pid; SIGKILL ends a stopped process too
                    _reap([process])
        results.append(_latency(f"failure: {name} to suspect", suspected, runs, 0))
        results.append(_latency(f"failure: {name} to dead", dead, runs, 0))
    return results


def _victim(seed: str) -> None:
    trio.run(_run_victim, seed)


async def _run_victim(seed: str) -> None:
    from . import open_node

    async with open_node("victim", discovery="static", seeds=[seed]):
        await trio.sleep_forever()
