"""Interoperability: a program written from docs/protocol.md alone talks to a real node.

The "third party" here uses plain pyzmq and msgpack and nothing from `mesh` to build or read
frames: only the node under test is `mesh`. Every message is one ZeroMQ frame: published frames are
``b"E" + topic + b"\\x00" + envelope`` or ``b"!" + envelope``, inbox frames the envelope alone. Its
blocking sockets are polled with NOBLOCK and a short `trio.sleep` between polls so the node's tasks
keep running. Every socket binds or connects to 127.0.0.1 on ephemeral ports, is closed with
linger 0, and its context is terminated.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import trio
import zmq

import mesh

from .conftest import wait_until

# These tests are about the node core: peers come from seeds, not mDNS (tests/test_discovery.py).
open_node = functools.partial(mesh.open_node, discovery="static")

# -- the third party: written from docs/protocol.md (sections 3, 4 and 6) --------------------------

VERSION = 1
EVENT, HEARTBEAT, BYE, HELLO, WELCOME, UPDATE = 1, 2, 3, 4, 5, 6
TASK, ACK, SYNC, SYNCED, READY = 7, 8, 10, 11, 12
BATCH = 13  # not a message: a frame holding several (docs/protocol.md section 3, "Batches")
TICKET = 20
EVENT_CHANNEL, CONTROL_CHANNEL, TICKET_CHANNEL = b"E", b"!", b"S"


def envelope(kind: int, sender: bytes, seq: int, meta: list[Any] | None, body: Any) -> bytes:
    return msgpack.packb([VERSION, kind, sender, seq, meta, body], use_bin_type=True)


def event_frame(topic: str, data: bytes) -> bytes:
    """A published EVENT or SYNCED: ``b"E" + topic + b"\\x00" + envelope``."""
    return EVENT_CHANNEL + topic.encode() + b"\x00" + data


def open_envelope(data: bytes) -> list[Any]:
    items = msgpack.unpackb(data, raw=False, strict_map_key=False)
    assert type(items) is list
    assert len(items) == 6
    assert items[0] == VERSION
    return items


def unbatch(items: list[Any]) -> list[list[Any]]:
    """The envelopes a frame carries: itself, or the items of a BATCH (same sender; its `seq` is
    its first item's)."""
    if items[1] != BATCH:
        return [items]
    _, _, sender, seq, meta, inner = items
    assert meta is None
    assert inner, "a BATCH holds one message or more"
    assert inner[0][3] == seq
    for each in inner:
        assert len(each) == 6
        assert each[0] == VERSION
        assert each[2] == sender
        assert each[1] != BATCH
    return list(inner)


def open_published(frame: bytes) -> tuple[str | None, list[Any]]:
    """Split a published frame into (topic, envelope items); the topic is None on ``!``."""
    if frame[:1] == CONTROL_CHANNEL:
        return None, open_envelope(frame[1:])
    assert frame[:1] == EVENT_CHANNEL, f"unknown channel {frame[:1]!r}"
    topic, nul, data = frame[1:].partition(b"\x00")  # a topic holds no NUL: the first one ends it
    assert nul, "an event frame has a NUL after its topic"
    return topic.decode("utf-8"), open_envelope(data)


class ThirdParty:
    """Plain pyzmq sockets in one context of their own."""

    def __init__(self) -> None:
        self.context: zmq.Context[Any] = zmq.Context()
        self.sockets: list[zmq.Socket[Any]] = []

    def socket(self, kind: int) -> zmq.Socket[Any]:
        sock = self.context.socket(kind)
        sock.linger = 0
        self.sockets.append(sock)
        return sock

    def bind(self, kind: int) -> tuple[zmq.Socket[Any], int]:
        sock = self.socket(kind)
        sock.bind("tcp://127.0.0.1:*")
        endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
        assert isinstance(endpoint, bytes)
        return sock, int(endpoint.rsplit(b":", 1)[1])

    def close(self) -> None:
        for sock in self.sockets:
            sock.close(linger=0)
        self.context.term()


@pytest.fixture
def plain() -> Iterator[ThirdParty]:
    party = ThirdParty()
    try:
        yield party
    finally:
        party.close()


def poll(sock: zmq.Socket[Any]) -> bytes | None:
    """One message if ZeroMQ has one ready, else None; never blocks."""
    try:
        frame = sock.recv(zmq.NOBLOCK)
    except zmq.Again:
        return None
    assert not sock.getsockopt(zmq.RCVMORE), "every message is one frame"
    return frame


async def receive(sock: zmq.Socket[Any]) -> bytes:
    """The next message, polling without blocking trio (callers bound it with fail_after)."""
    while True:
        frame = poll(sock)
        if frame is not None:
            return frame
        await trio.sleep(0.001)  # a plain socket has no trio wake-up: poll it


async def receive_direct(pull: zmq.Socket[Any]) -> list[Any]:
    return open_envelope(await receive(pull))


def plain_record(me: bytes, pub_port: int, pull_port: int) -> dict[str, Any]:
    return {
        "id": me,
        "name": "plain-tool",
        "mesh": "default",
        "host": "127.0.0.1",  # canonical text of the IP, as str(ipaddress.ip_address(host)) gives
        "pub": pub_port,
        "pull": pull_port,
        "services": [],
        "v": 1,
        "from-the-future": "unknown record keys are ignored",
    }


async def probe(
    sub: zmq.Socket[Any], push: zmq.Socket[Any], me: bytes, prefix: str, token: int, seq: int = 1
) -> tuple[str | None, list[Any]]:
    """docs/protocol.md section 10: SYNC (numbered from `seq` on) until a SYNCED for `token`
    arrives on `sub`; return it. Other frames (earlier answers, anything else) are dropped."""
    while True:
        push.send(envelope(SYNC, me, seq, [token, prefix], None), zmq.NOBLOCK)
        with trio.move_on_after(0.05):  # resend if no answer: a retry, not a sync
            while True:
                topic, items = open_published(await receive(sub))
                if items[1] == SYNCED and items[4] == [token, me]:
                    return topic, items
        seq += 1


# -- tests -----------------------------------------------------------------------------------------


async def test_plain_subscriber_decodes_events(plain: ThirdParty) -> None:
    with trio.fail_after(10):
        async with open_node(name="publisher", interface="127.0.0.1") as node:
            sub = plain.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"E" + b"sensors.")
            sub.connect(node.endpoints.pub)
            # A trailing NUL in the subscription matches one topic exactly: "sensors.7", not
            # "sensors.70".
            exact = plain.socket(zmq.SUB)
            exact.setsockopt(zmq.SUBSCRIBE, b"Esensors.warmup\x00")
            exact.setsockopt(zmq.SUBSCRIBE, b"Esensors.7\x00")
            exact.setsockopt(zmq.SUBSCRIBE, b"Esensors.end\x00")
            exact.connect(node.endpoints.pub)

            # The slow-joiner gap: the node learns of the subscriptions some ms after connect().
            # Publish a warm-up event until both plain subscribers have seen one (bounded retries).
            warmed_up: set[zmq.Socket[Any]] = set()
            while len(warmed_up) < 2:
                await node.publish("sensors.warmup", None)
                await trio.sleep(0.01)
                for sock in (sub, exact):
                    while (frame := poll(sock)) is not None:
                        assert frame.startswith(b"Esensors.warmup\x00")
                        warmed_up.add(sock)

            bodies = [
                {"i": i, "name": "température", "raw": bytes([i, 0, 255]), "v": [1.5, None, True]}
                for i in range(100)
            ]
            for i, body in enumerate(bodies):
                await node.publish(f"sensors.{i}", body)
                await node.publish("other.noise", i)  # not subscribed: must not arrive

            received = []
            while len(received) < len(bodies):
                frame = await receive(sub)
                assert frame.startswith(b"Esensors.")
                topic, items = open_published(frame)
                if topic == "sensors.warmup":  # a late warm-up event
                    continue
                received.append((topic, items))

            await node.publish("sensors.end", None)  # the exact subscriber's end marker
            exact_received = []
            while (topic_items := open_published(await receive(exact)))[0] != "sensors.end":
                if topic_items[0] != "sensors.warmup":
                    exact_received.append(topic_items)
            assert [(topic, items[5]) for topic, items in exact_received] == [
                ("sensors.7", bodies[7])  # and none of sensors.70 ... sensors.79
            ]

        sender = bytes.fromhex(node.id)
        seqs = []
        for i, (topic, (_version, kind, from_, seq, meta, body)) in enumerate(received):
            assert topic == f"sensors.{i}"
            assert kind == EVENT
            assert from_ == sender
            assert meta == [0]  # prev: the first event on its topic
            assert body == bodies[i]
            assert type(body["raw"]) is bytes  # bin stays bytes, str stays str
            seqs.append(seq)
        assert all(type(seq) is int and seq >= 1 for seq in seqs)
        assert seqs == sorted(set(seqs)), "seq increases along the PUB stream"
        # One PUB stream counter for every channel: each "other.noise" event took a number too.
        assert seqs[-1] - seqs[0] == 2 * (len(seqs) - 1)


