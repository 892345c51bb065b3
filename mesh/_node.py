"""The node: a facade over components, one concern each (docs/architecture.md has the map).

`Node` holds the public API, membership (the peer map, HELLO/WELCOME/UPDATE/BYE, seeds and mDNS,
READY, `watch_peers`) and the wiring: it creates the components, starts their tasks in its
nursery, routes the inbox's messages to them by kind, and acts on the failure detector's
verdicts. The components: `Links` (a PUSH per peer inbox), `Publisher` and `Subscriptions`
(events), `ProducerSide` and `WorkerSide` (work), `Heartbeats` (heartbeats and liveness); binding
is `_binding`'s. Each reaches the rest of the node only through the small wiring classes below.

Sockets of one node (docs/protocol.md has the frames):

* PUB (an XPUB, for backpressure), bound: events, subscription proofs, heartbeats, goodbyes.
* PULL, bound: the inbox: HELLO/WELCOME/UPDATE/READY, tasks, acks, subscription probes, goodbyes.
* UDP, bound at the inbox's port number on each host: heartbeat datagrams, which packet loss can
  only thin out, never stall as it stalls a TCP stream (docs/decisions.md).
* Two SUBs connected to every known peer's PUB: events (which a slow reader may hold back) and
  control (heartbeats and goodbyes, which nothing holds back).
* PUSH, one per peer inbox, with its own bounded `Outbox`: a slow or absent peer fills only its
  own queue, and the node, not ZeroMQ's blind round robin, picks which peer gets each task.

Only one task ever waits on a socket's FD: its owner. Other tasks send through an `Outbox` (its
owner task does the sending), change subscriptions and connections through
`AsyncSocket.call_soon`, or, for the sockets no task waits on (the control SUB and the UDP
sockets, read by polling from the heartbeat loop), call them directly. Nothing outlives
`open_node`: on exit the node says goodbye (bounded, shielded), cancels its tasks, closes its
sockets and terminates its ZeroMQ context.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import math
import os
import socket as stdlib_socket
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, Final

import trio
import zmq

from discovery import (
    Announced,
    ForeignMeshError,
    Mdns,
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerMap,
    PeerRecord,
    PeerState,
    PeerUpdated,
    Refused,
    format_address,
    interface_network,
    open_mdns,
    parse_address,
    tcp_endpoint,
)
from discovery._groups import ungrouped

from . import _peerlog, _wire
from ._binding import bind, bind_inbox, check_interfaces
from ._detector import Liveness, Transition
from ._errors import MissingPeersError, PeerUnreachableError, ProtocolError
from ._events import Publisher, Subscriptions
from ._exporter import MetricsServer
from ._heartbeat import (
    PeerBeats,
    record_digest,
)
from ._heartbeats import Heartbeats, close_datagrams
from ._links import Link, Links
from ._metrics import (
    ACKED,
    GIVEN_UP,
    NACKED,
    PUSHED,
    RECEIVED,
    REDELIVERED,
    PeerStatistics,
    ServiceCounts,
    cap_peers,
)
from ._producer import ProducerSide, Route
from ._ratelimit import RateLimitedLog
from ._streams import YIELD_EVERY, PeerWatch, Subscription, TaskStream
from ._types import DeadLetter, Endpoints, NodeStatistics, PeerHealth, Settings
from ._wire import Envelope, Hello, Kind, pack, topic_channel
from ._worker import WorkerSide
from ._zmq import AsyncSocket, Outbox, SocketOp, ZmqSocket

logger = logging.getLogger("mesh")
# A peer that has not said READY this long after it joined is said HELLO again, then at doubling
# intervals up to the last (seconds): on a loaded 2-core machine a 32-node mesh takes 4 to 10 s
# to wire fully, so the first HELLOs again are often redundant, and harmless.
_READY_WAIT_FIRST: Final = 3.0
_READY_WAIT_LAST: Final = 60.0


class _HeartbeatWiring:
    """Heartbeats' view of the node (`HeartbeatWiring`)."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    def peers(self) -> Iterable[PeerRecord]:
        return [peer.record for peer in self._node._peers]

    def is_peer(self, node_id: bytes) -> bool:
        return node_id in self._node._peers

    def stranger(self, node_id: bytes) -> None:
        # A peer forgotten while it was frozen, now back: say HELLO again, once.
        address = self._node._forgotten.pop(node_id, None)
        if address is not None:
            self._node._introduce(address, again=True)

    def host_for(self, record: PeerRecord) -> str:
        return self._node._host_for(record)

    def load(self) -> int:
        return self._node._worker.load

    def record_digest(self) -> bytes:
        return self._node._record_digest

    def publish_beat(self, body: Any) -> None:
        self._node._publish_nowait(None, Kind.HEARTBEAT, None, body)

    def published_bye(self, envelope: Envelope) -> None:
        self._node._on_published_bye(envelope)

    def set_credit(self, peer_id: bytes, credit: int) -> None:
        self._node._producer.dispatcher.set_credit(peer_id, credit)

    def check_record(self, peer_id: bytes, beats: PeerBeats, digest: bytes, now: float) -> None:
        self._node._check_record(peer_id, beats, digest, now)

    def verdicts(self, transitions: Sequence[Transition]) -> None:
        self._node._apply_liveness(transitions)

    def bad_frame(self, exc: ProtocolError, where: str) -> None:
        self._node._bad_frame(exc, where)


class _ProducerWiring:
    """The producer side's view of the node (`ProducerWiring`): its peers' links, its id."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    def ready_workers(self, service: str) -> dict[bytes, Route]:
        return self._node._ready_workers(service)

    def pack_task(self, seq: int, meta: list[Any], body: Any) -> bytes:
        return pack(Kind.TASK, self._node._id, seq, meta, body)


class _WorkerWiring:
    """The worker side's view of the node (`WorkerWiring`): its links, its record, its id."""

    __slots__ = ("_node",)

    def __init__(self, node: Node) -> None:
        self._node = node

    def outbox_to(self, peer_id: bytes) -> tuple[Outbox, Callable[[], int]] | None:
        link = self._node._link_of(peer_id)
        return None if link is None else (link.outbox, link.next_seq)

    def send_to_peer(self, peer_id: bytes, kind: Kind, meta: list[Any]) -> bool:
        node = self._node
        peer = node._peers.get(peer_id)
        return peer is not None and node._send_direct(node._reach(peer.record), kind, meta, None)

    def offer(self, services: Iterable[str]) -> None:
        self._node._set_services(services)

    def pack(self, kind: Kind, seq: int, meta: list[Any]) -> bytes:
        return pack(kind, self._node._id, seq, meta, None)


