"""A subscription's order per publisher: which events follow what it has, which show that some
were missed (and exactly which), and which repeat. Pure: no IO, no clock.

Rules:

* Every event carries `prev`, the number of its publisher's previous event on the same topic
  (0: none). For each publisher and topic a subscription knows the last event it accounted for
  (delivered, or reported lost in a `Gap`), so an event whose `prev` is later than that shows
  exactly which were missed: the events on its topic numbered after the last accounted for up
  to `prev` (the one numbered `prev` among them).
* For a topic not seen yet, the last accounted for is the publisher's *start*: its number when
  the subscription became live there (the SYNCED that confirmed it), or, when that is not known,
  the number just before the first event seen from it. What came before is not owed.
* An event numbered at most the last accounted for on its topic is a repeat (a repair brings
  events that came live too) and is dropped.
* The table is bounded (`max_entries` topics and publishers together): past that it is emptied
  and each publisher's start moves to the newest event accounted for from it, so nothing is
  delivered twice; a gap that spans that moment goes unseen. (A publisher's topics are the
  publisher's to choose, and a member can claim any sender id.)
"""

from __future__ import annotations

from typing import Final

#: `Order.admit`: the event follows what was accounted for (and now is).
FOLLOWS: Final = -1
#: `Order.admit`: the event was accounted for already.
REPEAT: Final = -2
#: Topics and publishers one subscription's order holds by default.
MAX_ENTRIES: Final = 65_536


class Order:
    """The last event accounted for, by publisher and topic (see the module's rules)."""

    __slots__ = ("_last", "_max", "_start")

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._last: dict[tuple[str, str], int] = {}
        self._start: dict[str, int] = {}
        self._max = max_entries

    def __len__(self) -> int:
        return len(self._last) + len(self._start)

    def follows(self, sender: str) -> bool:
        """Whether any event of `sender` was seen (or its start is known)."""
        return sender in self._start

    def start(self, sender: str, seq: int) -> None:
        """The subscription became live at `sender` at its number `seq` (never moved back)."""
        if seq > self._start.get(sender, -1):
            self._grow()
            self._start[sender] = seq

    def admit(self, sender: str, topic: str, seq: int, prev: int) -> int:
        """Take an event: `FOLLOWS` (it is now the last accounted for on its topic), `REPEAT`,
        or, if events before it were missed, the number of the last one accounted for: the
        events on `topic` after that and up to `prev` are missing (and nothing is recorded)."""
        key = (sender, topic)
        last = self._last.get(key)
        if last is None:
            last = self._start.get(sender)
            if last is None:
                self._grow()
                last = self._start[sender] = seq - 1
            self._grow()
        if seq <= last:
            return REPEAT
        if last < prev < seq:  # (a `prev` not below `seq` is no chain at all)
            return last
        self._last[key] = seq
        return FOLLOWS

    def newest(self, sender: str) -> int | None:
        """The number of the newest event of `sender` accounted for, on any topic (its start if
        none; None if `sender` is not known). A scan of the table: for rare questions."""
        newest = self._start.get(sender)
        if newest is None:
            return None
        for (from_sender, _), seq in self._last.items():
            if from_sender == sender and seq > newest:
                newest = seq
        return newest

    def last(self, sender: str, topic: str) -> int | None:
        """The number of the last event accounted for on `topic` (the start if none; None if
        `sender` is not known)."""
        last = self._last.get((sender, topic))
        return self._start.get(sender) if last is None else last

    def account(self, sender: str, topic: str, seq: int) -> None:
        """Events on `topic` up to `seq` are accounted for (delivered, or reported lost)."""
        last = self.last(sender, topic)
        if last is None or seq > last:
            self._grow()
            self._last[(sender, topic)] = seq

    def _grow(self) -> None:
        """Make room for one entry (module rules)."""
        if len(self._last) + len(self._start) < self._max:
            return
        newest = dict(self._start)
        for (sender, _), seq in self._last.items():
            if seq > newest.get(sender, -1):
                newest[sender] = seq
        self._last.clear()
        self._start = newest
        if len(self._start) >= self._max:
            self._start.clear()
