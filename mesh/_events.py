"""Events: the events SUB this node reads its peers' PUBs with, the subscriptions that SUB
feeds, the SYNC probes that prove a subscription live at a peer, and the HISTORY a
subscription asks of a publisher (as it starts, and to repair what it missed). The PUB is
`mesh._publisher`'s.

Rules:

* The events SUB is subscribed to a channel while at least one `Subscription` needs it. A
  reader that falls behind stops the SUB's reading (with backpressure), which holds back the
  publishers rather than losing events, until it takes nothing for `slow_subscriber_timeout`:
  then that subscription drops what comes (and asks for it again once its reader catches up).
* A `Subscription` that sees events missed (mesh/_streams.py) asks their publisher for them
  with a HISTORY (`_ask_repair`); the answer, or nothing within `sync_timeout`, goes back to it.
* A subscription is live at a peer once the peer has answered a probe with a SYNCED on the
  path events take: the SUB's connection to its PUB. A TICKET probe is answered on this node's
  *ticket channel*, a channel no other subscriber holds, subscribed after every event channel
  (a new one with each new event channel): ZeroMQ takes a connection's subscriptions in order,
  so the ticket's being live there proves every event channel before it live too, and each
  node gets only its own answers (a SYNC's SYNCED, on the prefix's channel, reaches every
  subscriber of the prefix: N subscribers of one topic forming a mesh received N^2 of them
  each). A SYNC goes to peers that do not take TICKET (their HELLO did not say so). Probes are
  resent at growing intervals (the first may fall in the slow-joiner gap they test for), for at
  most `sync_timeout` seconds (`ProbeSchedule`, mesh/_probes.py); a silent peer is never an
  error.
* A dropped connection to a known peer's PUB is a hint that it crashed (about 2 ms after a
  kill -9 on loopback: the kernel closes all its sockets at once), reported (`on_dropped`)
  after `dropped_grace` seconds: a node that leaves closes its sockets right after its goodbye,
  which travels on other connections and may be read after the drop, and a graceful leave must
  not be reported as a failure first. The SUB's monitor tells it, so no other socket needs one.
* A departed peer's PUB stays connected for `linger` seconds (2 by default): its last events may
  still be on their way (its goodbye came on another connection), and disconnecting drops what
  ZeroMQ holds unread. A peer that comes back at that address keeps the connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import trio
import zmq

from . import _wire
from ._names import topic_channel
from ._probes import ProbeSchedule
from ._streams import Subscription
from ._types import Message, Settings
from ._wire import TICKET_CHANNEL, TICKET_SIZE, Envelope, Kind
from ._zmq import AsyncSocket, SocketOp, ZmqSocket

logger = logging.getLogger("mesh")

# Events a subscription takes from one peer's history at most.
_MAX_REPLAYED: Final = 100_000
# Repairs awaiting an answer at once, for all subscriptions (one each per publisher at most).
_MAX_REPAIRS: Final = 4096


#: How a node reads a batch of valid envelopes from a socket (bad frames counted and dropped).
Receive = Callable[[AsyncSocket, Callable[[bytes], list[Envelope]], str], Awaitable[list[Envelope]]]


class Subscriptions:
    """The events SUB, the subscriptions it feeds, and the probes that prove them live at
    peers (see the module's rules)."""

    def __init__(
        self,
        sock: ZmqSocket,
        node_id: bytes,
        *,
        settings: Settings,
        linger: float = 2.0,
        counts: dict[str, int],
        receive: Receive,
        probe: Callable[[bytes, int, str, bytes], bool],
        ask_history: Callable[[bytes, Kind, list[Any], Any], bool],
        on_dropped: Callable[[bytes], None],
        dropped_grace: float,
    ) -> None:
        self.socket = AsyncSocket(sock)
        self._id = node_id
        self._buffer = settings.subscription_buffer
        self._backpressure = settings.event_backpressure
        self._patience = settings.slow_subscriber_timeout
        self._sync_timeout = settings.sync_timeout
        self._linger = linger
        self._counts = counts
        self._receive = receive
        self._probe = probe  # send TICKET or SYNC [token, prefix] to a peer; False if gone
        self._ask_history = ask_history  # send a HISTORY to a peer; False if it cannot
        self._on_dropped, self._dropped_grace = on_dropped, dropped_grace
        self._synced_seqs: dict[int, int] = {}  # by token: the SYNCED's number on its stream
        self._replays: dict[int, _Replay] = {}  # by token: HISTORY requests unanswered
        self._repairs: dict[int, _Repair] = {}  # by token: the same, to repair a subscription
        self._replayed = trio.lowlevel.ParkingLot()
        self._subscriptions: list[Subscription] = []
        self._channel_refs: dict[bytes, int] = {}
        self._synced = trio.lowlevel.ParkingLot()
        self._synced_tokens: set[int] = set()
        self._probing: set[int] = set()  # tokens of the syncs under way: the SYNCEDs taken
        self._next_token = 1
        self._tickets: list[bytes] = []  # the ticket channels subscribed, the newest last
        self._lingering: dict[str, trio.CancelScope] = {}  # departed PUBs still connected
        self._server_keys: dict[str, str | None] = {}  # the key each connection was made with
        self._nursery: trio.Nursery | None = None
        # ZeroMQ makes a broken connection again by itself, and what was queued in it is lost:
        # a connection made (again) to a publisher a subscription follows is confirmed anew,
        # and one that drops is reported (`_watch_connections`). By endpoint: whose PUB it is.
        self._publishers: dict[str, bytes] = {}
        self._monitor = AsyncSocket(
            sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
        )

    def start(self, nursery: trio.Nursery) -> None:
        """Reading starts in `nursery` (and lingering disconnections run there)."""
        self._nursery = nursery
        nursery.start_soon(self._serve)
        nursery.start_soon(self._watch_connections)

    def close(self) -> None:
        """Close the events SUB (and its monitor first: its inproc endpoint would outlive it)."""
        self.socket.disable_monitor()
        self._monitor.close()
        self.socket.close()

    def prefixes(self) -> set[str]:
        """The prefixes subscribed to now."""
        return {subscription.prefix for subscription in self._subscriptions}

    @asynccontextmanager
    async def subscribe(
        self,
        prefix: str,
        peers: Sequence[bytes],
        history: int = 0,
        since: float | None = None,
    ) -> AsyncIterator[Subscription]:
        """`Node.subscribe`, with the peers known now, each probed for the new prefix (and with
        `history` or `since`, asked for the events it keeps: `_replay`)."""
        channel = topic_channel(prefix)
        subscription = Subscription(prefix, self._buffer, self._ask_repair, self._counts)
        replay = history > 0 or since is not None
        if replay:
            subscription._hold(peer_id.hex() for peer_id in peers)
        self._subscriptions.append(subscription)
        refs = self._channel_refs.get(channel, 0)
        self._channel_refs[channel] = refs + 1
        try:
            if refs == 0:
                self.socket.call_soon(_setsockopt(zmq.SUBSCRIBE, channel))
                await self._new_ticket()
            synced = await self.sync([prefix], peers)
            subscription._started({peer_id.hex(): seq for peer_id, seq in synced.items()})
            if replay:
                await self._replay(subscription, synced, history, since)
            yield subscription
        finally:
            subscription._close()
            self._subscriptions.remove(subscription)
            self._channel_refs[channel] -= 1
            if self._channel_refs[channel] == 0:
                del self._channel_refs[channel]
                if not self.socket.closed:
                    self.socket.call_soon(_setsockopt(zmq.UNSUBSCRIBE, channel))

    async def _new_ticket(self) -> None:
        """Subscribe a new ticket channel, after every event channel subscribed so far (and
        before a probe can use it: nothing yields until it is queued). The one before the last
        goes: a probe that used it is answered on a channel no longer subscribed, and is sent
        again with the new one."""
        self._tickets.append(TICKET_CHANNEL + secrets.token_bytes(TICKET_SIZE))
        subscribed = self.socket.call_soon(_setsockopt(zmq.SUBSCRIBE, self._tickets[-1]))
        if len(self._tickets) > 2:
            self.socket.call_soon(_setsockopt(zmq.UNSUBSCRIBE, self._tickets.pop(0)))
        await subscribed.wait()

    async def _replay(
        self, subscription: Subscription, synced: dict[bytes, int], count: int, since: float | None
    ) -> None:
        """Ask each peer that confirmed `subscription` for the events it keeps on its prefix,
        up to the SYNCED that confirmed it (what came after reaches the subscription live), and
        put them in the subscription ahead of the live ones (module rules)."""
        count = count if count > 0 else _wire.MAX_UINT64
        since_ms = 0 if since is None else max(0, math.floor(since * 1000))  # (never later)
        asked: set[int] = set()
        for peer_id, upto in synced.items():
            token = self._next_token
            self._next_token += 1
            self._replays[token] = _Replay(subscription, peer_id, min(count, _MAX_REPLAYED))
            meta = [token, subscription.prefix, min(count, _MAX_REPLAYED), since_ms, 0, upto]
            if self._ask_history(peer_id, Kind.HISTORY, meta, None):
                asked.add(token)
            else:
                del self._replays[token]
        with trio.move_on_after(self._sync_timeout):
            while not asked.isdisjoint(self._replays):
                await self._replayed.park()
        late = [token for token in asked if token in self._replays]
        for token in late:
            replay = self._replays.pop(token)
            subscription._release(replay.peer_id.hex(), replay.events)
        if late:
            logger.warning(
                "%d peer(s) sent no history for %r within %g s: their live events only",
                len(late),
                subscription.prefix,
                self._sync_timeout,
            )
        subscription._release_all()  # the peers that did not confirm, or sent what they had

    def on_events(self, envelope: Envelope) -> None:
        """EVENTS in the inbox: part of the answer to a HISTORY this node sent (from the peer it
        was sent to; anything else is dropped)."""
        assert envelope.meta is not None
        token, last = envelope.meta
        repair = self._repairs.get(token)
        if repair is not None and repair.peer_id == envelope.sender:  # kept whole, marks too
            repair.items.extend(envelope.body)
            if len(repair.items) > _MAX_REPLAYED:
                del repair.items[: len(repair.items) - _MAX_REPLAYED]
            if last:
                del self._repairs[token]
                repair.subscription._repaired(envelope.sender.hex(), repair.upto, repair.items)
            return
        replay = self._replays.get(token)
        if replay is None or replay.peer_id != envelope.sender:
            return
        sender = envelope.sender.hex()
        for item in envelope.body:
            if len(item) != 4:
                continue  # the mark of an event no longer kept: a replay has no use for it
            seq, _, topic, body = item
            if len(replay.events) < replay.most and topic.startswith(replay.subscription.prefix):
                replay.events.append(Message(topic, body, sender, seq))
        if last:
            del self._replays[token]
            replay.subscription._release(sender, replay.events)
            self._replayed.unpark_all()

    def on_dropped(self, envelope: Envelope) -> None:
        """A DROPPED on the control SUB: a publisher sent events past full connections."""
        assert envelope.meta is not None
        first, last = envelope.meta
        if 0 < first <= last:
            sender = envelope.sender.hex()
            for subscription in self._subscriptions:
                subscription._dropped_upstream(sender, first, last)

    def resynced(self, synced: dict[bytes, int]) -> None:
        """Peers confirmed this node's subscriptions again (`sync`, greeting a peer that joined
        or came back): each subscription that follows one asks it for what it may have missed
        while its connection was down (`Subscription._resynced`)."""
        for peer_id, seq in synced.items():
            for subscription in self._subscriptions:
                subscription._resynced(peer_id.hex(), seq)

    async def _watch_connections(self) -> None:
        """Report a connection to a peer's PUB that dropped (module rules), and confirm the
        subscriptions anew at a publisher they follow whenever ZeroMQ has made the connection
        to its PUB again (`resynced`: what the broken one lost is asked for)."""
        while True:
            try:
                batch = await self._monitor.receive_multipart_batch(16)
            except trio.ClosedResourceError:
                return
            for event in batch:
                peer_id = self._publishers.get(event[-1].decode(errors="replace"))
                if peer_id is None or self._nursery is None:
                    continue
                if int.from_bytes(event[0][:2], "little") == zmq.EVENT_DISCONNECTED:
                    self._nursery.start_soon(self._dropped, peer_id)
                elif any(s._order.follows(peer_id.hex()) for s in self._subscriptions):
                    self._nursery.start_soon(self._confirm_again, peer_id)

    async def _dropped(self, peer_id: bytes) -> None:
        await trio.sleep(self._dropped_grace)
        self._on_dropped(peer_id)

    async def _confirm_again(self, peer_id: bytes) -> None:
        self.resynced(await self.sync(self.prefixes(), [peer_id]))

    def _ask_repair(self, subscription: Subscription, sender: str, after: int, upto: int) -> bool:
        """`Subscription`'s `repair`: ask `sender` for its events numbered after..upto on the
        subscription's prefix; the answer, or None after `sync_timeout`, goes to
        `Subscription._repaired`."""
        if self._nursery is None or subscription._closed or len(self._repairs) >= _MAX_REPAIRS:
            return False
        token = self._next_token
        self._next_token += 1
        peer_id = bytes.fromhex(sender)
        repair = _Repair(subscription, peer_id, upto)
        meta = [token, subscription.prefix, _wire.MAX_UINT64, 0, after, upto]
        if not self._ask_history(peer_id, Kind.HISTORY, meta, None):
            return False
        self._repairs[token] = repair
        self._nursery.start_soon(self._repair_deadline, token)
        return True

    async def _repair_deadline(self, token: int) -> None:
        await trio.sleep(self._sync_timeout)
        repair = self._repairs.pop(token, None)
        if repair is not None:
            repair.subscription._repaired(repair.peer_id.hex(), repair.upto, None)

    async def sync(self, prefixes: Iterable[str], peers: Sequence[bytes]) -> dict[bytes, int]:
        """Probe each peer for each prefix until it answers (see the module's rules). Returns,
        for each peer that answered, the number of its SYNCED on its stream (of the last prefix
        it answered for, if several)."""
        probed: dict[int, tuple[str, bytes]] = {}  # by token
        for prefix in prefixes:
            for peer_id in peers:
                probed[self._next_token] = (prefix, peer_id)
                self._next_token += 1
        self._probing.update(probed)
        try:
            return await self._probe_until_answered(probed)
        finally:
            # A SYNC is sent more than once, and so is its SYNCED: those that come later, and
            # any other token, are not kept (`_serve` takes only tokens under way).
            self._probing.difference_update(probed)
            self._synced_tokens.difference_update(probed)
            for token in probed:
                self._synced_seqs.pop(token, None)

    async def _probe_until_answered(self, probed: dict[int, tuple[str, bytes]]) -> dict[bytes, int]:
        """`sync`'s probing; the tokens it leaves behind are `sync`'s to drop."""
        schedule = ProbeSchedule(probed, trio.current_time(), self._sync_timeout)
        answered = self._synced_tokens
        while (probes := schedule.next(trio.current_time())) is not None:
            for token in probes.send:
                prefix, peer_id = probed[token]
                if not self._probe(peer_id, token, prefix, self._tickets[-1][1:]):
                    schedule.stop(token)  # the peer is gone
            with trio.move_on_at(probes.wake):
                while schedule.waiting and answered.isdisjoint(schedule.waiting):
                    await self._synced.park()
            for token in answered.intersection(schedule.waiting):
                schedule.stop(token)
                answered.discard(token)
        unconfirmed = len(schedule.waiting)
        confirmed: dict[bytes, int] = {}
        for token, (_, peer_id) in probed.items():
            seq = self._synced_seqs.get(token)
            if seq is not None and token not in schedule.waiting:
                confirmed[peer_id] = seq
        if unconfirmed:
            logger.warning(
                "%d subscription(s) not confirmed by their peers within %g s",
                unconfirmed,
                self._sync_timeout,
            )
        return confirmed

    def connect(
        self, endpoint: str, server_key: str | None = None, peer_id: bytes | None = None
    ) -> None:
        """Read a peer's PUB at `endpoint` (keeping the connection if it still lingers, unless
        it was made with another server key: a keyed node that came back with a new key)."""
        if peer_id is not None:
            self._publishers[endpoint] = peer_id
        lingering = self._lingering.pop(endpoint, None)
        if lingering is not None:
            lingering.cancel()
            if self._server_keys.get(endpoint) == server_key:
                return  # still connected there: keep that connection
            self.disconnect(endpoint)
        self._server_keys[endpoint] = server_key
        self.socket.call_soon(connect_op(endpoint, server_key))

    def disconnect(self, endpoint: str) -> None:
        """Stop reading the PUB at `endpoint` now."""
        self._server_keys.pop(endpoint, None)
        self._publishers.pop(endpoint, None)
        self.socket.call_soon(disconnect_op(endpoint))

    def disconnect_later(self, endpoint: str, closing: bool) -> None:
        """Stop reading a departed peer's PUB once its last events had time to arrive (now if
        the node is `closing`)."""
        if self._nursery is None or closing:
            self.disconnect(endpoint)
            return

        async def later() -> None:
            with scope:
                await trio.sleep(self._linger)
                del self._lingering[endpoint]
                self.disconnect(endpoint)

        scope = trio.CancelScope()
        self._lingering[endpoint] = scope
        self._nursery.start_soon(later)

    def end(self) -> None:
        """The node is closing: every subscription ends (its reader sees the end)."""
        for subscription in self._subscriptions:
            subscription._close()

    async def _serve(self) -> None:
        backpressure = self._backpressure
        counts = self._counts
        sock = self.socket
        event = Kind.EVENT  # (a local: an enum member looked up costs 80 ns)
        while batch := await self._receive(sock, _wire.decode_published_many, "events"):
            counts["events_received"] += len(batch)  # (less the SYNCEDs, below)
            # Events come in runs of one topic and one sender (a batch is one frame): which
            # subscriptions take the topic, and the sender's hex id, are worked out once a run.
            topic_seen: str | None = None
            matching: list[Subscription] = []
            sender_seen = b""
            sender_hex = ""
            for envelope in batch:
                topic = envelope.topic
                assert topic is not None
                if envelope.kind is event:
                    if topic != topic_seen:
                        matching = [s for s in self._subscriptions if topic.startswith(s.prefix)]
                        topic_seen = topic
                    if envelope.sender is not sender_seen:
                        sender_seen = envelope.sender
                        sender_hex = sender_seen.hex()
                    message = Message(topic, envelope.body, sender_hex, envelope.seq)
                    meta = envelope.meta
                    prev = 0 if meta is None else meta[0]
                    for subscription in matching:
                        if subscription._deliver(message, prev):
                            continue
                        # Full. With backpressure, stop reading until the reader catches up
                        # (then the publishers wait rather than drop), for a while.
                        if backpressure and not subscription._shedding:
                            await self._wait_for_reader(subscription)
                            topic_seen = None  # subscriptions may have come or gone meanwhile
                            if subscription._deliver(message, prev):
                                continue
                        subscription._drop(message)
                        counts["events_dropped"] += 1
                else:  # SYNCED
                    counts["events_received"] -= 1
                    assert envelope.meta is not None
                    token, addressee = envelope.meta
                    if addressee == self._id and token in self._probing:
                        self._synced_tokens.add(token)
                        self._synced_seqs[token] = envelope.seq
                        self._synced.unpark_all()

    async def _wait_for_reader(self, subscription: Subscription) -> None:
        """Stop reading the network until `subscription`'s reader has made room (so the
        publishers' XPUBs wait rather than drop), unless the reader takes nothing for
        `slow_subscriber_timeout`: then the subscription drops what comes until it has caught
        up (and asks for it again), and holds nobody back."""
        sock = self.socket
        while True:
            taken = subscription._taken
            with trio.move_on_after(self._patience) as waited:
                await sock.wait_for(subscription._has_room, subscription._room)
            if not waited.cancelled_caught:
                return
            if subscription._taken == taken:
                subscription._shedding = True
                return


class _Replay:
    """A HISTORY sent for a subscription that starts, and the events (at most `most`) its
    answer brought so far."""

    __slots__ = ("events", "most", "peer_id", "subscription")

    def __init__(self, subscription: Subscription, peer_id: bytes, most: int) -> None:
        self.subscription = subscription
        self.peer_id = peer_id
        self.most = most
        self.events: list[Message] = []


class _Repair:
    """A HISTORY sent to repair a subscription, up to `upto`, and the items (events and marks)
    its answer brought so far, kept whole for `Subscription._repaired`."""

    __slots__ = ("items", "peer_id", "subscription", "upto")

    def __init__(self, subscription: Subscription, peer_id: bytes, upto: int) -> None:
        self.subscription = subscription
        self.peer_id = peer_id
        self.upto = upto
        self.items: list[tuple[Any, ...]] = []


def connect_op(endpoint: str, server_key: str | None = None) -> SocketOp:
    """An op that connects a socket to `endpoint` (a keyed node's: to the CURVE server whose
    public key is `server_key`; ZeroMQ takes the key for the connection made next)."""

    def op(sock: ZmqSocket) -> None:
        if server_key is not None:
            sock.setsockopt(zmq.CURVE_SERVERKEY, server_key.encode())
        sock.connect(endpoint)

    return op


def disconnect_op(endpoint: str) -> SocketOp:
    """An op that disconnects a socket from `endpoint` (nothing if it was not connected)."""

    def op(sock: ZmqSocket) -> None:
        # A peer that never finished connecting raises ENOENT here; there is nothing to undo.
        with contextlib.suppress(zmq.ZMQError):
            sock.disconnect(endpoint)

    return op


def _setsockopt(option: int, value: bytes) -> SocketOp:
    def op(sock: ZmqSocket) -> None:
        sock.setsockopt(option, value)

    return op