class Node:
    """A member of a mesh. Made only by `open_node`, and usable only inside its ``async with``.

    After the node has closed, its methods raise `trio.ClosedResourceError`.
    """

    def __init__(
        self,
        context: zmq.Context[Any],
        *,
        name: str,
        mesh: str,
        hosts: Sequence[str],
        pub_port: int,
        pull_port: int,
        settings: Settings,
        dead_letter: Callable[[DeadLetter], None] | None = None,
    ) -> None:
        self._context = context
        self._settings = settings
        self._id = os.urandom(_wire.NODE_ID_SIZE)
        self._closing = False
        self._leaving: set[bytes] = set()  # peers that said goodbye on the PUB only, so far
        self._state_reasons: dict[bytes, str] = {}  # why each peer is in its state
        self._nursery: trio.Nursery | None = None
        self._mdns: Mdns | None = None
        self._announced: dict[bytes, str] = {}  # node id -> inbox address, as mDNS announced
        self._seeds: set[str] = set()
        self._watchers: list[PeerWatch] = []
        self._log = RateLimitedLog(logger)
        ipv6 = any(":" in host for host in hosts)
        networks = [interface_network(host) for host in hosts]
        self._networks = networks

        # XPUB rather than PUB for XPUB_NODROP: a full subscriber pipe makes sends fail (so the
        # publisher waits) instead of dropping events. Plain SUB sockets talk to it unchanged.
        pub = self._socket(zmq.XPUB, ipv6)
        pub.setsockopt(zmq.SNDHWM, settings.event_hwm)
        pub.setsockopt(zmq.XPUB_NODROP, int(settings.event_backpressure))
        # No ZMTP heartbeats here: a subscriber that is only slow stops reading its TCP
        # connection once its pipe is full, so it would miss the PINGs too, and the heartbeat
        # would cut it off, losing its queued events (measured; docs/decisions.md).
        pull = self._socket(zmq.PULL, ipv6)
        pull.setsockopt(zmq.MAXMSGSIZE, _wire.MAX_FRAME_SIZE)
        pull.setsockopt(zmq.RCVHWM, max(1000, settings.receive_batch))
        # Two SUB sockets, both connected to every peer's PUB: events, which a slow reader may
        # hold back (backpressure), and control, which nothing may hold back.
        sub = self._socket(zmq.SUB, ipv6)
        sub.setsockopt(zmq.MAXMSGSIZE, _wire.MAX_FRAME_SIZE)
        sub.setsockopt(zmq.RCVHWM, settings.event_hwm)
        control = self._socket(zmq.SUB, ipv6)
        control.setsockopt(zmq.MAXMSGSIZE, _wire.MAX_FRAME_SIZE)
        control.setsockopt(zmq.SUBSCRIBE, _wire.CONTROL_CHANNEL)
        actual_pub = bind(pub, hosts, pub_port)
        actual_pull, datagrams = bind_inbox(pull, hosts, pull_port)
        try:
            self._record = PeerRecord(
                id=self._id,
                name=name,
                mesh=mesh,
                host=hosts[0],
                pub_port=actual_pub,
                pull_port=actual_pull,
                extra_hosts=tuple(hosts[1:]),
            )
        except BaseException:
            close_datagrams(datagrams)  # the ZeroMQ sockets go with the context
            raise
        self._record_digest = record_digest(self._record)  # what heartbeats say of it (`rec`)

        self._publisher = Publisher(pub, self._id, settings.peer_queue)
        self._pub = self._publisher.outbox
        # The inbox's owner is never handed ops (`call_soon`): its waits need no cancel scope.
        self._pull = AsyncSocket(pull, interruptible=False)
        self._peers = PeerMap(self._id, mesh)
        self._links = Links(
            self._socket,
            queue=settings.peer_queue,
            on_room=self._wake_pushers,
            on_dropped=self._on_link_dropped,
            dropped_grace=_GOODBYE_GRACE,
        )
        self._batching: set[bytes] = set()  # peers whose inbox takes BATCH frames (their HELLO)
        self._reach_cache: dict[bytes, tuple[PeerRecord, str]] = {}  # id -> (record, _reach)
        self._peers_changed = trio.lowlevel.ParkingLot()
        self._ready_peers: set[bytes] = set()  # peers whose subscriptions are live here
        self._greeting: set[bytes] = set()  # peers this node is making its subscriptions live at
        self._forgotten: dict[bytes, str] = {}  # dead long enough: id -> inbox address
        self._unyielded = 0
        self._counts = dict.fromkeys(
            (
                "events_published",
                "events_received",
                "events_dropped",
                "tasks_duplicate",
                "acks_sent",
                "nacks_sent",
                "heartbeat_datagrams",
                "bad_frames",
            ),
            0,
        )
        self._bad_reasons: dict[str, int] = {}
        # For operators (`statistics`): bytes by socket, as they cross it (sent bytes are
        # counted by each `Outbox`; those of closed links are added up here).
        self._bytes_in = dict.fromkeys(("inbox", "events", "control", "udp"), 0)
        self._services = ServiceCounts(max_name=_wire.MAX_NAME_SIZE)
        self._inbox_now = 0.0  # when the inbox batch being handled was read (acks' arrival)
        self._metrics_address: str | None = None
        self._events = Subscriptions(
            sub,
            self._id,
            buffer=settings.subscription_buffer,
            backpressure=settings.event_backpressure,
            sync_timeout=settings.sync_timeout,
            linger=_EVENTS_LINGER,
            counts=self._counts,
            receive=self._receive,
            probe=self._probe,
        )
        # The control SUB is read by polling from the heartbeat loop: no task waits on its FD,
        # so it is connected and disconnected directly (`Heartbeats.control_op`).
        self._heartbeats = Heartbeats(
            _HeartbeatWiring(self),
            self._id,
            detector=settings.detector,
            credit=settings.prefetch,
            receive_batch=settings.receive_batch,
            datagrams=datagrams,
            networks=networks,
            control=control,
            counts=self._counts,
            bytes_in=self._bytes_in,
            log=self._log,
        )
        self._producer = ProducerSide(
            _ProducerWiring(self),
            max_in_flight=settings.max_in_flight,
            ack_timeout=settings.ack_timeout,
            max_attempts=settings.max_attempts,
            dead_letter=dead_letter,
            services=self._services,
            log=self._log,
        )
        self._worker = WorkerSide(
            _WorkerWiring(self),
            dedup_window=settings.dedup_window,
            counts=self._counts,
            services=self._services,
            log=self._log,
        )

    # -- public surface ----------------------------------------------------------------------

    @property
    def id(self) -> str:
        """This node's id, 32 hex digits, new at every start."""
        return self._id.hex()

    @property
    def name(self) -> str:
        return self._record.name

    @property
    def mesh(self) -> str:
        return self._record.mesh

    @property
    def record(self) -> PeerRecord:
        """What this node tells its peers about itself."""
        return self._record

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(self._record.pub_endpoint, self._record.pull_endpoint)

    @property
    def address(self) -> str:
        """``host:port`` of this node's inbox: what another node passes to `connect` or `seeds`."""
        return self._record.address

    @property
    def peers(self) -> dict[str, Peer]:
        """A snapshot of the known peers, by id (hex)."""
        return {peer.id: peer for peer in self._peers}

    def health(self) -> dict[str, PeerHealth]:
        """How each known peer is doing, by id (hex): when it was last heard, the failure
        detector's verdict and why, its load and the round trip to it. A snapshot."""
        now = trio.current_time()
        tracked = self._heartbeats.snapshot(now)
        health = {}
        for peer in self._peers:
            peer_id = peer.record.id
            status = tracked.get(peer_id)
            beats = self._heartbeats.beats.get(peer_id)
            health[peer.id] = PeerHealth(
                last_heard=0.0 if status is None else max(0.0, now - status.last_heard),
                phi=0.0 if status is None else status.phi,
                reason=self._state_reasons.get(peer_id, "joined"),
                load=None if beats is None else beats.load,
                rtt=None if beats is None else beats.rtt,
            )
        return health

    def statistics(self) -> NodeStatistics:
        """What this node has counted since it opened, and its queues now: a snapshot
        (`NodeStatistics` describes each figure). Works after the node has closed, too."""
        dispatcher = self._producer.dispatcher
        peer_rows = []
        for peer in self._peers:
            link = self._links.get(self._reach(peer.record))
            peer_rows.append(
                (
                    peer.id,
                    PeerStatistics(
                        peer.record.name,
                        0 if link is None else len(link.outbox),
                        dispatcher.in_flight(peer.record.id),
                    ),
                )
            )
        services = self._services.snapshot()
        totals = [sum(column) for column in zip(*self._services.rows(), strict=True)] or [0] * 7
        return NodeStatistics(
            peers=len(self._peers),
            tasks_in_flight=dispatcher.in_flight(),
            bad_frame_reasons=dict(self._bad_reasons),
            bytes_received=dict(self._bytes_in),
            bytes_sent={
                "pub": self._pub.bytes_sent,
                "push": self._links.bytes_sent,
                "udp": self._heartbeats.udp_bytes_sent,
            },
            events_queued=len(self._pub),
            redelivery_queued=self._producer.redelivery_queued,
            peer_queues=cap_peers(peer_rows),
            ack_latency=self._producer.ack_latency.snapshot(),
            heartbeat_rtt=self._heartbeats.rtt.snapshot(),
            services=services,
            # (The task totals are the per-service table's: counted once, at one place a task.)
            tasks_pushed=totals[PUSHED],
            tasks_acked=totals[ACKED],
            tasks_nacked=totals[NACKED],
            tasks_redelivered=totals[REDELIVERED],
            tasks_given_up=totals[GIVEN_UP],
            tasks_received=totals[RECEIVED],
            **self._counts,
        )

    @property
    def metrics_address(self) -> str | None:
        """``host:port`` where this node serves ``GET /metrics`` (`open_node`'s
        `metrics_port`), or None if it does not."""
        return self._metrics_address

    def _statistics_unless_closing(self) -> NodeStatistics | None:
        """For the metrics server, in the node's trio thread: None once the node is closing."""
        return None if self._closing else self.statistics()

    def __repr__(self) -> str:
        state = " closed" if self._closing else ""
        return (
            f"<Node {self.name} {self.id[:8]}{state} peers={len(self._peers)}"
            f" inflight={self._producer.dispatcher.in_flight()}>"
        )

    async def publish(self, topic: str, body: Any) -> None:
        """Publish an event to every peer subscribed to a prefix of `topic`.

        Returns once ZeroMQ has the event. With `Settings.event_backpressure` (the default) it
        waits while a subscriber connection is full, so nothing is lost on the way; cancelling
        that wait publishes nothing. Raises `TypeError` for a body msgpack cannot carry, and
        `ValueError` for a topic that is not 1024 bytes of UTF-8 without NUL or an event larger
        than 16 MiB.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        await self._publisher.publish(topic_channel(topic), body, self._check_open)
        self._counts["events_published"] += 1
        await self._maybe_yield()

    @asynccontextmanager
    async def subscribe(self, prefix: str) -> AsyncIterator[Subscription]:
        """Receive events whose topic starts with `prefix` (``""`` for all).

        Entering waits (at most `Settings.sync_timeout`) until every peer known now has confirmed
        that the subscription is live there, so events those peers publish after this returns
        are not lost to ZeroMQ's slow-joiner gap.
        """
        self._check_open()
        peers = [peer.record.id for peer in self._peers]
        async with self._events.subscribe(prefix, peers) as subscription:
            yield subscription

    async def push(self, service: str, body: Any, *, timeout: float = math.inf) -> None:
        """Send one task to a peer that offers `service`.

        Waits while no known peer offers it or every one that does already holds
        `Settings.max_in_flight` of this node's tasks. Returns once the task is handed to that
        peer's outbox; its ack is counted in `statistics()`. Raises `NoWorkerError` when
        `timeout` seconds pass first, `TypeError` for a body msgpack cannot carry.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        _check_service(service)
        producer = self._producer
        chosen = producer.pick(service)
        if chosen is None:
            chosen = await producer.wait_for_worker(service, timeout, self._check_open)
        worker, route = chosen
        producer.send(worker, route, producer.dispatcher.new_task_id(), service, 1, body)
        self._services.row(service)[PUSHED] += 1
        await self._maybe_yield()

    async def wait_settled(self) -> None:
        """Wait until every task this node has pushed so far is acked, or given up on."""
        await self._producer.wait_settled(self._check_open)

    @asynccontextmanager
    async def work(self, service: str) -> AsyncIterator[TaskStream]:
        """Offer `service` to the mesh and receive its tasks.

        Peers learn of the service at once (an UPDATE to each). Leaving the block withdraws it and
        nacks the tasks not yet taken. One stream per service per node: a second raises
        `ValueError`; after `drain`, `trio.ClosedResourceError`.
        """
        self._check_open()
        _check_service(service)
        async with self._worker.work(service, lambda: self._closing) as stream:
            yield stream

    async def drain(self, grace: float = 10.0) -> None:
        """Stop taking work and let the tasks in hand finish, as before a graceful exit.

        Every service is withdrawn at once (peers send no more tasks here), each `TaskStream`
        ends (so ``async for task in stream`` loops finish once the tasks they hold are done),
        and tasks received but not yet taken go back to their senders, which send them to other
        workers straight away. Then this waits up to `grace` seconds for the tasks already taken
        to be settled; those still running after that are nacked, so they move too (a late ack
        of such a task is ignored). The node stays open: it can still publish, subscribe and
        push, but `work` raises `trio.ClosedResourceError`. Closing the node afterwards says
        goodbye as usual. Calling it again waits again.
        """
        self._check_open()
        await self._worker.drain(grace)

    async def connect(self, address: str, *, timeout: float | None = None) -> Peer:
        """Peer with the node whose inbox is at `address` (``host:port``), with no discovery.

        The two exchange records (HELLO/WELCOME) and the peers each knows, so one address joins
        this node to the whole mesh. Returns the peer once it is known. Raises `ValueError` for
        an address that is not ``host:port``, `PeerUnreachableError` when no node answers within
        `timeout` (default `Settings.connect_timeout`).
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        address = format_address(*parse_address(address))
        if address in self._record.addresses:
            raise ValueError("a node cannot connect to itself")
        if timeout is None:
            timeout = self._settings.connect_timeout
        self._introduce(address)
        with trio.move_on_after(timeout):
            while (peer := self._peers.by_address(address)) is None:
                await self._peers_changed.park()
            return peer
        raise PeerUnreachableError(address, timeout)

    async def wait_for_peers(
        self,
        count: int | None = None,
        *,
        names: Iterable[str] = (),
        service: str | None = None,
        timeout: float = math.inf,
    ) -> list[Peer]:
        """Wait until at least `count` peers are known and every name in `names` is among them
        (with neither given: one peer), wired both ways: their subscriptions are live here (they
        said READY), so no event this node publishes after this returns is lost to ZeroMQ's
        slow-joiner gap, and this node's subscriptions are live at them, so none of theirs is
        either. With `service`, only peers offering that service count.

        Returns the peers that count. Raises `MissingPeersError` when `timeout` seconds pass
        first.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        wanted = set(names)
        if count is None:
            count = 0 if wanted else 1
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline):
            while (missing := self._missing(count, wanted, service)) is not None:
                await self._peers_changed.park()
                self._check_open()
            peers = self._counted(service)
            await self._events.sync(self._events.prefixes(), [peer.record.id for peer in peers])
            return peers
        raise MissingPeersError(missing or "subscriptions not confirmed", timeout)

    def watch_peers(self) -> PeerWatch:
        """Membership changes from now on: `PeerJoined`, `PeerUpdated`, `PeerLeft` (with its
        reason), in order. Use ``async with node.watch_peers() as changes: async for change in
        changes``, or iterate it directly; it stops when the node closes. Holds at most
        `Settings.subscription_buffer` changes for a slow reader, then drops the oldest and counts
        them in `dropped`."""
        self._check_open()
        watch = PeerWatch(self._settings.subscription_buffer, self._watchers.remove)
        self._watchers.append(watch)
        return watch

    # -- tasks -------------------------------------------------------------------------------

    def _start(self, nursery: trio.Nursery, seeds: Iterable[str]) -> None:
        self._nursery = nursery
        self._links.start(nursery)
        nursery.start_soon(self._pub.run)
        nursery.start_soon(self._publisher.drain_notices)
        nursery.start_soon(self._serve_inbox)
        self._events.start(nursery)
        nursery.start_soon(self._heartbeats.serve)
        nursery.start_soon(self._heartbeats.judge)
        nursery.start_soon(self._producer.serve_redeliveries)
        nursery.start_soon(self._producer.expire_tasks)
        for seed in seeds:
            address = format_address(*parse_address(seed))
            if address not in self._record.addresses:
                self._seeds.add(address)
                self._introduce(address)

    def _discover(self, nursery: trio.Nursery, mdns: Mdns) -> None:
        self._mdns = mdns
        nursery.start_soon(self._serve_discovery, mdns)

    async def _serve_discovery(self, mdns: Mdns) -> None:
        """Say HELLO to every node of this mesh that mDNS announces. mDNS alone never makes a
        peer (the HELLO exchange does), nor unmakes one: an mDNS goodbye is unauthenticated
        multicast that anyone on the link could send, so for a known peer it is only a hint
        (for failure detection); BYE from the peer itself is what ends it."""
        async with trio.open_nursery() as nursery:
            async for event in mdns.events:
                if isinstance(event, Announced):
                    announcement = event.announcement
                    if (
                        announcement.mesh == self.mesh
                        and announcement.id != self._id
                        and announcement.address not in self._record.addresses
                        and announcement.id not in self._peers
                    ):
                        self._announced[announcement.id] = announcement.address
                        self._introduce(announcement.address, again=True)
                        nursery.start_soon(self._forget_if_unanswered, announcement.address)
                elif isinstance(event, Refused):
                    self._log.warning(
                        "mdns-refused",
                        trio.current_time(),
                        "ignoring an mDNS announcement (%s): %s",
                        event.name,
                        event.reason,
                    )
                elif event.node_id is not None:
                    address = self._announced.pop(event.node_id, None)
                    if address is not None:
                        self._forget_link_without_peer(address)

    async def _forget_if_unanswered(self, address: str) -> None:
        """An announced node that has not answered HELLO within `Settings.connect_timeout` gets
        its link closed (it is tried again if announced again); seeds are kept."""
        await trio.sleep(self._settings.connect_timeout)
        self._forget_link_without_peer(address)

    def _forget_link_without_peer(self, address: str) -> None:
        if address not in self._seeds and self._peers.by_address(address) is None:
            self._unlink(address)

    def _check_record(self, sender: bytes, beats: PeerBeats, digest: bytes, now: float) -> None:
        """A peer's beat tells the digest of its record: if the record held here has differed
        from it for a while, an UPDATE went missing (dropped by a full outbox, say), so say
        HELLO again: its WELCOME brings the record (docs/protocol.md §11)."""
        peer = self._peers.get(sender)
        if peer is not None and beats.record_differs(peer.record, digest, now):
            logger.info(
                "%s's heartbeats tell of a record this node does not hold; asking for it",
                peer.record.name,
            )
            self._introduce(self._reach(peer.record), again=True)

    def _apply_liveness(self, transitions: Sequence[Transition]) -> None:
        now = trio.current_time()
        for transition in transitions:
            self._log_state(transition, now)
            if transition.new is Liveness.FORGOTTEN:
                peer = self._peers.get(transition.peer)
                if peer is not None:
                    self._forgotten[transition.peer] = self._reach(peer.record)
                    while len(self._forgotten) > _FORGOTTEN_KEPT:
                        del self._forgotten[next(iter(self._forgotten))]
                self._apply(self._peers.remove(transition.peer, "dead"))
            elif transition.new is not Liveness.LEFT:
                state = _PEER_STATES[transition.new]
                self._state_reasons[transition.peer] = transition.reason
                self._apply(self._peers.set_state(transition.peer, state, transition.reason, now))
                if state is PeerState.DEAD:
                    self._reclaim(transition.peer)

    def _log_state(self, transition: Transition, now: float) -> None:
        """Log a liveness change of a known peer (INFO, with its evidence)."""
        if not logger.isEnabledFor(logging.INFO):
            return
        peer = self._peers.get(transition.peer)
        if peer is not None:
            line = _peerlog.state_changed(peer.record, transition, now)
            if line is not None:
                _log_peer(line)

    def _reclaim(self, worker: bytes) -> None:
        """A worker died: what it held unacked, and the tasks still waiting in its outbox, go to
        other workers (if it comes back and acks some of them too, at-least-once allows it).
        The rest of its outbox stays: a death can be wrong (the peer may be only slow, as when
        a loaded mesh forms), and a WELCOME or READY dropped here would not be sent again."""
        link = self._link_of(worker)
        if link is not None:
            link.outbox.discard(_is_task)
        self._producer.forget_worker(worker, "worker dead")

    async def _serve_inbox(self) -> None:
        handlers = {
            Kind.TASK: self._worker.on_task,
            Kind.ACK: self._on_settled,
            Kind.NACK: self._on_settled,
            Kind.HELLO: self._on_hello,
            Kind.WELCOME: self._on_hello,
            Kind.UPDATE: self._on_update,
            Kind.BYE: self._on_bye,
            Kind.SYNC: self._on_sync,
            Kind.READY: self._on_ready,
            Kind.HEARTBEAT: self._heartbeats.on_inbox_heartbeat,
        }
        while batch := await self._receive(self._pull, _wire.decode_inbox_many, "inbox"):
            self._inbox_now = trio.current_time()
            for envelope in batch:
                handlers[envelope.kind](envelope)

    async def _receive(
        self, sock: AsyncSocket, decode: Callable[[bytes], list[Envelope]], where: str
    ) -> list[Envelope]:
        """The next batch of valid envelopes from `sock`, in order (a frame may carry several; bad
        frames are counted and dropped whole); an empty list once the socket is closed."""
        while True:
            try:
                frames = await sock.receive_batch(self._settings.receive_batch)
            except trio.ClosedResourceError:
                return []
            self._bytes_in[where] += sum(map(len, frames))
            batch: list[Envelope] = []
            for frame in frames:
                try:
                    batch += decode(frame)
                except ProtocolError as exc:
                    self._bad_frame(exc, where)
            if batch:
                return batch

    # -- inbox handlers (run in the inbox task; never block) ---------------------------------------

    def _on_settled(self, envelope: Envelope) -> None:
        self._producer.on_settled(envelope, self._inbox_now)

    def _on_hello(self, envelope: Envelope) -> None:
        hello = envelope.body
        assert isinstance(hello, Hello)
        known = envelope.sender in self._peers
        if not self._observe(hello.record):
            return
        if hello.batch:
            self._batching.add(envelope.sender)
        else:
            self._batching.discard(envelope.sender)
        link = self._links.get(self._reach(hello.record))
        if link is not None:
            link.outbox.coalesce = _wire.coalesce_direct if hello.batch else None
        if envelope.kind is Kind.HELLO:
            self._send_direct(
                self._reach(hello.record), Kind.WELCOME, None, self._hello().to_wire()
            )
            if known and self._nursery is not None and not self._closing:
                # A peer that says HELLO again may not have had this node's READY.
                self._nursery.start_soon(self._greet, envelope.sender)
        elif self._record.services:
            # Our HELLO may have left before a service was offered, and the UPDATE for it went
            # only to peers known then: make sure this one has our current record.
            self._send_direct(self._reach(hello.record), Kind.UPDATE, None, self._record.to_wire())
        for address in hello.peers:
            if address not in self._record.addresses and self._peers.by_address(address) is None:
                self._introduce(address)

    def _on_update(self, envelope: Envelope) -> None:
        assert isinstance(envelope.body, PeerRecord)
        if envelope.sender in self._peers:
            self._observe(envelope.body)

    def _on_bye(self, envelope: Envelope) -> None:
        """A goodbye in the inbox: it came after everything else the peer sent here (acks,
        nacks), on the same connection, so the peer can go at once."""
        self._leaving.discard(envelope.sender)
        self._apply(self._peers.remove(envelope.sender, "goodbye"))

    def _on_published_bye(self, envelope: Envelope) -> None:
        """A goodbye on the PUB may overtake the peer's last acks, which travel on the inbox
        connection: taking its tasks back now would send done work again. So it gets no new
        work at once, and goes when its inbox goodbye arrives, or after a grace period (the
        time a leaving node gives its last messages) for a peer that sends none."""
        if envelope.sender not in self._peers or envelope.sender in self._leaving:
            return
        self._leaving.add(envelope.sender)
        self._producer.capacity_changed()
        if self._nursery is not None and not self._closing:
            self._nursery.start_soon(self._forget_leaving, envelope.sender)

    async def _forget_leaving(self, peer_id: bytes) -> None:
        await trio.sleep(self._settings.goodbye_timeout + _GOODBYE_GRACE)
        if peer_id in self._leaving:
            self._leaving.discard(peer_id)
            self._apply(self._peers.remove(peer_id, "goodbye"))

    def _on_ready(self, envelope: Envelope) -> None:
        if envelope.sender in self._peers:
            self._ready_peers.add(envelope.sender)
            self._peers_changed.unpark_all()
            # Its heartbeats start now: a death from here on is judged as any other.
            self._heartbeats.wired(envelope.sender, trio.current_time())

    def _on_sync(self, envelope: Envelope) -> None:
        assert envelope.meta is not None
        token, prefix = envelope.meta
        try:
            channel = topic_channel(prefix)
        except ValueError:  # a NUL in the prefix: no subscription could match it anyway
            return
        self._publish_nowait(channel, Kind.SYNCED, [token, envelope.sender])

    def _publish_nowait(
        self, channel: bytes | None, kind: Kind, meta: list[Any] | None, body: Any = None
    ) -> None:
        """Publish a SYNCED (on an event channel) or a control message (channel None), unless
        the PUB outbox is full: a SYNC is resent, and a goodbye also goes to each inbox."""
        self._publisher.publish_nowait(channel, kind, meta, body)

    def _probe(self, peer_id: bytes, token: int, prefix: str) -> bool:
        """Send a SYNC for `prefix` to a known peer; False if it is gone."""
        peer = self._peers.get(peer_id)
        if peer is None:
            return False
        self._send_direct(self._reach(peer.record), Kind.SYNC, [token, prefix], None)
        return True

    # -- peers and links -----------------------------------------------------------------------

    def _observe(self, record: PeerRecord) -> bool:
        try:
            events = self._peers.observe(record, trio.current_time())
        except ForeignMeshError:
            self._log.warning(
                "foreign-mesh",
                trio.current_time(),
                "ignoring node %s at %s: it belongs to mesh %r, this node to %r",
                record.name,
                record.address,
                record.mesh,
                self.mesh,
            )
            return False
        self._apply(events)
        return True

    def _apply(self, events: Sequence[PeerEvent]) -> None:
        """Carry out what the peer map decided: wire, rewire or unwire sockets; tell watchers."""
        for event in events:
            for watcher in self._watchers:
                watcher._offer(event)
            if isinstance(event, PeerJoined):
                record = event.peer.record
                self._link(self._reach(record))
                self._events.connect(self._pub_endpoint(record))
                self._heartbeats.control_op(_connect(self._pub_endpoint(record)))
                if self._nursery is not None and not self._closing:
                    self._nursery.start_soon(self._greet, record.id)
                    self._nursery.start_soon(self._await_ready, record.id)
                # Joining is its first sign of life: a peer that dies before its first heartbeat
                # arrives is still judged (and one that never sends any is declared dead), with
                # time for its heartbeats to start (`first_heartbeat_grace`).
                self._heartbeats.joined(record.id, trio.current_time())
                _log_peer(_peerlog.joined(record))
            elif isinstance(event, PeerUpdated):
                old, new = event.previous, event.peer.record
                if self._pub_endpoint(old) != self._pub_endpoint(new):
                    self._events.disconnect(self._pub_endpoint(old))
                    self._events.connect(self._pub_endpoint(new))
                    self._heartbeats.control_op(_disconnect(self._pub_endpoint(old)))
                    self._heartbeats.control_op(_connect(self._pub_endpoint(new)))
                if self._reach(old) != self._reach(new):
                    self._unlink(self._reach(old))
                    link = self._link(self._reach(new))
                    if new.id in self._batching:
                        link.outbox.coalesce = _wire.coalesce_direct
            elif isinstance(event, PeerLeft):
                record = event.peer.record
                self._leaving.discard(record.id)
                self._events.disconnect_later(self._pub_endpoint(record), self._closing)
                self._heartbeats.control_op(_disconnect(self._pub_endpoint(record)))
                self._ready_peers.discard(record.id)
                self._batching.discard(record.id)
                self._heartbeats.forget(record.id)
                self._state_reasons.pop(record.id, None)
                self._unlink(self._reach(record))
                self._reach_cache.pop(record.id, None)
                self._producer.forget_worker(record.id, event.reason)
                _log_peer(_peerlog.left(record, event.reason))
        self._producer.capacity_changed()
        self._peers_changed.unpark_all()

    def _reach(self, record: PeerRecord) -> str:
        """The peer's inbox address to use from here: at its first host on one of this node's
        networks (a node may be bound to several interfaces), else at its main host."""
        cached = self._reach_cache.get(record.id)
        if cached is not None and cached[0] is record:  # on every push and ack: worth keeping
            return cached[1]
        address = format_address(self._host_for(record), record.pull_port)
        self._reach_cache[record.id] = (record, address)
        return address

    def _pub_endpoint(self, record: PeerRecord) -> str:
        return tcp_endpoint(self._host_for(record), record.pub_port)

    def _host_for(self, record: PeerRecord) -> str:
        if record.extra_hosts:
            for host in record.hosts:
                ip = ipaddress.ip_address(host)
                if any(ip in network for network in self._networks):
                    return host
        return record.host

    def _on_link_dropped(self, link: Link) -> None:
        """A dropped connection to a peer's inbox is a hint that it crashed: the detector
        suspects it almost at once; silence then confirms."""
        self._heartbeats.take()  # the goodbye on the PUB, if that is the way it came
        peer = self._peers.by_address(link.address)
        if peer is not None and peer.record.id not in self._leaving:
            self._heartbeats.disconnected(peer.record.id, trio.current_time())

    def _link(self, address: str) -> Link:
        return self._links.open(address)

    def _unlink(self, address: str) -> None:
        self._links.close(address)

    def _introduce(self, address: str, *, again: bool = False) -> None:
        """Send HELLO to the inbox at `address`; it is delivered whenever that node is up. Only
        once per link unless `again` (a new node announced itself at a known address)."""
        if again or address not in self._links:
            self._send_direct(address, Kind.HELLO, None, self._hello().to_wire())

    def _hello(self) -> Hello:
        known = tuple(self._reach(peer.record) for peer in self._peers)
        return Hello(self._record, known, batch=True)

    def _send_direct(self, address: str, kind: Kind, meta: list[Any] | None, body: Any) -> bool:
        node_id = self._id
        if self._links.send(address, lambda seq: pack(kind, node_id, seq, meta, body)):
            return True
        self._log.warning(
            "outbox-full",
            trio.current_time(),
            "outbox to %s is full; dropped a %s message",
            address,
            kind.name,
        )
        return False

    def _set_services(self, services: Iterable[str]) -> None:
        self._record = self._record.with_services(services)
        self._record_digest = record_digest(self._record)
        body = self._record.to_wire()
        for peer in self._peers:
            self._send_direct(self._reach(peer.record), Kind.UPDATE, None, body)
        if self._mdns is not None and self._nursery is not None:
            self._nursery.start_soon(self._mdns.advertise, self._record)

    def _ready_workers(self, service: str) -> dict[bytes, Route]:
        """The live peers offering `service` whose outbox has room, in the order they started
        offering it, each with its link (`Dispatcher.pick` chooses among them)."""
        ready: dict[bytes, Route] = {}
        for worker in self._peers.offering(service):
            peer = self._peers.get(worker)
            if peer is None or peer.state is not PeerState.ALIVE or worker in self._leaving:
                continue  # suspect, dead or leaving: no new work
            link = self._links.get(self._reach(peer.record))
            if link is not None and link.outbox.has_room():
                ready[worker] = link
        return ready

    def _link_of(self, peer_id: bytes) -> Link | None:
        """The link to a known peer's inbox, if there is one."""
        peer = self._peers.get(peer_id)
        return None if peer is None else self._links.get(self._reach(peer.record))

    async def _greet(self, peer_id: bytes) -> None:
        """Make this node's subscriptions live at a new peer, then tell it so (READY): its
        `wait_for_peers` counts this node only then, so its first events are not lost. Also
        when a known peer says HELLO again (it may have missed the READY); once at a time."""
        if peer_id in self._greeting:
            return
        self._greeting.add(peer_id)
        try:
            await self._events.sync(self._events.prefixes(), [peer_id])
            peer = self._peers.get(peer_id)
            if peer is not None:
                self._send_direct(self._reach(peer.record), Kind.READY, None, None)
        finally:
            self._greeting.discard(peer_id)

    async def _await_ready(self, peer_id: bytes) -> None:
        """Say HELLO again, at growing intervals, to a peer that has not said READY: it may not
        know this node at all. One lost HELLO or WELCOME, with the mDNS announcement missed
        too, left two nodes of a 32-node mesh under load without each other for good, each
        known to the other thirty (docs/decisions.md). A HELLO makes a peer that does not know
        this node join it, and one that does greet it again (`_on_hello`)."""
        interval = _READY_WAIT_FIRST
        while True:
            with trio.move_on_after(interval):
                while peer_id not in self._ready_peers:
                    if peer_id not in self._peers:
                        return  # gone (and if it comes back, it is awaited afresh)
                    await self._peers_changed.park()
                return
            peer = self._peers.get(peer_id)
            if peer is None:
                return
            logger.debug("no READY from %s after %g s: HELLO again", peer.record.name, interval)
            self._introduce(self._reach(peer.record), again=True)
            interval = min(2 * interval, _READY_WAIT_LAST)

    # -- helpers -------------------------------------------------------------------------------

    def _socket(self, kind: int, ipv6: bool) -> ZmqSocket:
        sock: ZmqSocket = self._context.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        if ipv6:
            sock.setsockopt(zmq.IPV6, 1)
        return sock

    def _counted(self, service: str | None) -> list[Peer]:
        """The peers `wait_for_peers` counts: ready ones (READY received), offering `service`."""
        return [
            peer
            for peer in self._peers
            if peer.record.id in self._ready_peers and (service is None or service in peer.services)
        ]

    def _missing(self, count: int, names: set[str], service: str | None) -> str | None:
        peers = self._counted(service)
        absent = names - {peer.name for peer in peers}
        offering = "" if service is None else f" offering {service!r}"
        if absent:
            return f"no peer named {', '.join(sorted(absent))}{offering}"
        if len(peers) < count:
            return f"{len(peers)} of {count} peers{offering}"
        return None

    def _wake_pushers(self) -> None:
        # (Called at every flush of an outbox that was full or is empty.)
        self._producer.capacity_changed()

    def _check_open(self) -> None:
        if self._closing:
            raise trio.ClosedResourceError("the node is closed")

    async def _maybe_yield(self) -> None:
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    def _bad_frame(self, exc: ProtocolError, where: str) -> None:
        self._counts["bad_frames"] += 1
        self._bad_reasons[exc.reason] = self._bad_reasons.get(exc.reason, 0) + 1
        self._log.warning(
            "bad:" + exc.reason,
            trio.current_time(),
            "dropped a bad frame on the %s: %s",
            where,
            exc,
        )

    async def _say_goodbye(self) -> None:
        """Tell every peer this node is leaving, then stop all its work. Bounded and shielded."""
        if self._closing:
            return
        self._closing = True
        with trio.CancelScope(shield=True) as scope:
            scope.deadline = trio.current_time() + self._settings.goodbye_timeout
            self._worker.stop()
            self._publish_nowait(None, Kind.BYE, None)
            for peer in self._peers:
                self._send_direct(self._reach(peer.record), Kind.BYE, None, None)
            for link in list(self._links.values()):
                await link.outbox.wait_empty()
            await self._pub.wait_empty()
        self._events.end()
        for watch in list(self._watchers):
            watch._end()
        self._producer.wake_all()
        self._peers_changed.unpark_all()

    def _close_sockets(self) -> None:
        linger = round(self._settings.goodbye_timeout * 1000)
        self._pub.socket.close(linger=linger)  # so the goodbye still goes out
        self._links.close_all(linger)
        self._pull.close()
        self._events.socket.close()
        self._heartbeats.close()


