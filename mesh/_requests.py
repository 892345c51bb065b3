"""The callers waiting for replies: one parked trio task per request in flight, woken with the
reply, an error, or (by its own deadline or cancellation) not at all.

Rules:

* A request is a task that wants a reply: it is picked a provider, tracked in flight, sent again
  when its provider nacks it, dies or leaves, and given up, like any task (`ProducerSide`). This
  table only holds who waits for which request id.
* A caller is woken once: by `answer` (a reply or an error from the provider, or the node giving
  up on the request), or by its own cancellation, whose abort takes it out of the table and out
  of flight (`on_abort`), so a reply that comes later names nothing and is dropped.
* A parked caller is woken directly (`trio.lowlevel.reschedule`), with no `trio.Event`: a round
  trip's cost is mostly scheduling, and this is the least of it.
"""

from __future__ import annotations

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
    __slots__ = ("error", "task", "value")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.value: Any = None
        self.error: BaseException | None = None


class Calls:
    """Callers waiting for replies, by request id (see the module's rules)."""

    def __init__(self) -> None:
        self._waiting: dict[int, _Call] = {}

    def __contains__(self, request_id: int) -> bool:
        return request_id in self._waiting

    def __len__(self) -> int:
        return len(self._waiting)

    async def wait(self, request_id: int, on_abort: Callable[[], None]) -> Any:
        """Park until request `request_id` is answered; return its reply or raise its error.
        Cancelled, it calls `on_abort` and raises `trio.Cancelled` as usual."""
        call = _Call(trio.lowlevel.current_task())
        self._waiting[request_id] = call

        def abort(_: object) -> trio.lowlevel.Abort:
            del self._waiting[request_id]
            on_abort()
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)
        if call.error is not None:
            raise call.error
        return call.value

    def answer(
        self, request_id: int, value: Any = None, error: BaseException | None = None
    ) -> bool:
        """Wake the caller of `request_id` with `value`, or with `error` raised; False if none
        waits (it gave up, or the id is unknown)."""
        call = self._waiting.pop(request_id, None)
        if call is None:
            return False
        call.value = value
        call.error = error
        trio.lowlevel.reschedule(call.task)
        return True

    def fail_all(self, error: Callable[[], BaseException]) -> None:
        """Wake every caller with a new `error()` (the node is closing)."""
        for request_id in list(self._waiting):
            self.answer(request_id, error=error())
