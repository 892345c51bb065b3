"""The heartbeat loop's plan: which beat goes out when, on which path, to whom. Pure: no IO, no
clock; the loop calls `BeatPlan.next` with its `now` (seconds) each time it wakes, does what the
answer says, and sleeps until the answer's `wake`.

Rules:

* Beats are numbered from 1, one every `interval`, on a schedule that keeps its cadence: beat k
  is due `interval` after beat k-1 was due, not after the loop got round to it. After a stall it
  does not catch up with a burst: the next beat is due at once, and the cadence restarts there.
* A beat also goes on the PUB if its number is a multiple of `publish_every` (never by number
  while it is 0: a node that watches only some of its peers, whom the PUB would not reach
  alone), or if some peer
  has not echoed one of this node's datagrams within the last `echo_fresh_for` intervals (a new
  peer, one datagrams do not reach, a third-party tool, one dying): then the PUB carries every
  beat, from the next beat on.
* Each beat goes by datagram to every peer that takes them, as many copies as that peer asks
  for (at most `copies`). The peers and the copies they ask for are read once a beat, when it
  is due. Copy c of a beat is due `c / copies` of an interval after the beat was due; the loop
  wakes for a copy only if some peer asked for it, so on a clean network (one copy each) it
  wakes once a beat, however many peers there are.
* `wake` is never before the `now` it was planned at.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

#: Most copies of a beat a peer may ask for, spread over the interval (a peer asks for them all
#: after a loss). Measured at 20 % loss (docs/decisions.md): the TCP copies then often arrive
#: seconds late, so the datagrams carry the beats, and at the default thresholds a peer is
#: declared dead by them only if the ten or so in a row sent over 0.69 s are all lost (with two
#: copies and a threshold of 0.56 s: five, which 20 % loss did now and then).
DATAGRAM_COPIES: Final = 3
#: While datagrams reach every peer, one beat in this many also goes on the PUB (the path a peer
#: falls back on when they stop reaching it, and third-party tools' only one).
PUBLISHED_BEAT_EVERY: Final = 2
#: An echo is fresh for this many intervals: a peer echoes a beat in its next one, read here at
#: the next beat after that, so two intervals old in the normal course; one more for jitter.
ECHO_FRESH_FOR: Final = 3

Target = TypeVar("Target")


@dataclass(frozen=True, slots=True)
class BeatPeer(Generic[Target]):
    """A peer as the plan sees it when a beat is due: the latest of this node's beat times its
    datagrams echoed (-inf if none yet), where its datagrams go (None if it takes none: it never
    sent a heartbeat, or this node cannot reach its address family), and the copies it asks
    for."""

    echoed: float
    target: Target | None
    wanted: int


@dataclass(frozen=True, slots=True)
class BeatStep(Generic[Target]):
    """What the loop does now: send copy `copy` of beat `number` by datagram to each of `to`
    (copy 0 is the beat itself), also publish the beat if `publish`, then sleep until `wake`."""

    number: int
    copy: int
    publish: bool
    to: tuple[Target, ...]
    wake: float


def all_echo(peers: Iterable[BeatPeer[Target]], since: float) -> bool:
    """Whether every peer's datagrams echoed one of this node's beats sent at `since` or later
    (then this node's datagrams reach them all)."""
    return all(peer.echoed >= since for peer in peers)


class BeatPlan(Generic[Target]):
    """The schedule of this node's heartbeats (see the module's rules), from `start`. Raises
    `ValueError` for an interval that is not positive, fewer than one copy, or a negative
    `publish_every`."""

    __slots__ = (
        "_beat_at",
        "_copies",
        "_copy",
        "_fresh_for",
        "_interval",
        "_number",
        "_targets",
        "publish_every",
    )

    def __init__(
        self,
        interval: float,
        start: float,
        *,
        copies: int = DATAGRAM_COPIES,
        publish_every: int = PUBLISHED_BEAT_EVERY,
        echo_fresh_for: float = ECHO_FRESH_FOR,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if copies < 1 or publish_every < 0:
            raise ValueError("copies must be at least 1, and publish_every not negative")
        self._interval = interval
        self._copies = copies
        self.publish_every = publish_every  # (may be changed between beats)
        self._fresh_for = echo_fresh_for * interval
        self._beat_at = start  # when the current (or next) beat is due
        self._number = 0
        self._copy = 0  # the next copy to send of the current beat; 0: a new beat is next
        self._targets: list[tuple[Target, int]] = []  # this beat's, with the copies each wants

    @property
    def number(self) -> int:
        """The number of the latest beat planned (0 before the first)."""
        return self._number

    def next(self, now: float, peers: Iterable[BeatPeer[Target]]) -> BeatStep[Target]:
        """What to do at `now`, which must not go back. `peers` is read only when a new beat is
        due (pass a generator, and it costs nothing at the other wake-ups)."""
        copy = self._copy
        publish = False
        if copy == 0:
            self._number += 1
            peers = list(peers)
            most = self._copies
            self._targets = [
                (peer.target, min(peer.wanted, most))
                for peer in peers
                if peer.target is not None and peer.wanted > 0
            ]
            every = self.publish_every
            publish = (every > 0 and self._number % every == 0) or not all_echo(
                peers, now - self._fresh_for
            )
        to = tuple(target for target, wanted in self._targets if wanted > copy)
        copy += 1
        if any(wanted > copy for _, wanted in self._targets):
            self._copy = copy
            wake = max(self._beat_at + self._interval * copy / self._copies, now)
        else:
            self._copy = 0
            self._beat_at = wake = max(self._beat_at + self._interval, now)
        return BeatStep(self._number, copy - 1, publish, to, wake)
