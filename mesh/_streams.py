"""What a node hands its application to read: subscriptions, task streams and peer watches,
and the tasks themselves. Each is a buffer the node fills and one or more tasks read in order."""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeVar

import trio

from discovery import PeerEvent

from ._gaps import FOLLOWS, REPEAT, Order
from ._types import Gap, Message
from ._wire import Kind

if TYPE_CHECKING:
    from ._worker import WorkerSide

logger = logging.getLogger("mesh")
T = TypeVar("T")

# Calls that complete without waiting (publish, receiving a buffered message) check for
# cancellation every time but give other tasks a turn only this often: a scheduling point per
# message would cap a node near 50,000 messages/s (measured on a 2-core machine).
YIELD_EVERY: Final = 64


class _Stream(Generic[T]):
    """Items handed over by the node, read in order by one or more tasks. The reading side of
    `Subscription` and `TaskStream`."""

    _ended = "stream ended"

    def __init__(self) -> None:
        self._buffer: deque[T] = deque()
        self._ready = trio.lowlevel.ParkingLot()  # readers waiting for an item
        self._closed = False
        self._taken = 0

    async def receive(self) -> T:
        """The next item; waits for one. Cancelling it loses nothing. Raises
        `trio.ClosedResourceError` once the stream has ended and is empty."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self._buffer:
            if self._closed:
                raise trio.ClosedResourceError(self._ended)
            await self._ready.park()
        item = self._buffer.popleft()
        self._taken_one()
        self._taken += 1
        if self._taken % YIELD_EVERY == 0:
            await trio.lowlevel.cancel_shielded_checkpoint()
        return item

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T:
        try:
            return await self.receive()
        except trio.ClosedResourceError:
            raise StopAsyncIteration from None

    def _taken_one(self) -> None:
        """Called after each item taken, for subclasses to hook."""

    def _put(self, item: T) -> None:
        self._buffer.append(item)
        if self._ready:  # somebody waits: wake one reader per item
            self._ready.unpark()

    def _end(self) -> None:
        self._closed = True
        self._ready.unpark_all()


class Subscription(_Stream[Message | Gap]):
    """Events whose topic starts with `prefix`, from every peer, in order per publisher.

    Made by `Node.subscribe`; read with ``async for item in subscription`` or `receive()`. Each
    item is a `Message`, or a `Gap` where events were missed and could not be had again.

    It buffers up to `Settings.subscription_buffer` events. A reader that falls that far behind
    holds the node's reading back (and so, with `Settings.event_backpressure`, its publishers)
    for at most `Settings.slow_subscriber_timeout`; then events that find the buffer full are
    dropped for it (counted in `dropped`), and once the reader has caught up to half the
    buffer the node asks their publishers for them again. Events missed on the way (a full
    connection its publisher sent past, a dropped connection) are asked for too, as soon as a
    later one shows them missing. What a publisher's history no longer holds comes as a `Gap`.
    The subscription ends when its ``async with`` block exits or the node closes; reading it
    then raises `trio.ClosedResourceError` (iteration just stops).
    """

    _ended = "subscription ended"

    def __init__(
        self,
        prefix: str,
        capacity: int,
        repair: Callable[[Subscription, str, int, int], bool] | None = None,
        counts: dict[str, int] | None = None,
    ) -> None:
        """`repair(subscription, sender, after, upto)` asks `sender` (hex id) for the events it
        kept numbered after..upto on the prefix, answered by `_repaired` (False: it cannot)."""
        super().__init__()
        self.prefix = prefix
        self.dropped = 0
        self._capacity = capacity
        self._repair = repair
        self._counts = counts if counts is not None else {"events_repaired": 0, "event_gaps": 0}
        self._room = trio.lowlevel.ParkingLot()  # the node waiting for room
        self._order = Order()
        # Live events held back, with their `prev`, by publisher (hex id): while its history is
        # awaited as the subscription starts (`_hold`/`_release`; None once none is), or while
        # events it missed are asked for again (`_repairing`, answered by `_repaired`).
        self._holding: dict[str, list[tuple[Message, int]]] | None = None
        self._repairing: dict[str, list[tuple[Message, int]]] = {}
        self._held = 0
        self._lost: dict[str, tuple[int, int]] = {}  # by publisher: the numbers dropped here
        self._shedding = False  # the reader left the buffer full too long: drop, do not wait
        self._noticed: dict[str, int] = {}  # by publisher: the last number a DROPPED asked for
        # The run of events being delivered, each following the one before on its topic (one
        # publisher, one topic, the same string objects: one batch): its last number, which
        # `_order` is told only when the run ends (`_end_run`). Most events take this path.
        self._run_sender: str | None = None
        self._run_topic: str | None = None
        self._run_seq = -1

    def __repr__(self) -> str:
        return f"<Subscription {self.prefix!r} buffered={len(self._buffer)} dropped={self.dropped}>"

    def _taken_one(self) -> None:
        if not (self._room or self._lost or self._shedding):
            return  # (most takes: nothing waits on the reader)
        if len(self._buffer) > self._capacity // 2:
            return
        self._shedding = False
        if self._room:
            self._room.unpark_all()
        for sender in list(self._lost):
            if sender not in self._repairing:
                self._repair_lost(sender)

    def _full(self) -> bool:
        return len(self._buffer) + self._held >= self._capacity and not self._closed

    def _has_room(self) -> bool:
        return not self._full()

    def _deliver(self, message: Message, prev: int = 0) -> bool:
        """Take a live event (whose publisher's previous one on its topic is numbered `prev`):
        buffer it if it is next (or hold it back, or ask for what it shows missing); False if
        the buffer is full (then the node waits, or `_drop`s it)."""
        if len(self._buffer) + self._held >= self._capacity:
            return False
        sender = message.sender
        if (
            prev == self._run_seq
            and sender is self._run_sender
            and message.topic is self._run_topic
        ):
            self._run_seq = message.seq
            self._put(message)
            return True
        self._end_run()
        held = self._repairing.get(sender) if self._repairing else None
        if held is None and self._holding is not None:
            held = self._holding.get(sender)
        if held is not None:
            held.append((message, prev))
            self._held += 1
            return True
        verdict = self._order.admit(sender, message.topic, message.seq, prev)
        if verdict == FOLLOWS:
            self._run_sender, self._run_topic, self._run_seq = sender, message.topic, message.seq
            self._put(message)
        elif verdict != REPEAT:  # events before it are missing: ask for them, hold it
            lost = self._lost.pop(sender, None)  # (and for any dropped here)
            after = verdict if lost is None else min(verdict, lost[0] - 1)
            self._begin_repair(sender, after, message.seq - 1, [(message, prev)])
        return True

    def _drop(self, message: Message) -> None:
        """`message` found the buffer full: counted in `dropped`, and asked for again once the
        reader has caught up (`_taken_one`)."""
        self.dropped += 1
        lost = self._lost.get(message.sender)
        self._lost[message.sender] = (message.seq if lost is None else lost[0], message.seq)

    def _end_run(self) -> None:
        """Tell `_order` the last event of the run being delivered (before it is asked)."""
        if self._run_sender is not None:
            assert self._run_topic is not None
            self._order.account(self._run_sender, self._run_topic, self._run_seq)
            self._run_sender = self._run_topic = None
            self._run_seq = -1

    def _begin_repair(
        self, sender: str, after: int, upto: int, held: list[tuple[Message, int]]
    ) -> None:
        """Ask `sender` for its events numbered after..upto, holding its live ones until they
        come (`_repaired`)."""
        self._end_run()
        self._repairing[sender] = held
        self._held += len(held)
        if self._repair is None or not self._repair(self, sender, after, upto):
            self._repaired(sender, upto, None)

    def _dropped_upstream(self, sender: str, first: int, last: int) -> None:
        """`sender`'s events numbered first..last may have missed full subscriber connections
        (a DROPPED): ask for those not asked for yet, if this subscription follows it."""
        self._end_run()
        if not self._order.follows(sender):
            return
        first = max(first, self._noticed.get(sender, 0) + 1)
        if first > last:
            return
        self._noticed[sender] = last
        lost = self._lost.get(sender)
        if sender in self._repairing or lost is not None:
            self._lost[sender] = (first if lost is None else min(first, lost[0]), last)
            return
        self._begin_repair(sender, first - 1, last, [])

    def _resynced(self, sender: str, seq: int) -> None:
        """The subscription was confirmed again at `sender` (hex id), at its number `seq`: a
        connection made anew, after one that broke may have lost events. Ask for what came
        after the newest accounted for, up to there, once."""
        self._end_run()
        newest = self._order.newest(sender)
        if newest is not None and newest < seq:
            self._dropped_upstream(sender, newest + 1, seq)

    def _repaired(self, sender: str, upto: int, items: list[tuple[Any, ...]] | None) -> None:
        """The answer to `_begin_repair` (None: none came): deliver what it brought in order,
        a `Gap` for each run of events it shows gone, then the live events held back."""
        self._end_run()
        held = self._repairing.pop(sender, [])
        self._held -= len(held)
        reason = "unanswered" if items is None else "evicted"
        order = self._order
        for item in items or ():
            if len(item) == 2:  # the last event on a topic, no longer kept
                seq, topic = item
                last = order.last(sender, topic)
                if last is not None and seq > last:
                    self._gap(Gap(sender, last + 1, seq, reason, topic))
                    order.account(sender, topic, seq)
                continue
            seq, prev, topic, body = item
            verdict = order.admit(sender, topic, seq, prev)
            if verdict == REPEAT:
                continue
            if verdict != FOLLOWS:
                self._gap(Gap(sender, verdict + 1, prev, reason, topic))
                order.account(sender, topic, seq)
            self._counts["events_repaired"] += 1
            self._put(Message(topic, body, sender, seq))
        for index, (message, prev) in enumerate(held):
            verdict = order.admit(sender, message.topic, message.seq, prev)
            if verdict == FOLLOWS:
                self._put(message)
            elif verdict != REPEAT:
                if prev > upto and items is not None:  # missed after what was asked for
                    self._begin_repair(sender, verdict, message.seq - 1, held[index:])
                    return
                self._gap(Gap(sender, verdict + 1, prev, reason, message.topic))
                order.account(sender, message.topic, message.seq)
                self._put(message)
        self._repair_lost(sender)

    def _repair_lost(self, sender: str) -> None:
        """Ask for the events of `sender` dropped here (or said dropped upstream), if any."""
        lost = self._lost.pop(sender, None)
        if lost is not None:
            self._begin_repair(sender, lost[0] - 1, lost[1], [])

    def _gap(self, gap: Gap) -> None:
        self._counts["event_gaps"] += 1
        self._put(gap)

    def _started(self, starts: dict[str, int]) -> None:
        """The subscription became live at each publisher (hex id) at the number given."""
        for sender, seq in starts.items():
            self._order.start(sender, seq)

    def _hold(self, senders: Iterable[str]) -> None:
        """Hold back the live events of `senders` until their history is in (`_release`)."""
        self._holding = {sender: [] for sender in senders}

    def _release(self, sender: str, history: list[Message]) -> None:
        """`sender`'s history is in (or will not come): buffer it, then the live events held
        back that are newer than it (the older ones are in it already)."""
        self._end_run()
        held = [] if self._holding is None else self._holding.pop(sender, [])
        self._held -= len(held)
        if not self._holding:
            self._holding = None
        for message in history:
            self._order.account(sender, message.topic, message.seq)
            self._put(message)
        for message, prev in held:
            if not self._deliver(message, prev):  # (it was counted in the buffer: room)
                self._drop(message)

    def _release_all(self) -> None:
        """Stop holding anything back (publishers that sent no history: their live events)."""
        for sender in list(self._holding or ()):
            self._release(sender, [])

    def _close(self) -> None:
        self._end()
        self._room.unpark_all()


class Task:
    """One task given to this node's worker. Use ``async with task:`` around the work.

    Leaving the block normally acks the task to its sender. An exception nacks it (so the sender
    may send it elsewhere) and is logged; an `Exception` is then suppressed so the worker loop goes
    on, while cancellation and other `BaseException`s propagate. `ack()`/`nack()` settle a task by
    hand; a task is settled once, later calls do nothing.
    """

    __slots__ = ("_origin", "_owner", "_settled", "attempt", "body", "id", "sender", "service")

    def __init__(
        self, owner: WorkerSide, origin: bytes, task_id: int, service: str, attempt: int, body: Any
    ) -> None:
        self._owner = owner
        self._origin = origin
        self._settled = False
        self.id = task_id
        self.service = service
        self.attempt = attempt
        self.body = body
        self.sender = origin.hex()

    def __repr__(self) -> str:
        return f"<Task {self.service} {self.sender[:8]}/{self.id} attempt={self.attempt}>"

    @property
    def redelivered(self) -> bool:
        """Whether this task was sent before (to this worker or another): it may have been done
        already, in part or whole, so the work should be safe to repeat."""
        return self.attempt > 1

    async def ack(self) -> None:
        """Tell the sender the task is done."""
        if not self._settled:
            self._settled = True
            self._owner.release(self)
            await self._owner.settle(self._origin, Kind.ACK, [self.id])

    async def nack(self, reason: str = "failed") -> None:
        """Tell the sender the task failed here (it sends it to another worker, if any)."""
        if not self._settled:
            self._settled = True
            self._owner.release(self)
            await self._owner.settle(self._origin, Kind.NACK, [self.id, reason[:200]])

    async def reply(self, body: Any = None) -> None:
        """Answer a `Request`. A pushed task's sender asked for no reply: this acks it, and
        `body` goes nowhere (so a ``serve`` loop may take pushed tasks too)."""
        await self.ack()

    async def fail(self, message: str) -> None:
        """Answer a `Request` with an error. For a pushed task: `nack` (to another worker)."""
        await self.nack(message)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            if not self._settled:
                # (`ack`, without a coroutine of its own while the sender's outbox has room.)
                self._settled = True
                owner = self._owner
                owner.release(self)
                if owner.answer_now(self._origin, Kind.ACK, [self.id]) is not None:
                    await owner.settle(self._origin, Kind.ACK, [self.id])
            return False
        return await self._raised(exc)

    async def _raised(self, exc: BaseException) -> bool:
        """An exception left the block: `fail` (a task: nack; a request: an error reply),
        log it, and suppress it if it is an `Exception`."""
        with trio.CancelScope(shield=True):
            await self.fail(f"{type(exc).__name__}: {exc}")
        if isinstance(exc, Exception):
            logger.warning("%s %r failed", type(self).__name__.lower(), self, exc_info=exc)
            return True
        return False


class Request(Task):
    """One request given to this node, from `Node.serve`: a task whose sender waits for the
    answer. Answer it once: `reply(body)`, or `fail(message)`, which the caller gets as a
    `mesh.RemoteError`. Used as ``async with request:``, as a task: leaving the block normally
    replies None if it was not answered (`ack`), and an exception fails it with the exception's
    type and message (an `Exception` is then logged and suppressed). `nack` hands it to another
    provider instead; a ``serve`` block that ends fails what it took and did not answer. A
    request whose caller has stopped waiting (its deadline, which travels
    with it, has passed) is dropped before a reader takes it.
    """

    __slots__ = ("deadline",)

    def __init__(
        self,
        owner: WorkerSide,
        origin: bytes,
        task_id: int,
        service: str,
        attempt: int,
        body: Any,
        deadline: float,
    ) -> None:
        super().__init__(owner, origin, task_id, service, attempt, body)
        #: When its caller stops waiting, on `trio.current_time()`'s clock (may be infinite).
        self.deadline = deadline

    def __repr__(self) -> str:
        return f"<Request {self.service} {self.sender[:8]}/{self.id} attempt={self.attempt}>"

    @property
    def answered(self) -> bool:
        """Whether it was answered (or handed on)."""
        return self._settled

    async def reply(self, body: Any = None) -> None:
        """Send `body` to the caller. Raises `RuntimeError` if it was answered already, and
        `TypeError`/`ValueError` for a body msgpack cannot carry or over 16 MiB (the caller
        then gets an error saying so)."""
        if self._settled:
            raise RuntimeError(f"{self!r} was answered already")
        self._settled = True
        self._owner.release(self)
        try:
            await self._owner.settle(self._origin, Kind.REPLY, [self.id, True], body)
        except (TypeError, ValueError) as exc:
            message = f"the reply could not be sent: {exc}"
            await self._owner.settle(self._origin, Kind.REPLY, [self.id, False], message)
            raise

    async def fail(self, message: str) -> None:
        """Answer with an error: the caller gets a `RemoteError` with `message` (cut to 1,000
        characters). Does nothing if it was answered already."""
        if not self._settled:
            self._settled = True
            self._owner.release(self)
            await self._owner.settle(self._origin, Kind.REPLY, [self.id, False], message[:1000])

    async def ack(self) -> None:
        """`reply(None)`, unless it was answered already."""
        if not self._settled:
            await self.reply(None)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is None:
            await self.ack()
            return False
        return await self._raised(exc)


class TaskStream(_Stream[Task]):
    """The tasks sent to this node for one service, in arrival order. Made by `Node.work`.

    Read with ``async for task in stream`` or `receive()`; several tasks may read it at once (each
    task goes to one reader). When the ``async with`` block exits, the service is withdrawn and
    tasks not yet taken are nacked back to their senders.
    """

    _ended = "service withdrawn"

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def __repr__(self) -> str:
        return f"<TaskStream {self.service!r} buffered={len(self._buffer)}>"

    async def receive(self) -> Task:
        """The next task or request; waits for one (requests whose deadline has passed are
        dropped on the way). Raises `trio.ClosedResourceError` once the stream has ended and
        is empty."""
        # (`_Stream.receive`, with the expiry check inside: one coroutine per task, not two.)
        await trio.lowlevel.checkpoint_if_cancelled()
        buffer = self._buffer
        while True:
            while not buffer:
                if self._closed:
                    raise trio.ClosedResourceError(self._ended)
                await self._ready.park()
            item = buffer.popleft()
            self._taken += 1
            if self._taken % YIELD_EVERY == 0:
                await trio.lowlevel.cancel_shielded_checkpoint()
            if type(item) is not Request or item.deadline == math.inf:
                return item
            if item.deadline > trio.current_time():
                return item
            item._settled = True
            item._owner.expired(item)

    def _close(self) -> list[Task]:
        """End the stream; returns the tasks nobody took."""
        self._end()
        left = list(self._buffer)
        self._buffer.clear()
        return left


class PeerWatch(_Stream[PeerEvent]):
    """Membership changes of one node, from `Node.watch_peers`. Ends when the node closes or the
    ``async with`` block exits."""

    _ended = "no longer watching"

    def __init__(self, capacity: int, forget: Callable[[PeerWatch], None]) -> None:
        super().__init__()
        self.dropped = 0
        self._capacity = capacity
        self._forget: Callable[[PeerWatch], None] | None = forget

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching; changes already held can still be read."""
        self._end()

    def _end(self) -> None:
        super()._end()
        if self._forget is not None:
            self._forget(self)
            self._forget = None

    def _offer(self, event: PeerEvent) -> None:
        if len(self._buffer) >= self._capacity:
            self._buffer.popleft()
            self.dropped += 1
        self._put(event)
