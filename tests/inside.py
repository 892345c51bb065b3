"""The one place a test reaches inside a running node: faults injected that a network cannot
give on demand (one kind of message lost, a node's heartbeats stopped while it runs on), and
parts read that no public API shows (its links, the heartbeats it has taken).

Each fault stands in for one method of one component (`Links.send`, `Publisher.publish_control`,
`Heartbeats`' datagram sends), and nothing else of the node is touched; it lasts until the node
closes. When a component changes, this file changes, not every test that used it.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable, Sequence
from typing import Any

import trio
import zmq

import mesh
from mesh._beatplan import ECHO_FRESH_FOR, all_echo
from mesh._detector import Liveness, Transition
from mesh._heartbeat import PeerBeats
from mesh._links import Links
from mesh._streams import Subscription, Task
from mesh._wire import Kind, event_frame
from mesh._zmq import Outbox
from mesh.blocking import BlockingNode

# -- parts read ---------------------------------------------------------------------------------


def links(node: mesh.Node) -> Links:
    """The node's open links (a PUSH and its outbox per peer inbox), by inbox address."""
    return node._links


def subscriptions(node: mesh.Node) -> int:
    """The distinct subscriptions the node's PUB holds, as its notices counted them."""
    return node._publisher.subscriptions


def pub_outbox(node: mesh.Node) -> Outbox:
    """The outbox of the node's PUB."""
    return node._publisher.outbox


def context(node: mesh.Node) -> zmq.Context[Any]:
    """The node's ZeroMQ context."""
    return node._context


def datagram_sockets(node: mesh.Node) -> list[socket.socket]:
    """The node's UDP sockets for heartbeats, one per host it is bound on."""
    return node._heartbeats.udp.socks


def beats(node: mesh.Node) -> dict[bytes, PeerBeats]:
    """The heartbeats the node has taken, by peer id (from a peer's first heartbeat on)."""
    return node._heartbeats.beats


def beats_sent(node: mesh.Node) -> int:
    """How many heartbeats the node has sent."""
    return node._heartbeats.count


def datagrams_echoed_by_all(node: mesh.Node) -> bool:
    """Whether every peer has echoed one of the node's datagrams lately: the beat plan's test
    for leaving beats off the PUB."""
    heartbeats = node._heartbeats
    interval = heartbeats._interval
    return all_echo(heartbeats._beat_peers(), trio.current_time() - ECHO_FRESH_FOR * interval)


def buffered(subscription: Subscription) -> int:
    """How many events wait in the subscription for its reader."""
    return len(subscription._buffer)


def credit(node: mesh.Node, worker: mesh.Node) -> int:
    """How many more tasks the node may send `worker` now."""
    return node._producer.dispatcher.capacity(bytes.fromhex(worker.id))


def verdicts_on(node: mesh.Node, peer: mesh.Node) -> list[Liveness]:
    """A list that the node's liveness verdicts on `peer` are added to from now on."""
    membership = node._membership
    apply_liveness = membership.apply_liveness
    peer_id = bytes.fromhex(peer.id)
    seen: list[Liveness] = []

    def record(transitions: Sequence[Transition]) -> None:
        seen.extend(t.new for t in transitions if t.peer == peer_id)
        apply_liveness(transitions)

    membership.apply_liveness = record  # type: ignore[method-assign]
    return seen


# -- faults -------------------------------------------------------------------------------------


def drop_direct(node: mesh.Node, kind: Kind, count: float = math.inf) -> list[str]:
    """The first `count` messages of `kind` the node sends to an inbox are lost (the sender is
    told they were queued). Returns the list of the addresses they were for, which grows as
    they are lost."""
    links = node._links
    send = links.send
    lost: list[str] = []

    def send_but(address: str, sent_kind: Kind, meta: Any, body: Any) -> bool:
        if sent_kind is kind and len(lost) < count:
            lost.append(address)
            return True
        return send(address, sent_kind, meta, body)

    links.send = send_but  # type: ignore[method-assign,assignment]
    return lost


