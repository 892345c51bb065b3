"""The node as each component sees it: the small wiring classes the facade hands its components
(`HeartbeatWiring`, `ProducerWiring`, `WorkerWiring`), each answering from the node's other
components. Every call looks the component up anew, so a test may stand in for one method."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

from discovery import PeerRecord

from ._detector import Liveness, Transition
from ._errors import ProtocolError
from ._heartbeat import PeerBeats
from ._metrics import ACKED, GIVEN_UP, NACKED, PUSHED, RECEIVED, REDELIVERED, cap_peers
from ._producer import Route
from ._types import NodeStatistics
from ._wire import Envelope, Kind

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

    def published_dropped(self, envelope: Envelope) -> None:
        self._node._events.on_dropped(envelope)

    def set_credit(self, peer_id: bytes, credit: int) -> None:
        self._node._producer.dispatcher.set_credit(peer_id, credit)

    def check_record(self, peer_id: bytes, beats: PeerBeats, digest: bytes, now: float) -> None:
        self._node._membership.check_record(peer_id, beats, digest, now)

    def verdicts(self, transitions: Sequence[Transition]) -> None:
        self._node._membership.apply_liveness(transitions)
        if any(transition.new is Liveness.DEAD for transition in transitions):
            self._node._publisher.stop_waiting()  # a dead subscriber holds nobody back

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

    def route_to(self, peer_id: bytes) -> Route | None:
        return self._node._membership.link_of(peer_id)

    def send_to_peer(self, peer_id: bytes, kind: Kind, meta: list[Any], body: Any = None) -> bool:
        return send_direct(self._node, peer_id, kind, meta, body)

    def offer(self, services: Iterable[str]) -> None:
        self._node._membership.set_services(services)


def statistics_of(node: Node) -> NodeStatistics:
    """`Node.statistics`: the node's counts and its components' figures, gathered."""
    dispatcher = node._producer.dispatcher
    services = node._services.snapshot()
    totals = [sum(column) for column in zip(*node._services.rows(), strict=True)] or [0] * 7
    return NodeStatistics(
        peers=len(node._membership.peers),
        tasks_in_flight=dispatcher.in_flight(),
        bad_frame_reasons=dict(node._frames.bad_reasons),
        bytes_received=dict(node._frames.bytes_in),
        bytes_sent={
            "pub": node._pub.bytes_sent,
            "push": node._links.bytes_sent,
            "udp": node._heartbeats.udp.bytes_sent,
        },
        events_queued=len(node._pub),
        redelivery_queued=node._producer.redelivery_queued,
        outbox_kept=0 if node._producer.journal is None else node._producer.journal.live,
        peer_queues=cap_peers(node._membership.peer_rows(dispatcher.in_flight)),
        ack_latency=node._producer.ack_latency.snapshot(),
        heartbeat_rtt=node._heartbeats.rtt.snapshot(),
        services=services,
        # (The task totals are the per-service table's: counted once, at one place a task.)
        tasks_pushed=totals[PUSHED],
        tasks_acked=totals[ACKED],
        tasks_nacked=totals[NACKED],
        tasks_redelivered=totals[REDELIVERED],
        tasks_given_up=totals[GIVEN_UP],
        tasks_received=totals[RECEIVED],
        **node._counts,
    )


def inbox_handlers(node: Node) -> dict[Kind, Callable[[Envelope], None]]:
    """Which component handles each kind of message from the inbox."""
    return {
        Kind.TASK: node._worker.on_task,
        Kind.REQUEST: node._worker.on_task,
        Kind.ACK: node._producer.on_settled,
        Kind.NACK: node._producer.on_settled,
        Kind.REPLY: node._producer.on_settled,
        Kind.HELLO: node._membership.on_hello,
        Kind.WELCOME: node._membership.on_hello,
        Kind.UPDATE: node._membership.on_update,
        Kind.BYE: node._membership.on_bye,
        Kind.SYNC: node._publisher.on_sync,
        Kind.TICKET: node._publisher.on_ticket,
        Kind.HISTORY: node._publisher.on_history,
        Kind.EVENTS: node._events.on_events,
        Kind.READY: node._membership.on_ready,
        Kind.HEARTBEAT: node._heartbeats.on_inbox_heartbeat,
    }


def send_direct(node: Node, peer_id: bytes, kind: Kind, meta: list[Any], body: Any = None) -> bool:
    """Send a message to a known peer's inbox now, if its outbox has room (else False)."""
    membership = node._membership
    peer = membership.peers.get(peer_id)
    if peer is None:
        return False
    return node._links.send(membership.reach(peer.record), kind, meta, body)
