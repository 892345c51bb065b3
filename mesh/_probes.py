"""When a subscription's SYNC probes go out again, and which still wait for their answer. Pure: no
IO, no clock; times are the caller's `now` (seconds).

Rules:

* Every probe (a token) goes out at once, then again while unanswered: `first` seconds later,
  then after twice as long each time, up to every `last` seconds. The first may fall in the
  slow-joiner gap the probes test for; a subscription is usually live within a few ms.
* A token answered, or whose peer is gone, waits no more. Nothing is sent, and the schedule is
  over, once no token waits or `timeout` seconds have passed since it began (the probes that
  go out at once go out even then); what still waits then was never answered.
"""

from __future__ import annotations

from collections.abc import Iterable, Set
from dataclasses import dataclass
from typing import Final

#: SYNC goes out again after 5 ms, then 10, 20, 40 and every 50 ms (on 127.0.0.1 a subscription
#: is live a median of about 1 ms after connecting).
FIRST_RESEND: Final = 0.005
LAST_RESEND: Final = 0.05


@dataclass(frozen=True, slots=True)
class Probes:
    """What to do now: send a probe for each of `send`, then wait for answers until `wake`."""

    send: tuple[int, ...]
    wake: float


class ProbeSchedule:
    """The resend times of the probes for `tokens`, from `now` (see the module's rules). Raises
    `ValueError` for a `first` gap that is not positive, or a `last` below it."""

    __slots__ = ("_deadline", "_gap", "_last", "_resend_at", "_started", "_waiting")

    def __init__(
        self,
        tokens: Iterable[int],
        now: float,
        timeout: float,
        *,
        first: float = FIRST_RESEND,
        last: float = LAST_RESEND,
    ) -> None:
        if not 0 < first <= last:
            raise ValueError(f"need 0 < first <= last, not {first!r} and {last!r}")
        self._waiting = dict.fromkeys(tokens)  # in the order given, which is the order sent
        self._deadline = now + timeout
        self._resend_at = now
        self._gap = first
        self._last = last
        self._started = False

    @property
    def waiting(self) -> Set[int]:
        """The tokens still waiting for an answer (a live view)."""
        return self._waiting.keys()

    def stop(self, token: int) -> None:
        """`token` waits no more: its answer came, or its peer is gone. Unknown tokens are
        ignored."""
        self._waiting.pop(token, None)

    def next(self, now: float) -> Probes | None:
        """What to do at `now` (which must not go back), or None once the schedule is over."""
        if not self._waiting or (self._started and now >= self._deadline):
            return None
        send: tuple[int, ...] = ()
        if now >= self._resend_at:
            send = tuple(self._waiting)
            # From when they went: a caller woken late does not resend twice in a row.
            self._resend_at = now + self._gap
            self._gap = min(self._gap * 2, self._last)
            self._started = True
        return Probes(send, min(self._resend_at, self._deadline))
