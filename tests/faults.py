"""Faults injected into a running node, for integration tests that need one a network cannot
give on demand (one kind of message lost, a node's heartbeats stopped while it runs on).

This is the one place a test reaches into a node: each fault stands in for one method of one
component (`Links.send`, `Publisher.publish_control`, `Heartbeats`' datagram sends), and nothing
else of the node is touched. A fault lasts until the node closes, or until the returned
function is called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import mesh
from mesh._detector import Liveness, Transition
from mesh._links import Links
from mesh._wire import Kind

Undo = Callable[[], None]


def links(node: mesh.Node) -> Links:
    """The node's open links (a PUSH and its outbox per peer inbox), by inbox address."""
    return node._links


def drop_direct(node: mesh.Node, kind: Kind) -> Undo:
    """Messages of `kind` the node sends to an inbox are lost (the sender is told they were
    queued)."""
    links = node._links
    send = links.send

    def send_but(address: str, sent_kind: Kind, meta: Any, body: Any) -> bool:
        return True if sent_kind is kind else send(address, sent_kind, meta, body)

    links.send = send_but  # type: ignore[method-assign]
    return lambda: delattr(links, "send")


def drop_published(node: mesh.Node, kind: Kind) -> Undo:
    """Control messages of `kind` (heartbeats, goodbyes) the node publishes are lost."""
    publisher = node._publisher
    publish = publisher.publish_control

    def publish_but(channel: Any, published_kind: Kind, *args: Any) -> bool:
        return True if published_kind is kind else publish(channel, published_kind, *args)

    publisher.publish_control = publish_but  # type: ignore[method-assign]
    return lambda: delattr(publisher, "publish_control")


def drop_datagrams(node: mesh.Node) -> Undo:
    """The node sends no heartbeat datagram (it still reads its peers')."""
    heartbeats = node._heartbeats
    heartbeats._datagram_route = lambda record: None  # type: ignore[method-assign]
    return lambda: delattr(heartbeats, "_datagram_route")


def silence_heartbeats(node: mesh.Node) -> Undo:
    """The node sends no heartbeat at all, on either path, while it runs on."""
    undo_datagrams = drop_datagrams(node)
    undo_published = drop_published(node, Kind.HEARTBEAT)

    def undo() -> None:
        undo_datagrams()
        undo_published()

    return undo


def after_next_beat(node: mesh.Node, then: Callable[[], None]) -> None:
    """Call `then` right after the node's next heartbeat datagrams have gone (in the heartbeat
    loop, so `then` runs before the loop sends anything else)."""
    heartbeats = node._heartbeats
    send = heartbeats._send_datagrams

    def send_then(*args: Any) -> None:
        send(*args)
        del heartbeats._send_datagrams  # type: ignore[attr-defined]
        then()

    heartbeats._send_datagrams = send_then  # type: ignore[method-assign,assignment]


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
