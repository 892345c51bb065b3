"""The node: a facade over components, one concern each (docs/architecture.md has the map).

`Node` holds the public API and the wiring: it creates the components, starts their tasks in its
nursery, and routes the inbox's messages to them by kind. The components: `Membership` (the peers,
and keeping the rest wired to them), `Links` (a PUSH per peer inbox), `Publisher` and
`Subscriptions` (events), `ProducerSide` and `WorkerSide` (work), `Heartbeats` (heartbeats and
liveness); binding is `_binding`'s. Each reaches the rest of the node only through the small
views of `_wiring`, or, for `Membership`, the public methods of the components it is given.

Each node has a PUB, an inbox (PULL), UDP sockets for heartbeats, two SUBs connected to every
known peer's PUB (events; heartbeats and goodbyes), and a PUSH per peer inbox:
docs/architecture.md says what each carries and why.

Only one task ever waits on a socket's FD: its owner. Other tasks send through an `Outbox` (its
owner task does the sending), change subscriptions and connections through
`AsyncSocket.call_soon`, or, for the sockets no task waits on (the control SUB and the UDP
sockets, read by polling from the heartbeat loop), call them directly. Nothing outlives
`open_node`: on exit the node says goodbye (bounded, shielded), cancels its tasks, closes its
sockets and terminates its ZeroMQ context.
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio
import zmq

from discovery import Peer, PeerRecord, format_contact, interface_network, tcp_endpoint

from . import _wire
from ._addresses import Addresses
from ._beatkeys import KEY_SIZE, BeatKeys
from ._binding import bind_sockets, socket_maker
from ._events import Subscriptions
from ._frames import Frames
from ._heartbeats import Heartbeats
from ._history import History
from ._introductions import Introductions
from ._keys import KeyPair
from ._limits import Limits
from ._links import Links
from ._members import AllowSource, Members
from ._membership import GOODBYE_GRACE, Membership
from ._metrics import (
    ServiceCounts,
)
from ._names import check_service
from ._producer import ProducerSide
from ._publisher import Publisher
from ._ratelimit import RateLimitedLog
from ._streams import YIELD_EVERY, PeerWatch, Subscription, TaskStream
from ._types import COUNTED, DeadLetter, Endpoints, NodeStatistics, PeerHealth, Settings
from ._udp import close_datagrams
from ._wiring import (
    HeartbeatView,
    ProducerView,
    WorkerView,
    inbox_handlers,
    send_direct,
    statistics_of,
)
from ._worker import WorkerSide
from ._zmq import AsyncSocket

logger = logging.getLogger("mesh")


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
        limits: Limits,
        dead_letter: Callable[[DeadLetter], None] | None = None,
        key: KeyPair | None = None,
        allow: AllowSource = (),
    ) -> None:
        self._context = context
        self._settings = settings
        self._id = os.urandom(_wire.NODE_ID_SIZE)
        self._closing = False
        self._nursery: trio.Nursery | None = None
        self._log = RateLimitedLog(logger)
        addresses = Addresses([interface_network(host) for host in hosts])
        self._counts = dict.fromkeys(COUNTED, 0)
        # Keyed: the ZAP handler is bound before any socket that asks it.
        members = None if key is None else Members(context, key, allow, self._counts, self._log)
        self._members = members

        make_socket = socket_maker(context, members)
        sockets = bind_sockets(
            make_socket, hosts, pub_port, pull_port, settings, keyed=members is not None
        )
        try:
            record = PeerRecord(
                id=self._id,
                name=name,
                mesh=mesh,
                host=hosts[0],
                pub_port=sockets.pub_port,
                pull_port=sockets.pull_port,
                extra_hosts=tuple(hosts[1:]),
                public_key=None if key is None else key.public,
            )
        except BaseException:
            close_datagrams(sockets.datagrams)  # the ZeroMQ sockets go with the context
            raise

        self._publisher = Publisher(
            sockets.pub,
            self._id,
            settings.peer_queue,
            endpoints=[tcp_endpoint(host, sockets.pub_port) for host in hosts],
            counts=self._counts,
            log=self._log,
            history=History(settings.history_events, settings.history_bytes),
            send_to=functools.partial(send_direct, self),
            patience=settings.slow_subscriber_timeout,
        )
        self._pub = self._publisher.outbox
        # The inbox's owner is never handed ops (`call_soon`): its waits need no cancel scope.
        self._pull = AsyncSocket(sockets.pull, interruptible=False)
        self._links = Links(
            make_socket,
            self._id,
            queue=settings.peer_queue,
            # (At every flush of an outbox that was full or is empty.)
            on_room=lambda: self._producer.capacity_changed(),
            max_links=limits.links,
            log=self._log,
            server_key=None if members is None else members.key_at,
        )
        self._unyielded = 0
        # For operators (`statistics`): bytes received by socket, and bad frames by reason (bytes
        # sent are counted by each `Outbox`).
        self._frames = Frames(settings.receive_batch, self._counts, self._log)
        self._services = ServiceCounts(max_name=_wire.MAX_NAME_SIZE)
        self._metrics_address: str | None = None
        self._events = Subscriptions(
            sockets.sub,
            self._id,
            settings=settings,
            counts=self._counts,
            receive=self._frames.receive,
            probe=lambda *probe: self._membership.probe(*probe),
            ask_history=functools.partial(send_direct, self),
            on_dropped=lambda peer_id: self._membership.on_dropped(peer_id),
            dropped_grace=GOODBYE_GRACE,
        )
        # The control SUB is read by polling from the heartbeat loop: no task waits on its FD,
        # so it is connected and disconnected directly (`Heartbeats.control_op`).
        self._heartbeats = Heartbeats(
            HeartbeatView(self),
            self._id,
            settings=settings,
            datagrams=sockets.datagrams,
            addresses=addresses,
            control=sockets.control,
            counts=self._counts,
            bytes_in=self._frames.bytes_in,
            log=self._log,
            beat_keys=None if members is None else BeatKeys(os.urandom(KEY_SIZE)),
        )
        self._producer = ProducerSide(
            ProducerView(self),
            self._id,
            max_in_flight=settings.max_in_flight,
            ack_timeout=settings.ack_timeout,
            max_attempts=settings.max_attempts,
            request_attempts=settings.request_attempts,
            outbox_limit=settings.outbox_limit,
            dead_letter=dead_letter,
            services=self._services,
            counts=self._counts,
            log=self._log,
        )
        self._membership = Membership(
            record,
            settings,
            addresses,
            max_peers=limits.peers,
            counts=self._counts,
            links=self._links,
            events=self._events,
            heartbeats=self._heartbeats,
            producer=self._producer,
            advertise=lambda record: self._introductions.advertise(record),
            heard_of=lambda addresses: self._introductions.heard_of(addresses),
            check_open=self._check_open,
            closing=lambda: self._closing,
            log=self._log,
            members=members,
        )
        self._introductions = Introductions(
            lambda: self._membership.record,
            self._membership.peers,
            self._membership.changed,
            self._links,
            lambda address, again, ask: self._membership.introduce(address, again=again, ask=ask),
            self._membership.reach,
            connect_timeout=settings.connect_timeout,
            log=self._log,
            learn=None if members is None else members.learn,
        )
        self._worker = WorkerSide(
            WorkerView(self),
            self._id,
            dedup_window=settings.dedup_window,
            credit=settings.prefetch,
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
        return self._membership.record.name

    @property
    def mesh(self) -> str:
        return self._membership.record.mesh

    @property
    def record(self) -> PeerRecord:
        """What this node tells its peers about itself."""
        return self._membership.record

    @property
    def endpoints(self) -> Endpoints:
        return Endpoints(
            self._membership.record.pub_endpoint, self._membership.record.pull_endpoint
        )

    @property
    def address(self) -> str:
        """``host:port`` of this node's inbox: what another node passes to `connect` or `seeds`."""
        return self._membership.record.address

    @property
    def contact(self) -> str:
        """`address`, and for a keyed node its public key in front (``KEY@host:port``): what
        another node passes to `connect` or `seeds`."""
        record = self._membership.record
        return format_contact(record.address, record.public_key)

    def reload_allow(self) -> None:
        """Read the allow list again (a keyed node's; `ValueError` or `OSError` if it cannot be
        read, and then nothing changes). Peers whose keys it no longer holds are dropped, and
        every connection made under the old list is cut: the node binds its listening sockets
        anew, and its members reconnect and are checked again."""
        self._check_open()
        if self._members is None:
            raise ValueError("this node is not keyed: it has no allow list")
        removed = self._members.reload()
        if removed:
            self._membership.drop_keys(removed)
            # The inbox checks each message against the list as it is now; the PUB's
            # subscribers are cut, to be checked again as they reconnect.
            assert self._nursery is not None
            self._nursery.start_soon(self._publisher.rebind)

    @property
    def peers(self) -> dict[str, Peer]:
        """A snapshot of the known peers, by id (hex)."""
        return {peer.id: peer for peer in self._membership.peers}

    def health(self) -> dict[str, PeerHealth]:
        """How each known peer is doing, by id (hex): when it was last heard, the failure
        detector's verdict and why, its load and the round trip to it. A snapshot."""
        health = self._heartbeats.health(trio.current_time())
        return {
            peer.id: health(peer.record.id, self._membership.sessions.reason(peer.record.id))
            for peer in self._membership.peers
        }

    def statistics(self) -> NodeStatistics:
        """What this node has counted since it opened, and its queues now: a snapshot
        (`NodeStatistics` describes each figure). Works after the node has closed, too."""
        return statistics_of(self)

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
            f"<Node {self.name} {self.id[:8]}{state} peers={len(self._membership.peers)}"
            f" inflight={self._producer.dispatcher.in_flight()}>"
        )

    async def publish(self, topic: str, body: Any) -> None:
        """Publish an event to every peer subscribed to a prefix of `topic`.

        Returns once ZeroMQ has the event. With `Settings.event_backpressure` (the default) it
        waits while a subscriber connection is full (a stalled one: `slow_subscriber_timeout`
        at most, then it repairs from history); cancelling that wait publishes nothing. Raises
        `TypeError` for a body msgpack cannot carry, `ValueError` for a topic that is not 1024
        bytes of UTF-8 without NUL or an event larger than 16 MiB.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        publisher = self._publisher
        channel = publisher.channel(topic)
        if not publisher.publish_nowait(channel, body):  # (no coroutine unless it must wait)
            await publisher.publish(channel, body, self._check_open)
        self._counts["events_published"] += 1
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:  # (not a coroutine per event: inline)
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    @asynccontextmanager
    async def subscribe(
        self, prefix: str, *, history: int = 0, since: float | None = None
    ) -> AsyncIterator[Subscription]:
        """Receive events whose topic starts with `prefix` (``""`` for all).

        Entering waits (at most `Settings.sync_timeout`) until every peer known now has confirmed
        that the subscription is live there, so events those peers publish after this returns
        are not lost to ZeroMQ's slow-joiner gap; items are `Message`s, or `Gap`s where events
        were missed for good. With `history` (a count) or `since` (a `time.time()`), it starts
        with each one's last events on `prefix`, then its live ones: none missing or repeated."""
        self._check_open()
        peers = [peer.record.id for peer in self._membership.peers]
        async with self._events.subscribe(prefix, peers, history, since) as subscription:
            yield subscription

    async def push(
        self, service: str, body: Any, *, timeout: float = math.inf, wait: bool = True
    ) -> None:
        """Send one task to a peer that offers `service`.

        Waits while no known peer offers it or every one that does already holds
        `Settings.max_in_flight` of this node's tasks. Returns once the task is handed to that
        peer's outbox; its ack is counted in `statistics()`. Raises `NoWorkerError` when
        `timeout` seconds pass first, `TypeError` for a body msgpack cannot carry.

        With a state directory (`open_node`'s `state_dir`) the task is written there first,
        and kept until it is acked or given up on: a node restarted on the directory sends it
        again. There, ``wait=False`` takes the task even while no worker has room (it is sent
        as soon as one has): `push` then waits only while the outbox holds
        `Settings.outbox_limit` tasks. Without a state directory ``wait=False`` raises
        `ValueError`.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        check_service(service)
        await self._producer.push(service, body, timeout, wait, self._check_open)

    async def request(self, service: str, body: Any, *, timeout: float | None = None) -> Any:
        """Send a request to a peer that serves `service` (`serve`) and return its reply.

        The provider is picked as for `push`. If it dies, leaves or hands the request back
        before it replies, the request goes to another (at most `Settings.request_attempts`
        sends in all), so this returns a reply or raises: `RemoteError` with the provider's
        error message (or when every attempt failed), `TimeoutError` when `timeout` seconds
        (default `Settings.request_timeout`; `math.inf` for none) pass first, `NoWorkerError`
        (a `TimeoutError` too) when no provider was there to send it to. The deadline travels
        with the request: a provider drops it once its caller has stopped waiting. A request
        may run twice when its provider dies after doing it and before its reply arrived.
        """
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        check_service(service)
        if timeout is None:
            timeout = self._settings.request_timeout
        return await self._producer.request(service, body, timeout, self._check_open)

    @asynccontextmanager
    async def serve(self, service: str) -> AsyncIterator[TaskStream]:
        """Offer `service` to the mesh and receive its requests (`Request`), and the tasks
        pushed to it, which a ``serve`` loop may answer alike: ``await request.reply(body)``.

        As `work`, of which it is a form; in addition, a request taken from the stream and not
        answered when the block ends is answered with an error: the exception that ended it,
        or a message saying the provider stopped.
        """
        self._check_open()
        check_service(service)
        async with self._worker.serve(service, lambda: self._closing) as stream:
            yield stream

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
        check_service(service)
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
        """Peer with the node whose inbox is at `address` (``host:port``; ``KEY@host:port`` for
        a keyed node, KEY being that node's public key), with no discovery.

        The two exchange records (HELLO/WELCOME) and the peers each knows, so one address joins
        this node to the whole mesh. Returns the peer once it is known. Raises `ValueError` for
        an address that is not ``host:port``, `PeerUnreachableError` when no node answers within
        `timeout` (default `Settings.connect_timeout`).
        """
        return await self._membership.connect(address, timeout=timeout)

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
        return await self._membership.wait_for_peers(
            count, names=names, service=service, timeout=timeout
        )

    def watch_peers(self) -> PeerWatch:
        """Membership changes from now on: `PeerJoined`, `PeerUpdated`, `PeerLeft` (with its
        reason), in order. Use ``async with node.watch_peers() as changes: async for change in
        changes``, or iterate it directly; it stops when the node closes. Holds at most
        `Settings.subscription_buffer` changes for a slow reader, then drops the oldest and counts
        them in `dropped`."""
        self._check_open()
        return self._membership.watch()

    # -- tasks -------------------------------------------------------------------------------

    def _start(self, nursery: trio.Nursery, seeds: Iterable[str]) -> None:
        self._nursery = nursery
        if self._members is not None:
            nursery.start_soon(self._members.serve)
        self._links.start(nursery)
        nursery.start_soon(self._pub.run)
        nursery.start_soon(self._publisher.drain_notices)
        nursery.start_soon(self._serve_inbox)
        self._events.start(nursery)
        nursery.start_soon(self._heartbeats.serve)
        nursery.start_soon(self._heartbeats.judge)
        self._producer.start(nursery)
        self._membership.start(nursery)
        self._introductions.start(nursery, seeds)

    async def _serve_inbox(self) -> None:
        handlers = inbox_handlers(self)
        if self._members is not None:
            get = self._membership.peers.get
            self._members.key_of = lambda sender: (
                None if (peer := get(sender)) is None else peer.record.public_key
            )
        decode, members = _wire.decode_inbox_many, self._members
        while batch := await self._frames.receive(self._pull, decode, "inbox", members):
            self._producer.arrival = trio.current_time()
            for envelope in batch:
                handlers[envelope.kind](envelope)

    # -- helpers -------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closing:
            raise trio.ClosedResourceError("the node is closed")
