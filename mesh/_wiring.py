"""The node as each component sees it: the small wiring classes the facade hands its components
(`HeartbeatWiring`, `ProducerWiring`, `WorkerWiring`), each answering from the node's other
components. Every call looks the component up anew, so a test may stand in for one method."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from discovery import PeerRecord

from ._detector import Transition
from ._errors import ProtocolError
from ._heartbeat import PeerBeats
from ._producer import Route
from ._wire import Envelope, Kind
from ._zmq import Outbox

if TYPE_CHECKING:
    from ._node import Node


class HeartbeatView:
    """Heartbeats' view of the node (`HeartbeatWiring`). Each call looks the component up anew,
    so that a test may stand in for one of its methods."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    def peers(self) -> Iterable[PeerRecord]:
        return [peer.record for peer in self._node._membership.peers]

    def is_peer(self, node_id: bytes) -> bool:
        return node_id in self._node._membership.peers

    def hosts_of(self, node_id: bytes) -> tuple[str, ...] | None:
        peer = self._node._membership.peers.get(node_id)
        return None if peer is None else peer.record.hosts

    def stranger(self, node_id: bytes) -> None:
        self._node._membership.stranger(node_id)

    def load(self) -> int:
        return self._node._worker.load

    def record_digest(self) -> bytes:
        return self._node._membership.record_digest

    def publish_beat(self, body: Any) -> None:
        self._node._publisher.publish_control(None, Kind.HEARTBEAT, None, body)

    def published_bye(self, envelope: Envelope) -> None:
        self._node._membership.on_published_bye(envelope)

    def set_credit(self, peer_id: bytes, credit: int) -> None:
        self._node._producer.dispatcher.set_credit(peer_id, credit)

    def check_record(self, peer_id: bytes, beats: PeerBeats, digest: bytes, now: float) -> None:
        self._node._membership.check_record(peer_id, beats, digest, now)

    def verdicts(self, transitions: Sequence[Transition]) -> None:
        self._node._membership.apply_liveness(transitions)

    def bad_frame(self, exc: ProtocolError, where: str) -> None:
        self._node._frames.bad_frame(exc, where)


class ProducerView:
    """The producer side's view of the node (`ProducerWiring`): its peers' links, its id."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    def ready_workers(self, service: str) -> dict[bytes, Route]:
        return self._node._membership.ready_workers(service)


class WorkerView:
    """The worker side's view of the node (`WorkerWiring`): its links, its record, its id."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    def outbox_to(self, peer_id: bytes) -> tuple[Outbox, Callable[[], int]] | None:
        link = self._node._membership.link_of(peer_id)
        return None if link is None else (link.outbox, link.next_seq)

    def send_to_peer(self, peer_id: bytes, kind: Kind, meta: list[Any]) -> bool:
        node = self._node
        membership = node._membership
        peer = membership.peers.get(peer_id)
        if peer is None:
            return False
        return node._links.send(membership.reach(peer.record), kind, meta, None)

    def offer(self, services: Iterable[str]) -> None:
        self._node._membership.set_services(services)
