"""The callers waiting for replies: one parked trio task per request in flight, woken with its
reply or an error (the provider's, its deadline's, the node closing), or cancelled.

Rules:

* A request is a task that wants a reply: it is picked a provider, tracked in flight, sent again
  when its provider nacks it, dies or leaves, and given up, like any task (`ProducerSide`). This
  table only holds who waits for which request id.
* A caller is woken once: by `answer` (a reply or an error from the provider, or the node giving
  up on the request), by its deadline (`expire_calls`, one task for all the callers, raises
  `TimeoutError` in it), or by its own cancellation. The last two take it out of the table and
  out of flight (`on_abort`), so a reply that comes later names nothing and is dropped.
* The deadlines are kept in a heap read by that one task, not in a cancel scope per call:
  entering and leaving a scope on every request costs more than a heap entry (the heap is
  compacted once answered calls make most of it).
* A parked caller is woken directly (`trio.lowlevel.reschedule`), with no `trio.Event`: a round
  trip's cost is mostly scheduling, and this is the least of it.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from typing import Any, Final

import trio

#: A request's time to live on the wire is whole milliseconds, 0 for none; a timeout longer
#: than this travels as none (the caller still keeps its own).
MAX_TTL_MS: Final = 2**40


def ttl_ms(deadline: float, now: float) -> int:
    """What a request sent at `now` tells its provider: the milliseconds it has left, rounded
    up (a provider never gives up before its caller), or 0 for no deadline."""
    if deadline == math.inf:
        return 0
    left = math.ceil((deadline - now) * 1000)
    return 0 if left > MAX_TTL_MS else max(left, 1)


class _Call:
    __slots__ = ("error", "on_abort", "task", "timeout", "value")

    def __init__(
        self,
        task: trio.lowlevel.Task,
        timeout: Callable[[], BaseException],
        on_abort: Callable[[], None],
    ) -> None:
        self.task = task
        self.timeout = timeout
        self.on_abort = on_abort
        self.value: Any = None
        self.error: BaseException | None = None


class Calls:
    """Callers waiting for replies, by request id (see the module's rules)."""

    def __init__(self) -> None:
        self._waiting: dict[int, _Call] = {}
        self._deadlines: list[tuple[float, int]] = []  # a heap; answered calls skipped lazily
        self._earlier = trio.lowlevel.ParkingLot()  # `expire_calls` waits here for a deadline

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(
        self,
        request_id: int,
        deadline: float,
        timeout: Callable[[], BaseException],
        on_abort: Callable[[], None],
    ) -> Any:
        """Park until request `request_id` is answered; return its reply or raise its error.
        At `deadline` (`trio.current_time()`'s clock) it raises `timeout()`; cancelled, it
        raises `trio.Cancelled` as usual. Either way it calls `on_abort` first."""
        call = _Call(trio.lowlevel.current_task(), timeout, on_abort)
        self._waiting[request_id] = call
        if deadline != math.inf:
            deadlines = self._deadlines
            earlier = not deadlines or deadline < deadlines[0][0]
            heapq.heappush(deadlines, (deadline, request_id))
            if earlier:
                self._earlier.unpark_all()  # `expire_calls` sleeps till a later one, or none

        def abort(_: object) -> trio.lowlevel.Abort:
            del self._waiting[request_id]
            on_abort()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if call.error is not None:
            raise call.error
        return call.value

    async def expire_calls(self) -> None:
        """Wake each caller whose deadline has passed with its `TimeoutError`. Runs until
        cancelled."""
        while True:
            deadlines = self._deadlines
            while deadlines and deadlines[0][1] not in self._waiting:
                heapq.heappop(deadlines)  # answered already
            if not deadlines:
                await self._earlier.park()
                continue
            with trio.move_on_at(deadlines[0][0]):
                await self._earlier.park()  # an earlier deadline came: look again
            now = trio.current_time()
            while deadlines and deadlines[0][0] <= now:
                _, request_id = heapq.heappop(deadlines)
                call = self._waiting.get(request_id)
                if call is not None:
                    call.on_abort()
                    self.answer(request_id, error=call.timeout())

    def answer(
        self, request_id: int, value: Any = None, error: BaseException | None = None
    ) -> bool:
        """Wake the caller of `request_id` with `value`, or with `error` raised; False if none
        waits (it gave up, or the id is unknown)."""
        call = self._waiting.pop(request_id, None)
        if call is None:
            return False
        if len(self._deadlines) > 2 * len(self._waiting) + 1024:
            # Most deadlines are of calls answered: keep only the others (amortised, so that
            # the heap stays as large as the calls waiting, not as the calls of a timeout).
            self._deadlines = [entry for entry in self._deadlines if entry[1] in self._waiting]
            heapq.heapify(self._deadlines)
        call.value = value
        call.error = error
        trio.lowlevel.reschedule(call.task)
        return True

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Wake every caller with a new `error()` (the node is closing)."""
        for request_id in list(self._waiting):
            self.answer(request_id, error=error())
