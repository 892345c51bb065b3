"""Membership at a cost per node that does not grow with the mesh: SWIM with Lifeguard's local
health, as hashicorp/memberlist does it. The pieces a prober and a gossiper ask. Pure: no IO, no
clock (times are passed in), randomness from a `random.Random` passed in.

Rules:

* Each period a node probes one member, in a shuffled round robin (`ProbeOrder`): every member
  is probed once a round, and a round's order is new each time, so a failed member is probed
  within two rounds whatever its place. A member that joins goes to a random place, not the
  end (where it would wait a whole round more).
* A probe unanswered in time is repeated through `k` other members (indirect probes); one that
  none of them gets an answer to makes the member *suspect*. A suspicion becomes a death after
  `suspicion_timeout`: long (`max_mult` times the least) while this node alone suspects it,
  shorter with each other member that independently says it suspects it too, down to the least,
  `mult * max(1, log10(n))` probe periods, once `confirmations` have come.
* `Awareness` is this node's own health (Lifeguard's local health multiplier): it grows with
  each probe that failed without the relays saying so (nacks missing) and each time this node
  had to refute a suspicion of itself, shrinks with each probe answered, and stretches this
  node's probe period by its factor: a node that is slow itself suspects others less.
* Claims about members (ALIVE, SUSPECT, DEAD) are ordered by each member's incarnation, which
  only the member raises: `Roster` takes what is news and refutes what is said of this node.
* What a node learns (joins, leaves, suspicions, deaths, refutations) is piggybacked on the
  probes and answers it sends anyway (`Broadcasts`): each item goes out `retransmits(n)` times
  (`mult * ceil(log10(n + 1))`), those sent least first, within a datagram's budget; a newer
  item about the same member replaces the older one unsent.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Callable, Hashable
from typing import Final, Generic, NamedTuple, TypeVar

K = TypeVar("K", bound=Hashable)
T = TypeVar("T")

#: memberlist's LAN defaults (config.go: DefaultLANConfig).
SUSPICION_MULT: Final = 4
SUSPICION_MAX_MULT: Final = 6
RETRANSMIT_MULT: Final = 4
AWARENESS_MAX: Final = 8


def suspicion_timeout(
    members: int,
    period: float,
    confirmations: int,
    *,
    needed: int = 2,
    mult: int = SUSPICION_MULT,
    max_mult: int = SUSPICION_MAX_MULT,
) -> float:
    """Seconds from a suspicion to a death, for a mesh of `members` (this node included) probed
    every `period` seconds, with `confirmations` other members suspecting it independently:
    from `max_mult` times the least (none) down to the least, ``mult * max(1, log10(members)) *
    period``, once `needed` have come, on a logarithmic curve (Lifeguard)."""
    least = mult * max(1.0, math.log10(max(members, 1))) * period
    most = max_mult * least
    if needed <= 0 or confirmations >= needed:
        return least
    fraction = math.log(confirmations + 1) / math.log(needed + 1)
    return max(least, most - (most - least) * fraction)


def retransmits(members: int, mult: int = RETRANSMIT_MULT) -> int:
    """How many times an item is piggybacked in a mesh of `members`: enough that it reaches
    every member with high probability, growing with log10 of the mesh only."""
    return mult * math.ceil(math.log10(members + 1))


class ProbeOrder(Generic[K]):
    """Whom to probe next: a shuffled round robin over the members (module rules)."""

    def __init__(self, rng: random.Random) -> None:
        self._rng = rng
        self._order: list[K] = []
        self._index = 0
        self._next: list[K] = []  # probed before the round goes on (`first`)

    def __len__(self) -> int:
        return len(self._order)

    def __contains__(self, member: object) -> bool:
        return member in self._order

    def add(self, member: K) -> None:
        """A member joined: it goes to a random place of the round (nothing if known)."""
        if member in self._order:
            return
        place = self._rng.randrange(len(self._order) + 1)
        self._order.insert(place, member)
        if place < self._index:
            self._index += 1  # (the ones already probed this round stay behind)

    def remove(self, member: K) -> None:
        """A member is gone (nothing if not known)."""
        try:
            place = self._order.index(member)
        except ValueError:
            return
        del self._order[place]
        if place < self._index:
            self._index -= 1

    def first(self, member: K) -> None:
        """Probe `member` next, before the round goes on (a member suspected by others)."""
        if member in self._order and member not in self._next:
            self._next.append(member)

    def next(self, skip: Callable[[K], bool] = lambda member: False) -> K | None:
        """The next member to probe, passing over those `skip` names (dead ones, say); None
        when it names them all. A round that ends is shuffled anew."""
        while self._next:
            member = self._next.pop(0)
            if member in self._order and not skip(member):
                return member
        # (The rest of this round, then a whole new one: every member is looked at once.)
        for _ in range(max(0, len(self._order) - self._index) + len(self._order)):
            if self._index >= len(self._order):
                self._rng.shuffle(self._order)
                self._index = 0
            member = self._order[self._index]
            self._index += 1
            if not skip(member):
                return member
        return None

    def sample(self, count: int, skip: Callable[[K], bool]) -> list[K]:
        """Up to `count` different members at random, none that `skip` names: from a shuffled
        copy in a small mesh, else by `3 * count` random draws (memberlist's way: it may then
        return fewer)."""
        order = self._order
        if len(order) <= 3 * count:
            pool = [member for member in order if not skip(member)]
            self._rng.shuffle(pool)
            return pool[:count]
        chosen: list[K] = []
        for _ in range(3 * count):
            member = order[self._rng.randrange(len(order))]
            if member not in chosen and not skip(member):
                chosen.append(member)
                if len(chosen) == count:
                    break
        return chosen


class Awareness:
    """This node's own health, 0 (healthy) to `most` - 1 (module rules)."""

    def __init__(self, most: int = AWARENESS_MAX) -> None:
        if most < 1:
            raise ValueError("most must be at least 1")
        self._most = most
        self.score = 0

    def apply(self, delta: int) -> None:
        """Add `delta` (a probe answered: -1; failed with nacks missing: +1 each; refuting a
        suspicion of this node: +1), kept within 0 .. most - 1."""
        self.score = min(self._most - 1, max(0, self.score + delta))

    def scale(self, seconds: float) -> float:
        """`seconds` stretched by this node's health: times score + 1."""
        return seconds * (self.score + 1)


