"""The trio adapter for ZeroMQ sockets, on real sockets over 127.0.0.1.

The edge-triggered FD's traps (the rules in mesh/_zmq.py's docstring) are each exercised here: a
wait after a partial drain, a socket option set while the owner waits, a close while a task waits.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
import zmq

from mesh._zmq import AsyncSocket, Outbox

from .conftest import bind_random

Make = Callable[[int], zmq.Socket[Any]]


def pair(zsocket: Make, kind_out: int, kind_in: int) -> tuple[Any, Any]:
    receiver = zsocket(kind_in)
    endpoint = bind_random(receiver)
    sender = zsocket(kind_out)
    sender.connect(endpoint)
    return sender, receiver


@pytest.mark.parametrize("interruptible", [True, False])
async def test_partial_drains_never_miss_the_edge(zsocket: Make, interruptible: bool) -> None:
    # The classic hang: take one of ten queued messages, then wait on the FD while nine are
    # still queued. Checking `EVENTS` before every wait is what prevents it.
    push, pull = pair(zsocket, zmq.PUSH, zmq.PULL)
    receiver = AsyncSocket(pull, interruptible=interruptible)
    with trio.fail_after(5):
        for i in range(10):
            push.send(b"%d" % i)
        received: list[bytes] = []
        while len(received) < 10:
            batch = await receiver.receive_batch(1)
            assert len(batch) == 1
            received.extend(batch)
    assert received == [b"%d" % i for i in range(10)]
    receiver.close()


async def test_receive_batch_is_bounded_and_yields_between_batches(
    zsocket: Make,
) -> None:
    push, pull = pair(zsocket, zmq.PUSH, zmq.PULL)
    receiver = AsyncSocket(pull)
    other_ran = 0

    async def other() -> None:
        nonlocal other_ran
        while True:
            other_ran += 1
            await trio.lowlevel.checkpoint()

    with trio.fail_after(5):
        for i in range(2500):
            push.send(b"%d" % i)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(other)
            received: list[bytes] = []
            sizes = []
            while len(received) < 2500:
                batch = await receiver.receive_batch(1000)
                sizes.append(len(batch))
                received.extend(batch)
            nursery.cancel_scope.cancel()
    assert all(size <= 1000 for size in sizes)
    assert received == [b"%d" % i for i in range(2500)]
    # Every call is a scheduling point: the other task ran in each scheduler round the receiver
    # yielded to, so it was never starved for more than one batch.
    assert other_ran >= len(sizes) - 1
    receiver.close()


async def test_multipart_messages_arrive_whole(zsocket: Make) -> None:
    pub, sub = pair(zsocket, zmq.PUSH, zmq.PULL)
    receiver = AsyncSocket(sub)
    sender = AsyncSocket(pub)
    with trio.fail_after(5):
        big = b"c" * 100_000
        await sender.send([b"a", b"", big])
        await sender.send(b"single")
        received: list[list[bytes]] = []
        while len(received) < 2:  # the two may arrive in separate batches
            received.extend(await receiver.receive_multipart_batch(10))
    assert len(received) == 2
    assert received[0][:2] == [b"a", b""]
    assert received[0][2] == big
    assert received[1] == [b"single"]
    sender.close()
    receiver.close()


async def test_cancelled_receive_loses_nothing(zsocket: Make) -> None:
    push, pull = pair(zsocket, zmq.PUSH, zmq.PULL)
    receiver = AsyncSocket(pull)
    with trio.fail_after(5):
        with trio.CancelScope() as scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(receiver.receive_batch, 10)
                await trio.testing.wait_all_tasks_blocked()
                scope.cancel()
        assert scope.cancelled_caught
        push.send(b"after")
        assert await receiver.receive_batch(10) == [b"after"]
    receiver.close()


async def test_messages_sent_while_the_owner_waits_arrive(zsocket: Make) -> None:
    # One message at a time, each sent only once the owner waits on the FD (the round-trip
    # path): each wakes it, and is returned without waiting for another.
    push, pull = pair(zsocket, zmq.PUSH, zmq.PULL)
    receiver = AsyncSocket(pull, interruptible=False)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            got: list[bytes] = []
            arrived = trio.Event()

            async def owner() -> None:
                nonlocal arrived
                while len(got) < 20:
                    got.extend(await receiver.receive_batch(10))
                    arrived.set()
                    arrived = trio.Event()

            nursery.start_soon(owner)
            for i in range(20):
                await trio.testing.wait_all_tasks_blocked()
                waiting = arrived
                push.send(b"%d" % i)
                await waiting.wait()
    assert got == [b"%d" % i for i in range(20)]
    receiver.close()


async def test_a_socket_that_is_not_interruptible_refuses_ops(zsocket: Make) -> None:
    receiver = AsyncSocket(zsocket(zmq.SUB), interruptible=False)
    with pytest.raises(RuntimeError):
        receiver.call_soon(lambda s: s.setsockopt(zmq.SUBSCRIBE, b""))
    receiver.close()


@pytest.mark.parametrize("interruptible", [True, False])
async def test_close_wakes_a_waiting_task(zsocket: Make, interruptible: bool) -> None:
    _, pull = pair(zsocket, zmq.PUSH, zmq.PULL)
    receiver = AsyncSocket(pull, interruptible=interruptible)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:

            async def wait() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await receiver.receive_batch(10)

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            receiver.close()
    assert pull.closed
    receiver.close()  # a second close does nothing
    with pytest.raises(trio.ClosedResourceError):
        await receiver.receive_batch(1)


async def test_call_soon_runs_in_the_owner_while_it_waits(zsocket: Make) -> None:
    pub, sub = pair(zsocket, zmq.PUB, zmq.SUB)
    receiver = AsyncSocket(sub)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            got: list[list[list[bytes]]] = []

            async def owner() -> None:
                got.append(await receiver.receive_multipart_batch(10))

            nursery.start_soon(owner)
            await trio.testing.wait_all_tasks_blocked()
            await receiver.call_soon(lambda s: s.setsockopt(zmq.SUBSCRIBE, b"t")).wait()
            # The subscription travels to the PUB asynchronously: publish until it is seen.
            while not got:
                pub.send_multipart([b"t", b"hello"])
                await trio.sleep(0.005)
    assert got[0][0] == [b"t", b"hello"]
    receiver.close()


async def test_outbox_queues_until_a_peer_appears_then_delivers_in_order(
    zsocket: Make,
) -> None:
    push = zsocket(zmq.PUSH)
    push.setsockopt(zmq.IMMEDIATE, 1)  # no peer yet: ZeroMQ refuses, the outbox holds
    with socket.socket() as reserved:  # a port nobody listens on, for now
        reserved.bind(("127.0.0.1", 0))
        endpoint = f"tcp://127.0.0.1:{reserved.getsockname()[1]}"
    push.connect(endpoint)
    room_calls = 0

    def on_room() -> None:
        nonlocal room_calls
        room_calls += 1

    outbox = Outbox(AsyncSocket(push), capacity=5, on_room=on_room)
    with trio.fail_after(10):
        for i in range(5):
            assert outbox.send_nowait(b"%d" % i)
        assert not outbox.send_nowait(b"full")
        assert len(outbox) == 5
        assert not outbox.has_room()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            pull = zsocket(zmq.PULL)
            pull.bind(endpoint)
            receiver = AsyncSocket(pull)
            received: list[bytes] = []
            while len(received) < 5:
                received.extend(await receiver.receive_batch(10))
            await outbox.wait_empty()
            nursery.cancel_scope.cancel()
    assert received == [b"%d" % i for i in range(5)]
    assert room_calls >= 1
    receiver.close()
    outbox.socket.close()


async def test_outbox_send_waits_for_room_and_can_be_cancelled(zsocket: Make) -> None:
    push = zsocket(zmq.PUSH)
    push.setsockopt(zmq.IMMEDIATE, 1)
    push.connect("tcp://127.0.0.1:9")  # discard port: nothing answers on loopback
    outbox = Outbox(AsyncSocket(push), capacity=1)
    with trio.fail_after(5):
        assert outbox.send_nowait(b"first")
        with trio.move_on_after(0.05) as scope:
            await outbox.send(b"second")
        assert scope.cancelled_caught
        assert len(outbox) == 1
        assert outbox.discard() == [b"first"]
    outbox.socket.close()


async def test_outbox_discard_takes_out_only_what_it_is_asked_to(zsocket: Make) -> None:
    pull = zsocket(zmq.PULL)
    port = pull.bind_to_random_port("tcp://127.0.0.1")
    push = zsocket(zmq.PUSH)
    push.setsockopt(zmq.IMMEDIATE, 1)
    outbox = Outbox(AsyncSocket(push), capacity=10)
    with trio.fail_after(5):
        for message in (b"task 1", b"ready", b"task 2", b"ack"):
            assert outbox.send_nowait(message)  # queued: not connected yet
        assert outbox.discard(lambda message: message.startswith(b"task")) == [
            b"task 1",
            b"task 2",
        ]
        assert len(outbox) == 2
        # The rest leaves, in order, once the peer is there.
        push.connect(f"tcp://127.0.0.1:{port}")
        receiver = AsyncSocket(pull)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            received: list[bytes] = []
            while len(received) < 2:
                received += await receiver.receive_batch(10)
            nursery.cancel_scope.cancel()
        assert received == [b"ready", b"ack"]
        assert len(outbox) == 0
        receiver.close()
    outbox.socket.close()


def test_outbox_capacity_must_be_positive(zsocket: Make) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Outbox(AsyncSocket(zsocket(zmq.PUSH)), capacity=0)


def _join(frames: Any) -> tuple[bytes, int]:
    """A `coalesce` for tests: every queued message in one frame, joined with b"|"."""
    messages = list(frames)
    return b"|".join(messages), len(messages)


async def test_outbox_coalesces_a_burst_and_sends_a_lone_message_at_once(zsocket: Make) -> None:
    push, pull = pair(zsocket, zmq.PUSH, zmq.PULL)
    outbox = Outbox(AsyncSocket(push), capacity=100, coalesce=_join)
    receiver = AsyncSocket(pull)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.run)
            # A burst, with no yield in between: the first goes straight out, the rest wait
            # for the owner task, which sends them as one frame once this task yields.
            for i in range(10):
                assert outbox.send_nowait(b"%d" % i)
            assert len(outbox) == 9  # queued, not yet handed to ZeroMQ
            assert outbox.frames_sent == 1
            await outbox.wait_empty()
            frames: list[bytes] = []
            while len(frames) < 2:
                frames += await receiver.receive_batch(10)
            assert frames == [b"0", b"|".join(b"%d" % i for i in range(1, 10))]
            # Quiet for longer than a burst's gap: the next message leaves on its own, at once.
            await trio.sleep(0.01)
            assert outbox.send_nowait(b"alone")
            assert len(outbox) == 0
            assert await receiver.receive_batch(10) == [b"alone"]
            assert outbox.frames_sent == 3
            nursery.cancel_scope.cancel()
    receiver.close()
    outbox.socket.close()


async def test_outbox_without_coalesce_sends_each_message_at_once(zsocket: Make) -> None:
    push, pull = pair(zsocket, zmq.PUSH, zmq.PULL)
    outbox = Outbox(AsyncSocket(push), capacity=100)
    receiver = AsyncSocket(pull)
    with trio.fail_after(5):
        for i in range(10):
            assert outbox.send_nowait(b"%d" % i)
        assert len(outbox) == 0
        frames: list[bytes] = []
        while len(frames) < 10:
            frames += await receiver.receive_batch(10)
    assert frames == [b"%d" % i for i in range(10)]
    assert outbox.frames_sent == 10
    receiver.close()
    outbox.socket.close()
