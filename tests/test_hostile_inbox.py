"""Nodes against a stranger that writes to their inbox and heartbeat port with plain pyzmq,
msgpack and `socket`, on 127.0.0.1. What a frame can make a node do is bounded: the node stays
up, its own peers keep working, and what the stranger costs it is a few sockets and some counted
bad frames.

Network rule: the addresses a forged HELLO lists are on 127.0.0.0/8 at port 9 (discard), where
nothing listens: every connection attempt stays on the loopback device and is refused.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

import trio
import zmq

import mesh
from discovery import PeerRecord
from mesh._hello import MAX_PEERS_LISTED, Hello
from mesh._introductions import TRIED_AT_ONCE
from mesh._limits import STRANGER_LINKS
from mesh._membership import JOIN_BURST, JOIN_RATE
from mesh._publisher import MAX_SUBSCRIPTIONS
from mesh._wire import MAX_UINT64, Kind, decode_inbox_many, pack

from . import inside
from .conftest import ack_all, new_mesh_env, peered_nodes, wait_until

FINISH = 15.0  # seconds: a child process that is told to end ends


@contextmanager
def plain_sockets(*kinds: int) -> Iterator[list[zmq.Socket[Any]]]:
    """Sockets of `kinds` in a ZeroMQ context of their own, as a stranger's program has them
    (no linger); closed, and the context terminated, on exit."""
    context = zmq.Context()
    sockets = [context.socket(kind) for kind in kinds]
    try:
        for sock in sockets:
            sock.setsockopt(zmq.LINGER, 0)
        yield sockets
    finally:
        for sock in sockets:
            sock.close()
        context.term()


@asynccontextmanager
async def node_process(
    args: list[str], env: dict[str, str], *, stderr: int = subprocess.DEVNULL
) -> AsyncIterator[trio.Process]:
    """`python ARGS` (a node: `-m mesh._cli run ...`) in a child process; killed, by its pid, at
    the end if it is still running."""
    child = await trio.lowlevel.open_process(
        [sys.executable, *args],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )
    try:
        yield child
    finally:
        if child.returncode is None:
            child.kill()
        with trio.CancelScope(shield=True), trio.fail_after(FINISH):
            await child.wait()


def forged_hello(listing: list[str] = [], mesh: str = "default", port: int = 9) -> bytes:  # noqa: B006
    """A HELLO from a node that exists nowhere (its inbox at 127.0.0.1:`port`, where nothing
    listens), listing `listing` as its peers."""
    stranger = os.urandom(16)
    record = PeerRecord(stranger, "stranger", mesh, "127.0.0.1", port, port)
    return pack(Kind.HELLO, stranger, 1, None, Hello(record, tuple(listing), batch=False).to_wire())


async def test_a_hello_listing_thousands_of_addresses_is_tried_a_few_at_a_time() -> None:
    listing = [f"127.77.{i // 256}.{i % 256}:9" for i in range(MAX_PEERS_LISTED)]
    settings = mesh.Settings(connect_timeout=0.3)
    with plain_sockets(zmq.PUSH) as (push,):
        with trio.fail_after(20):
            async with peered_nodes(settings=settings) as (a, b), b.work("s") as tasks:
                await a.wait_for_peers(1, service="s")
                push.connect(f"tcp://{a.address}")
                push.send(forged_hello(listing))
                await wait_until(
                    lambda: any(address in listing for address in inside.links(a)),
                    "a tries the addresses listed",
                )
                tried: set[str] = set()
                # Over four connect timeouts: a few links at a time, each closed unanswered.
                deadline = trio.current_time() + 4 * settings.connect_timeout
                while trio.current_time() < deadline:
                    heard = {address for address in inside.links(a) if address in listing}
                    assert len(heard) <= TRIED_AT_ONCE
                    tried |= heard
                    await trio.sleep(0.02)
                assert len(tried) > TRIED_AT_ONCE  # the first were given up, the next tried
                assert len(tried) < len(listing) // 4
                # The node and its peer are unharmed: a task goes and is acked.
                await a.push("s", "still working")
                async with await tasks.receive() as task:
                    assert task.body == "still working"
                await a.wait_settled()
                assert b.id in a.peers


async def test_a_forged_beat_number_far_ahead_does_not_silence_the_real_ones() -> None:
    # One datagram under a's id, numbered 2**64 - 1, before a's next real beat: taken, it would
    # make every real beat of a's look like an old copy, and b would declare a dead.
    settings = mesh.Settings(detector=mesh.DetectorSettings(heartbeat_interval=0.1))
    with trio.fail_after(10):
        async with peered_nodes(settings=settings) as (a, b):
            await wait_until(lambda: bytes.fromhex(a.id) in inside.beats(b), "b takes a's beats")
            alive_since = b.peers[a.id].since
            forged = pack(Kind.HEARTBEAT, bytes.fromhex(a.id), 1, None, {"n": MAX_UINT64})
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
                plain.sendto(forged, ("127.0.0.1", b.record.pull_port))
            await wait_until(
                lambda: b.statistics().bad_frame_reasons.get("jump") == 1, "b refuses the jump"
            )
            beats = inside.beats_sent(a)
            await wait_until(lambda: inside.beats_sent(a) >= beats + 10, "ten more beats of a's")
            # Still alive, and never anything else meanwhile.
            assert b.peers[a.id].state is mesh.PeerState.ALIVE
            assert b.peers[a.id].since == alive_since


async def test_a_burst_of_costly_frames_does_not_starve_the_heartbeats() -> None:
    # Each frame is 1 MiB of one-byte empty arrays, refused only after its values are counted to
    # the limit: some 45 ms of work. Sixty in a burst are seconds of work for the node in the
    # child process, done in turns: its heartbeats keep going out meanwhile, so b, here, never
    # declares it dead. (b must be in another process: a stall of its own is forgiven.)
    frame = pack(Kind.TASK, os.urandom(16), 1, [1, "s", 1], None)[:-1]  # the body goes last
    frame += b"\xdd" + (1 << 20).to_bytes(4, "big") + b"\x90" * (1 << 20)
    env = new_mesh_env()
    with plain_sockets(zmq.PUSH) as (push,), trio.fail_after(40):
        async with (
            mesh.open_node("b", mesh=env["MESH_NAME"], discovery="static") as b,
            node_process(["-m", "mesh._cli", "run", "--name", "a", "--seed", b.address], env),
        ):
            (a,) = await b.wait_for_peers(names=["a"], timeout=15)
            async with b.watch_peers() as changes:
                push.connect(f"tcp://{a.record.address}")
                for _ in range(60):
                    push.send(frame)
                # About 60 x 45 ms of work for a: watch it for longer than that.
                with trio.move_on_after(5):
                    async for change in changes:
                        if isinstance(change, mesh.PeerStateChanged):
                            assert change.peer.state is not mesh.PeerState.DEAD, change
            assert b.peers[a.id].state is mesh.PeerState.ALIVE


async def test_a_hello_flood_crowds_out_only_nodes_that_never_said_ready() -> None:
    # Each forged HELLO comes from a new id at a port of its own, and nothing follows it up. A
    # node that holds all the peers it may drops the oldest that has not said READY to take the
    # next: the strangers crowd each other out, never a member, and a member that comes later
    # gets in.
    settings = mesh.Settings(max_peers=4)
    with plain_sockets(zmq.PUSH) as (push,):
        with trio.fail_after(20):
            async with peered_nodes(settings=settings) as (a, b), b.work("s") as tasks:
                push.connect(f"tcp://{a.address}")
                for port in range(20):
                    push.send(forged_hello(port=10_000 + port))
                await wait_until(
                    lambda: sum(peer.name == "stranger" for peer in a.peers.values()) == 3,
                    "the strangers fill a",
                )
                await trio.sleep(0.2)  # the rest of the flood
                assert b.id in a.peers
                assert len(inside.links(a)) <= 4 + STRANGER_LINKS
                async with mesh.open_node(
                    "c", settings=settings, discovery="static", seeds=[a.address]
                ) as c:
                    await c.wait_for_peers(names=["a"])
                    await a.wait_for_peers(names=["b", "c"])
                    assert a.statistics().peers_refused == 0
                await a.push("s", "still working")
                async with await tasks.receive() as task:
                    assert task.body == "still working"


async def test_a_node_full_of_members_refuses_the_next() -> None:
    settings = mesh.Settings(max_peers=2)
    with trio.fail_after(20):
        async with peered_nodes("a", "b", "c", settings=settings) as (a, _, _):
            async with mesh.open_node("d", discovery="static", seeds=[a.address]) as d:
                await wait_until(lambda: a.statistics().peers_refused >= 1, "a refuses d")
                assert d.id not in a.peers
                assert sorted(peer.name for peer in a.peers.values()) == ["b", "c"]


# A node in a child process whose file descriptors are limited, soft and hard, to 256: it must
# refuse peers before it runs out, not die or hang.
LIMITED_RUN = """
import resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from mesh._cli import main
sys.exit(main(sys.argv[1:]))
"""


async def test_a_node_short_of_file_descriptors_refuses_peers_and_stays_up() -> None:
    # At 256 descriptors a node used to die between 30 and 40 real peers (about 9 descriptors
    # each), and crashed or hung under a hundred forged ones. Now it holds seven: the strangers
    # crowd each other out.
    env = new_mesh_env()
    with plain_sockets(zmq.PUSH) as (push,), trio.fail_after(40):
        async with mesh.open_node("b", mesh=env["MESH_NAME"], discovery="static") as b:
            command = ["-c", LIMITED_RUN, "run", "-v", "--name", "a", "--seed", b.address]
            async with node_process(command, env, stderr=subprocess.PIPE) as child:
                (a,) = await b.wait_for_peers(names=["a"], timeout=15)
                push.connect(f"tcp://{a.record.address}")
                # Forged peers cost less than real ones (nothing answers their links): it takes
                # a hundred of them to run a node out of 256 descriptors.
                for port in range(100):
                    push.send(forged_hello(mesh=env["MESH_NAME"], port=10_000 + port))
                await trio.sleep(2)  # ample for a hundred HELLOs on loopback
                assert child.returncode is None, "the node died"
                await trio.sleep(1)  # a full node keeps beating: b still has it alive
                assert child.returncode is None, "the node died"
                assert b.peers[a.id].state is mesh.PeerState.ALIVE
                child.send_signal(signal.SIGTERM)
                assert child.stderr is not None
                with trio.fail_after(FINISH):
                    await child.wait()
                    stderr = await child.stderr.receive_some(1 << 20)
                assert child.returncode == 0
                assert b"stranger left: it had not said READY" in stderr


async def forge_beats_until_dead(
    a: mesh.Node,
    b: mesh.Node,
    changes: mesh.PeerWatch,
    source: str,
    suffix: Callable[[], bytes] = bytes,
) -> None:
    """Silence `a`'s heartbeats, then send `b` heartbeat datagrams under `a`'s id from `source`,
    numbered on from the last `b` heard, each with `suffix()` after it, until `b` (watched
    through `changes`) declares `a` dead."""
    a_id = bytes.fromhex(a.id)
    await wait_until(lambda: a_id in inside.beats(b), "b takes a's beats")
    inside.silence_heartbeats(a)
    number = inside.beats(b)[a_id].heard
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as forger:
        forger.bind((source, 0))
        async with trio.open_nursery() as nursery:

            async def forge() -> None:
                for n in range(number + 1, number + 1000):
                    beat = pack(Kind.HEARTBEAT, a_id, n, None, {"n": n})
                    forger.sendto(beat + suffix(), ("127.0.0.1", b.record.pull_port))
                    await trio.sleep(0.02)

            nursery.start_soon(forge)
            async for change in changes:
                if (
                    isinstance(change, mesh.PeerStateChanged)
                    and change.peer.id == a.id
                    and change.peer.state is mesh.PeerState.DEAD
                ):
                    break
            nursery.cancel_scope.cancel()


async def test_forged_datagrams_from_another_host_do_not_keep_a_silent_peer_alive() -> None:
    # a falls silent, as a killed node whose connections the kernel has not closed. A stranger
    # sends b heartbeat datagrams under a's id, numbered on, from 127.0.0.2: they come from a
    # host that is not a's, so they count for nothing, and b declares a dead as it would have.
    with trio.fail_after(20):
        async with peered_nodes() as (a, b), b.watch_peers() as changes:
            await forge_beats_until_dead(a, b, changes, "127.0.0.2")
            assert b.statistics().bad_frame_reasons.get("source", 0) > 10


async def test_a_sender_that_ignores_the_credit_gets_its_extra_tasks_nacked() -> None:
    # A stranger joins (its forged HELLO names an inbox this test reads), then sends 1,050
    # tasks to a worker that gives a credit of 2: the worker holds at most 1,000 from one sender
    # (ten times the credit, at least 1,000) and nacks the rest, so a sender that ignores the
    # credit cannot fill the worker's memory.
    settings = mesh.Settings(prefetch=2)
    stranger = os.urandom(16)
    with plain_sockets(zmq.PUSH, zmq.PULL) as (push, inbox):
        inbox_port = inbox.bind_to_random_port("tcp://127.0.0.1")
        record = PeerRecord(stranger, "stranger", "default", "127.0.0.1", 9, inbox_port)
        with trio.fail_after(20):
            async with (
                mesh.open_node("b", settings=settings, discovery="static") as b,
                b.work("s"),
            ):
                push.connect(f"tcp://{b.address}")
                push.send(pack(Kind.HELLO, stranger, 1, None, Hello(record, ()).to_wire()))
                await wait_until(lambda: stranger.hex() in b.peers, "b takes the stranger")
                for task_id in range(1, 1051):
                    push.send(pack(Kind.TASK, stranger, 1 + task_id, [task_id, "s", 1], None))
                nacked: list[int] = []
                while len(nacked) < 50:
                    try:
                        frame = inbox.recv(zmq.NOBLOCK)
                    except zmq.Again:
                        await trio.sleep(0.01)
                        continue
                    for envelope in decode_inbox_many(frame):
                        if envelope.kind is Kind.NACK:
                            assert envelope.meta is not None
                            nacked.append(envelope.meta[0])
                assert nacked == list(range(1001, 1051))
                assert b.statistics().tasks_received == 1050


async def test_a_hello_flood_from_new_ids_is_taken_at_a_bounded_rate() -> None:
    # Two thousand HELLOs from new ids, as fast as one socket sends them, while a sends b tasks.
    # New peers are taken at most JOIN_BURST at once and JOIN_RATE a second: the rest are
    # refused and counted, and not one task is lost.
    with plain_sockets(zmq.PUSH) as (push,):
        with trio.fail_after(30):
            async with peered_nodes() as (a, b), b.work("s") as tasks:
                push.connect(f"tcp://{a.address}")
                started = trio.current_time()
                for port in range(2000):
                    push.send(forged_hello(port=10_000 + port))
                done: list[int] = []
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ack_all, tasks, done)
                    for i in range(100):
                        await a.push("s", i)
                    await a.wait_settled()
                    # Each HELLO either made a peer or was refused (none is crowded out: the
                    # node is far from full, and a forged peer is forgotten only after 30 s).
                    await wait_until(
                        lambda: a.statistics().peers_refused + len(a.peers) - 1 == 2000,
                        "a takes in every HELLO",
                        timeout=20,
                    )
                    nursery.cancel_scope.cancel()
                elapsed = trio.current_time() - started
                assert sorted(done) == list(range(100))
                assert a.statistics().tasks_acked == 100
                assert len(a.peers) <= JOIN_BURST + JOIN_RATE * elapsed + 1  # b included
                assert a.statistics().peers_refused > 0


async def test_a_record_claiming_a_live_peers_address_does_not_take_it_over() -> None:
    # A stranger says HELLO with a record whose inbox is b's. Taken, it would have replaced b
    # and drawn b's tasks to the stranger; refused, b keeps its place and its work.
    stranger = os.urandom(16)
    with plain_sockets(zmq.PUSH) as (push,):
        with trio.fail_after(20):
            async with peered_nodes() as (a, b), b.work("s") as tasks:
                claim = PeerRecord(
                    stranger, "b", "default", "127.0.0.1", b.record.pub_port, b.record.pull_port
                )
                push.connect(f"tcp://{a.address}")
                push.send(pack(Kind.HELLO, stranger, 1, None, Hello(claim, ()).to_wire()))
                await wait_until(lambda: a.statistics().peers_refused == 1, "a refuses it")
                assert set(a.peers) == {b.id}
                await a.push("s", "to the real b")
                async with await tasks.receive() as task:
                    assert task.body == "to the real b"


async def test_a_forged_goodbye_in_the_inbox_does_not_drop_a_live_peer() -> None:
    # Anyone can send a's inbox a BYE under b's id; b's own goodbye also comes on b's PUB, which
    # only b can publish on. Alone, the inbox one drops nobody.
    with plain_sockets(zmq.PUSH) as (push,):
        with trio.fail_after(20):
            async with peered_nodes() as (a, b):
                push.connect(f"tcp://{a.address}")
                push.send(pack(Kind.BYE, bytes.fromhex(b.id), 99, None, None))
                push.send(forged_hello(port=10_000))  # read after the BYE: a marker
                await wait_until(
                    lambda: any(peer.name == "stranger" for peer in a.peers.values()),
                    "a reads both",
                )
                assert a.peers[b.id].state is mesh.PeerState.ALIVE


async def test_a_forged_update_does_not_move_a_peer() -> None:
    # An UPDATE under b's id with b's record at another inbox port would have moved a's link to
    # b there, and b's tasks with it.
    with plain_sockets(zmq.PUSH) as (push,):
        with trio.fail_after(20):
            async with peered_nodes() as (a, b), b.work("s") as tasks:
                moved = PeerRecord(
                    bytes.fromhex(b.id), "b", "default", "127.0.0.1", b.record.pub_port, 9
                )
                push.connect(f"tcp://{a.address}")
                push.send(pack(Kind.UPDATE, bytes.fromhex(b.id), 99, None, moved.to_wire()))
                await wait_until(lambda: a.statistics().peers_refused == 1, "a refuses it")
                assert a.peers[b.id].record == b.record
                await a.push("s", "to the real b")
                async with await tasks.receive() as task:
                    assert task.body == "to the real b"


async def test_a_flood_of_subscriptions_is_cut_and_members_subscribe_again() -> None:
    # A stranger's SUB subscribes to more distinct prefixes than a PUB may hold: the node cuts
    # every subscriber (ZeroMQ cannot tell whose they are), its table empties, and its peer's
    # subscription is made again at once.
    with plain_sockets(zmq.SUB) as (sub,):
        with trio.fail_after(30):
            async with peered_nodes() as (a, b), b.subscribe("t") as events:
                sub.setsockopt(zmq.SNDHWM, 0)  # (ZeroMQ drops subscriptions past its HWM)
                sub.connect(a.endpoints.pub)
                for n in range(MAX_SUBSCRIPTIONS + 100):
                    sub.setsockopt(zmq.SUBSCRIBE, b"E%d" % n)
                await wait_until(
                    lambda: a.statistics().subscription_floods == 1, "a cuts its subscribers"
                )
                sub.disconnect(a.endpoints.pub)  # (or it would reconnect and flood again)
                # Its table holds b's subscription (and its own channels) again, not the flood's.
                await wait_until(
                    lambda: inside.subscriptions(a) < 10, "the flood's subscriptions are gone"
                )
                async with trio.open_nursery() as nursery:

                    async def publish_until_b_has_one() -> None:
                        while True:
                            await a.publish("t", "after")
                            await trio.sleep(0.05)

                    nursery.start_soon(publish_until_b_has_one)
                    assert (await events.receive()).body == "after"
                    nursery.cancel_scope.cancel()


async def test_synced_answers_nobody_asked_for_are_not_kept() -> None:
    # A peer's PUB can send SYNCEDs addressed to this node with any token: before, each was kept
    # for ever (and a SYNC resent is answered again, after its sync has ended).
    with trio.fail_after(20):
        async with peered_nodes("a", "b") as (a, b), b.subscribe("t") as events:
            b_id = bytes.fromhex(b.id)
            for token in range(1_000_000, 1_005_000):  # (fewer than the PUB's outbox holds)
                assert inside.publish_raw(a, b"Et", Kind.SYNCED, [token, b_id])
            await a.publish("t", "after them")  # the same stream: read after the SYNCEDs
            assert (await events.receive()).body == "after them"
            assert inside.synced_tokens_kept(b) == 0
            async with b.subscribe("t.other"):  # syncs still work
                pass
            assert inside.synced_tokens_kept(b) == 0
