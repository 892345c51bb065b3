"""Heartbeat datagrams (docs/protocol.md §11): a third path for heartbeats, over UDP, at the inbox's
port number, which packet loss can thin out but never stall as it stalls a TCP connection.

Real sockets on 127.0.0.1 (and 127.0.0.2, also the loopback device's) with ephemeral ports; every
socket is closed, and the third party's datagrams go only to the node under test.
"""

from __future__ import annotations

import functools
import os
import socket
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
import trio
import zmq

import mesh
from mesh._detector import Liveness
from mesh._wire import Kind

from . import inside
from .conftest import peered_nodes, wait_until

open_node = functools.partial(mesh.open_node, discovery="static")

VERSION = 1
HEARTBEAT, BYE, TASK = 2, 3, 7


def envelope(kind: int, sender: bytes, seq: int, meta: list[Any] | None, body: Any) -> bytes:
    """An envelope written from docs/protocol.md §4 alone."""
    data: bytes = msgpack.packb([VERSION, kind, sender, seq, meta, body], use_bin_type=True)
    return data


def inbox_port(node: mesh.Node) -> int:
    return node.record.pull_port


async def test_a_node_listens_for_datagrams_at_its_inbox_port_on_every_host() -> None:
    with trio.fail_after(5):
        async with open_node("a", interface=["127.0.0.1", "127.0.0.2"]) as a:
            bound = {sock.getsockname() for sock in inside.datagram_sockets(a)}
            assert bound == {("127.0.0.1", inbox_port(a)), ("127.0.0.2", inbox_port(a))}
            assert all(sock.type == socket.SOCK_DGRAM for sock in inside.datagram_sockets(a))
    assert all(sock.fileno() == -1 for sock in inside.datagram_sockets(a))


async def test_closing_leaves_no_datagram_socket_and_frees_the_port() -> None:
    fds_before = len(os.listdir("/proc/self/fd"))
    with trio.fail_after(5):
        async with open_node("a") as a, open_node("b", seeds=[a.address]) as b:
            await b.wait_for_peers(1)
            port = inbox_port(b)
    assert all(
        sock.fileno() == -1 for sock in inside.datagram_sockets(a) + inside.datagram_sockets(b)
    )
    assert len(os.listdir("/proc/self/fd")) == fds_before
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # free again


def udp_squatter() -> socket.socket:
    """A UDP socket on a port of 127.0.0.1 whose TCP twin is free (checked: an ephemeral UDP
    port may be taken for TCP by some other program)."""
    for _ in range(50):
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        squatter.bind(("127.0.0.1", 0))
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", squatter.getsockname()[1]))
            except OSError:
                squatter.close()
                continue
        return squatter
    raise AssertionError("found no UDP port whose TCP twin is free")


async def test_a_fixed_inbox_port_taken_for_udp_is_a_clear_oserror() -> None:
    with udp_squatter() as squatter:
        port = squatter.getsockname()[1]
        with pytest.raises(OSError, match=f"cannot bind udp://127.0.0.1:{port}"):
            async with open_node("a", pull_port=port):
                pass  # pragma: no cover
    # The TCP side was given back too: the same port now opens.
    with trio.fail_after(5):
        async with open_node("a", pull_port=port) as a:
            assert inbox_port(a) == port


async def test_heartbeats_by_datagram_alone_keep_a_peer_alive() -> None:
    # a's heartbeats on the TCP path (its PUB) are cut, as packet loss stalls them; its
    # datagrams alone keep it alive at b. Then the datagrams stop too, and b declares
    # it dead in under a second: the first part was no accident of timing.
    with trio.fail_after(15):
        async with open_node("a") as a, open_node("b", seeds=[a.address]) as b:
            await b.wait_for_peers(1)
            await a.wait_for_peers(1)
            peer_a = bytes.fromhex(a.id)
            while peer_a not in inside.beats(b):  # noqa: ASYNC110 (b sends datagrams to a once a beats)
                await trio.sleep(0.01)
            inside.drop_published(a, Kind.HEARTBEAT)
            async with b.watch_peers() as changes:
                datagrams = b.statistics().heartbeat_datagrams
                await trio.sleep(2.0)  # ten heartbeat intervals, over three times the death time
                # One a beat (b lost none, so asks a for one copy; three under loss): 10 sent.
                assert b.statistics().heartbeat_datagrams - datagrams >= 7
                assert b.peers[a.id].state is mesh.PeerState.ALIVE

                inside.drop_datagrams(a)
                silent = trio.current_time()
                seen = []
                async for change in changes:
                    if isinstance(change, mesh.PeerStateChanged) and change.peer.id == a.id:
                        seen.append((change.peer.state, change.reason))
                        if change.peer.state is mesh.PeerState.DEAD:
                            break
                assert trio.current_time() - silent < 1.0
                assert seen == [(mesh.PeerState.SUSPECT, "phi"), (mesh.PeerState.DEAD, "phi")]


