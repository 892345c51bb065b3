"""Interoperability: a program written from docs/protocol.md alone talks to a real node.

The "third party" here uses plain pyzmq and msgpack and nothing from `mesh` to build or read
frames: only the node under test is `mesh`. Its blocking sockets are polled with NOBLOCK and a short
`trio.sleep` between polls so the node's tasks keep running. Every socket binds or connects to
127.0.0.1 on ephemeral ports, is closed with linger 0, and its context is terminated.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import msgpack
import pytest
import trio
import zmq

import mesh

# -- the third party: written from docs/protocol.md (sections 3, 4 and 6) --------------------------

VERSION = 1
EVENT, BYE, HELLO, WELCOME, UPDATE, TASK, ACK, SYNC, SYNCED = 1, 3, 4, 5, 6, 7, 8, 10, 11


def envelope(kind: int, sender: bytes, seq: int, meta: list[Any] | None, body: Any) -> bytes:
    return msgpack.packb([VERSION, kind, sender, seq, meta, body], use_bin_type=True)


def open_envelope(frame: bytes) -> list[Any]:
    items = msgpack.unpackb(frame, raw=False, strict_map_key=False)
    assert type(items) is list
    assert len(items) == 6
    assert items[0] == VERSION
    return items


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


def poll(sock: zmq.Socket[Any]) -> list[bytes] | None:
    """One message if ZeroMQ has one ready, else None; never blocks."""
    try:
        return sock.recv_multipart(zmq.NOBLOCK)
    except zmq.Again:
        return None


async def receive(sock: zmq.Socket[Any]) -> list[bytes]:
    """The next message, polling without blocking trio (callers bound it with fail_after)."""
    while True:
        frames = poll(sock)
        if frames is not None:
            return frames
        await trio.sleep(0.001)  # a plain socket has no trio wake-up: poll it


async def receive_direct(pull: zmq.Socket[Any]) -> list[Any]:
    frames = await receive(pull)
    assert len(frames) == 1, "direct messages are one frame"
    return open_envelope(frames[0])


# -- tests -----------------------------------------------------------------------------------------


async def test_plain_subscriber_decodes_events(plain: ThirdParty) -> None:
    with trio.fail_after(10):
        async with mesh.open_node(name="publisher", interface="127.0.0.1") as node:
            sub = plain.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"E" + b"sensors.")
            sub.connect(node.endpoints.pub)

            # The slow-joiner gap: the node learns of the subscription some ms after connect().
            # Publish a warm-up event until the plain subscriber has seen one (bounded retries).
            warmed_up = False
            while not warmed_up:
                await node.publish("sensors.warmup", None)
                await trio.sleep(0.01)
                while (frames := poll(sub)) is not None:
                    assert frames[0] == b"Esensors.warmup"
                    warmed_up = True

            bodies = [
                {"i": i, "name": "température", "raw": bytes([i, 0, 255]), "v": [1.5, None, True]}
                for i in range(100)
            ]
            for i, body in enumerate(bodies):
                await node.publish(f"sensors.{i}", body)
                await node.publish("other.noise", i)  # not subscribed: must not arrive

            received = []
            while len(received) < len(bodies):
                frames = await receive(sub)
                assert len(frames) == 2, "published messages are [channel, envelope]"
                channel, frame = frames
                assert channel.startswith(b"Esensors.")
                if channel == b"Esensors.warmup":  # a late warm-up event
                    continue
                received.append((channel[1:].decode("utf-8"), open_envelope(frame)))

        sender = bytes.fromhex(node.id)
        seqs = []
        for i, (topic, (_version, kind, from_, seq, meta, body)) in enumerate(received):
            assert topic == f"sensors.{i}"
            assert kind == EVENT
            assert from_ == sender
            assert meta is None
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
            mesh.open_node(name="worker", interface="127.0.0.1") as node,
            node.work("resize") as tasks,
        ):
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)
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
    garbage = [
        (b"this is not an envelope", "malformed"),
        (task[:-3], "truncated"),
        (msgpack.packb([2, TASK, sender, 1, [1, "resize", 1], None], use_bin_type=True), "version"),
        (envelope(99, sender, 2, None, None), "kind"),
        (envelope(EVENT, sender, 3, None, "events are not sent to an inbox"), "kind"),
        (envelope(TASK, sender, 4, [1, "resize", 1], msgpack.ExtType(7, b"x")), "type"),
    ]
    with trio.fail_after(10):
        async with (
            mesh.open_node(name="worker", interface="127.0.0.1") as node,
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
    expected: dict[str, int] = {}
    for _, reason in garbage:
        expected[reason] = expected.get(reason, 0) + 1
    assert dict(statistics.bad_frame_reasons) == expected
    assert statistics.tasks_received == 1


async def test_plain_peer_says_hello_and_gets_acks(plain: ThirdParty) -> None:
    # The full exchange of docs/protocol.md sections 8, 9 and 11, from the third party's side.
    me = os.urandom(16)
    inbox, pull_port = plain.bind(zmq.PULL)
    _pub, pub_port = plain.bind(zmq.PUB)  # a record names a PUB port; the node connects to it
    record = {
        "id": me,
        "name": "plain-tool",
        "mesh": "default",
        "host": "127.0.0.1",
        "pub": pub_port,
        "pull": pull_port,
        "services": [],
        "v": 1,
        "from-the-future": "unknown record keys are ignored",
    }
    with trio.fail_after(10):
        async with mesh.open_node(name="worker", interface="127.0.0.1") as node:
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

                push.send(envelope(TASK, me, 2, [7, "echo", 1], ["hello", b"\x00"]), zmq.NOBLOCK)
                async with await tasks.receive() as task:
                    assert task.body == ["hello", b"\x00"]

                _, kind, sender, seq, meta, body = await receive_direct(inbox)
                assert (kind, sender, seq, meta, body) == (ACK, node_id, 2, [7], None)

            # Leaving `work` withdraws the service: an UPDATE with the node's new record.
            _, kind, sender, seq, meta, body = await receive_direct(inbox)
            assert (kind, sender, seq, meta) == (UPDATE, node_id, 3, None)
            assert body["services"] == []
        # Closing the node: a BYE to every peer's inbox, next on the same link.
        _, kind, sender, seq, meta, body = await receive_direct(inbox)
        assert (kind, sender, seq, meta, body) == (BYE, node_id, 4, None, None)


async def test_sync_probe_closes_the_slow_joiner_gap(plain: ThirdParty) -> None:
    # docs/protocol.md section 10: probe with SYNC until SYNCED arrives on the subscription's
    # own channel; from then on, a single publish is enough.
    me = os.urandom(16)
    token = 12345
    with trio.fail_after(10):
        async with mesh.open_node(name="publisher", interface="127.0.0.1") as node:
            sub = plain.socket(zmq.SUB)
            sub.setsockopt(zmq.SUBSCRIBE, b"Ealerts.")
            sub.connect(node.endpoints.pub)
            push = plain.socket(zmq.PUSH)
            push.connect(node.endpoints.pull)

            seq = 0
            synced = None
            while synced is None:
                seq += 1
                push.send(envelope(SYNC, me, seq, [token, "alerts."], None), zmq.NOBLOCK)
                with trio.move_on_after(0.05):  # resend if no answer: a retry, not a sync
                    while True:
                        channel, frame = await receive(sub)
                        items = open_envelope(frame)
                        if items[1] == SYNCED and items[4] == [token, me]:
                            synced = (channel, items)
                            break
            channel, (_, _, sender, _, _, body) = synced
            assert channel == b"Ealerts."  # the answer travels on the probed channel itself
            assert sender == bytes.fromhex(node.id)
            assert body is None

            await node.publish("alerts.fire", {"level": 3})
            while True:  # skip answers to earlier SYNCs; the event must come, without retries
                channel, frame = await receive(sub)
                items = open_envelope(frame)
                if items[1] != SYNCED:  # SYNCED shares the event channel: check the kind
                    break
    assert channel == b"Ealerts.fire"
    assert items[1] == EVENT
    assert items[5] == {"level": 3}
