"""Slow consumers hold nobody back, and what they miss is repaired from the publisher's history
or reported as an exact `Gap`: on real sockets over 127.0.0.1, a reader that stops reading, a
subscriber process that is SIGSTOPped, and a publisher whose history is too small to repair
everything."""

from __future__ import annotations

import functools
import os
import signal
import textwrap
from collections.abc import Awaitable, Callable, Sequence

import pytest
import trio

import mesh
from mesh import Gap, Message
from mesh._events import connect_op, disconnect_op

from . import inside
from .conftest import peered_nodes, python_process, wait_until

PADDING = bytes(8_000)  # events large enough that a stopped reader's buffers fill in a second


def check_accounted(items: Sequence[Message | Gap], published: Sequence[int], topic: str) -> int:
    """Every event of `published` (the publisher's numbers, in order, all on `topic`) was
    delivered once, in order, or lies in a `Gap` whose last number is one of them; nothing else
    came. Returns how many were delivered."""
    expected = iter(published)
    delivered = 0
    for item in items:
        if isinstance(item, Gap):
            assert item.topic == topic
            assert item.first_seq <= item.last_seq
            while (seq := next(expected)) < item.last_seq:
                assert seq >= item.first_seq, f"{seq} missing before {item}"
            assert seq == item.last_seq, f"{item} does not end on an event of {topic!r}"
        else:
            seq = next(expected)
            assert item.seq == seq, f"got {item.seq}, expected {seq}"
            delivered += 1
    assert next(expected, None) is None, "events missing at the end"
    return delivered


async def test_a_reader_stalled_past_the_bound_stops_holding_its_publisher() -> None:
    settings = mesh.Settings(
        subscription_buffer=50,
        event_hwm=20,
        slow_subscriber_timeout=0.2,
        history_events=100,
    )
    total = 1500  # 12 MB: more than every buffer on the way holds
    with trio.fail_after(30):
        async with (
            peered_nodes("pub", "stalled", "reader", settings=settings) as (pub, stalled, reader),
            stalled.subscribe("s") as stalled_events,
            reader.subscribe("s") as reader_events,
        ):
            got: list[Message | Gap] = []

            async def read() -> None:
                async for item in reader_events:
                    got.append(item)
                    if len(got) == total:
                        return

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                for i in range(total):  # would wait for ever if the stalled reader held it
                    await pub.publish("s", [i, PADDING])
            # The reader that kept reading got everything, in order, no gap.
            assert [item.body[0] for item in got if isinstance(item, Message)] == list(range(total))
            # (Every event reached the stalled node, dropped past its buffer: none is on its way.)
            await wait_until(
                lambda: stalled.statistics().events_received == total, "all at the stalled node"
            )
            assert stalled_events.dropped == total - 50
            # The stalled reader catches up: the last events from history, the rest as gaps.
            stalled_items: list[Message | Gap] = []
            numbers = [item.seq for item in got if isinstance(item, Message)]
            with trio.move_on_after(5):
                async for item in stalled_events:
                    stalled_items.append(item)
                    last = item.last_seq if isinstance(item, Gap) else item.seq
                    if last == numbers[-1]:
                        break
            delivered = check_accounted(stalled_items, numbers, "s")
            statistics = stalled.statistics()
            assert statistics.event_gaps == sum(isinstance(i, Gap) for i in stalled_items) > 0
            assert statistics.events_repaired > 0, [i for i in stalled_items if isinstance(i, Gap)]
            assert delivered >= 100  # at least what the history held


# -- a subscriber process that is stopped -------------------------------------------------------

SUBSCRIBER = textwrap.dedent(
    """
    import sys, trio, mesh

    async def main(seed):
        async with mesh.open_node("frozen", discovery="static", seeds=[seed]) as node:
            await node.wait_for_peers(names=["pub"], timeout=10)
            async with node.subscribe("s") as events:
                print("ready", flush=True)
                async for item in events:
                    if isinstance(item, mesh.Gap):
                        print("gap", item.first_seq, item.last_seq, item.reason, flush=True)
                    else:
                        print("event", item.seq, item.body[0], flush=True)

    trio.run(main, sys.argv[1])
    """
)


