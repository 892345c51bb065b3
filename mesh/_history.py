"""A publisher's history: the last events it published, kept for subscribers that join late.
Pure: no IO, no clock (times are passed in).

Rules:

* Every event published is kept, with its sequence number on the publisher's stream, the
  number of the publisher's previous event on the same topic (its `prev`), its channel
  (``b"E" + topic``), its body and when it was published (the publisher's wall clock,
  seconds), until more than `max_events` events or `max_bytes` bytes (of the frames they went
  out in) are kept: then the oldest go first. `max_events` 0 keeps none.
* `query` gives, oldest first, the last `count` events whose topic starts with a prefix, among
  those published at or after `since` and numbered after `after` and at most `upto` (for a
  subscription that starts: the publisher's number when it became live there, what came after
  reaching it live; for one that repairs a gap: the gap's bounds).
"""

from __future__ import annotations

from collections import deque
from typing import Any, NamedTuple


class Kept(NamedTuple):
    """One event kept."""

    seq: int
    prev: int
    channel: bytes
    body: Any
    size: int
    at: float


class History:
    """The last events published, bounded in number and bytes (see the module's rules)."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        if max_events < 0 or max_bytes < 0:
            raise ValueError("history bounds must not be negative")
        self.max_events = max_events
        self.max_bytes = max_bytes
        self._events: deque[tuple[int, int, bytes, Any, int, float]] = deque()  # `Kept`'s fields
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._events)

    @property
    def size(self) -> int:
        """Bytes of the events kept (as their frames went out)."""
        return self._bytes

    @property
    def oldest(self) -> int | None:
        """The number of the oldest event kept (None if none is)."""
        return self._events[0][0] if self._events else None

    def entries(self) -> list[tuple[int, int, bytes, Any, int, float]]:
        """Every event kept, oldest first, as `Kept`'s fields."""
        return list(self._events)

    def add(self, seq: int, prev: int, channel: bytes, body: Any, size: int, at: float) -> None:
        """Keep an event just published (in the order of `seq`). (Called for every event:
        a plain tuple, and the bounds looked at only when one is passed.)"""
        events = self._events
        events.append((seq, prev, channel, body, size, at))
        self._bytes += size
        if len(events) > self.max_events or self._bytes > self.max_bytes:
            while events and (len(events) > self.max_events or self._bytes > self.max_bytes):
                self._bytes -= events.popleft()[4]

    def query(
        self, channel: bytes, count: int, since: float, upto: int, after: int = 0
    ) -> list[Kept]:
        """The last `count` events kept whose channel starts with `channel` (a subscription's),
        published at or after `since` and numbered after `after` and at most `upto`, oldest
        first."""
        found: list[Kept] = []
        if count <= 0:
            return found
        for seq, prev, kept_channel, body, size, at in reversed(self._events):
            if seq > upto:
                continue
            if seq <= after:
                break
            if at < since:
                continue  # (not `break`: a wall clock can step back)
            if kept_channel.startswith(channel):
                found.append(Kept(seq, prev, kept_channel, body, size, at))
                if len(found) >= count:
                    break
        found.reverse()
        return found
