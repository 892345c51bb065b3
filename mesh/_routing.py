"""Which worker gets the next task, and which tasks are in flight. Pure: no IO, no clock.

Rules:

* A task id is unique among the tasks one node sends (a counter from 1); with the sender's id it
  names a task in the whole mesh.
* A task is *in flight* from the moment it is handed to a worker's outbox until that worker acks
  or nacks it. Only the worker it was sent to can settle it: an ack from anyone else is ignored.
* Each worker holds at most `max_in_flight` of this node's tasks at a time, or fewer if it
  advertised a smaller credit (`set_credit`, its prefetch).
* The next task goes to the candidate with the most room (credit minus tasks in flight); ties go
  round-robin, so an idle mesh still spreads its work.
* With an `ack_timeout`, a task not settled that long after it was sent *expires*: `expired(now)`
  takes it out of flight, for the caller to send again. `next_deadline()` says when the next one
  does. Time is passed in.
* A task that comes back (nacked, expired, its worker gone) is sent again until it has been sent
  `max_attempts` times, then given up (`returned`). A request (a task that wants a reply, and
  has a `deadline`) has its own limit, `max_request_attempts`.
* A request whose caller stopped waiting is taken out of flight (`cancel`): a late reply to it
  names no task in flight and is ignored.
* A worker remembers the last `window` tasks it finished (`RecentTasks`), so a redelivered task it
  already did is acked again without being run again.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple


class InFlightTask(NamedTuple):
    """A task sent and not yet settled. (A named tuple, not a frozen dataclass: one is made per
    task sent, and a frozen dataclass's __init__ costs several times as much.)"""

    task_id: int
    service: str
    body: Any
    worker: bytes
    attempt: int
    sent_at: float
    #: For a request, when its caller stops waiting (its clock; may be infinite); None for a task.
    deadline: float | None = None


@dataclass(frozen=True, slots=True)
class Returned:
    """Tasks that came back, sorted: `again` to be sent again (each as its next attempt),
    `given_up` after their last; each in the order they came."""

    again: tuple[InFlightTask, ...]
    given_up: tuple[InFlightTask, ...]


def returned(
    tasks: Iterable[InFlightTask], max_attempts: int, max_request_attempts: int | None = None
) -> Returned:
    """What becomes of `tasks`, which came back: a task sent `max_attempts` times (or more), or
    a request sent `max_request_attempts` times (default: `max_attempts`), is given up, any
    other is sent again."""
    if max_request_attempts is None:
        max_request_attempts = max_attempts
    again: list[InFlightTask] = []
    given_up: list[InFlightTask] = []
    for task in tasks:
        limit = max_attempts if task.deadline is None else max_request_attempts
        (given_up if task.attempt >= limit else again).append(task)
    return Returned(tuple(again), tuple(given_up))


class Dispatcher:
    """The in-flight table and the choice of worker, for the tasks one node sends."""

    def __init__(self, max_in_flight: int, ack_timeout: float | None = None) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        if ack_timeout is not None and not ack_timeout > 0:
            raise ValueError("ack_timeout must be a positive number of seconds, or None")
        self.max_in_flight = max_in_flight
        self.ack_timeout = ack_timeout
        self._next_id = 1
        self._tasks: dict[int, InFlightTask] = {}
        self._load: dict[bytes, int] = {}
        self._credit: dict[bytes, int] = {}
        # A heap of (deadline, task id); entries of settled tasks are skipped lazily, and
        # dropped in bulk when they outnumber the tasks in flight (`sent`).
        self._deadlines: list[tuple[float, int]] = []
        self._turn = 0

    def new_task_id(self) -> int:
        task_id = self._next_id
        self._next_id += 1
        return task_id

    def skip_to(self, task_id: int) -> None:
        """Ids up to `task_id` are taken (by tasks recovered from a state directory)."""
        self._next_id = max(self._next_id, task_id + 1)

    def pick(self, candidates: Iterable[bytes]) -> bytes | None:
        """The worker among `candidates` (in a stable order, for the round-robin) to send the
        next task to, or None if all are full."""
        order = list(candidates)
        count = len(order)
        if count == 0:
            return None
        limit = self.max_in_flight
        credit = self._credit
        load = self._load
        best: bytes | None = None
        best_room = 0
        start = self._turn % count
        for offset in range(count):
            worker = order[(start + offset) % count]
            # (`capacity`, inlined: this runs once per candidate and task)
            room = min(limit, credit.get(worker, limit)) - load.get(worker, 0)
            if room > best_room:
                best, best_room = worker, room
        if best is not None:
            self._turn = start + 1
        return best

    def capacity(self, worker: bytes) -> int:
        """How many of this node's tasks `worker` may hold at once."""
        return min(self.max_in_flight, self._credit.get(worker, self.max_in_flight))

    def set_credit(self, worker: bytes, credit: int) -> None:
        """`worker` takes at most `credit` unacked tasks (its prefetch); at least 1 counts."""
        self._credit[worker] = max(1, credit)

    def sent(self, task: InFlightTask) -> None:
        """Record that `task` was handed to `task.worker`."""
        if task.task_id in self._tasks:
            raise ValueError(f"task {task.task_id} is already in flight")
        self._tasks[task.task_id] = task
        self._load[task.worker] = self._load.get(task.worker, 0) + 1
        if self.ack_timeout is not None:
            deadlines = self._deadlines
            if len(deadlines) > 2 * len(self._tasks) + 1024:
                # Most entries are of tasks settled since: keep the others. (Amortised: the
                # table stays about as large as the tasks in flight, not as the tasks sent in
                # one ack timeout, which is millions under load.)
                self._deadlines = deadlines = [e for e in deadlines if self._is_due(*e)]
                heapq.heapify(deadlines)
            heapq.heappush(deadlines, (task.sent_at + self.ack_timeout, task.task_id))

    def settle(self, worker: bytes, task_id: int) -> InFlightTask | None:
        """An ack or nack arrived from `worker`. Returns the task it settled, or None if it names
        no task of ours in flight at that worker (a late duplicate, or a confused peer)."""
        task = self._tasks.get(task_id)
        if task is None or task.worker != worker:
            return None
        self._take(task)
        return task

    def cancel(self, task_id: int) -> InFlightTask | None:
        """Take a task out of flight (a request whose caller gave up); returns it, or None if it
        was not in flight."""
        task = self._tasks.get(task_id)
        if task is not None:
            self._take(task)
        return task

    def expired(self, now: float) -> list[InFlightTask]:
        """Take out of flight, and return, every task whose ack deadline is at or before `now`
        (oldest first)."""
        overdue = []
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, task_id = heapq.heappop(self._deadlines)
            if self._is_due(deadline, task_id):
                task = self._tasks[task_id]
                self._take(task)
                overdue.append(task)
        return overdue

    def _is_due(self, deadline: float, task_id: int) -> bool:
        """Whether a deadline entry is still its task's (in flight, and not sent again since)."""
        task = self._tasks.get(task_id)
        return task is not None and task.sent_at + (self.ack_timeout or 0) == deadline

    def next_deadline(self) -> float | None:
        """When the next task in flight expires, or None."""
        while self._deadlines:
            deadline, task_id = self._deadlines[0]
            if self._is_due(deadline, task_id):
                return deadline
            heapq.heappop(self._deadlines)  # settled already: drop the stale entry
        return None

    def _take(self, task: InFlightTask) -> None:
        del self._tasks[task.task_id]
        remaining = self._load[task.worker] - 1
        if remaining:
            self._load[task.worker] = remaining
        else:
            del self._load[task.worker]

    def forget_worker(self, worker: bytes) -> list[InFlightTask]:
        """Remove and return every task in flight at `worker` (it left)."""
        lost = [task for task in self._tasks.values() if task.worker == worker]
        for task in lost:
            del self._tasks[task.task_id]
        self._load.pop(worker, None)
        self._credit.pop(worker, None)
        return lost

    def in_flight(self, worker: bytes | None = None) -> int:
        """Tasks in flight in all, or at one worker."""
        if worker is None:
            return len(self._tasks)
        return self._load.get(worker, 0)


class RecentTasks:
    """The last `window` tasks a worker finished, by key (sender id, task id), oldest forgotten
    first: a redelivered task found here is acked again, not run again."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError("window must be at least 1")
        self._window = window
        # An OrderedDict, not a dict: a dict whose oldest keys are deleted one by one makes
        # `next(iter(d))` walk over the holes they leave (measured: the largest cost of an ack).
        self._done: OrderedDict[Hashable, None] = OrderedDict()

    def __contains__(self, key: Hashable) -> bool:
        return key in self._done

    def __len__(self) -> int:
        return len(self._done)

    def add(self, key: Hashable) -> None:
        done = self._done
        if key in done:
            done.move_to_end(key)
            return
        done[key] = None
        if len(done) > self._window:
            done.popitem(last=False)
