"""Fuzzing a live node, open and keyed, while a legitimate pair keeps working: frames into its
inbox and datagrams into its heartbeat port, each one invalid by construction (truncated valid
frames, random bytes, well-formed msgpack of the wrong shape, value bombs). Every one must be
counted, nothing the pair sends may be lost, and memory must stay bounded.

Frames and datagrams go in chunks, each sent once the node has counted the last, so that
counting can be exact (no UDP buffer overflows) and the test stays fast. ``MESH_FUZZ_INPUTS``
sets how many of each (default 4,000; the closing figures use 100,000)."""

from __future__ import annotations

import os
import random
import socket
from typing import Any

import msgpack
import pytest
import trio
import zmq

import mesh
from mesh._batches import batch_envelope
from mesh._wire import MAX_FRAME_SIZE, Kind, pack

from .conftest import ack_all, wait_until
from .test_hostile_inbox import forged_hello, plain_sockets
from .test_members import curve_client

INPUTS = int(os.environ.get("MESH_FUZZ_INPUTS", "4000"))
# Inputs of each kind between two counts: the node reads datagrams once a beat, and the kernel
# charges each small datagram a kilobyte or more of the socket's buffer (about 200 KiB).
CHUNK = 64
TASKS = 500

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120 + INPUTS // 200)]


def valid_frames(rng: random.Random) -> list[bytes]:
    """Valid inbox frames of every shape, to cut short."""
    sender = rng.randbytes(16)
    frames = [
        pack(Kind.TASK, sender, 1, [7, "service", 10], {"image": "cat.png", "n": [1, 2, 3]}),
        pack(Kind.ACK, sender, 2, [7], None),
        pack(Kind.NACK, sender, 3, [7, "broken"], None),
        pack(Kind.HEARTBEAT, sender, 4, None, {"n": 4, "load": 1}),
        pack(Kind.SYNC, sender, 5, [9, "topic"], None),
        forged_hello([f"127.0.0.{rng.randrange(1, 255)}:9"] * 3),
    ]
    frames.append(batch_envelope(frames[:3]))
    return frames


def invalid_input(rng: random.Random, frames: list[bytes]) -> bytes:
    """One input that no node can take: each kind of invalid, in turn at random."""
    choice = rng.randrange(6)
    if choice == 0:  # a valid frame cut short
        frame = rng.choice(frames)
        return frame[: rng.randrange(1, len(frame))]
    if choice == 1:  # random bytes (an envelope starts with 0x96: these never do)
        data = bytearray(rng.randbytes(rng.randrange(0, 300)))
        if data and data[0] == 0x96:
            data[0] = 0x95
        return bytes(data)
    if choice == 2:  # well-formed msgpack of the wrong shape
        return msgpack.packb(_value(rng, 3))
    if choice == 3:  # an envelope of a version that does not exist
        return msgpack.packb(
            [rng.choice([0, 2, 255, "1", None]), 6, rng.randbytes(16), 1, None, None]
        )
    if choice == 4:  # headers that claim far more than the frame holds
        return rng.choice(
            [b"\xdd\xff\xff\xff\xff", b"\xdf\x7f\xff\xff\xff", b"\xdb\xff\xff\xff\xff"]
        )
    # nesting deeper than the protocol allows
    return b"\x96" + b"\x91" * rng.randrange(33, 2000) + b"\x90"


def _value(rng: random.Random, depth: int) -> Any:
    kind = rng.randrange(6 if depth else 4)
    if kind == 0:
        return rng.randrange(-(2**63), 2**64)
    if kind == 1:
        return rng.randbytes(rng.randrange(20)).hex()
    if kind == 2:
        return rng.random()
    if kind == 3:
        return None
    if kind == 4:
        size = rng.choice([0, 1, 2, 3, 4, 5, 7, 8])  # never the envelope's 6
        return [_value(rng, depth - 1) for _ in range(size)]
    return {str(i): _value(rng, depth - 1) for i in range(rng.randrange(4))}


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("keyed", [False, True], ids=["open", "keyed"])
async def test_fuzzed_inputs_are_all_counted_and_the_pair_loses_nothing(keyed: bool) -> None:
    rng = random.Random(f"fuzz-{keyed}")
    frames = valid_frames(rng)
    member = mesh.KeyPair.generate()
    pairs = {name: mesh.KeyPair.generate() for name in ("a", "b")}
    options: dict[str, Any] = {"discovery": "static"}
    allow = [member.public, *(pair.public for pair in pairs.values())]
    with trio.fail_after(60 + INPUTS // 100):
        async with (
            mesh.open_node("a", **options, **_keys(keyed, pairs["a"], allow)) as a,
            mesh.open_node(
                "b", seeds=[a.contact], **options, **_keys(keyed, pairs["b"], allow)
            ) as b,
            b.work("s") as tasks,
            trio.open_nursery() as nursery,
        ):
            await a.wait_for_peers(1, service="s")
            done: list[Any] = []
            nursery.start_soon(ack_all, tasks, done)

            async def push_tasks() -> None:
                for n in range(TASKS):
                    await a.push("s", n)
                    await trio.sleep(0.002)

            nursery.start_soon(push_tasks)
            before = rss_mb()
            with (
                plain_sockets(zmq.PUSH) as (push,),
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            ):
                push.setsockopt(zmq.SNDHWM, 0)
                if keyed:  # a member's key: a stranger's frames would not even be read
                    curve_client(push, member, pairs["b"].public)
                push.connect(b.endpoints.pull)
                target = ("127.0.0.1", b.record.pull_port)
                for _ in range(0, INPUTS, CHUNK):
                    counted = b.statistics().bad_frames
                    for _ in range(CHUNK):
                        push.send(invalid_input(rng, frames), zmq.NOBLOCK)
                        udp.sendto(invalid_input(rng, frames)[:1024], target)
                    await wait_until(
                        lambda counted=counted: b.statistics().bad_frames == counted + 2 * CHUNK,
                        "every input of the chunk counted",
                    )

                # A value bomb too: 16 MiB of empty arrays under one array header.
                counted = b.statistics().bad_frames
                push.send(
                    b"\xdd"
                    + (MAX_FRAME_SIZE - 5).to_bytes(4, "big")
                    + b"\x90" * (MAX_FRAME_SIZE - 5)
                )
                await wait_until(
                    lambda: b.statistics().bad_frames == counted + 1, "the bomb counted"
                )
            grown = rss_mb() - before
            await wait_until(lambda: len(done) == TASKS, "every task done", timeout=30)
            await a.wait_settled()
            assert b.id in a.peers
            assert a.peers[b.id].state is mesh.PeerState.ALIVE
            nursery.cancel_scope.cancel()
    assert sorted(done) == list(range(TASKS))
    statistics = b.statistics()
    assert statistics.tasks_received == TASKS
    assert grown < 150, f"RSS grew {grown:.0f} MB under fuzzing"
    if keyed:  # the member that sent them was banned part way: those were dropped unread
        assert statistics.senders_banned >= 1
        assert statistics.bad_frame_reasons.get("banned", 0) > 0


def _keys(keyed: bool, pair: mesh.KeyPair, allow: list[str]) -> dict[str, Any]:
    return {"key": pair, "allow": allow} if keyed else {}
