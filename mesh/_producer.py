"""The producer side of work: sending tasks to workers, tracking them until they are settled,
sending them again, and giving up on them.

Rules:

* A task goes to the ready worker `Dispatcher.pick` chooses (live, offering the service, with
  credit and outbox room); `push` waits while there is none. It is tracked in the in-flight table
  from its send until its worker acks or nacks it, or is declared dead or leaves, or its ack
  deadline (`Settings.ack_timeout`) passes.
* A task that comes back (nack, death, departure, deadline) is queued by service and sent again
  by one task, `serve_redeliveries`, to whichever worker has room; a task with no worker holds up
  no other service. After `Settings.max_attempts` sends it is given up: handed to the
  dead-letter handler, or logged. Which (`returned`), and when a task expires
  (`Dispatcher.expired`, `Dispatcher.next_deadline`), are decided in mesh/_routing.py, pure.
* Everything that can give a waiting `push` a worker (an ack, a peer joining or offering a
  service, an outbox with room again) calls `capacity_changed`.
* A request is a task that wants a reply (`request`): it goes the same way, as a REQUEST, and
  its REPLY settles it and wakes its caller (`Calls`). It is sent at most
  `Settings.request_attempts` times, then its caller gets a `RemoteError` (no dead letter); a
  request whose caller stopped waiting is not sent again.

The node wires it to its links (`ProducerWiring`); it reads no other component's state.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

import trio

from ._errors import NoWorkerError, RemoteError
from ._journal import LoggedTask, StateDirectory
from ._metrics import (
    ACK_LATENCY_BUCKETS,
    ACKED,
    GIVEN_UP,
    NACKED,
    PUSHED,
    REDELIVERED,
    ServiceCounts,
    Tally,
)
from ._ratelimit import RateLimitedLog
from ._requests import Calls, ttl_ms
from ._routing import Dispatcher, InFlightTask, returned
from ._streams import YIELD_EVERY
from ._types import DeadLetter
from ._wire import Envelope, Kind, pack
from ._zmq import Outbox

logger = logging.getLogger("mesh")

#: Seconds between writes of a state directory's buffered settled records.
JOURNAL_FLUSH: Final = 0.2


class Route(Protocol):
    """A link to a worker's inbox: its outbox and the sequence numbers of what goes on it."""

    outbox: Outbox
    seq: int

    def next_seq(self) -> int: ...


class ProducerWiring(Protocol):
    """What the producer side needs of the rest of the node."""

    def ready_workers(self, service: str) -> dict[bytes, Route]:
        """The live peers offering `service` whose outbox has room, in the order they started
        offering it, each with its link."""