async def test_plain_pusher_task_reaches_a_worker(plain: ThirdParty) -> None:
    sender = os.urandom(16)
    body = {"image": b"\x89PNG\r\n", "width": 640, "tags": ["a", "b"]}
    with trio.fail_after(10):
        async with (
            open_node(name="worker", interface="127.0.0.1") as node,
            node.work("resize") as tasks,
        ):
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)
            # An inbox frame is the envelope alone: no channel in front of it.
            push.send(envelope(TASK, sender, 1, [42, "resize", 3], body), zmq.NOBLOCK)

            task = await tasks.receive()
            assert task.body == body
            assert task.service == "resize"
            assert task.attempt == 3
            assert task.id == 42
            assert task.sender == sender.hex()
            async with task:  # done: but this sender never said HELLO, so there is no ack
                pass
            statistics = node.statistics()
    assert statistics.tasks_received == 1
    assert statistics.acks_sent == 0
    assert statistics.bad_frames == 0


async def test_garbage_in_the_inbox_is_counted_and_the_node_carries_on(
    plain: ThirdParty,
) -> None:
    sender = os.urandom(16)
    task = envelope(TASK, sender, 5, [1, "resize", 1], "after the garbage")
    not_canonical = plain_record(sender, 1, 2) | {"host": "0:0:0:0:0:0:0:1"}  # not "::1"
    garbage = [
        (b"this is not an envelope", "malformed"),
        (task[:-3], "truncated"),
        (msgpack.packb([2, TASK, sender, 1, [1, "resize", 1], None], use_bin_type=True), "version"),
        (envelope(99, sender, 2, None, None), "kind"),
        (envelope(EVENT, sender, 3, None, "events are not sent to an inbox"), "kind"),
        (envelope(TASK, sender, 4, [1, "resize", 1], msgpack.ExtType(7, b"x")), "type"),
        (envelope(ACK, sender, 5, [1], "ACK takes no body"), "malformed"),
        (envelope(BYE, sender, 6, [], None), "malformed"),  # BYE takes no meta
        # 513 characters, 1026 bytes of UTF-8: meta strings are limited in bytes.
        (envelope(TASK, sender, 7, [1, "é" * 513, 1], None), "oversized"),
        (envelope(UPDATE, sender, 8, None, not_canonical), "record"),
        (CONTROL_CHANNEL + envelope(BYE, sender, 9, None, None), "malformed"),  # a PUB frame
    ]
    with trio.fail_after(10):
        async with (
            open_node(name="worker", interface="127.0.0.1") as node,
            node.work("resize") as tasks,
        ):
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)
            for frame, _ in garbage:
                push.send(frame, zmq.NOBLOCK)
            push.send(task, zmq.NOBLOCK)

            # One connection keeps order: once the task is here, every bad frame was handled.
            received = await tasks.receive()
            assert received.body == "after the garbage"
            statistics = node.statistics()

    assert statistics.bad_frames == len(garbage)
    assert dict(statistics.bad_frame_reasons) == Counter(reason for _, reason in garbage)
    assert statistics.tasks_received == 1


