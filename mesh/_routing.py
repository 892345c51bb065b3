"""Which worker gets the next task, and which tasks are in flight. Pure: no IO, no clock.

Rules:

* A task id is unique among the tasks one node sends (a counter from 1); with the sender's id it
  names a task in the whole mesh.
* A task is *in flight* from the moment it is handed to a worker's outbox until that worker acks
  or nacks it. Only the worker it was sent to can settle it: an ack from anyone else is ignored.
* Each worker holds at most `max_in_flight` of this node's tasks at a time.
* The next task goes to the candidate with the fewest tasks in flight; ties go round-robin, so an
  idle mesh still spreads its work.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class InFlightTask:
    """A task sent and not yet settled."""

    task_id: int
    service: str
    body: Any
    worker: bytes
    attempt: int
    sent_at: float


class Dispatcher:
    """The in-flight table and the choice of worker, for the tasks one node sends."""

    def __init__(self, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.max_in_flight = max_in_flight
        self._next_id = 1
        self._tasks: dict[int, InFlightTask] = {}
        self._load: dict[bytes, int] = {}
        self._turn = 0

    def new_task_id(self) -> int:
        task_id = self._next_id
        self._next_id += 1
        return task_id

    def pick(self, candidates: Sequence[bytes]) -> bytes | None:
        """The worker among `candidates` to send the next task to, or None if all are full."""
        best: bytes | None = None
        best_load = self.max_in_flight
        count = len(candidates)
        if count == 0:
            return None
        start = self._turn % count
        for offset in range(count):
            worker = candidates[(start + offset) % count]
            load = self._load.get(worker, 0)
            if load < best_load:
                best, best_load = worker, load
                if load == 0:
                    break
        if best is not None:
            self._turn = start + 1
        return best

    def sent(self, task: InFlightTask) -> None:
        """Record that `task` was handed to `task.worker`."""
        if task.task_id in self._tasks:
            raise ValueError(f"task {task.task_id} is already in flight")
        self._tasks[task.task_id] = task
        self._load[task.worker] = self._load.get(task.worker, 0) + 1

    def settle(self, worker: bytes, task_id: int) -> InFlightTask | None:
        """An ack or nack arrived from `worker`. Returns the task it settled, or None if it names
        no task of ours in flight at that worker (a late duplicate, or a confused peer)."""
        task = self._tasks.get(task_id)
        if task is None or task.worker != worker:
            return None
        del self._tasks[task_id]
        remaining = self._load[worker] - 1
        if remaining:
            self._load[worker] = remaining
        else:
            del self._load[worker]
        return task

    def forget_worker(self, worker: bytes) -> list[InFlightTask]:
        """Remove and return every task in flight at `worker` (it left)."""
        lost = [task for task in self._tasks.values() if task.worker == worker]
        for task in lost:
            del self._tasks[task.task_id]
        self._load.pop(worker, None)
        return lost

    def in_flight(self, worker: bytes | None = None) -> int:
        """Tasks in flight in all, or at one worker."""
        if worker is None:
            return len(self._tasks)
        return self._load.get(worker, 0)