def drop_published(node: mesh.Node, kind: Kind) -> None:
    """Control messages of `kind` (heartbeats, goodbyes) the node publishes are lost."""
    publisher = node._publisher
    publish = publisher.publish_control

    def publish_but(channel: Any, published_kind: Kind, *args: Any) -> bool:
        return True if published_kind is kind else publish(channel, published_kind, *args)

    publisher.publish_control = publish_but  # type: ignore[method-assign,assignment]


def drop_datagrams(node: mesh.Node) -> None:
    """The node sends no heartbeat or probe datagram (it still reads its peers')."""
    node._heartbeats.udp.route = lambda record: None  # type: ignore[method-assign]


def silence_heartbeats(node: mesh.Node) -> None:
    """The node sends no heartbeat at all, on either path, while it runs on."""
    drop_datagrams(node)
    drop_published(node, Kind.HEARTBEAT)


def after_next_beat(node: mesh.Node, then: Callable[[], None]) -> None:
    """Call `then` right after the node's next heartbeat datagrams have gone (in the heartbeat
    loop, so `then` runs before the loop sends anything else)."""
    heartbeats = node._heartbeats
    send = heartbeats._send_datagrams

    def send_then(*args: Any) -> None:
        send(*args)
        del heartbeats._send_datagrams
        then()

    heartbeats._send_datagrams = send_then  # type: ignore[method-assign,assignment]


def fail_next_link(node: mesh.Node, error: Exception) -> None:
    """The next link the node opens fails halfway, as when the process is out of file
    descriptors: its PUSH socket is made, then connecting it raises `error`."""
    links = node._links
    make_socket = links._make_socket

    def make_failing(kind: int, ipv6: bool) -> Any:
        sock = make_socket(kind, ipv6)
        if kind == zmq.PUSH:
            del links._make_socket

            def fail(*args: Any) -> Any:
                raise error

            sock.connect = fail  # type: ignore[method-assign,assignment]
        return sock

    links._make_socket = make_failing


def reclaim(node: mesh.Node, worker: mesh.Node) -> None:
    """As when the node declares `worker` dead: the tasks it holds and those queued for it go
    to other workers (its peer state is left as it is)."""
    node._membership.reclaim(bytes.fromhex(worker.id))


def lose_ack(worker: mesh.Node, task: Task) -> None:
    """The worker counts `task` as done (a later copy is acked without running), though its
    ack never left."""
    worker._worker._finished.add((task._origin, task.id))


def fail_thread(node: BlockingNode, error: BaseException, timeout: float) -> None:
    """As only a bug in the node could: a task of the blocking node's thread raises `error`.
    Returns once that thread has ended (asserted, within `timeout` seconds)."""
    nursery, token = node._nursery, node._token
    assert nursery is not None
    assert token is not None

    async def crash() -> None:
        raise error

    trio.from_thread.run_sync(nursery.start_soon, crash, trio_token=token)
    node._thread.join(timeout)
    assert not node._thread.is_alive()


def forget(node: mesh.Node, other: mesh.Node) -> None:
    """As when the node's failure detector forgets `other` and no heartbeat of `other`'s follows
    (a partition longer than the time to forget a peer): `other` is no longer its peer, and is
    not greeted again unless the node is told where it is."""
    other_id = bytes.fromhex(other.id)
    membership = node._membership
    membership.apply_liveness(
        [Transition(other_id, Liveness.DEAD, Liveness.FORGOTTEN, "forgotten", 40, 0)]
    )
    membership.sessions.returned(other_id)  # (what a heartbeat of `other`'s would take)


def publish_raw(node: mesh.Node, channel: bytes | None, kind: Kind, meta: list[Any]) -> bool:
    """Publish a control message (or, with a `channel`, a SYNCED) on the node's PUB as it is:
    what a misbehaving peer could send."""
    head = None if channel is None else event_frame(channel, b"")
    return node._publisher.publish_control(head, kind, meta)


def synced_tokens_kept(node: mesh.Node) -> int:
    """SYNCED answers the node holds (taken, not yet consumed by a sync under way)."""
    return len(node._events._synced_tokens) + len(node._events._synced_seqs)