async def test_multipart_and_published_kinds_in_the_inbox_do_not_stop_the_node(
    plain: ThirdParty,
) -> None:
    # The inbox takes one frame per message and direct kinds only. A program still speaking the
    # earlier two-frame format, or pushing what belongs on a PUB socket, must cost the node a
    # counted bad frame and nothing else (a two-part message once crashed the inbox task).
    sender = os.urandom(16)
    event = envelope(EVENT, sender, 1, None, "an event")
    with trio.fail_after(10):
        async with (
            open_node(name="worker", interface="127.0.0.1") as node,
            node.work("resize") as tasks,
        ):
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)

            # The old two-frame publish, [channel, envelope]: the node reads frame by frame, and
            # neither part is a valid inbox message.
            push.send_multipart([b"Eold.topic", event], zmq.NOBLOCK)
            push.send(envelope(TASK, sender, 2, [1, "resize", 1], "first"), zmq.NOBLOCK)
            first = await tasks.receive()
            assert first.body == "first"
            statistics = node.statistics()
            assert statistics.bad_frames == 2
            assert dict(statistics.bad_frame_reasons) == {"malformed": 1, "kind": 1}

            # Published-only kinds, bare and in their PUB framing.
            push.send(event, zmq.NOBLOCK)
            push.send(envelope(SYNCED, sender, 3, [1, sender], None), zmq.NOBLOCK)
            push.send(envelope(HEARTBEAT, sender, 4, None, {}), zmq.NOBLOCK)  # valid here
            push.send(event_frame("a.topic", event), zmq.NOBLOCK)
            push.send(envelope(TASK, sender, 5, [2, "resize", 1], "second"), zmq.NOBLOCK)
            second = await tasks.receive()
            assert second.body == "second"
            statistics = node.statistics()

            # ... and the node still publishes.
            sub = plain.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"Ealive")
            sub.connect(node.endpoints.pub)
            topic, items = await probe(sub, push, sender, "alive", 7, seq=6)
            assert topic == "alive"
            assert items[1] == SYNCED

    # (A HEARTBEAT is a valid inbox kind: nodes send one both ways, docs/protocol.md section 11.)
    assert statistics.bad_frames == 5
    assert dict(statistics.bad_frame_reasons) == {"malformed": 2, "kind": 3}
    assert statistics.tasks_received == 2