def _log_peer(line: _peerlog.PeerLogLine) -> None:
    logger.info("%s", line.message, extra=line.fields)


def _connect(endpoint: str) -> SocketOp:
    def op(sock: ZmqSocket) -> None:
        sock.connect(endpoint)

    return op


def _disconnect(endpoint: str) -> SocketOp:
    def op(sock: ZmqSocket) -> None:
        # A peer that never finished connecting raises ENOENT here; there is nothing to undo.
        with contextlib.suppress(zmq.ZMQError):
            sock.disconnect(endpoint)

    return op


def _is_task(envelope: bytes) -> bool:
    return _wire.packed_kind(envelope) == Kind.TASK


def _check_service(service: str) -> None:
    if not isinstance(service, str):
        raise TypeError(f"service must be str, not {type(service).__name__}")
    if not service or len(service.encode()) > _wire.MAX_NAME_SIZE:
        raise ValueError(f"service name must be 1 to {_wire.MAX_NAME_SIZE} bytes")


# How long the events SUB stays connected to a departed peer (see _unsubscribe_later).
_EVENTS_LINGER: Final = 2.0

# How long a dropped connection waits for a goodbye that may be on its way (see _watch_link).
_GOODBYE_GRACE: Final = 0.02


# How many forgotten peers a node remembers the address of, to greet them if they come back.
_FORGOTTEN_KEPT: Final = 1024

