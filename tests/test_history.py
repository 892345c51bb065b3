"""Event history: what a publisher keeps (pure, exact), and subscribers that join late getting
the last events, then the live ones, none missing or repeated across the seam, on real sockets
over 127.0.0.1 while the publisher keeps publishing."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel
import zmq

import mesh
from mesh._history import History, Kept
from mesh._history_file import read_events, record
from mesh._names import topic_channel
from mesh._publisher import Publisher
from mesh._ratelimit import RateLimitedLog
from mesh._wire import Envelope, Kind, event_frame, pack

from .conftest import peered_nodes

# -- what a publisher keeps, pure ---------------------------------------------------------------


def kept(history: History) -> list[int]:
    return [event.seq for event in history.query(b"E", 10**9, 0.0, 10**9)]


def test_the_oldest_go_first_past_the_count_or_the_bytes() -> None:
    history = History(max_events=3, max_bytes=1000)
    for seq in range(1, 6):
        history.add(seq, 0, b"Ea", seq, 100, float(seq))
    assert kept(history) == [3, 4, 5]
    history.add(6, 0, b"Ea", "big", 900, 6.0)  # 3 events, 1,100 bytes: the oldest two go
    assert kept(history) == [5, 6]
    assert (len(history), history.size) == (2, 1000)
    history.add(7, 0, b"Ea", "huge", 5000, 7.0)  # larger than the bound alone: kept by nobody
    assert kept(history) == []
    assert history.size == 0


def test_keeping_none() -> None:
    history = History(max_events=0, max_bytes=0)
    history.add(1, 0, b"Ea", 1, 10, 1.0)
    assert len(history) == 0
    with pytest.raises(ValueError, match="negative"):
        History(-1, 10)


def test_a_query_takes_the_last_matching_up_to_the_seam_since_a_time() -> None:
    history = History(max_events=100, max_bytes=10**6)
    for seq, channel in enumerate([b"Echat.a", b"Eother", b"Echat.b", b"Echat.a", b"Echat"], 1):
        history.add(seq, 0, channel, seq * 10, 10, 100.0 + seq)
    assert [e.seq for e in history.query(b"Echat.", 10, 0.0, 99)] == [1, 3, 4]
    assert [e.seq for e in history.query(b"Echat.", 2, 0.0, 99)] == [3, 4]
    assert [e.seq for e in history.query(b"Echat", 10, 0.0, 3)] == [1, 3]  # up to the seam
    assert [e.seq for e in history.query(b"E", 10, 103.0, 99)] == [3, 4, 5]  # since
    assert history.query(b"E", 0, 0.0, 99) == []
    assert history.query(b"Echat.a", 1, 0.0, 99) == [Kept(4, 0, b"Echat.a", 40, 10, 104.0)]


# -- late subscribers on real sockets -----------------------------------------------------------


async def test_a_late_subscriber_gets_the_last_events_then_the_live_ones_seamlessly() -> None:
    # It asks for everything the publisher has: which of its events come from history and which
    # live depends on when its subscription is live there, but together they are every one.
    before, during = 1000, 3000
    settings = mesh.Settings(history_events=10_000)
    with trio.fail_after(30):
        async with peered_nodes("publisher", "late", settings=settings) as (publisher, late):
            published = 0  # chat events published so far
            for n in range(before):
                await publisher.publish("chat.room", n)
                await publisher.publish("noise", n)  # another topic, never for this prefix
                published += 1
            received: list[tuple[int, int]] = []
            async with trio.open_nursery() as nursery:

                async def keep_publishing() -> None:
                    nonlocal published
                    for n in range(before, before + during):
                        await publisher.publish("chat.room", n)
                        published += 1
                        if n % 20 == 0:
                            await trio.lowlevel.checkpoint()  # the others' turn

                nursery.start_soon(keep_publishing)
                await trio.lowlevel.checkpoint()  # it is publishing
                called_at = published
                async with late.subscribe("chat.", history=before + during) as messages:
                    async for message in messages:
                        assert message.sender == publisher.id
                        received.append((message.seq, message.body))
                        if message.body == before + during - 1:
                            break
    seqs = [seq for seq, _ in received]
    assert seqs == sorted(set(seqs))  # in the publisher's order, none repeated
    assert [body for _, body in received] == list(range(before + during))  # none missing
    assert before <= called_at < before + during  # it joined while the publisher published


async def test_history_from_each_publisher_and_since_a_time() -> None:
    with trio.fail_after(20):
        async with peered_nodes("a", "b", "late") as (a, b, late):
            for n in range(10):
                await a.publish("t.a", n)
            await trio.sleep(0.01)  # the history's clock counts milliseconds: apart by more
            cut = time.time()
            await trio.sleep(0.01)
            for n in range(10, 20):
                await a.publish("t.a", n)
                await b.publish("t.b", n)
            async with late.subscribe("t.", history=3) as messages:
                got = [await messages.receive() for _ in range(6)]
            by_sender = {
                sender: [m.body for m in got if m.sender == sender] for sender in (a.id, b.id)
            }
            assert by_sender == {a.id: [17, 18, 19], b.id: [17, 18, 19]}
            async with late.subscribe("t.a", since=cut) as messages:
                got = [await messages.receive() for _ in range(10)]
            assert [m.body for m in got] == list(range(10, 20))


async def test_a_publisher_that_keeps_nothing_gives_only_live_events() -> None:
    settings = mesh.Settings(history_events=0)
    with trio.fail_after(20):
        async with peered_nodes("publisher", "late", settings=settings) as (publisher, late):
            await publisher.publish("t", "old")
            async with late.subscribe("t", history=10) as messages:
                await publisher.publish("t", "new")
                assert (await messages.receive()).body == "new"


def test_the_blocking_facade_subscribes_with_history() -> None:
    import mesh.blocking

    start = mesh.blocking.start
    with start("a", discovery="static", timeout=10) as a:
        with start("late", discovery="static", seeds=[a.contact], timeout=10) as late:
            late.wait_for_peers(names=["a"], timeout=10)
            for n in range(5):
                a.publish("t", n)
            with late.subscribe("t", history=2) as events:
                assert [events.receive(timeout=5).body for _ in range(2)] == [3, 4]


async def test_a_peer_asking_for_history_again_and_again_is_answered_at_a_bounded_rate(
    context: zmq.Context[Any],
) -> None:
    sent: list[tuple[bytes, list[Any]]] = []

    def send_to(peer: bytes, kind: Kind, meta: list[Any], body: Any) -> bool:
        sent.append((peer, meta))
        return True

    sock = context.socket(zmq.XPUB)
    publisher = Publisher(
        sock,
        b"\x01" * 16,
        100,
        endpoints=[],
        counts={},
        log=RateLimitedLog(logging.getLogger("test")),
        history=History(10, 10_000),
        send_to=send_to,
    )
    publisher.publish_nowait(b"Et", "kept")
    greedy, other = b"\xaa" * 16, b"\xbb" * 16
    for token in range(1, 41):
        publisher.on_history(Envelope(Kind.HISTORY, greedy, token, (token, "t", 5, 0, 0, 99), None))
    publisher.on_history(Envelope(Kind.HISTORY, other, 1, (1, "t", 5, 0, 0, 99), None))
    answered = [meta[0] for peer, meta in sent if peer == greedy]
    assert answered == list(range(1, 17))  # its burst, and no more at once
    assert [meta for peer, meta in sent if peer == other] == [[1, True]]  # others unaffected
    sock.close(linger=0)


# -- kept in a state directory ------------------------------------------------------------------


def test_a_history_file_is_read_back_up_to_a_torn_tail() -> None:
    frames = [
        event_frame(topic_channel(topic), pack(Kind.EVENT, b"\x01" * 16, seq, [0], body))
        for seq, (topic, body) in enumerate([("a", 1), ("b", {"x": 2}), ("a", 3)], 1)
    ]
    data = b"".join(record(frame, 100.0 + i) for i, frame in enumerate(frames))
    assert read_events(data) == [
        (b"Ea", 1, len(frames[0]), 100.0),
        (b"Eb", {"x": 2}, len(frames[1]), 101.0),
        (b"Ea", 3, len(frames[2]), 102.0),
    ]
    assert len(read_events(data[:-1])) == 2  # the last record cut short
    assert read_events(b"\x00\x00\x00\x03junk") == []


async def test_a_restarted_publisher_still_has_its_history_in_its_state_directory(
    tmp_path: Path,
) -> None:
    with trio.fail_after(20):
        async with mesh.open_node("first", discovery="static", state_dir=tmp_path) as first:
            for i in range(10):
                await first.publish("kept", i)
        async with mesh.open_node("again", discovery="static", state_dir=tmp_path) as again:
            await again.publish("kept", 10)
            async with mesh.open_node("late", discovery="static", seeds=[again.contact]) as late:
                await late.wait_for_peers(names=["again"], timeout=10)
                async with late.subscribe("kept", history=5) as events:
                    await again.publish("kept", 11)
                    got = [await events.receive() for _ in range(6)]
    # The last five of the history (four from before the restart), then the live one.
    assert [(m.topic, m.body) for m in got] == [("kept", i) for i in range(6, 12)]
    seqs = [m.seq for m in got]
    assert seqs == sorted(set(seqs))  # the new stream goes on after the history it kept