async def test_plain_peer_says_hello_and_gets_acks(plain: ThirdParty) -> None:
    # The full exchange of docs/protocol.md sections 8, 9 and 11, from the third party's side.
    me = os.urandom(16)
    inbox, pull_port = plain.bind(zmq.PULL)
    _pub, pub_port = plain.bind(zmq.PUB)  # a record names a PUB port; the node connects to it
    record = plain_record(me, pub_port, pull_port)
    with trio.fail_after(10):
        async with open_node(name="worker", interface="127.0.0.1") as node:
            node_id = bytes.fromhex(node.id)
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)
            async with node.work("echo") as tasks:
                push.send(
                    envelope(HELLO, me, 1, None, {"record": record, "peers": []}), zmq.NOBLOCK
                )

                _, kind, sender, seq, meta, welcome = await receive_direct(inbox)
                assert (kind, sender, seq, meta) == (WELCOME, node_id, 1, None)
                assert welcome["record"]["id"] == node_id
                assert welcome["record"]["name"] == "worker"
                assert welcome["record"]["mesh"] == "default"
                assert welcome["record"]["v"] == 1
                assert welcome["record"]["services"] == ["echo"]
                host, pull = node.address.rsplit(":", 1)
                assert (welcome["record"]["host"], welcome["record"]["pull"]) == (host, int(pull))
                assert node.endpoints.pub.endswith(f":{welcome['record']['pub']}")
                assert welcome["peers"] == [f"127.0.0.1:{pull_port}"]  # the node knows us now
                assert me.hex() in node.peers

                # READY: the node's subscriptions (none here) are live at our PUB (section 10).
                _, kind, sender, seq, meta, body = await receive_direct(inbox)
                assert (kind, sender, seq, meta, body) == (READY, node_id, 2, None, None)

                push.send(envelope(TASK, me, 2, [7, "echo", 1], ["hello", b"\x00"]), zmq.NOBLOCK)
                async with await tasks.receive() as task:
                    assert task.body == ["hello", b"\x00"]

                _, kind, sender, seq, meta, body = await receive_direct(inbox)
                assert (kind, sender, seq, meta, body) == (ACK, node_id, 3, [7], None)

            # Leaving `work` withdraws the service: an UPDATE with the node's new record.
            _, kind, sender, seq, meta, body = await receive_direct(inbox)
            assert (kind, sender, seq, meta) == (UPDATE, node_id, 4, None)
            assert body["services"] == []
        # Closing the node: a BYE to every peer's inbox, next on the same link (no gaps).
        _, kind, sender, seq, meta, body = await receive_direct(inbox)
        assert (kind, sender, seq, meta, body) == (BYE, node_id, 5, None, None)


async def test_sync_probe_closes_the_slow_joiner_gap(plain: ThirdParty) -> None:
    # docs/protocol.md section 10: probe with SYNC until SYNCED arrives on the subscription's
    # own channel; from then on, a single publish is enough.
    me = os.urandom(16)
    with trio.fail_after(10):
        async with open_node(name="publisher", interface="127.0.0.1") as node:
            sub = plain.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"Ealerts.")
            sub.setsockopt(zmq.SUBSCRIBE, CONTROL_CHANNEL)  # sent with the other, so live with it
            sub.connect(node.endpoints.pub)
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)

            topic, (_, _, sender, synced_seq, _, body) = await probe(
                sub, push, me, "alerts.", 12345
            )
            assert topic == "alerts."  # the answer travels on the probed channel itself
            assert sender == bytes.fromhex(node.id)
            assert body is None

            await node.publish("alerts.fire", {"level": 3})
            while True:  # skip answers to earlier SYNCs; the event must come, without retries
                topic, items = open_published(await receive(sub))
                if items[1] != SYNCED:  # SYNCED shares the event channel: check the kind
                    break
            assert topic == "alerts.fire"
            assert items[1] == EVENT
            assert items[3] > synced_seq
            assert items[5] == {"level": 3}
            event_seq = items[3]

        # Closing: BYE published on the control channel, b"!" + envelope, next on the PUB stream
        # (after heartbeats, which share that channel).
        while True:
            frame = await receive(sub)
            if frame[:1] == CONTROL_CHANNEL and open_published(frame)[1][1] == BYE:
                break
    topic, (_, kind, sender, seq, meta, body) = open_published(frame)
    assert topic is None
    assert (kind, sender, meta, body) == (BYE, bytes.fromhex(node.id), None, None)
    assert seq > event_seq