_PEER_STATES: Final = {
    Liveness.ALIVE: PeerState.ALIVE,
    Liveness.SUSPECT: PeerState.SUSPECT,
    Liveness.DEAD: PeerState.DEAD,
}


def _serve_metrics(node: Node, host: str, port: int) -> MetricsServer:
    try:
        return MetricsServer(
            host,
            port,
            node._statistics_unless_closing,
            trio.lowlevel.current_trio_token(),
            {"mesh": node.mesh, "node": node.name},
        )
    except OSError as exc:  # (socket.gaierror too: a host that is not an address)
        where = format_address(host, port)
        raise OSError(exc.errno, f"cannot serve metrics on {where}: {exc.strerror}") from exc


@asynccontextmanager
async def open_node(
    name: str | None = None,
    *,
    mesh: str = "default",
    interface: str | Iterable[str] = "127.0.0.1",
    pub_port: int = 0,
    pull_port: int = 0,
    seeds: Iterable[str] = (),
    discovery: str | Iterable[str] = "mdns",
    settings: Settings | None = None,
    dead_letter: Callable[[DeadLetter], None] | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
) -> AsyncIterator[Node]:
    """Open a node: bind its sockets, start its tasks, find its peers; close it all on exit.

    `interface` is the IP address every socket binds to, mDNS included (127.0.0.1 unless told
    otherwise: a LAN is asked for explicitly), or a list of them (the node listens on the same
    ports on each, and each peer uses the one on its own network), or `ALL_INTERFACES` for every
    IPv4 address of the machine but loopback. Ports are ephemeral unless given.
    `discovery` is ``"mdns"`` (the default: nodes of the same `mesh` on the interface's network
    find each other), ``"static"`` (only `seeds` and `Node.connect`, for networks without
    multicast), or both, as a list. `seeds` are ``host:port`` inbox addresses of other nodes
    (their `Node.address`), honoured either way: each is sent a HELLO in the background,
    delivered whenever that node is up. Raises `ValueError` for a bad name, interface, port,
    seed or discovery, and `OSError` when a port cannot be bound or mDNS cannot start on the
    interface. `dead_letter` is called (in the node's task: it must not block) with each task the
    node gives up on after `Settings.max_attempts`; by default they are logged. With
    `metrics_port` (0: an ephemeral one), the node serves its statistics for Prometheus
    (``GET /metrics``, docs/metrics.md) on `metrics_host` (loopback unless told otherwise) from
    a thread of its own, at `Node.metrics_address` (`ValueError` for a port out of range or a
    host that is not an IP address, `OSError` if the address cannot be bound). On exit
    the node says goodbye to its peers (bounded by `Settings.goodbye_timeout`), withdraws its
    mDNS record, stops its tasks and its metrics server, closes every socket and terminates its
    ZeroMQ context.
    """
    settings = settings or Settings()
    hosts = check_interfaces(interface)
    methods = {discovery} if isinstance(discovery, str) else set(discovery)
    if not methods or not methods <= {"mdns", "static"}:
        raise ValueError(f"discovery must be 'mdns', 'static' or both, not {discovery!r}")
    if (
        "mdns" in methods
        and all(ipaddress.ip_address(host).is_loopback for host in hosts)
        and (any(":" in host for host in hosts))
    ):
        raise ValueError(
            "mDNS does not work on the IPv6 loopback (python-zeroconf cannot use ::1): "
            "use discovery='static' there, or an IPv4 or LAN address"
        )
    seeds = list(seeds)
    for seed in seeds:
        parse_address(seed)
    if name is None:
        name = f"{stdlib_socket.gethostname()}-{os.getpid()}"
    if metrics_port is not None:
        if not 0 <= metrics_port <= 65535:
            raise ValueError(f"metrics_port must be 0 to 65535, not {metrics_port}")
        try:  # an IP address, never a name: looking one up could send a query off the machine
            ipaddress.ip_address(metrics_host)
        except ValueError:
            raise ValueError(f"metrics_host must be an IP address, not {metrics_host!r}") from None
    context: zmq.Context[Any] = zmq.Context()
    node: Node | None = None
    metrics: MetricsServer | None = None
    try:
        with ungrouped():  # the user's exception comes out as it went in, not in a group
            node = Node(
                context,
                name=name,
                mesh=mesh,
                hosts=hosts,
                pub_port=pub_port,
                pull_port=pull_port,
                settings=settings,
                dead_letter=dead_letter,
            )
            if metrics_port is not None:
                metrics = _serve_metrics(node, metrics_host, metrics_port)
                node._metrics_address = metrics.address
            async with AsyncExitStack() as stack:
                nursery = await stack.enter_async_context(trio.open_nursery())
                node._start(nursery, seeds)
                if "mdns" in methods:
                    node._discover(nursery, await stack.enter_async_context(open_mdns(node.record)))
                try:
                    yield node
                finally:
                    await node._say_goodbye()
                    nursery.cancel_scope.cancel()
    finally:
        if metrics is not None:
            # In a thread, and shielded: a scrape in progress may be waiting on this one.
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(metrics.close)
        if node is None:
            context.destroy(linger=0)  # Node() failed: close whatever it had opened
        else:
            node._close_sockets()
        with trio.CancelScope(shield=True):
            # Only sockets given a linger (the goodbyes) can keep term() waiting, and no longer.
            await trio.to_thread.run_sync(context.term)