async def test_bad_datagrams_are_counted_and_only_heartbeats_are_taken() -> None:
    sender = os.urandom(16)
    garbage = [
        (b"", "truncated"),
        (b"this is not an envelope", "malformed"),
        (envelope(HEARTBEAT, sender, 1, None, {"n": 1})[:-2], "truncated"),
        (envelope(99, sender, 1, None, None), "kind"),
        (envelope(TASK, sender, 1, [1, "resize", 1], "no tasks by datagram"), "kind"),
        (envelope(BYE, sender, 1, None, None), "kind"),  # a goodbye by UDP could be forged
        (envelope(HEARTBEAT, sender, 1, None, "x" * 2000), "oversized"),
        (envelope(HEARTBEAT, sender, 1, None, [1]), "malformed"),  # the body must be a map
    ]
    with trio.fail_after(10):
        async with peered_nodes() as (a, b):
            peer_b = bytes.fromhex(b.id)
            inbox = ("127.0.0.1", inbox_port(a))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as plain:
                for datagram, _ in garbage:
                    plain.sendto(datagram, inbox)
                # A well-formed heartbeat from a stranger is ignored (as on every path), and a
                # BYE claiming to be from b makes b leave nowhere.
                plain.sendto(envelope(HEARTBEAT, sender, 2, None, {"n": 1}), inbox)
                plain.sendto(envelope(BYE, peer_b, 1, None, None), inbox)
                await wait_until(
                    lambda: a.statistics().bad_frames >= len(garbage) + 1, "a refused them all"
                )
            statistics = a.statistics()
            assert dict(statistics.bad_frame_reasons) == {
                "truncated": 2,
                "malformed": 2,
                "kind": 4,
                "oversized": 1,
            }
            assert b.id in a.peers
            # ... and the node still takes its peers' datagrams.
            datagrams = statistics.heartbeat_datagrams
            await wait_until(
                lambda: a.statistics().heartbeat_datagrams != datagrams, "a took a datagram"
            )
            assert a.peers[b.id].state is mesh.PeerState.ALIVE


async def test_health_shows_the_round_trip_and_the_tasks_a_peer_holds() -> None:
    with trio.fail_after(15):
        async with peered_nodes() as (a, b), b.work("job") as tasks:
            await a.wait_for_peers(1, service="job")
            for body in range(2):
                await a.push("job", body)
            held = [await tasks.receive(), await tasks.receive()]
            await wait_until(
                lambda: a.health()[b.id].load == 2 and a.health()[b.id].rtt is not None,
                "a's health of b shows its 2 tasks and a round trip",
            )
            health = a.health()[b.id]
            # Loopback: well under a millisecond, unless the machine is busy; never negative.
            assert 0 < health.rtt < 0.1
            assert b.health()[a.id].load == 0
            for task in held:
                async with task:
                    pass
            await wait_until(lambda: a.health()[b.id].load == 0, "a's health of b shows no task")


async def test_a_peer_that_loses_datagrams_asks_for_every_copy() -> None:
    with trio.fail_after(15):
        async with open_node("a") as a, open_node("b", seeds=[a.address]) as b:
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            peer_b = bytes.fromhex(b.id)
            # Nothing lost on the loopback: b asks for one copy a beat.
            # (b may ask before a has sent it a datagram: wait for both.)
            beats_of = inside.beats(a).get
            while (beats := beats_of(peer_b)) is None or beats.wanted != 1 or not beats.sent:  # noqa: ASYNC110
                await trio.sleep(0.05)
            beats.sent += 4  # as if four datagrams to b were lost on the way
            while beats.wanted != 3:  # noqa: ASYNC110
                await trio.sleep(0.05)
            assert inside.beats(b)[bytes.fromhex(a.id)].loss.lost == 4
            assert b.peers[a.id].state is mesh.PeerState.ALIVE