async def test_ticket_probe_is_answered_on_the_ticket_channel_alone(plain: ThirdParty) -> None:
    # docs/protocol.md section 10: subscribe the event channels, then a ticket channel; a TICKET
    # is answered there, so it proves the event channels live and reaches no other subscriber.
    me, ticket = os.urandom(16), os.urandom(8)
    with trio.fail_after(10):
        async with open_node(name="publisher", interface="127.0.0.1") as node:
            sub = plain.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"Ealerts.")
            sub.setsockopt(zmq.SUBSCRIBE, TICKET_CHANNEL + ticket)
            sub.connect(node.endpoints.pub)
            other = plain.socket(zmq.SUB)  # a subscriber of the same prefix, and of all events
            other.setsockopt(zmq.SUBSCRIBE, b"Ealerts.")
            other.setsockopt(zmq.SUBSCRIBE, b"E")
            other.connect(node.endpoints.pub)
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)
            seq = 0
            frame = None
            while frame is None:
                seq += 1
                push.send(envelope(TICKET, me, seq, [77, ticket], None), zmq.NOBLOCK)
                with trio.move_on_after(0.05):  # resend if no answer: a retry, not a sync
                    frame = await receive(sub)
            assert frame[:9] == TICKET_CHANNEL + ticket  # b"S" + ticket + envelope, no NUL
            _, kind, sender, synced_seq, meta, body = open_envelope(frame[9:])
            assert (kind, sender, meta, body) == (SYNCED, bytes.fromhex(node.id), [77, me], None)

            await node.publish("alerts.fire", {"level": 3})
            while True:  # skip answers to earlier TICKETs
                frame = await receive(sub)
                if frame[:1] == EVENT_CHANNEL:
                    break
            topic, items = open_published(frame)
            assert (topic, items[1], items[5]) == ("alerts.fire", EVENT, {"level": 3})
            assert items[3] > synced_seq
            # The other subscriber got the event, and none of the answers.
            received = [await receive(other)]
            while (more := poll(other)) is not None:
                received.append(more)
            assert [open_published(each)[1][1] for each in received] == [EVENT]


async def join_taking_tickets(
    plain: ThirdParty,
    node: mesh.Node,
    inbox: zmq.Socket[Any],
    me: bytes,
    pub_port: int,
    pull_port: int,
) -> None:
    """Join `node` as a third-party peer whose HELLO says it answers TICKET (§8)."""
    hello = {"record": plain_record(me, pub_port, pull_port), "peers": [], "tickets": True}
    push = plain.socket(zmq.PUSH)
    push.connect(node.endpoints.pull)
    push.send(envelope(HELLO, me, 1, None, hello), zmq.NOBLOCK)
    assert (await receive_direct(inbox))[1] == WELCOME


def answer_ticket(pub: zmq.Socket[Any], me: bytes, seq: int, meta: list[Any], to: bytes) -> None:
    """Publish the SYNCED that answers TICKET `meta` from `to`, on its ticket channel (§10)."""
    token, ticket = meta
    data = envelope(SYNCED, me, seq, [token, to], None)
    pub.send(TICKET_CHANNEL + ticket + data, zmq.NOBLOCK)


async def test_a_peer_that_takes_tickets_is_probed_with_them(plain: ThirdParty) -> None:
    # A peer whose HELLO says "tickets": true gets TICKET, not SYNC, and its answer on the
    # node's ticket channel makes the subscription live there.
    me = os.urandom(16)
    inbox, pull_port = plain.bind(zmq.PULL)
    pub, pub_port = plain.bind(zmq.PUB)
    probes: list[int] = []
    responder = trio.CancelScope()

    async def answer_probes(node_id: bytes) -> None:
        seq = 0
        with responder:
            while True:
                _, kind, sender, _, meta, _ = await receive_direct(inbox)
                if kind in (SYNC, TICKET) and sender == node_id:
                    probes.append(kind)
                    seq += 1
                    if kind == TICKET:
                        answer_ticket(pub, me, seq, meta, sender)

    with trio.fail_after(10):
        async with open_node(name="subscriber", interface="127.0.0.1") as node:
            await join_taking_tickets(plain, node, inbox, me, pub_port, pull_port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_probes, bytes.fromhex(node.id))
                async with node.subscribe("weather.") as subscription:
                    responder.cancel()
                    pub.send(event_frame("weather.oslo", envelope(EVENT, me, 99, None, 1)))
                    message = await subscription.receive()
    assert probes
    assert set(probes) == {TICKET}
    assert (message.topic, message.sender) == ("weather.oslo", me.hex())


