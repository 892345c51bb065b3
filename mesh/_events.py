"""Events: the PUB this node publishes on, the events SUB it reads its peers' PUBs with, the
subscriptions that SUB feeds, and the SYNC probes that prove a subscription live at a peer.

Rules:

* Everything this node publishes (events, SYNCED answers, heartbeats, goodbyes) is one stream,
  numbered by `Publisher` in the order it is sent. With backpressure (the default) a full
  subscriber connection makes `publish` wait rather than drop; control messages never wait:
  they are skipped when the PUB's outbox is full (a SYNC is resent, a goodbye also goes to each
  inbox, a heartbeat also goes by datagram).
* The events SUB is subscribed to a channel while at least one `Subscription` needs it. A
  reader that falls behind stops the SUB's reading (with backpressure), which holds back the
  publishers rather than losing events.
* A subscription is live at a peer once the peer has answered a SYNC for its prefix with a
  SYNCED on that prefix's channel: the answer travels the very path events take. Probes are
  resent at growing intervals (the first may fall in the slow-joiner gap they test for), for at
  most `sync_timeout` seconds (`ProbeSchedule`, mesh/_probes.py); a silent peer is never an
  error.
* A departed peer's PUB stays connected for `linger` seconds (2 by default): its last events may
  still be on their way (its goodbye came on another connection), and disconnecting drops what
  ZeroMQ holds unread. A peer that comes back at that address keeps the connection.
* The PUB holds at most `MAX_SUBSCRIPTIONS` distinct subscriptions (ZeroMQ keeps each in a
  table, whoever sent it, and tells the node of each new one and each one gone). A subscriber
  could otherwise grow that table without bound, and ZeroMQ's connections do not say who sent
  what: past the limit the PUB is bound anew, which ends every subscriber's connection and
  empties the table; members reconnect and subscribe again at once (counted,
  `subscription_floods`, and logged). Its notices are taken a bounded number at a time.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import math
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import trio
import zmq

from . import _batches, _wire
from ._history import History
from ._history_file import FILE_NAME, HistoryFile
from ._names import topic_channel
from ._probes import ProbeSchedule
from ._ratelimit import RateLimitedLog, TokenBucket
from ._streams import Subscription
from ._types import Message, Settings
from ._wire import Envelope, Kind, control_frame, event_frame, pack
from ._zmq import AsyncSocket, Outbox, SocketOp, ZmqSocket

logger = logging.getLogger("mesh")

# An XPUB with XPUB_NODROP always reports POLLOUT, so a blocked publisher retries on a timer;
# 1 ms costs nothing while nothing is blocked, and little while something is.
_PUB_RETRY_INTERVAL: Final = 0.001
# XPUB hands subscription notices up to the application, which must drain them.
_NOTICE_DRAIN_INTERVAL: Final = 1.0
# Notices taken before the node's other tasks get a turn.
_NOTICES_AT_ONCE: Final = 1024
#: Distinct subscriptions a node's PUB may hold (a node subscribes to a few prefixes at most,
#: each peer to the ones its application asks for): past it, every subscriber is cut.
MAX_SUBSCRIPTIONS: Final = 16_384
# Seconds a PUB unbound from a port waits for ZeroMQ to let go of it, to bind it again.
_REBIND_PATIENCE: Final = 2.0
# Seconds after cutting the subscribers before they can be cut again (their subscriptions'
# removals come in meanwhile).
_CUT_AGAIN_AFTER: Final = 5.0
# Bytes of events one EVENTS answer to a HISTORY request carries at most.
_HISTORY_CHUNK: Final = 1024 * 1024
# Events a subscription takes from one peer's history at most.
_MAX_REPLAYED: Final = 100_000
# HISTORY requests answered per sender: a burst, then a rate (each answer can be as large as
# the history); the senders counted at once.
_HISTORY_BURST: Final = 16
_HISTORY_RATE: Final = 4.0
_HISTORY_ASKERS: Final = 1024
# Repairs awaiting an answer at once, for all subscriptions (one each per publisher at most).
_MAX_REPAIRS: Final = 4096
# DROPPED intervals (`_NOTICE_DRAIN_INTERVAL`) without a frame sent past a full subscriber
# connection that end an episode.
_EPISODE_QUIET: Final = 5
# Bytes counted for the mark of an event no longer kept, in an EVENTS answer.
_MARK_SIZE: Final = 64
# Channels whose last event a publisher remembers (each event's `prev`).
_MAX_CHAINED: Final = 65_536


class Publisher:
    """The PUB socket (an XPUB, for backpressure) and the one numbered stream sent on it."""

    def __init__(
        self,
        sock: ZmqSocket,
        node_id: bytes,
        capacity: int,
        *,
        endpoints: Sequence[str],
        counts: dict[str, int],
        log: RateLimitedLog,
        history: History | None = None,
        send_to: Callable[[bytes, Kind, list[Any], Any], bool] | None = None,
        patience: float = math.inf,
    ) -> None:
        self._id = node_id
        self._seq = 0
        # The number of the last event published on each channel (an event's `prev`); past
        # `_MAX_CHAINED` channels they are forgotten, and `_forgotten` stands for any of them.
        self._last_on: dict[bytes, int] = {}
        self._forgotten = 0
        self._shed: list[int] | None = None  # numbers sent past full connections (first, last)
        self._shedding = False  # some sent past since the last DROPPED
        self._quiet = 0  # DROPPED intervals since the last sent past
        self.history = history if history is not None else History(0, 0)
        self._history_file: HistoryFile | None = None  # with a state directory
        self._send_to = send_to  # a direct message to a peer's inbox (EVENTS)
        self._history_asked: dict[bytes, TokenBucket] = {}  # by sender: HISTORY answered
        self._socket = sock
        self._endpoints = list(endpoints)
        self._counts = counts
        self._log = log
        #: Distinct subscriptions the PUB holds now (from its notices).
        self.subscriptions = 0
        self._cut_at = -math.inf
        self._flooded = False
        # Events published in a burst leave in fewer frames: consecutive events of one topic
        # share one (docs/protocol.md §3, "Batches").
        self.outbox = Outbox(
            AsyncSocket(sock),
            capacity=capacity,
            retry_interval=_PUB_RETRY_INTERVAL,
            coalesce=_batches.coalesce_published,
            patience=patience,
            send_past=self._send_past,
        )

    def publish_nowait(self, channel: bytes, body: Any) -> bool:
        """Publish an EVENT on `channel` if the PUB's outbox has room (else False)."""
        outbox = self.outbox
        if not outbox.has_room():
            return False
        seq = self._seq + 1
        last_on = self._last_on
        prev = last_on.get(channel)
        if prev is None:
            prev = self._forgotten
            if len(last_on) >= _MAX_CHAINED:
                last_on.clear()
                prev = self._forgotten = self._seq
        frame = event_frame(channel, pack(Kind.EVENT, self._id, seq, [prev], body))
        self._seq = seq
        last_on[channel] = seq
        sent = outbox.send_nowait(frame)
        assert sent
        if self.history.max_events:
            at = time.time()
            self.history.add(seq, prev, channel, body, len(frame), at)
            if self._history_file is not None:
                self._history_file.add(frame, at)
        return True

    def keep_history_in(self, directory: str) -> None:
        """Keep the history in `directory` (a state directory, locked), starting with what it
        kept there: this PUB stream then goes on after those events (mesh/_history_file.py).
        Raises `OSError`."""
        if not self.history.max_events:
            return
        assert self._seq == 0, "before anything is published"
        history_file = HistoryFile(os.path.join(directory, FILE_NAME), self.history, self._repack)
        self._last_on.update(history_file.load())
        self._seq = max(self._last_on.values(), default=0)
        self._history_file = history_file

    def close_history(self) -> None:
        """Write what the state directory's history has buffered, and close it."""
        if self._history_file is not None:
            self._history_file.close()

    def _repack(self, seq: int, prev: int, channel: bytes, body: Any) -> bytes:
        return event_frame(channel, pack(Kind.EVENT, self._id, seq, [prev], body))

    async def publish(self, channel: bytes, body: Any, check_open: Callable[[], None]) -> None:
        """Publish an EVENT on `channel`, waiting while the PUB's outbox is full."""
        # Nothing yields between the room found and the send: sequence numbers leave in order.
        while not self.publish_nowait(channel, body):
            await self.outbox.wait_room()
            check_open()

    def publish_control(
        self, channel: bytes | None, kind: Kind, meta: list[Any] | None, body: Any = None
    ) -> bool:
        """Publish a SYNCED (on an event channel) or a control message (channel None), unless
        the PUB's outbox is full (then False)."""
        if not self.outbox.has_room():
            return False
        self._seq += 1
        envelope = pack(kind, self._id, self._seq, meta, body)
        frame = control_frame(envelope) if channel is None else event_frame(channel, envelope)
        self.outbox.send_nowait(frame)
        return True

    def _send_past(self, frame: bytes, count: int) -> bool:
        """The outbox's `send_past`: ZeroMQ has refused `frame` (its first `count` queued
        messages) for `patience`: send it without XPUB_NODROP, which drops it for the full
        subscriber connections only, and note their numbers for the next DROPPED."""
        sock = self._socket
        sock.setsockopt(zmq.XPUB_NODROP, 0)
        try:
            sock.send(frame, zmq.NOBLOCK)
        except zmq.Again:  # (a lossy XPUB takes every frame)
            return False
        finally:
            sock.setsockopt(zmq.XPUB_NODROP, 1)
        first = self._seq - len(self.outbox) + 1  # the queue holds the last numbers, in order
        self._shed = [first if self._shed is None else self._shed[0], first + count - 1]
        self._shedding = True
        self._counts["events_shed"] += count
        return True

    def stop_waiting(self) -> None:
        """A peer is dead: stop waiting for its connection, if the PUB waits for one."""
        self.outbox.stop_waiting()

    def _tell_shed(self) -> None:
        """Publish a DROPPED for the numbers that may have missed a subscriber connection in
        this episode: from the first sent past a full connection to the last published now.
        (ZeroMQ leaves a connection it dropped a frame for out until it drains, so what it
        misses goes on after the last frame sent past it; an episode lasts until
        `_EPISODE_QUIET` DROPPED intervals pass with none sent past.)"""
        if self._shed is None:
            return
        self._shed[1] = self._seq
        self.publish_control(None, Kind.DROPPED, self._shed)
        self._quiet = 0 if self._shedding else self._quiet + 1
        self._shedding = False
        if self._quiet >= _EPISODE_QUIET:
            self._shed = None

    def on_sync(self, envelope: Envelope) -> None:
        """A SYNC probe in the inbox: answer it with a SYNCED on the probed prefix's channel,
        which reaches the prober only once its subscription to that prefix is live here."""
        assert envelope.meta is not None
        token, prefix = envelope.meta
        try:
            channel = topic_channel(prefix)
        except ValueError:  # a NUL in the prefix: no subscription could match it anyway
            return
        self.publish_control(channel, Kind.SYNCED, [token, envelope.sender])

    def on_history(self, envelope: Envelope) -> None:
        """A HISTORY request in the inbox: answer with the events kept that it asks for, in
        EVENTS of at most `_HISTORY_CHUNK` bytes each (module rules)."""
        assert envelope.meta is not None
        assert self._send_to is not None
        token, prefix, count, since_ms, after, upto = envelope.meta
        asked = self._history_asked
        bucket = asked.get(envelope.sender)
        if bucket is None:
            if len(asked) >= _HISTORY_ASKERS:
                asked.clear()
            bucket = asked[envelope.sender] = TokenBucket(_HISTORY_RATE, _HISTORY_BURST)
        if not bucket.take(trio.current_time()):
            self._log.warning(
                "history-rate",
                trio.current_time(),
                "%s asks for history faster than %g a second: not answered",
                envelope.sender.hex()[:8],
                _HISTORY_RATE,
            )
            return
        try:
            channel = topic_channel(prefix)
        except ValueError:  # a NUL in the prefix: nothing matches
            self._send_to(envelope.sender, Kind.EVENTS, [token, True], [])
            return
        found = self.history.query(channel, count, since_ms / 1000, upto, after)
        entries = [([k.seq, k.prev, k.channel[1:].decode(), k.body], k.size) for k in found]
        if len(found) < count and since_ms == 0:
            # The answer is whole: mark the last event of each topic that it shows nothing of.
            kept = {k.seq for k in found}
            entries.extend(
                ([seq, on[1:].decode()], _MARK_SIZE)
                for on, seq in self._last_on.items()
                if after < seq <= upto and seq not in kept and on.startswith(channel)
            )
            entries.sort(key=lambda entry: entry[0][0])
        chunk: list[list[Any]] = []
        size = 0
        for item, item_size in entries:
            if chunk and (size + item_size > _HISTORY_CHUNK or len(chunk) >= _wire.MAX_BATCH):
                if not self._send_to(envelope.sender, Kind.EVENTS, [token, False], chunk):
                    return  # its outbox is full: the subscriber stops waiting at its timeout
                chunk, size = [], 0
            chunk.append(item)
            size += item_size
        self._send_to(envelope.sender, Kind.EVENTS, [token, True], chunk)

    async def rebind(self) -> None:
        """Unbind the XPUB, which ends every connection accepted there, and bind it again: each
        subscriber reconnects and is checked anew (a keyed node's ZAP handler, against its allow
        list as it is now) and subscribes again. Events published meanwhile reach none of them.
        ZeroMQ closes the listening socket in its I/O thread, so binding again is retried for up
        to `_REBIND_PATIENCE` seconds; a port still taken then is an `OSError` (the node cannot
        publish any more, and fails whole). Safe outside the owner task: no task ever waits on
        the XPUB's FD."""
        for endpoint in self._endpoints:
            self._socket.unbind(endpoint)
        for endpoint in self._endpoints:
            with trio.move_on_after(_REBIND_PATIENCE):
                while True:
                    try:
                        self._socket.bind(endpoint)
                        break
                    except zmq.ZMQError as exc:
                        if exc.errno != errno.EADDRINUSE:
                            raise
                    await trio.sleep(0.01)
                continue
            raise OSError(errno.EADDRINUSE, f"cannot bind the PUB again at {endpoint}")

    async def drain_notices(self) -> None:
        """Take the XPUB's subscription notices, which it queues for the application, counting
        the subscriptions it holds (see the module's rules), and publish DROPPED when events
        went past full connections. Runs until cancelled. Safe outside
        the owner task: no task ever waits on the XPUB's FD (see `Outbox`)."""
        while True:
            await trio.sleep(_NOTICE_DRAIN_INTERVAL)
            self._tell_shed()
            if self._history_file is not None:
                self._history_file.flush()
            while self._take_notices():
                await trio.lowlevel.checkpoint()
            if self._flooded:
                self._flooded = False
                await self.rebind()

    def _take_notices(self) -> bool:
        """Take up to `_NOTICES_AT_ONCE` notices; whether more may be waiting."""
        socket = self.outbox.socket
        for _ in range(_NOTICES_AT_ONCE):
            try:
                notice = socket.receive_nowait()
            except (zmq.Again, trio.ClosedResourceError):
                return False
            if notice[:1] == b"\x01":
                self.subscriptions += 1
            elif notice[:1] == b"\x00" and self.subscriptions:
                self.subscriptions -= 1
            if self.subscriptions > MAX_SUBSCRIPTIONS:
                self._cut_subscribers()
        return True

    def _cut_subscribers(self) -> None:
        now = trio.current_time()
        if self._flooded or now - self._cut_at < _CUT_AGAIN_AFTER:
            return
        self._cut_at = now
        self._counts["subscription_floods"] += 1
        self._log.warning(
            "subscription-flood",
            now,
            "the PUB holds more than %d distinct subscriptions: cutting every subscriber "
            "(members subscribe again at once)",
            MAX_SUBSCRIPTIONS,
        )
        self._flooded = True  # the drain binds the PUB again once it has taken the notices


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
        probe: Callable[[bytes, int, str], bool],
        ask_history: Callable[[bytes, Kind, list[Any], Any], bool],
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
        self._probe = probe  # send SYNC [token, prefix] to a peer; False if it is gone
        self._ask_history = ask_history  # send a HISTORY to a peer; False if it cannot
        self._synced_seqs: dict[int, int] = {}  # by token: the SYNCED's number on its stream
        self._replays: dict[int, _Replay] = {}  # by token: HISTORY requests unanswered
        self._repairs: dict[int, _Replay] = {}  # by token: the same, to repair a subscription
        self._replayed = trio.lowlevel.ParkingLot()
        self._subscriptions: list[Subscription] = []
        self._channel_refs: dict[bytes, int] = {}
        self._synced = trio.lowlevel.ParkingLot()
        self._synced_tokens: set[int] = set()
        self._probing: set[int] = set()  # tokens of the syncs under way: the SYNCEDs taken
        self._next_token = 1
        self._lingering: dict[str, trio.CancelScope] = {}  # departed PUBs still connected
        self._server_keys: dict[str, str | None] = {}  # the key each connection was made with
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        """Reading starts in `nursery` (and lingering disconnections run there)."""
        self._nursery = nursery
        nursery.start_soon(self._serve)

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
                await self.socket.call_soon(_setsockopt(zmq.SUBSCRIBE, channel)).wait()
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
        replay = self._replays.get(token) or self._repairs.get(token)
        if replay is None or replay.peer_id != envelope.sender:
            return
        if replay.upto is not None:  # a repair: kept whole, marks too
            replay.items.extend(envelope.body)
            if len(replay.items) > _MAX_REPLAYED:
                del replay.items[: len(replay.items) - _MAX_REPLAYED]
            if last:
                del self._repairs[token]
                replay.subscription._repaired(envelope.sender.hex(), replay.upto, replay.items)
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

    def _ask_repair(self, subscription: Subscription, sender: str, after: int, upto: int) -> bool:
        """`Subscription`'s `repair`: ask `sender` for its events numbered after..upto on the
        subscription's prefix; the answer, or None after `sync_timeout`, goes to
        `Subscription._repaired`."""
        if self._nursery is None or subscription._closed or len(self._repairs) >= _MAX_REPAIRS:
            return False
        token = self._next_token
        self._next_token += 1
        peer_id = bytes.fromhex(sender)
        repair = _Replay(subscription, peer_id, _MAX_REPLAYED, upto)
        meta = [token, subscription.prefix, _wire.MAX_UINT64, 0, after, upto]
        if not self._ask_history(peer_id, Kind.HISTORY, meta, None):
            return False
        self._repairs[token] = repair
        self._nursery.start_soon(self._repair_deadline, token)
        return True

    async def _repair_deadline(self, token: int) -> None:
        await trio.sleep(self._sync_timeout)
        repair = self._repairs.pop(token, None)
        if repair is not None and repair.upto is not None:
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
                if not self._probe(peer_id, token, prefix):
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

    def connect(self, endpoint: str, server_key: str | None = None) -> None:
        """Read a peer's PUB at `endpoint` (keeping the connection if it still lingers, unless
        it was made with another server key: a keyed node that came back with a new key)."""
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
        while batch := await self._receive(sock, _wire.decode_published_many, "events"):
            # Events come in runs of one topic and one sender (a batch is one frame): which
            # subscriptions take the topic, and the sender's hex id, are worked out once a run.
            topic_seen: str | None = None
            matching: list[Subscription] = []
            sender_seen = b""
            sender_hex = ""
            for envelope in batch:
                topic = envelope.topic
                assert topic is not None
                if envelope.kind is Kind.EVENT:
                    counts["events_received"] += 1
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
                        if backpressure and subscription._full() and not subscription._shedding:
                            await self._wait_for_reader(subscription)
                            topic_seen = None  # subscriptions may have come or gone meanwhile
                        if not subscription._deliver(message, prev):
                            counts["events_dropped"] += 1
                else:  # SYNCED
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
    """A HISTORY request sent for a subscription, and what its answer brought so far: events
    to start it with, or (a repair, up to `upto`) the answer's items as they came."""

    __slots__ = ("events", "items", "most", "peer_id", "subscription", "upto")

    def __init__(
        self, subscription: Subscription, peer_id: bytes, most: int, upto: int | None = None
    ) -> None:
        self.subscription = subscription
        self.peer_id = peer_id
        self.most = most
        self.upto = upto
        self.events: list[Message] = []
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
