"""The values a node hands out and takes in: settings, endpoints, events, statistics."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from ._detector import DetectorSettings
from ._metrics import (
    ACK_LATENCY_BUCKETS,
    RTT_BUCKETS,
    Histogram,
    PeerStatistics,
    ServiceStatistics,
)
from ._probing import ProbeSettings


@dataclass(frozen=True, slots=True)
class Settings:
    """Tunables of a node. Every field has a default fit for a LAN; all sizes count messages.

    Attributes:
        receive_batch: Most messages taken from one socket per wake-up before other tasks get a
            turn. Default 1000.
        event_hwm: ZeroMQ high-water mark of the PUB and SUB sockets, in frames: what one
            subscriber connection that reads slower than this node publishes may hold. Default
            100,000; `event_buffer_bytes` lowers it.
        event_buffer_bytes: Bytes one subscriber connection may hold at each end: the
            high-water mark is at most this over the 64 KiB a frame of events holds (an event
            larger than that goes alone, and counts as one frame). Default 64 MiB.
        event_backpressure: What a full subscriber connection does to `publish`. True (the
            default): the publisher waits for room, for at most `slow_subscriber_timeout`,
            so nothing is lost for subscribers that keep up. False: ZeroMQ drops that
            subscriber's events at once, as plain PUB/SUB does. Either way the subscriber sees
            what it lost, and takes it from the publisher's history (or a `Gap`).
        slow_subscriber_timeout: Seconds a full subscriber holds others back. A publisher
            whose PUB has refused events that long sends past the full connections (their
            subscribers repair from history); a subscription whose reader has left its
            buffer full that long stops holding the node's other subscriptions, and catches
            up from history once it reads again. Default 0.5.
        subscription_buffer: Events held for one `Subscription` whose reader is slow (see
            `slow_subscriber_timeout`; dropped ones are counted in `Subscription.dropped` and
            repaired from history). Default 100,000.
        peer_queue: Messages queued in the node for one peer (on top of ZeroMQ's own buffer)
            before `push` to that peer waits. Default 10,000.
        max_in_flight: Most of this node's tasks one worker holds unacked at a time. Default
            1000.
        prefetch: As a worker: how many unacked tasks this node takes from each sender at a time
            (its credit, like RabbitMQ's prefetch), told to peers in every heartbeat. Default
            None: as many as the senders' `max_in_flight`. Tasks past ten times the credit (at
            least 1,000; 10,000 with none) held from one sender are nacked: only a sender that
            ignores the credit meets that.
        max_attempts: How many times a task is sent (first send included) before it goes to the
            dead-letter handler: a nack, the death of its worker or its ack deadline sends it
            again, to another worker if any. Default 5.
        request_attempts: How many times a request is sent (first send included) before its
            caller gets a `RemoteError`: a nack, or the death or departure of its provider
            before it replied, sends it again, to another provider if any. Default 2.
        request_timeout: Seconds `Node.request` waits for a reply by default. Default 30.0.
        outbox_limit: With a state directory, most tasks its outbox holds (pushed, not yet
            acked or given up on) before `push` waits. Default 100,000.
        history_events: Events this node keeps of what it published, for subscribers that
            join later (`Node.subscribe`'s `history`); 0 keeps none. Default 1,000.
        history_bytes: Bytes of those events (as they were sent) kept at most. Default
            16 MiB.
        ack_timeout: Seconds a worker may hold a task before it is sent elsewhere too. Default
            60.0; None: no deadline (a worker that dies is noticed by the failure detector
            either way).
        dedup_window: How many finished tasks a worker remembers, so that a redelivered one is
            acked again rather than run again. Default 10,000.
        sync_timeout: Seconds entering `subscribe` waits for the known peers to confirm the
            subscription. Default 2.0.
        connect_timeout: Seconds `connect` waits for an answer by default. Default 5.0.
        goodbye_timeout: Seconds closing the node spends saying goodbye to its peers. Default
            0.2.
        max_peers: Most peers this node takes; a node past that is refused (not answered, and
            counted in `NodeStatistics.peers_refused`). The node also takes no more than its
            file descriptors allow, about seven a peer (it raises its soft limit to the hard one
            when it opens). Default 1024.
        detector: The failure detector's `DetectorSettings`: heartbeat interval and how silence
            turns into suspicion and death, for the peers this node watches. Default
            `DetectorSettings()`.
        heartbeat_all_up_to: While the mesh has at most this many peers besides this node, it
            watches them all (heartbeats to each, judged by `detector`: a hung peer is dead in
            under a second). Past it, it watches only the peers it pushes tasks or requests to,
            and SWIM probing (`probing`) judges the rest, at a cost that does not grow with the
            mesh (README, "Scale"). Default 8.
        probing: SWIM's `ProbeSettings`: one probe a `probe_interval`, how long an answer may
            take. Default `ProbeSettings()`.

    Raises `ValueError` for a value out of range.
    """

    receive_batch: int = 1000
    event_hwm: int = 100_000
    event_buffer_bytes: int = 64 * 1024 * 1024
    event_backpressure: bool = True
    slow_subscriber_timeout: float = 0.5
    subscription_buffer: int = 100_000
    peer_queue: int = 10_000
    max_in_flight: int = 1000
    prefetch: int | None = None
    max_attempts: int = 5
    request_attempts: int = 2
    request_timeout: float = 30.0
    outbox_limit: int = 100_000
    history_events: int = 1000
    history_bytes: int = 16 * 1024 * 1024
    ack_timeout: float | None = 60.0
    dedup_window: int = 10_000
    sync_timeout: float = 2.0
    connect_timeout: float = 5.0
    goodbye_timeout: float = 0.2
    max_peers: int = 1024
    detector: DetectorSettings = field(default_factory=DetectorSettings)
    heartbeat_all_up_to: int = 8
    probing: ProbeSettings = field(default_factory=ProbeSettings)

    def __post_init__(self) -> None:
        for name in ("receive_batch", "event_hwm", "subscription_buffer", "peer_queue"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in (
            "max_in_flight",
            "max_attempts",
            "request_attempts",
            "outbox_limit",
            "dedup_window",
            "max_peers",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.heartbeat_all_up_to < 0:
            raise ValueError("heartbeat_all_up_to must not be negative")
        if self.prefetch is not None and self.prefetch < 1:
            raise ValueError("prefetch must be at least 1, or None")
        if self.ack_timeout is not None and not self.ack_timeout > 0:
            raise ValueError("ack_timeout must be a positive number of seconds, or None")
        if self.history_events < 0 or self.history_bytes < 0:
            raise ValueError("history_events and history_bytes must not be negative")
        if not self.request_timeout > 0:
            raise ValueError("request_timeout must be a positive number of seconds")
        if self.event_buffer_bytes < 64 * 1024:
            raise ValueError("event_buffer_bytes must be at least 64 KiB")
        if not self.slow_subscriber_timeout > 0:
            raise ValueError("slow_subscriber_timeout must be a positive number of seconds")
        for name in ("sync_timeout", "connect_timeout", "goodbye_timeout"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be a non-negative number of seconds")


@dataclass(frozen=True, slots=True)
class Endpoints:
    """The ZeroMQ endpoints a node is bound to."""

    pub: str
    pull: str


class Message(NamedTuple):
    """One event, as a subscriber receives it. `sender` is the publishing node's id (hex) and
    `seq` its sequence number on that node's PUB stream (a named tuple: one is made per event,
    and it is the cheapest immutable record Python has)."""

    topic: str
    body: Any
    sender: str
    seq: int


@dataclass(frozen=True, slots=True)
class NodeStatistics:
    """What a node has counted since it opened, and the state of its queues now (a snapshot,
    from `Node.statistics`; docs/metrics.md names each as Prometheus exports it).

    * `peers`: the peers known now; `peers_refused`: nodes refused as peers because this node
      had all it may hold (`Settings.max_peers`, or its file descriptors), or because too many
      new ones came at once (more than 256, or 50 a second), or (keyed) because their key is
      not allowed. `handshakes_refused`: connections a keyed node refused (CURVE with a key not
      allowed, or no CURVE at all); `senders_banned`: times a key was banned for a while for
      sending bad frames again and again (docs/security.md); `subscription_floods`: times the
      PUB held more distinct subscriptions than it may, and every subscriber was cut.
    * Events: `events_published`; `events_received` (by the events SUB); `events_dropped` (for
      a subscription whose buffer stayed full: `Settings.slow_subscriber_timeout`);
      `events_shed` (messages sent past subscriber connections that stayed full, for those
      subscribers to repair); `events_repaired` (missed events a subscription got from their
      publisher's history); `event_gaps` (`Gap`s delivered: missed events not repaired).
    * As a producer: `tasks_pushed` (first sends), `tasks_acked`, `tasks_nacked`,
      `tasks_in_flight` (sent, not yet settled, now), `tasks_redelivered` (queued to be sent
      again after a nack, a worker's death or an ack deadline), `tasks_given_up` (after
      `Settings.max_attempts`).
    * As a worker: `tasks_received`, `tasks_duplicate` (received again after it was done, and
      acked without running), `acks_sent`, `nacks_sent`.
    * Requests (which the task figures count too, as tasks that want a reply): as a caller
      `requests_sent` (first sends), `replies_received`, `requests_failed` (answered by a
      `RemoteError`), `requests_timed_out`; as a provider `replies_sent` (error replies
      included) and `requests_expired` (dropped unread: their caller had stopped waiting).
    * `heartbeat_datagrams`: valid heartbeats that came by UDP, first copies or not;
      `probe_datagrams`: SWIM's probes, answers and relays that came by UDP.
    * `bad_frames`: frames dropped for breaking the protocol; by `ProtocolError.reason` in
      `bad_frame_reasons`.
    * `bytes_received`, `bytes_sent`: bytes of ZeroMQ frames and UDP datagrams, as they cross
      the sockets, by socket: received on ``"inbox"`` (the PULL), ``"events"`` (the events SUB),
      ``"control"`` (the control SUB), ``"udp"`` (heartbeat datagrams); sent on ``"pub"``,
      ``"push"`` (every peer's inbox) and ``"udp"``. Bytes of ZeroMQ's own framing are not
      counted.
    * Queues now: `events_queued` (messages waiting in this node for the PUB socket),
      `redelivery_queued` (tasks waiting to be sent again, or, taken by ``push(wait=False)``
      or from a state directory, to be sent a first time), `outbox_kept` (tasks kept in the
      state directory, if the node has one: pushed and not yet acked or given up on), and by
      peer id (hex) in
      `peer_queues` its outbox and the tasks it holds (`PeerStatistics`), for at most
      128 peers, the rest summed under the key ``""``.
    * `ack_latency`: seconds from each send of a task to its ack or nack, at the producer (a
      redelivered task's time counts from its last send). `heartbeat_rtt`: round trips to
      peers, measured from their echoes of this node's heartbeats. Both `Histogram`s.
    * `services`: task counters by service name (`ServiceStatistics`). Service names come from
      peers too (a task names its service), so at most 128 names have a row of their
      own, the first ones seen; tasks of any other service (and of the empty name, which only a
      misbehaving peer sends) are counted under the key ``""``.
    """

    peers: int
    events_published: int
    events_received: int
    events_dropped: int
    tasks_pushed: int
    tasks_acked: int
    tasks_nacked: int
    tasks_in_flight: int
    tasks_received: int
    tasks_redelivered: int
    tasks_given_up: int
    tasks_duplicate: int
    acks_sent: int
    nacks_sent: int
    heartbeat_datagrams: int
    bad_frames: int
    bad_frame_reasons: Mapping[str, int] = field(default_factory=dict)
    bytes_received: Mapping[str, int] = field(default_factory=dict)
    bytes_sent: Mapping[str, int] = field(default_factory=dict)
    events_queued: int = 0
    redelivery_queued: int = 0
    peer_queues: Mapping[str, PeerStatistics] = field(default_factory=dict)
    ack_latency: Histogram = field(default_factory=lambda: Histogram.empty(ACK_LATENCY_BUCKETS))
    heartbeat_rtt: Histogram = field(default_factory=lambda: Histogram.empty(RTT_BUCKETS))
    services: Mapping[str, ServiceStatistics] = field(default_factory=dict)
    peers_refused: int = 0
    handshakes_refused: int = 0
    senders_banned: int = 0
    subscription_floods: int = 0
    requests_sent: int = 0
    replies_received: int = 0
    requests_failed: int = 0
    requests_timed_out: int = 0
    replies_sent: int = 0
    requests_expired: int = 0
    outbox_kept: int = 0
    events_shed: int = 0
    events_repaired: int = 0
    event_gaps: int = 0
    probe_datagrams: int = 0


#: The `NodeStatistics` figures a node counts as things happen, each in one place.
COUNTED: Final = (
    "events_published",
    "events_received",
    "events_dropped",
    "tasks_duplicate",
    "acks_sent",
    "nacks_sent",
    "heartbeat_datagrams",
    "probe_datagrams",
    "bad_frames",
    "peers_refused",
    "handshakes_refused",
    "senders_banned",
    "subscription_floods",
    "requests_sent",
    "replies_received",
    "requests_failed",
    "requests_timed_out",
    "replies_sent",
    "requests_expired",
    "events_shed",
    "events_repaired",
    "event_gaps",
)


class Gap(NamedTuple):
    """Events a subscription missed and will not get: every event of `sender` (hex id) on
    `topic` numbered `first_seq` to `last_seq` on its stream (`Message.seq`; the one numbered
    `last_seq` was published on `topic`, those before it may have been on other topics). It
    takes their place in the subscription, in order. `reason`: ``"evicted"`` (the publisher's
    history no longer held them) or ``"unanswered"`` (the publisher did not answer for them in
    time: gone, or too busy)."""

    sender: str
    first_seq: int
    last_seq: int
    reason: str
    topic: str


@dataclass(frozen=True, slots=True)
class PeerHealth:
    """How a known peer is doing, as this node sees it (from `Node.health`).

    `last_heard`: seconds since it was last heard from (a heartbeat, or joining). `phi`: the
    failure detector's suspicion now (`DetectorSettings` says what values mean). `reason`: why
    it is in its state ("joined", "heartbeat", "phi", "disconnect"). `load`: the tasks it holds
    unfinished, as its last heartbeat said (None if it does not say). `rtt`: the round trip to
    it in seconds, measured from heartbeats it echoes (None until measured).
    """

    last_heard: float
    phi: float
    reason: str
    load: int | None
    rtt: float | None


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A task this node gave up on after `attempts` sends; `reason` says what happened last."""

    task_id: int
    service: str
    body: Any
    attempts: int
    reason: str