class Broadcasts(Generic[K, T]):
    """What this node tells the members it talks to anyway, piggybacked (module rules). Items
    are keyed by the member they are about: a newer item replaces the older, unsent.

    Kept in tiers by the times each was sent, each tier in the order added: taking the few
    items a message carries costs what they are, not what waits (a node of a large mesh under
    loss may hold hundreds)."""

    def __init__(self, most: int = 1024) -> None:
        self._most = most
        self._items: dict[K, _Queued[T]] = {}
        self._tiers: dict[int, dict[K, None]] = {}  # times sent -> keys, oldest first

    def __len__(self) -> int:
        return len(self._items)

    def add(self, key: K, item: T, size: int = 1) -> None:
        """Queue `item` about `key`, costing `size` of a message's budget, replacing anything
        queued about it. Past `most` items, the one sent most (the oldest among those) goes."""
        self._drop(key)
        self._items[key] = _Queued(item, size)
        self._tiers.setdefault(0, {})[key] = None
        if len(self._items) > self._most:
            tier = self._tiers[max(self._tiers)]
            self._drop(next(iter(tier)))

    def take(self, budget: int, members: int, overhead: int = 0) -> list[T]:
        """Items to piggyback on one message with `budget` to spare: those sent least first
        (the newest among equals), each costing its size plus `overhead`; each taken is counted
        sent, and dropped once sent `retransmits(members)` times."""
        if not self._items:
            return []
        limit = retransmits(members)
        chosen: list[T] = []
        taken: list[tuple[K, int]] = []
        for sent in sorted(self._tiers):
            for key in reversed(self._tiers[sent]):
                queued = self._items[key]
                cost = queued.size + overhead
                if cost > budget:
                    continue
                budget -= cost
                chosen.append(queued.item)
                taken.append((key, sent))
                if budget <= overhead:
                    break
            if budget <= overhead:
                break
        for key, sent in taken:  # (moved after the walk: each goes once a message)
            tier = self._tiers[sent]
            del tier[key]
            if not tier:
                del self._tiers[sent]
            if sent + 1 >= limit:
                del self._items[key]
            else:
                self._items[key].sent = sent + 1
                self._tiers.setdefault(sent + 1, {})[key] = None
        return chosen

    def _drop(self, key: K) -> None:
        queued = self._items.pop(key, None)
        if queued is not None:
            tier = self._tiers[queued.sent]
            del tier[key]
            if not tier:
                del self._tiers[queued.sent]