def parse(lines: list[str], sender: str) -> list[Message | Gap]:
    items: list[Message | Gap] = []
    for line in lines:
        kind, *fields = line.split()
        if kind == "gap":
            items.append(Gap(sender, int(fields[0]), int(fields[1]), fields[2], "s"))
        else:
            items.append(Message("s", int(fields[1]), sender, int(fields[0])))
    return items


@pytest.mark.parametrize(
    "patience",
    [
        pytest.param(0.5, id="the-timeout"),
        # A timeout longer than the stop: the detector's verdict (0.7 s) ends the wait.
        pytest.param(30.0, id="declared-dead"),
    ],
)
async def test_a_stopped_subscriber_holds_nobody_back_and_gets_everything_or_a_gap(
    patience: float,
) -> None:
    rate, stopped_for, total = 2000, 5.0, 16_000  # 8 s of events at 2,000 a second
    # 1 MiB a connection at each end (16 frames): the stopped one's fill within the second.
    settings = mesh.Settings(event_buffer_bytes=1024 * 1024, slow_subscriber_timeout=patience)
    with trio.fail_after(60):
        async with peered_nodes("pub", "r1", "r2", settings=settings) as (pub, r1, r2):
            with python_process(SUBSCRIBER, pub.contact) as frozen:
                lines: list[str] = []
                ready = trio.Event()

                def read_lines() -> None:
                    assert frozen.stdout is not None
                    for line in frozen.stdout:
                        if line.strip() == "ready":
                            trio.from_thread.run_sync(ready.set)
                        else:
                            lines.append(line)

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(
                        functools.partial(trio.to_thread.run_sync, abandon_on_cancel=True),
                        read_lines,
                    )
                    await ready.wait()
                    await wait_until(lambda: len(pub.peers) == 3, "the frozen node peered")
                    seqs, pauses = await publish_past_a_stop(
                        pub, [r1, r2], frozen.pid, rate, stopped_for, total
                    )
                    # The stopped one, continued, catches up: wait for the last event.
                    await wait_until(
                        lambda: (
                            bool(lines)
                            and lines[-1].split()[-2:-1] != []
                            and last_number(lines[-1]) == seqs[-1]
                        ),
                        "the stopped subscriber caught up",
                        timeout=20,
                    )
                    nursery.cancel_scope.cancel()
        items = parse(lines, pub.id)
        delivered = check_accounted(items, seqs, "s")
        gaps = [item for item in items if isinstance(item, Gap)]
        print(
            f"\nothers' longest pause {max(pauses):.3f} s; the stopped one: {delivered} events"
            f" delivered, {len(gaps)} gaps of {sum(g.last_seq - g.first_seq + 1 for g in gaps)}"
            f" numbers"
        )
        # The others kept their rate: no pause near the time the subscriber was stopped.
        # (The bound is `slow_subscriber_timeout`, 0.5 s, or the detector's verdict, 0.7 s.)
        assert max(pauses) < stopped_for / 2, pauses
        assert pub.statistics().events_shed > 0


def last_number(line: str) -> int:
    kind, *fields = line.split()
    return int(fields[1] if kind == "gap" else fields[0])