async def test_the_pub_carries_one_beat_in_two_while_every_peer_echoes_datagrams(
    zsocket: Callable[[int], zmq.Socket[Any]],
) -> None:
    # A raw SUB on a's PUB (a third party, not a peer) sees a's published heartbeats. While b
    # echoes a's datagrams, a publishes every other beat. Then b's datagrams stop reaching a:
    # b is judged at a by its PUB beats alone, one in two until b sees a's echoes go stale and
    # publishes every beat; never two intervals apart, so never dead (nor even suspect on a
    # quiet machine). a, whose beats b no longer echoes either, publishes every beat again.
    raw = zsocket(zmq.SUB)  # closed, and its context terminated, when the test ends
    raw.setsockopt(zmq.SUBSCRIBE, b"!")

    def published_beats() -> list[int]:
        numbers = []
        while True:
            try:
                frame = raw.recv(zmq.NOBLOCK)
            except zmq.Again:
                return numbers
            _, kind, _, _, _, body = msgpack.unpackb(frame[1:], raw=False)
            if kind == HEARTBEAT:
                numbers.append(body["n"])

    async def beats_over(node: mesh.Node, count: int) -> list[int]:
        published_beats()
        first = inside.beats_sent(node)
        while inside.beats_sent(node) < first + count:  # noqa: ASYNC110
            await trio.sleep(0.05)
        await trio.sleep(0.05)  # the last beat's frame crosses the loopback
        return [n for n in published_beats() if first < n <= first + count]

    try:
        with trio.fail_after(20):
            async with open_node("a") as a, open_node("b", seeds=[a.address]) as b:
                raw.connect(a.endpoints.pub)
                await a.wait_for_peers(1)
                await b.wait_for_peers(1)
                while not inside.datagrams_echoed_by_all(a):  # noqa: ASYNC110
                    await trio.sleep(0.05)
                quiet = await beats_over(a, 10)
                assert quiet, "no beat published at all"
                # The five even beats; an odd one only if this process stalled for over three
                # intervals (b's echoes then look stale for a beat): at most one such stall.
                odd = [n for n in quiet if n % 2]
                assert len(odd) <= 2, quiet
                assert len(quiet) - len(odd) <= 5, quiet

                verdicts = inside.verdicts_on(a, b)
                inside.drop_datagrams(b)
                await beats_over(a, 4)  # three intervals for the echoes to go stale, one more
                loud = await beats_over(a, 6)
                assert len(loud) == 6, loud
                assert Liveness.DEAD not in verdicts, verdicts
                assert a.peers[b.id].state is mesh.PeerState.ALIVE
    finally:
        raw.close()


async def test_a_lost_update_is_mended_from_the_record_digest_in_heartbeats(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # b takes up a service, and its UPDATE to a is lost (dropped here, as an outbox that is full
    # drops one). Nothing else would tell a: b's heartbeats carry the digest of its record, a's
    # copy differs, and a second later a says HELLO again, which b answers with its record.
    caplog.set_level("INFO", logger="mesh")
    with trio.fail_after(10):
        async with open_node("a") as a, open_node("b", seeds=[a.address]) as b:
            await a.wait_for_peers(1)
            await b.wait_for_peers(1)
            inside.drop_direct(b, Kind.UPDATE)
            async with b.work("resize"):
                await a.wait_for_peers(1, service="resize", timeout=5)
    assert "b's heartbeats tell of a record this node does not hold" in caplog.text


async def test_an_update_on_its_way_is_not_asked_for_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Datagrams overtake the UPDATE; for so short a time that a does not ask.
    caplog.set_level("INFO", logger="mesh")
    with trio.fail_after(10):
        async with peered_nodes() as (a, b):
            async with b.work("resize"):
                await a.wait_for_peers(1, service="resize", timeout=5)
                await trio.sleep(1.5)  # past the time a record may differ before a asks
    assert "tell of a record" not in caplog.text