async def test_each_new_event_channel_gets_a_ticket_subscribed_after_it(plain: ThirdParty) -> None:
    # A ticket proves the event channels subscribed before it: the node subscribes a new one
    # after each new event channel, probes with the newest, and keeps the last two.
    me = os.urandom(16)
    inbox, pull_port = plain.bind(zmq.PULL)
    xpub = plain.socket(zmq.XPUB)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscription message, in the order it came
    xpub.bind("tcp://127.0.0.1:*")
    pub_port = int(xpub.getsockopt(zmq.LAST_ENDPOINT).rsplit(b":", 1)[1])
    seen: list[bytes] = []  # subscription messages, in order
    tickets_used: list[bytes] = []
    responder = trio.CancelScope()

    async def answer_tickets(node_id: bytes) -> None:
        seq = 0
        with responder:
            while True:
                while (notice := poll(xpub)) is not None:
                    seen.append(notice)
                while (frame := poll(inbox)) is not None:
                    _, kind, sender, _, meta, _ = open_envelope(frame)
                    if kind == TICKET and sender == node_id:
                        tickets_used.append(meta[1])
                        seq += 1
                        answer_ticket(xpub, me, seq, meta, sender)
                await trio.sleep(0.001)

    with trio.fail_after(10):
        async with open_node(name="subscriber", interface="127.0.0.1") as node:
            await join_taking_tickets(plain, node, inbox, me, pub_port, pull_port)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_tickets, bytes.fromhex(node.id))
                async with node.subscribe("x."):
                    used_by_x = len(tickets_used)
                    async with node.subscribe("y."):
                        used_by_y = len(tickets_used)
                async with node.subscribe("z."):
                    pass
                await wait_until(lambda: b"\x00Ez." in seen, "the last unsubscription")
                responder.cancel()
    subscribed = [n[1:] for n in seen if n[:1] == b"\x01" and n != b"\x01!"]  # (control SUB's)
    tickets = [n for n in subscribed if n[:1] == TICKET_CHANNEL]
    assert len(tickets) == 3
    assert len(set(tickets)) == 3
    # Each event channel, then a ticket: the ticket comes after every channel it proves.
    assert subscribed == [b"Ex.", tickets[0], b"Ey.", tickets[1], b"Ez.", tickets[2]]
    # Each subscription was probed with the ticket subscribed after its channel.
    assert {TICKET_CHANNEL + t for t in tickets_used[:used_by_x]} == {tickets[0]}
    assert {TICKET_CHANNEL + t for t in tickets_used[used_by_x:used_by_y]} == {tickets[1]}
    assert {TICKET_CHANNEL + t for t in tickets_used[used_by_y:]} == {tickets[2]}
    # Two kept: the first went when the third came.
    assert b"\x00" + tickets[0] in seen
    assert b"\x00" + tickets[1] not in seen


