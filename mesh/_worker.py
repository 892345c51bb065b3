"""The worker side of work: the services this node offers, the tasks in its hands, and settling
them (ack, nack, hand back) with their senders.

Rules:

* One `TaskStream` per service offered. A task arrives in the inbox (`on_task`): a repeat of one
  already done here (by sender and task id, within `Settings.dedup_window`) is acked again
  without running; one for a service not offered is nacked, and so is one from a sender whose
  tasks this worker holds `held_per_sender` of already (ten times the credit it gives, at least
  1,000, or 10,000 with no credit: a sender that keeps to its credit never meets the limit, even
  across a death and revival of this worker, and one that does not cannot fill this node's
  memory); any other is *held* from then until it is settled or handed back, and counted in
  `load`.
* A held task is settled once: `Task.ack`/`Task.nack` (`settle`, which waits while the sender's
  outbox is full, so acks are never dropped) or `hand_back` (a nack sent without waiting, for
  tasks this worker will not do: a stream closed, a drain).
* Withdrawing a service (a stream closed, `drain`) tells peers first and hands back afterwards:
  on each link the UPDATE leaves before the NACKs, so the tasks are not sent straight back.
* After `drain`, no service can be offered again.
* A REQUEST is held the same way, as a `Request` (a task wanting a reply), with no dedup: a
  request that comes again runs again (its caller waits for a reply, and the first one never
  came). It carries its deadline as milliseconds to live, counted from its arrival here; a
  stream drops it unread once that has passed (`expired`). It is answered by a REPLY.
* A ``serve`` block that ends answers what it took and did not answer: each request with an
  error (the block's exception, if any), each pushed task with a nack.

The node wires it to its links and its record (`WorkerWiring`); it reads no other component's
state.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Final, Protocol

import trio

from ._metrics import DONE, RECEIVED, ServiceCounts
from ._ratelimit import RateLimitedLog
from ._routing import RecentTasks
from ._streams import YIELD_EVERY, Request, Task, TaskStream
from ._wire import Envelope, Kind, pack

if TYPE_CHECKING:
    from ._producer import Route
    from ._zmq import Outbox

#: Tasks held from one sender at most, when this node gives no credit (`Settings.prefetch`).
HELD_PER_SENDER: Final = 10_000
#: Senders whose links `WorkerSide` keeps at hand (more, and it forgets them all: peers are
#: bounded by `Settings.max_peers` anyway).
_ROUTES_KEPT: Final = 4096


class WorkerWiring(Protocol):
    """What the worker side needs of the rest of the node."""

    def route_to(self, peer_id: bytes) -> Route | None:
        """The link to a known peer's inbox (its outbox and sequence numbers), if there is one."""

    def send_to_peer(self, peer_id: bytes, kind: Kind, meta: list[Any], body: Any = None) -> bool:
        """Send a control message to a known peer now, if its outbox has room."""

    def offer(self, services: Iterable[str]) -> None:
        """Tell the mesh this node now offers exactly `services`."""