async def publish_past_a_stop(
    pub: mesh.Node,
    readers: list[mesh.Node],
    pid: int,
    rate: int,
    stopped_for: float,
    total: int,
) -> tuple[list[int], list[float]]:
    """Publish `total` events at `rate` a second while `readers` read them, SIGSTOPping the
    process `pid` a second in, for `stopped_for` seconds. Returns the publisher's numbers of
    the events, and each reader's longest pause between two events."""
    got: list[list[int]] = [[] for _ in readers]
    pauses = [0.0 for _ in readers]
    subscribed = 0

    async def read(index: int) -> None:
        nonlocal subscribed
        async with readers[index].subscribe("s") as events:
            subscribed += 1
            last = trio.current_time()
            async for item in events:
                assert isinstance(item, Message), item
                now = trio.current_time()
                if got[index]:
                    pauses[index] = max(pauses[index], now - last)
                last = now
                got[index].append(item.seq)
                assert item.body[0] == len(got[index]) - 1
                if len(got[index]) == total:
                    return

    async with trio.open_nursery() as nursery:
        for index in range(len(readers)):
            nursery.start_soon(read, index)
        await wait_until(lambda: subscribed == len(readers), "readers subscribed")
        start = trio.current_time()
        stopped_at = None
        for i in range(total):
            if i == rate:
                os.kill(pid, signal.SIGSTOP)
                stopped_at = trio.current_time()
            elif stopped_at is not None and trio.current_time() - stopped_at > stopped_for:
                os.kill(pid, signal.SIGCONT)
                stopped_at = None
            await pub.publish("s", [i, PADDING])
            if i % 20 == 19:
                await trio.sleep_until(start + (i + 1) / rate)
        if stopped_at is not None:
            os.kill(pid, signal.SIGCONT)
    assert got[0] == got[1]
    return got[0], pauses


async def lose_a_quiet_tail(
    pub: mesh.Node,
    sub: mesh.Node,
    events: mesh.Subscription,
    lose: Callable[[], Awaitable[None]],
    find: Callable[[], Awaitable[None]],
) -> None:
    """Three events reach `events`; `lose` breaks the way to it, three more are published and
    lost, and the publisher goes quiet: nothing after them shows the loss. Once `find` has
    mended the way, the subscription must get the three from the publisher's history."""
    for i in range(3):
        await pub.publish("s", i)
    assert [(await events.receive()).body for _ in range(3)] == [0, 1, 2]  # type: ignore[union-attr]
    await lose()
    for i in range(3, 6):
        await pub.publish("s", i)
    # Sent, not only queued: else they may leave after `find`, and arrive as if never lost.
    await wait_until(lambda: pub.statistics().events_queued == 0, "the three sent")
    await find()
    got = [await events.receive() for _ in range(3)]
    assert [(m.topic, m.body) for m in got] == [("s", 3), ("s", 4), ("s", 5)]
    assert sub.statistics().events_repaired == 3


async def test_events_lost_with_a_connection_are_asked_for_when_the_peer_is_greeted_again() -> None:
    with trio.fail_after(20):
        async with (
            peered_nodes("pub", "sub") as (pub, sub),
            sub.subscribe("s") as events,
        ):
            deliver = events._deliver

            async def lose() -> None:  # what arrives is not delivered: as if never sent
                events._deliver = lambda message, prev=0: True  # type: ignore[method-assign]

            async def find() -> None:
                # The peer is forgotten and found again (a partition healed): greeting it
                # confirms the subscription anew, which asks for what came since its newest.
                await wait_until(lambda: sub.statistics().events_received == 6, "the lost three")
                events._deliver = deliver  # type: ignore[method-assign]
                inside.forget(sub, pub)
                await sub.connect(pub.contact)

            await lose_a_quiet_tail(pub, sub, events, lose, find)


async def test_events_lost_while_zeromq_reconnects_are_asked_for_once_it_has() -> None:
    with trio.fail_after(20):
        async with (
            peered_nodes("pub", "sub") as (pub, sub),
            sub.subscribe("s") as events,
        ):
            # The connection to the publisher's PUB breaks while the peer stays known; only
            # the connection made again can show the loss.
            subscriptions = sub._events
            (endpoint,) = [
                e for e, p in subscriptions._publishers.items() if p == bytes.fromhex(pub.id)
            ]

            async def lose() -> None:
                await subscriptions.socket.call_soon(disconnect_op(endpoint)).wait()
                await wait_until(lambda: pub._publisher.subscriptions == 0, "the publisher saw")

            async def find() -> None:
                subscriptions.socket.call_soon(connect_op(endpoint))

            await lose_a_quiet_tail(pub, sub, events, lose, find)