async def test_plain_publisher_peer_is_heard_and_its_garbage_counted(plain: ThirdParty) -> None:
    # The third party as a publishing peer: it answers the node's subscription probe, publishes
    # events the node delivers, and leaves with a BYE on the control channel. Bad frames on its
    # PUB stream are counted by the node, which carries on.
    me = os.urandom(16)
    inbox, pull_port = plain.bind(zmq.PULL)
    pub, pub_port = plain.bind(zmq.PUB)
    pub_seq = 0

    def publish(topic: str | None, kind: int, meta: list[Any] | None, body: Any) -> int:
        """Publish on channel E+topic, or on ! when `topic` is None; return the seq used."""
        nonlocal pub_seq
        pub_seq += 1
        data = envelope(kind, me, pub_seq, meta, body)
        pub.send(CONTROL_CHANNEL + data if topic is None else event_frame(topic, data), zmq.NOBLOCK)
        return pub_seq

    responder = trio.CancelScope()

    async def answer_probes(node_id: bytes) -> None:
        with responder:
            while True:
                _, kind, sender, _, meta, _ = await receive_direct(inbox)
                if kind == SYNC and sender == node_id:
                    token, prefix = meta
                    publish(prefix, SYNCED, [token, sender], None)

    garbage = [
        (b"Eno end of topic", "truncated"),
        (b"E" + b"t" * 1025 + b"\x00" + envelope(EVENT, me, 1, None, 1), "oversized"),
        (b"E\xff\x00" + envelope(EVENT, me, 1, None, 1), "malformed"),  # topic not UTF-8
        (event_frame("x", envelope(TASK, me, 1, [1, "s", 1], None)), "kind"),
        (event_frame("x", envelope(SYNCED, me, 1, [1, me], "a body")), "malformed"),
        (CONTROL_CHANNEL, "truncated"),
        (CONTROL_CHANNEL + envelope(EVENT, me, 1, None, 1), "kind"),
        (CONTROL_CHANNEL + envelope(HEARTBEAT, me, 1, None, []), "malformed"),  # not a map
    ]
    # The earlier two-frame format: SUB filters on the first part, and the node reads each part
    # as a frame of its own: b"Eweather" has no NUL, the bare envelope no channel.
    two_frames = [b"Eweather", envelope(EVENT, me, 1, None, 1)]
    expected = Counter(reason for _, reason in garbage) + Counter(["truncated", "malformed"])

    record = plain_record(me, pub_port, pull_port)
    with trio.fail_after(10):
        async with open_node(name="subscriber", interface="127.0.0.1") as node:
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)
            push.send(envelope(HELLO, me, 1, None, {"record": record, "peers": []}), zmq.NOBLOCK)
            assert (await receive_direct(inbox))[1] == WELCOME  # the node connects to our PUB
            async with trio.open_nursery() as nursery:
                nursery.start_soon(answer_probes, bytes.fromhex(node.id))
                # Entering waits until this peer's SYNCED arrived on the channel b"E".
                async with node.subscribe("") as subscription:
                    responder.cancel()
                    first = publish("weather.oslo", EVENT, None, {"c": -3})
                    for frame, _ in garbage:
                        pub.send(frame, zmq.NOBLOCK)
                    pub.send_multipart(two_frames, zmq.NOBLOCK)
                    publish(None, HEARTBEAT, None, {})  # valid, and ignored
                    last = publish("weather.rome", EVENT, None, {"c": 21})
                    messages = [await subscription.receive(), await subscription.receive()]
                    publish(None, BYE, None, None)
                    # One connection keeps order: once the BYE has made the node forget this
                    # peer, every frame before it was handled. (A node signals no departure.)
                    await wait_until(lambda: me.hex() not in node.peers, "the node forgot me")
                    statistics = node.statistics()

    assert [tuple(message) for message in messages] == [
        ("weather.oslo", {"c": -3}, me.hex(), first),
        ("weather.rome", {"c": 21}, me.hex(), last),
    ]
    assert statistics.events_received == 2
    assert statistics.bad_frames == sum(expected.values())
    assert dict(statistics.bad_frame_reasons) == expected


async def test_plain_subscriber_unpacks_a_burst_of_events_sent_as_batches(
    plain: ThirdParty,
) -> None:
    # docs/protocol.md section 3, "Batches": events of one topic published in a burst share
    # frames; each frame still starts with the channel of their topic, so prefix filtering holds.
    with trio.fail_after(10):
        async with open_node(name="publisher", interface="127.0.0.1") as node:
            one = plain.socket(zmq.SUB)
            one.setsockopt(zmq.SUBSCRIBE, b"Esensors.1\x00")  # exactly "sensors.1"
            one.connect(node.endpoints.pub)
            two = plain.socket(zmq.SUB)
            two.setsockopt(zmq.SUBSCRIBE, b"Esensors.2")  # "sensors.2", "sensors.20", ...
            two.connect(node.endpoints.pub)
            warmed_up: set[zmq.Socket[Any]] = set()
            while len(warmed_up) < 2:  # the slow-joiner gap (bounded by fail_after)
                await node.publish("sensors.1", "warm-up")
                await node.publish("sensors.2", "warm-up")
                await trio.sleep(0.01)
                for sock in (one, two):
                    while poll(sock) is not None:
                        warmed_up.add(sock)

            for i in range(200):
                await node.publish("sensors.1", i)
            for i in range(50):
                await node.publish("sensors.20", i)
            await node.publish("sensors.2", "end")

            async def collect(sock: zmq.Socket[Any], count: int) -> tuple[list[Any], int]:
                envelopes: list[tuple[str | None, list[Any]]] = []
                frames = 0
                while len(envelopes) < count:
                    topic, items = open_published(await receive(sock))
                    frames += 1
                    envelopes += [(topic, each) for each in unbatch(items)]
                return [e for e in envelopes if e[1][5] != "warm-up"], frames

            first, frames_one = await collect(one, 200)
            while len(first) < 200:  # warm-ups were dropped: read on
                more, _ = await collect(one, 200 - len(first))
                first += more
            second: list[Any] = []
            while not second or second[-1][1][5] != "end":
                more, _ = await collect(two, 1)
                second += more

    assert [(topic, items[1], items[5]) for topic, items in first] == [
        ("sensors.1", EVENT, i) for i in range(200)
    ]
    seqs = [items[3] for _, items in first]
    assert seqs == list(range(seqs[0], seqs[0] + 200))  # one stream, nothing in between
    assert frames_one < 200, "a burst of one topic shares frames"
    assert [(topic, items[5]) for topic, items in second] == [
        *(("sensors.20", i) for i in range(50)),
        ("sensors.2", "end"),
    ]