class _Queued(Generic[T]):
    __slots__ = ("item", "sent", "size")

    def __init__(self, item: T, size: int) -> None:
        self.item = item
        self.size = size
        self.sent = 0


class State(enum.Enum):
    """What a member is, as this node knows it."""

    ALIVE = "alive"
    SUSPECT = "suspect"
    DEAD = "dead"
    LEFT = "left"


class Claim(NamedTuple):
    """What `Roster` decided about a claim it was given: the member's state and incarnation
    now, and whether the claim is news to pass on (piggybacked). `refute`: the claim was about
    this node, which answers with ALIVE at the incarnation given (passed on too)."""

    state: State
    incarnation: int
    news: bool
    refute: bool = False


class _Member:
    __slots__ = ("accuser", "confirmed", "expires", "incarnation", "since", "state")

    def __init__(self, state: State, incarnation: int, since: float) -> None:
        self.state = state
        self.incarnation = incarnation
        self.since = since  # when it took this state
        self.accuser: Hashable = None  # (suspect) the member that suspected it first
        self.confirmed: set[Hashable] = set()  # (suspect) members that suspect it too
        self.expires: float | None = None  # (suspect) when, once worked out


class Roster(Generic[K]):
    """What this node knows of each member, from the claims gossip brings (SWIM's ordering):

    * every claim carries the member's *incarnation*, a number only the member itself raises;
    * ALIVE is taken only with a higher incarnation than known (or for a member not known: a
      join); SUSPECT and DEAD with one at least as high: so at the same incarnation, dead beats
      suspect beats alive, and only the member can overturn a suspicion, by raising it;
    * a claim that this node is suspect or dead is refuted: its incarnation goes past the
      claim's and it says ALIVE (and its health counts one more trouble, `Awareness`);
    * a suspicion is confirmed by each member other than its first accuser that suspects it
      too, this node included (fewer seconds to a death, `suspicion_timeout`), and becomes a
      death when its time is up (`expired`);
    * DEAD from the member itself is LEFT (a goodbye).
    """

    def __init__(self, me: K) -> None:
        self.me = me
        self.incarnation = 0  # this node's own (the others know it at 0 when it joins)
        self._members: dict[K, _Member] = {}
        self._suspects: set[K] = set()  # (what `expired` looks at)

    def __len__(self) -> int:
        return len(self._members)

    def state(self, member: K) -> State | None:
        """What `member` is (None: not known)."""
        known = self._members.get(member)
        return None if known is None else known.state

    def alive(self, member: K, incarnation: int, now: float) -> Claim | None:
        """ALIVE `member` at `incarnation`; None if it is old news."""
        if member == self.me:
            return self._refute(incarnation) if incarnation > self.incarnation else None
        known = self._members.get(member)
        if known is not None and incarnation <= known.incarnation:
            return None
        self._members[member] = _Member(State.ALIVE, incarnation, now)
        self._suspects.discard(member)
        return Claim(State.ALIVE, incarnation, news=True)

    def suspect(self, member: K, incarnation: int, accuser: K, now: float) -> Claim | None:
        """SUSPECT `member` at `incarnation`, as `accuser` says; None if it is old news. A
        suspicion already held is confirmed by a new accuser (news, to pass on, only then)."""
        if member == self.me:
            return self._refute(incarnation) if incarnation >= self.incarnation else None
        known = self._members.get(member)
        if known is None or incarnation < known.incarnation:
            return None
        if known.state is State.SUSPECT:
            # (This node's own failed probe confirms a suspicion it heard of, as memberlist's.)
            if (
                accuser == known.accuser
                or accuser in known.confirmed
                or incarnation > known.incarnation
            ):
                return None
            known.confirmed.add(accuser)
            known.expires = None  # sooner now
            return Claim(State.SUSPECT, known.incarnation, news=True)
        if known.state is not State.ALIVE:
            return None
        known.state, known.incarnation, known.since = State.SUSPECT, incarnation, now
        known.confirmed, known.expires, known.accuser = set(), None, accuser
        self._suspects.add(member)
        return Claim(State.SUSPECT, incarnation, news=True)

    def dead(self, member: K, incarnation: int, accuser: K, now: float) -> Claim | None:
        """DEAD `member` at `incarnation`, as `accuser` says (itself: LEFT); None if old news."""
        if member == self.me:
            return self._refute(incarnation) if incarnation >= self.incarnation else None
        known = self._members.get(member)
        if known is None or incarnation < known.incarnation:
            return None
        if known.state in (State.DEAD, State.LEFT):
            return None
        state = State.LEFT if accuser == member else State.DEAD
        known.state, known.incarnation, known.since = state, incarnation, now
        self._suspects.discard(member)
        return Claim(state, incarnation, news=True)

    def expired(self, now: float, period: float, needed: int = 2) -> list[K]:
        """The suspects whose time is up (`suspicion_timeout` with their confirmations, for the
        members known now): they are DEAD now, at the incarnation suspected; this node passes
        that on."""
        dead = []
        for member in sorted(self._suspects, key=lambda m: self._members[m].since):
            if now >= self.expiry(member, period, needed):
                known = self._members[member]
                known.state, known.since = State.DEAD, now
                self._suspects.discard(member)
                dead.append(member)
        return dead

    def next_expiry(self, period: float, needed: int = 2) -> float:
        """When the first suspicion held now expires (inf: none is held)."""
        return min((self.expiry(m, period, needed) for m in self._suspects), default=math.inf)

    def expiry(self, member: K, period: float, needed: int = 2) -> float:
        """When the suspicion of `member` held now expires, as things stand."""
        # (Worked out once a suspicion or confirmation: this is asked at every tick.)
        known = self._members[member]
        if known.expires is None:
            members = len(self._members) + 1
            timeout = suspicion_timeout(members, period, len(known.confirmed), needed=needed)
            known.expires = known.since + timeout
        return known.expires

    def rejoined(self, member: K, now: float) -> None:
        """`member` is known alive again by other means than gossip (it greeted this node
        anew): ALIVE at the incarnation known, or at 0 if it is new."""
        known = self._members.get(member)
        if known is None:
            self._members[member] = _Member(State.ALIVE, 0, now)
        elif known.state is not State.ALIVE:
            known.state, known.since = State.ALIVE, now
            self._suspects.discard(member)

    def incarnation_of(self, member: K) -> int:
        """The incarnation known of `member` (0 if not known)."""
        known = self._members.get(member)
        return 0 if known is None else known.incarnation

    def forget(self, member: K) -> None:
        """Remove a member for good (dead or left long enough)."""
        self._members.pop(member, None)
        self._suspects.discard(member)

    def _refute(self, accused: int) -> Claim:
        self.incarnation = max(self.incarnation + 1, accused + 1)
        return Claim(State.ALIVE, self.incarnation, news=True, refute=True)
