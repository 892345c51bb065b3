"""The PUB this node publishes on: the one numbered stream of everything it publishes, the
history it keeps of its events and the HISTORY requests it answers from it, and subscriber
connections that stay full.

Rules:

* Everything this node publishes (events, SYNCED answers, heartbeats, goodbyes, DROPPED) is
  one stream, numbered by `Publisher` in the order it is sent; each event also names the
  number of the previous one on its topic (its `prev`, mesh/_gaps.py). With backpressure (the
  default) a full subscriber connection makes the PUB wait rather than drop, for
  `slow_subscriber_timeout` at most (or until a peer is declared dead): then the frame ZeroMQ
  refuses goes out without XPUB_NODROP, dropped for the full connections only, and a DROPPED
  says which numbers, once a second while that goes on and a few seconds after. Control
  messages never wait: they are skipped when the PUB's outbox is full (a SYNC is resent, a
  goodbye also goes to each inbox, a heartbeat also goes by datagram).
* A HISTORY is answered from the history (mesh/_history.py) in EVENTS of a bounded size, at a
  bounded rate per asker; a whole answer also marks each topic whose last event it no longer
  keeps. With a state directory the history is kept there too (mesh/_history_file.py).
* The PUB holds at most `MAX_SUBSCRIPTIONS` distinct subscriptions (ZeroMQ keeps each in a
  table, whoever sent it, and tells the node of each new one and each one gone). A subscriber
  could otherwise grow that table without bound, and ZeroMQ's connections do not say who sent
  what: past the limit the PUB is bound anew, which ends every subscriber's connection and
  empties the table; members reconnect and subscribe again at once (counted,
  `subscription_floods`, and logged). Its notices are taken a bounded number at a time.
"""

from __future__ import annotations

import errno
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, Final

import trio
import zmq

from . import _batches, _wire
from ._history import History
from ._history_file import FILE_NAME, HistoryFile
from ._names import topic_channel
from ._ratelimit import RateLimitedLog, TokenBucket
from ._wire import TICKET_CHANNEL, Envelope, Kind, control_frame, event_frame, pack
from ._zmq import AsyncSocket, Outbox, ZmqSocket

# An XPUB with XPUB_NODROP always reports POLLOUT, so a blocked publisher retries on a timer;
# 1 ms costs nothing while nothing is blocked, and little while something is.
_PUB_RETRY_INTERVAL: Final = 0.001
# XPUB hands subscription notices up to the application, which must drain them.
_NOTICE_DRAIN_INTERVAL: Final = 1.0
# Notices taken before the node's other tasks get a turn.
_NOTICES_AT_ONCE: Final = 1024
#: Distinct subscriptions a node's PUB may hold (each peer subscribes to the prefixes its
#: application asks for, a few at most, and to two ticket channels of its own; 1,024 peers hold
#: about 2,100): past it, every subscriber is cut.
MAX_SUBSCRIPTIONS: Final = 16_384
# Seconds a PUB unbound from a port waits for ZeroMQ to let go of it, to bind it again.
_REBIND_PATIENCE: Final = 2.0
# Seconds after cutting the subscribers before they can be cut again (their subscriptions'
# removals come in meanwhile).
_CUT_AGAIN_AFTER: Final = 5.0
# Bytes of events one EVENTS answer to a HISTORY request carries at most.
_HISTORY_CHUNK: Final = 1024 * 1024
# HISTORY requests answered per sender: a burst, then a rate (each answer can be as large as
# the history); the senders counted at once.
_HISTORY_BURST: Final = 16
_HISTORY_RATE: Final = 4.0
_HISTORY_ASKERS: Final = 1024
# DROPPED intervals (`_NOTICE_DRAIN_INTERVAL`) without a frame sent past a full subscriber
# connection that end an episode.
_EPISODE_QUIET: Final = 5
# Bytes counted for the mark of an event no longer kept, in an EVENTS answer.
_MARK_SIZE: Final = 64
# Channels whose last event a publisher remembers (each event's `prev`).
_MAX_CHAINED: Final = 65_536
# Topics whose channel `Publisher.channel` keeps.
_CHANNELS_KEPT: Final = 4096
# (A module constant: an enum member looked up costs 80 ns, once an event.)
_EVENT: Final = Kind.EVENT


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
        self._channels: dict[str, bytes] = {}  # by topic (`channel`)
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

    def channel(self, topic: str) -> bytes:
        """`topic_channel(topic)`, remembered for the topics published most (the same bytes
        object each time, whose hash is kept too). Raises as `topic_channel` does."""
        channel = self._channels.get(topic)
        if channel is None:
            channel = topic_channel(topic)
            if len(self._channels) >= _CHANNELS_KEPT:
                self._channels.clear()
            self._channels[topic] = channel
        return channel

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
        frame = event_frame(channel, pack(_EVENT, self._id, seq, [prev], body))
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
        self, head: bytes | None, kind: Kind, meta: list[Any] | None, body: Any = None
    ) -> bool:
        """Publish a control message (`head` None), or a SYNCED whose frame starts with `head`
        (an event channel and its NUL, or a ticket channel), unless the PUB's outbox is full
        (then False)."""
        if not self.outbox.has_room():
            return False
        self._seq += 1
        envelope = pack(kind, self._id, self._seq, meta, body)
        self.outbox.send_nowait(control_frame(envelope) if head is None else head + envelope)
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
        self.publish_control(event_frame(channel, b""), Kind.SYNCED, [token, envelope.sender])

    def on_ticket(self, envelope: Envelope) -> None:
        """A TICKET in the inbox: a SYNC for every channel the prober subscribed before its
        ticket channel, answered there, where only the prober subscribes (so a SYNCED does not
        reach every subscriber of a prefix, as a SYNC's does)."""
        assert envelope.meta is not None
        token, ticket = envelope.meta
        self.publish_control(TICKET_CHANNEL + ticket, Kind.SYNCED, [token, envelope.sender])

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