class WorkerSide:
    """The services this node works for and the tasks it holds (see the module's rules)."""

    def __init__(
        self,
        wiring: WorkerWiring,
        node_id: bytes,
        *,
        dedup_window: int,
        credit: int | None,
        counts: dict[str, int],
        services: ServiceCounts,
        log: RateLimitedLog,
    ) -> None:
        self._wiring = wiring
        self._id = node_id
        self._counts = counts
        self._services = services
        self._log = log
        self._streams: dict[str, TaskStream] = {}
        self._held: set[Task] = set()  # handed to a stream, not yet settled
        self._held_from: dict[bytes, int] = {}  # how many of them by sender
        self._held_per_sender = HELD_PER_SENDER if credit is None else max(10 * credit, 1000)
        self._held_changed = trio.lowlevel.ParkingLot()
        self._finished = RecentTasks(dedup_window)  # (sender, task id) of tasks acked here
        self._routes: dict[bytes, Route] = {}  # by sender: where its answers go (`_route_to`)
        self._draining = False
        self._unyielded = 0

    @property
    def load(self) -> int:
        """Tasks in this worker's hands (told to peers in heartbeats)."""
        return len(self._held)

    @property
    def draining(self) -> bool:
        return self._draining

    def on_task(self, envelope: Envelope) -> None:
        """A TASK or REQUEST from the inbox (never blocks)."""
        meta = envelope.meta
        assert meta is not None
        task_id, service, attempt = meta[0], meta[1], meta[2]
        ttl = meta[3:]  # a REQUEST's time to live; () for a TASK
        self._services.row(service)[RECEIVED] += 1
        if not ttl and (envelope.sender, task_id) in self._finished:
            self._counts["tasks_duplicate"] += 1  # done already: its ack was lost on the way
            self._settle_nowait(envelope.sender, Kind.ACK, [task_id])
            return
        stream = self._streams.get(service)
        if stream is None:
            self._settle_nowait(envelope.sender, Kind.NACK, [task_id, "service not offered here"])
            return
        held = self._held_from.get(envelope.sender, 0)
        if held >= self._held_per_sender:
            reason = f"this worker holds {held} of your tasks already"
            self._settle_nowait(envelope.sender, Kind.NACK, [task_id, reason])
            return
        if ttl:
            deadline = trio.current_time() + ttl[0] / 1000 if ttl[0] else math.inf
            task: Task = Request(
                self, envelope.sender, task_id, service, attempt, envelope.body, deadline
            )
        else:
            task = Task(self, envelope.sender, task_id, service, attempt, envelope.body)
        self._held.add(task)
        self._held_from[envelope.sender] = held + 1
        stream._put(task)

    @asynccontextmanager
    async def work(self, service: str, closing: Callable[[], bool]) -> AsyncIterator[TaskStream]:
        """`Node.work`: offer `service` until the block ends (`closing` tells whether the node is
        closing then, when peers are not told)."""
        if self._draining:
            raise trio.ClosedResourceError("the node is draining: it takes no more work")
        if service in self._streams:
            raise ValueError(f"this node already works for {service!r}")
        stream = TaskStream(service)
        self._streams[service] = stream
        self._wiring.offer(self._streams)
        try:
            await trio.lowlevel.checkpoint()
            yield stream
        finally:
            if self._streams.pop(service, None) is not None and not closing():
                self._wiring.offer(self._streams)  # first, then the NACKs (module rules)
            self.hand_back(stream._close(), "worker stopped")

    @asynccontextmanager
    async def serve(self, service: str, closing: Callable[[], bool]) -> AsyncIterator[TaskStream]:
        """`Node.serve`: `work`, answering on the way out what was taken and not answered."""
        async with self.work(service, closing) as stream:
            message = "the provider stopped serving before it replied"
            try:
                yield stream
            except Exception as exc:
                message = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                self._answer_all(stream, message)

    def _answer_all(self, stream: TaskStream, message: str) -> None:
        """Fail every request of `stream` taken and not answered, nack every such task."""
        waiting = set(stream._buffer)  # (not taken: handed back by `work`)
        for task in [t for t in self._held if t.service == stream.service]:
            if task in waiting or task._settled:
                continue
            task._settled = True
            if type(task) is Request:
                self._settle_nowait(task._origin, Kind.REPLY, [task.id, False], message[:1000])
            else:
                self._settle_nowait(task._origin, Kind.NACK, [task.id, message[:200]])
            self.release(task)

    def expired(self, request: Request) -> None:
        """`request` was dropped unread: its caller has stopped waiting."""
        self._counts["requests_expired"] += 1
        self.release(request)

    async def drain(self, grace: float) -> None:
        """`Node.drain`."""
        self._draining = True
        streams = list(self._streams.values())
        self._streams.clear()
        self._wiring.offer(self._streams)  # the UPDATEs leave before the NACKs below
        for stream in streams:
            self.hand_back(stream._close(), "worker leaving")
        with trio.move_on_after(grace):
            while self._held:
                await self._held_changed.park()
        self.hand_back(list(self._held), f"worker leaving: not done within {grace} s")
        await trio.lowlevel.checkpoint()

    def stop(self) -> None:
        """The node is closing: hand back every task not yet taken from a stream."""
        for stream in list(self._streams.values()):
            self.hand_back(stream._close(), "worker stopped")

    def hand_back(self, tasks: Iterable[Task], reason: str) -> None:
        """Nack tasks this worker will not do, so their senders send them elsewhere."""
        for task in tasks:
            if not task._settled:
                task._settled = True
                self._settle_nowait(task._origin, Kind.NACK, [task.id, reason])
            self.release(task)

    def release(self, task: Task) -> None:
        """`task` is settled (or given back): it is no longer in this worker's hands."""
        held = self._held
        if task in held:
            held.remove(task)
            origin = task._origin
            if (left := self._held_from[origin] - 1) > 0:
                self._held_from[origin] = left
            else:
                del self._held_from[origin]
            self._services.row(task.service)[DONE] += 1
        if not held and self._held_changed:  # (`drain` waits there; nothing else does)
            self._held_changed.unpark_all()

    async def settle(self, origin: bytes, kind: Kind, meta: list[Any], body: Any = None) -> None:
        """Send an ACK, NACK or REPLY to the task's sender, waiting while its outbox is full.
        Raises `TypeError`/`ValueError` for a reply `body` that cannot be packed."""
        while (full := self.answer_now(origin, kind, meta, body)) is not None:
            await full.wait_room()  # a link closed meanwhile wakes this too
        # Not a scheduling point per answer: the acks of a worker's burst of tasks then leave
        # together (the outbox coalesces until this task yields).
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    def answer_now(
        self, origin: bytes, kind: Kind, meta: list[Any], body: Any = None
    ) -> Outbox | None:
        """`settle` if the sender's outbox has room (or the sender is gone: logged); else the
        full outbox, to wait on, and nothing done."""
        route = self._routes.get(origin)
        if route is None or route.outbox.socket.closed:
            route = self._route_to(origin)
        if route is None:  # it left, or never said HELLO
            self._log.warning(
                "unroutable",
                trio.current_time(),
                "cannot send %s for task %d: its sender %s is not a known peer",
                kind.name,
                meta[0],
                origin.hex()[:8],
            )
            return None
        outbox = route.outbox
        if kind is Kind.ACK:
            self._finished.add((origin, meta[0]))
        if not outbox.has_room():
            return outbox
        # The sequence number is taken only once there is room, so numbers leave in order.
        frame = pack(kind, self._id, route.seq + 1, meta, body)
        route.next_seq()  # only now: packing may have refused the body
        outbox.send_nowait(frame)
        self._counts[_SENT[kind]] += 1
        return None

    def _route_to(self, origin: bytes) -> Route | None:
        """The link to `origin`'s inbox, looked up and kept for its next answers (a peer's
        inbox address never changes: a link found closed is looked up again)."""
        route = self._wiring.route_to(origin)
        if route is None or route.outbox.socket.closed:
            self._routes.pop(origin, None)
            return None
        if len(self._routes) >= _ROUTES_KEPT:
            self._routes.clear()
        self._routes[origin] = route
        return route

    def _settle_nowait(self, origin: bytes, kind: Kind, meta: list[Any], body: Any = None) -> None:
        if self._wiring.send_to_peer(origin, kind, meta, body):
            self._counts[_SENT[kind]] += 1


_SENT: Final = {Kind.ACK: "acks_sent", Kind.NACK: "nacks_sent", Kind.REPLY: "replies_sent"}