class ProducerSide:
    """Tasks this node sent and has not seen settled (see the module's rules)."""

    def __init__(
        self,
        wiring: ProducerWiring,
        node_id: bytes,
        *,
        max_in_flight: int,
        ack_timeout: float | None,
        max_attempts: int,
        request_attempts: int,
        outbox_limit: int,
        dead_letter: Callable[[DeadLetter], None] | None,
        services: ServiceCounts,
        counts: dict[str, int],
        log: RateLimitedLog,
    ) -> None:
        self._wiring = wiring
        self._id = node_id
        self._max_attempts = max_attempts
        self._request_attempts = request_attempts
        self._outbox_limit = outbox_limit
        self._counts = counts
        self.calls = Calls()
        #: The state directory's outbox, if the node has one (`mesh._journal`).
        self.journal: StateDirectory | None = None
        self._unyielded = 0
        self._dead_letter = dead_letter
        self._services = services
        self._log = log
        self.dispatcher = Dispatcher(max_in_flight, ack_timeout)
        self.ack_latency = Tally(ACK_LATENCY_BUCKETS)
        #: When the inbox batch being handled was read: acks' arrival, for their latency (one
        #: clock read a batch, set by the inbox reader).
        self.arrival = 0.0
        # Tasks waiting to be sent again, by service: one with no worker holds up no other.
        self._redelivery: dict[str, deque[InFlightTask]] = {}
        self._in_flight_grew = trio.lowlevel.ParkingLot()
        self._capacity_changed = trio.lowlevel.ParkingLot()  # a worker or room appeared
        self._redelivery_queued = trio.lowlevel.ParkingLot()  # `_redelivery` got a task
        self._settled = trio.lowlevel.ParkingLot()  # the in-flight table shrank

    @property
    def redelivery_queued(self) -> int:
        """Tasks waiting to be sent again."""
        return sum(map(len, self._redelivery.values()))

    def pick(self, service: str) -> tuple[bytes, Route] | None:
        """The worker the next task for `service` goes to, now, if any has room."""
        ready = self._wiring.ready_workers(service)
        worker = self.dispatcher.pick(ready)
        return None if worker is None else (worker, ready[worker])

    async def wait_for_worker(
        self, service: str, timeout: float, check_open: Callable[[], None]
    ) -> tuple[bytes, Route]:
        """Wait until a worker for `service` has room; return it with its link. Raises
        `NoWorkerError` when `timeout` seconds pass first."""
        with trio.move_on_at(trio.current_time() + timeout):
            while True:
                await self._capacity_changed.park()
                check_open()
                chosen = self.pick(service)
                if chosen is not None:
                    return chosen
        raise NoWorkerError(service, timeout)

    def send(
        self,
        worker: bytes,
        route: Route,
        task_id: int,
        service: str,
        attempt: int,
        body: Any,
        deadline: float | None = None,
    ) -> None:
        """Hand a task (or, with a `deadline`, a request) to a worker `pick` chose (so its
        outbox has room) and track it."""
        now = trio.current_time()
        if deadline is None:
            frame = pack(Kind.TASK, self._id, route.seq + 1, [task_id, service, attempt], body)
        else:
            meta = [task_id, service, attempt, ttl_ms(deadline, now)]
            frame = pack(Kind.REQUEST, self._id, route.seq + 1, meta, body)
        route.next_seq()  # only now: packing may have refused the body
        sent = route.outbox.send_nowait(frame)
        assert sent, "picked a worker whose outbox is full"
        self.dispatcher.sent(InFlightTask(task_id, service, body, worker, attempt, now, deadline))
        if self._in_flight_grew:  # the deadline task waits here only when nothing is in flight
            self._in_flight_grew.unpark_all()

    async def push(
        self,
        service: str,
        body: Any,
        timeout: float,
        wait: bool,
        check_open: Callable[[], None],
    ) -> None:
        """`Node.push`, its arguments checked."""
        journal = self.journal
        if journal is None:
            if not wait:
                raise ValueError("push(wait=False) needs a state directory (open_node state_dir)")
        elif journal.live >= self._outbox_limit:
            await self._wait_outbox_room(journal, timeout, check_open)
        chosen = self.pick(service)
        if chosen is None and wait:
            chosen = await self.wait_for_worker(service, timeout, check_open)
        task_id = self.dispatcher.new_task_id()
        if journal is not None:
            journal.add(task_id, service, body)  # (first: it raises for a body it cannot pack)
        if chosen is None:
            self._queue(InFlightTask(task_id, service, body, b"", 0, trio.current_time()))
        else:
            self.send(chosen[0], chosen[1], task_id, service, 1, body)
        self._services.row(service)[PUSHED] += 1
        self._unyielded += 1
        if self._unyielded >= YIELD_EVERY:  # (not a coroutine per task: inline)
            self._unyielded = 0
            await trio.lowlevel.cancel_shielded_checkpoint()

    async def _wait_outbox_room(
        self, journal: StateDirectory, timeout: float, check_open: Callable[[], None]
    ) -> None:
        with trio.move_on_after(timeout):
            while journal.live >= self._outbox_limit:
                check_open()
                await self._settled.park()
            return
        raise TimeoutError(
            f"the outbox held {journal.live} unsettled tasks (Settings.outbox_limit) for"
            f" {timeout:g} s"
        )

    def recover(self, tasks: Iterable[LoggedTask]) -> None:
        """Tasks a state directory held from a run before: sent as workers have room (they
        were numbered anew, from 1: this node's ids continue after them)."""
        now = trio.current_time()
        for task in tasks:
            self.dispatcher.skip_to(task.task_id)
            self._queue(InFlightTask(task.task_id, task.service, task.body, b"", 0, now))

    def _queue(self, task: InFlightTask) -> None:
        """Queue a task not sent yet (attempt 0) until a worker has room."""
        self._redelivery.setdefault(task.service, deque()).append(task)
        self._redelivery_queued.unpark_all()

    def start(self, nursery: trio.Nursery) -> None:
        """Start this side's tasks in `nursery`."""
        nursery.start_soon(self.serve_redeliveries)
        nursery.start_soon(self.expire_tasks)
        nursery.start_soon(self.calls.expire_calls)
        if self.journal is not None:
            nursery.start_soon(self._flush_journal, self.journal)

    async def _flush_journal(self, journal: StateDirectory) -> None:
        """Write the state directory's buffered settled records a few times a second."""
        while True:
            await trio.sleep(JOURNAL_FLUSH)
            journal.flush()

    async def request(
        self, service: str, body: Any, timeout: float, check_open: Callable[[], None]
    ) -> Any:
        """`Node.request`: send a request, wait for its reply."""
        deadline = trio.current_time() + timeout
        chosen = self.pick(service)
        if chosen is None:
            chosen = await self.wait_for_worker(service, timeout, check_open)
        worker, route = chosen
        request_id = self.dispatcher.new_task_id()
        self.send(worker, route, request_id, service, 1, body, deadline)
        self._counts["requests_sent"] += 1
        self._services.row(service)[PUSHED] += 1

        def timed_out() -> TimeoutError:
            self._counts["requests_timed_out"] += 1
            return TimeoutError(f"no reply from {service!r} within {timeout:g} s")

        return await self.calls.wait(
            request_id, deadline, timed_out, lambda: self._abandon(request_id)
        )

    def _abandon(self, request_id: int) -> None:
        """A caller stopped waiting: its request leaves flight (a queued one is skipped when
        its turn comes: `serve_redeliveries`)."""
        self.dispatcher.cancel(request_id)
        self._capacity_changed.unpark_all()
        self._settled.unpark_all()

    def on_settled(self, envelope: Envelope) -> None:
        """An ACK, NACK or REPLY from the inbox (never blocks; `arrival` is when its batch was
        read)."""
        assert envelope.meta is not None
        task = self.dispatcher.settle(envelope.sender, envelope.meta[0])
        if task is None:
            return
        self.ack_latency.observe(self.arrival - task.sent_at)
        if envelope.kind is not Kind.NACK:
            self._services.row(task.service)[ACKED] += 1
            if task.deadline is not None:
                self._answer(task, envelope)
            elif self.journal is not None:
                self.journal.settle(task.task_id)
        else:
            self._services.row(task.service)[NACKED] += 1
            self._log.warning(
                "nack",
                trio.current_time(),
                "task %d for %r was refused by %s: %s",
                task.task_id,
                task.service,
                envelope.sender.hex()[:8],
                envelope.meta[1],
            )
            self.redeliver([task], f"nack: {envelope.meta[1]}")
        # (Checked first: unpark_all costs even when nobody waits, and this runs per ack.)
        if self._capacity_changed:
            self._capacity_changed.unpark_all()
        if self._settled:
            self._settled.unpark_all()

    def _answer(self, request: InFlightTask, envelope: Envelope) -> None:
        """Wake the caller of `request` with its REPLY (an ACK replies None)."""
        assert envelope.meta is not None
        if envelope.kind is Kind.REPLY and not envelope.meta[1]:
            body = envelope.body
            message = body[:1000] if type(body) is str else "error (no message)"
            self._counts["requests_failed"] += 1
            self.calls.answer(request.task_id, error=RemoteError(request.service, message))
        else:
            self._counts["replies_received"] += 1
            self.calls.answer(request.task_id, envelope.body)

    def redeliver(self, tasks: Iterable[InFlightTask], why: str) -> None:
        """Queue tasks to be sent again (to whichever live worker has room), or give them up
        after `Settings.max_attempts` (requests: `Settings.request_attempts`)."""
        fate = returned(tasks, self._max_attempts, self._request_attempts)
        for task in fate.given_up:
            self._give_up(task, why)
        for task in fate.again:
            self._redelivery.setdefault(task.service, deque()).append(task)
            self._services.row(task.service)[REDELIVERED] += 1
        if fate.again:
            self._redelivery_queued.unpark_all()
        self._capacity_changed.unpark_all()
        self._settled.unpark_all()

    def forget_worker(self, worker: bytes, why: str) -> None:
        """`worker` died or left: what it held unacked goes to other workers."""
        self.redeliver(self.dispatcher.forget_worker(worker), why)

    def capacity_changed(self) -> None:
        """A worker or room may have appeared: waiting pushes look again."""
        if self._capacity_changed:
            self._capacity_changed.unpark_all()

    def wake_all(self) -> None:
        """The node is closing: every waiter looks again (and finds it closed)."""
        self._capacity_changed.unpark_all()
        self._settled.unpark_all()
        self.calls.fail_all(lambda: trio.ClosedResourceError("the node is closed"))

    def settled(self) -> bool:
        """Whether every task sent so far is acked or given up on."""
        return not (self.dispatcher.in_flight() or self._redelivery)  # (empty queues removed)

    async def wait_settled(self, check_open: Callable[[], None]) -> None:
        """`Node.wait_settled`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        if self.settled():
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        # Parking yields: no further checkpoint once settled (it would cost a round of the run
        # loop on every round trip).
        while not self.settled():
            check_open()
            await self._settled.park()

    async def expire_tasks(self) -> None:
        """Send again the tasks whose ack deadline (`Settings.ack_timeout`) passed. Runs until
        cancelled."""
        while True:
            deadline = self.dispatcher.next_deadline()
            if deadline is None:
                await self._in_flight_grew.park()  # nothing in flight: wait for a task
                continue
            # Later tasks expire later (one timeout for all): the deadline cannot move earlier.
            await trio.sleep_until(deadline)
            self.redeliver(self.dispatcher.expired(trio.current_time()), "ack deadline")

    async def serve_redeliveries(self) -> None:
        """Send the queued tasks again as workers have room. Runs until cancelled."""
        while True:
            if not self._redelivery:
                # Nothing to send again: wait for that, not for every ack (which changes the
                # capacity too, and would wake this task at each round trip).
                await self._redelivery_queued.park()
                continue
            sent = False
            for service, waiting in list(self._redelivery.items()):
                while waiting:
                    if waiting[0].deadline is not None and waiting[0].task_id not in self.calls:
                        waiting.popleft()  # a request nobody waits for any more
                        continue
                    chosen = self.pick(service)
                    if chosen is None:
                        break
                    task = waiting.popleft()
                    worker, route = chosen
                    attempt = task.attempt + 1
                    self.send(
                        worker, route, task.task_id, service, attempt, task.body, task.deadline
                    )
                    sent = True
                if not waiting:
                    del self._redelivery[service]
            if sent:
                self._settled.unpark_all()
                await trio.lowlevel.checkpoint()
            else:
                await self._capacity_changed.park()

    def _give_up(self, task: InFlightTask, why: str) -> None:
        self._services.row(task.service)[GIVEN_UP] += 1
        if task.deadline is not None:  # a request: its caller is told, no dead letter
            message = f"no reply after {task.attempt} attempt(s); last: {why}"
            if self.calls.answer(task.task_id, error=RemoteError(task.service, message)):
                self._counts["requests_failed"] += 1
            return
        if self.journal is not None:
            self.journal.settle(task.task_id)
        letter = DeadLetter(task.task_id, task.service, task.body, task.attempt, why)
        if self._dead_letter is None:
            self._log.warning(
                "given-up",
                trio.current_time(),
                "gave up task %d for %r after %d attempts (last: %s)",
                task.task_id,
                task.service,
                task.attempt,
                why,
            )
            return
        try:
            self._dead_letter(letter)
        except Exception:
            logger.exception("the dead-letter handler failed on %r", letter)