@pytest.mark.parametrize("takes_batches", [True, False], ids=["batch-peer", "plain-peer"])
async def test_a_plain_peer_pushes_a_batch_and_gets_acks_as_its_hello_asked(
    plain: ThirdParty, takes_batches: bool
) -> None:
    # A node takes BATCH frames in its inbox from anyone, and sends them only to peers whose
    # HELLO says "batch": true (docs/protocol.md sections 3 and 8).
    me = os.urandom(16)
    inbox, pull_port = plain.bind(zmq.PULL)
    _pub, pub_port = plain.bind(zmq.PUB)
    hello: dict[str, Any] = {"record": plain_record(me, pub_port, pull_port), "peers": []}
    if takes_batches:
        hello["batch"] = True
    with trio.fail_after(10):
        async with open_node(name="worker", interface="127.0.0.1") as node:
            node_id = bytes.fromhex(node.id)
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)
            async with node.work("echo") as tasks:
                push.send(envelope(HELLO, me, 1, None, hello), zmq.NOBLOCK)
                # (WELCOME and READY may share a frame too, if the node queued them while its
                # connection to our inbox was coming up.)
                received = unbatch(await receive_direct(inbox))
                if len(received) == 1:
                    received += unbatch(await receive_direct(inbox))
                (_, kind, _, _, _, welcome), (_, kind_after, _, seq, _, _) = received
                assert kind == WELCOME
                assert welcome["batch"] is True  # the node takes batches
                assert (kind_after, seq) == (READY, 2)

                # 20 tasks in one frame: [1, 13, sender, seq of the first, nil, [envelope, ...]]
                messages = [[1, TASK, me, 2 + i, [i, "echo", 1], {"n": i}] for i in range(20)]
                push.send(msgpack.packb([1, BATCH, me, 2, None, messages]), zmq.NOBLOCK)
                bodies = []
                for _ in range(20):  # the tasks are all buffered: no yield between the acks
                    task = await tasks.receive()
                    bodies.append(task.body)
                    async with task:
                        pass
                assert bodies == [{"n": i} for i in range(20)]

                acks: list[list[Any]] = []
                frames = []
                while len(acks) < 20:
                    frames.append(open_envelope(await receive(inbox)))
                    acks += unbatch(frames[-1])
        assert [(a[1], a[2], a[3], a[4], a[5]) for a in acks] == [
            (ACK, node_id, 3 + i, [i], None) for i in range(20)
        ]
        if takes_batches:
            assert len(frames) < 20
            assert any(frame[1] == BATCH for frame in frames)
        else:
            assert len(frames) == 20
            assert all(frame[1] == ACK for frame in frames)
        assert node.statistics().bad_frames == 0


async def test_a_goodbye_on_the_pub_does_not_overtake_acks_still_on_their_way(
    plain: ThirdParty,
) -> None:
    """A leaving worker's BYE on its PUB can be read before the acks it sent just before on
    the inbox connection. The sender must not take those tasks back at once (docs/protocol.md
    section 11): the late ack still counts, and the task is not sent again."""
    me = os.urandom(16)
    inbox, pull_port = plain.bind(zmq.PULL)
    pub, pub_port = plain.bind(zmq.PUB)
    record = {**plain_record(me, pub_port, pull_port), "services": ["job"]}
    with trio.fail_after(10):
        async with open_node(name="producer", interface="127.0.0.1") as node:
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)
            push.send(envelope(HELLO, me, 1, None, {"record": record, "peers": []}), zmq.NOBLOCK)
            kinds = []
            while READY not in kinds:  # the node's SUBs are connected to our PUB
                kinds.append((await receive_direct(inbox))[1])
            await node.push("job", "work")
            while (task := await receive_direct(inbox))[1] != TASK:
                pass
            task_id = task[4][0]
            pub.send(CONTROL_CHANNEL + envelope(BYE, me, 1, None, None))
            await trio.sleep(0.05)  # the order under test: the BYE is read before the ACK
            push.send(envelope(ACK, me, 2, [task_id], None), zmq.NOBLOCK)
            await node.wait_settled()
            stats = node.statistics()
            assert (stats.tasks_acked, stats.tasks_redelivered) == (1, 0)
            # It leaves after a grace period without an inbox BYE.
            await wait_until(lambda: me.hex() not in node.peers, "the node forgot me", timeout=1)
