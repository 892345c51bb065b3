"""SWIM's protocol machine: probes out, answers and relays in, suspicions, deaths and rumours, at a
cost per node that does not grow with the mesh. Pure: no IO, no clock (times are passed in),
randomness from a `random.Random` passed in. The caller sends what each call returns and calls
`tick` again at `next_deadline()`.

Rules (the pieces are in `mesh/_swim.py`):

* Every `probe_interval` (stretched by this node's `Awareness`) one member is probed, in
  `ProbeOrder`: PING, answered by ACK. No ACK within `probe_timeout`: `indirect_probes` other
  members are each asked to probe it (PING_REQ), and it is pinged again directly; each relay
  pings it with a number of its own, passes its ACK back, or says NACK if none came within
  `probe_timeout`. No ACK by the end of the
  indirect window (`probe_interval` more, stretched too): the member is SUSPECT.
* A probe that failed raises this node's awareness by one for each NACK that did not come (by one
  if there were no relays to ask); one answered lowers it by one. A node that cannot hear its
  relays' NACKs is likely the slow one, and probes more slowly.
* A probe of a member this node suspects carries the suspicion (Lifeguard's buddy system): the
  member refutes it at once instead of waiting for the rumour to reach it.
* A tick that runs more than `pause_threshold` late (this node stood still) fails no probe: the
  answers may be queued unread; the probe's deadlines move by as long.
* Every message carries up to `rumours_per_message` rumours (`Broadcasts`): each change of a
  member's state this node decides or learns, passed on `retransmits(n)` times. A rumour about a
  member this node does not know is dropped: members join by the node's own greeting, which
  brings their addresses; rumours only carry what happens to them. While rumours wait, they
  also go every `gossip_interval` to `gossip_nodes` members at random (GOSSIP, memberlist's
  gossip loop): riding the probes alone (a few messages a second), a refutation could reach
  some member only after its suspicion there had run out. With none waiting, nothing is sent.
* A suspicion heard of (not this node's own) that has run half its time is checked: the member
  is probed next, out of its turn, carrying the suspicion. A member whose refutation the
  rumours did not bring here (they are passed on a bounded number of times) answers it so,
  before it is declared dead here.
* A member that hears a suspicion of itself older than its incarnation (a refutation missed
  there) says ALIVE again; and once it has refuted one, every ACK it sends says its
  incarnation, so a member still suspecting it learns better by probing it.
* A suspicion becomes a death after `suspicion_timeout`, shorter with each member that suspects
  it independently. A dead member is forgotten `forget_after` seconds later.
* Every change of a member's state is reported once (`changes`), with why: "probe" (this node's
  probe failed), "rumour" (another member said so), "timeout" (a suspicion ran out),
  "forgotten". What this node is told directly (`accuse`, `rejoined`, `remove`) is not reported
  back.
"""

from __future__ import annotations

import enum
import math
import random
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, fields
from typing import Final, Generic, NamedTuple, TypeVar

from ._errors import ProtocolError
from ._swim import Awareness, Broadcasts, Claim, ProbeOrder, Roster, State

K = TypeVar("K", bound=Hashable)

#: Relayed probes this node keeps open at once (PING_REQ past it are not relayed).
MOST_RELAYS: Final = 256
#: Most rumours a PROBE datagram may carry (each about 45 bytes packed: 16 of them fit the
#: datagram's 1,024 bytes with room for the envelope and a MAC).
MOST_RUMOURS: Final = 16
_ID_SIZE: Final = 16
_MAX_UINT64: Final = 2**64 - 1


class Op(enum.IntEnum):
    """What a SWIM message is."""

    PING = 1  # "answer me": `target` is the member it is for
    ACK = 2  # the answer to PING number `seq`: `target` is the member that answered
    PING_REQ = 3  # "probe `target` for me, and pass its answer back under `seq`"
    NACK = 4  # "I asked `target` for you under `seq`, and it did not answer in time"
    GOSSIP = 5  # rumours only (`seq` 0, `target` the addressee): nothing to answer


@dataclass(frozen=True, slots=True)
class Rumour(Generic[K]):
    """What a member is, said by `accuser`: a SUSPECT or DEAD `accuser` is the member that
    suspects or declared it (itself: LEFT); an ALIVE one is the member itself, refuting."""

    state: State
    member: K
    incarnation: int
    accuser: K


@dataclass(frozen=True, slots=True)
class Message(Generic[K]):
    """A SWIM message, with the rumours it carries."""

    op: Op
    seq: int
    target: K
    rumours: tuple[Rumour[K], ...] = ()


class Send(NamedTuple, Generic[K]):
    """Send `message` to `to`."""

    to: K
    message: Message[K]


class Change(NamedTuple, Generic[K]):
    """`member` went from `old` (None: it was not known) to `new`, for `reason` (module
    rules); FORGOTTEN members are gone from the machine."""

    member: K
    old: State | None
    new: State | None
    reason: str


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """SWIM's timing (memberlist's LAN defaults, but a longer indirect window: a node here
    reads its datagrams when its heartbeat loop wakes, up to a heartbeat interval after they
    came, so a relayed answer can take three such waits).

    Attributes:
        probe_interval: Seconds between probes (one member each). Default 1.0.
        probe_timeout: Seconds a direct PING waits for its ACK before relays are asked, and a
            relay waits before it says NACK. Default 0.5.
        indirect_probes: Relays asked when a PING goes unanswered. Default 3.
        rumours_per_message: Most rumours piggybacked on one message (at most
            `MOST_RUMOURS`). Default 16.
        gossip_interval: Seconds between two rounds of GOSSIP, while rumours wait to be
            passed on (none is sent otherwise). Default 0.2.
        gossip_nodes: Members sent GOSSIP each round. Default 4.
        confirmations: Independent suspicions that bring a suspicion to its least timeout.
            Default 2.
        forget_after: Seconds from a death to forgetting the member. Default 30.0.
        pause_threshold: Seconds late a tick may run before it counts as this node's pause.
            Default 0.1.

    Raises `ValueError` for a value out of range."""

    probe_interval: float = 1.0
    probe_timeout: float = 0.5
    indirect_probes: int = 3
    rumours_per_message: int = 16
    gossip_interval: float = 0.2
    gossip_nodes: int = 4
    confirmations: int = 2
    forget_after: float = 30.0
    pause_threshold: float = 0.1

    def __post_init__(self) -> None:
        for name in (f.name for f in fields(self)):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number, not negative")
        if self.probe_interval <= 0 or self.probe_timeout <= 0 or self.gossip_interval <= 0:
            raise ValueError("probe_interval, probe_timeout and gossip_interval must be positive")
        if self.rumours_per_message > MOST_RUMOURS:
            raise ValueError(f"rumours_per_message must be at most {MOST_RUMOURS}")


class _Probe(Generic[K]):
    __slots__ = ("direct_until", "nacks", "relays", "seq", "target", "until")

    def __init__(self, seq: int, target: K, direct_until: float, until: float) -> None:
        self.seq = seq
        self.target = target
        self.direct_until = direct_until  # then relays are asked
        self.until = until  # then it failed
        self.relays: list[K] | None = None  # those asked, whose NACKs count (None: not yet)
        self.nacks: set[K] = set()


class _Relay(NamedTuple, Generic[K]):
    requester: K
    seq: int  # the requester's
    target: K
    nack_at: float


class Prober(Generic[K]):
    """One node's SWIM (the module's rules), for members of type `K`, from `now`."""

    def __init__(
        self,
        me: K,
        rng: random.Random,
        settings: ProbeSettings | None = None,
        now: float = 0.0,
    ) -> None:
        self.me = me
        self.settings = settings = settings or ProbeSettings()
        self.roster: Roster[K] = Roster(me)
        self.awareness = Awareness()
        self._rng = rng
        self._order: ProbeOrder[K] = ProbeOrder(rng)
        self._rumours: Broadcasts[K, Rumour[K]] = Broadcasts()
        self._seq = 0
        self._probe: _Probe[K] | None = None
        self._next_probe = now + rng.uniform(0.0, settings.probe_interval)  # (staggered)
        self._next_gossip = now
        self._relays: dict[int, _Relay[K]] = {}
        self._verify: dict[K, float] = {}  # suspicions heard: when to probe the member first
        self._dead: dict[K, float] = {}  # dead or left, since
        self._changes: list[Change[K]] = []
        self.sent = 0  # messages
        self.failed_probes = 0

    # -- what the node tells it --------------------------------------------------------------

    def add(self, member: K, now: float) -> None:
        """`member` joined (or greeted this node anew): probe it, and take rumours about it."""
        if member == self.me:
            return
        self.roster.rejoined(member, now)
        self._dead.pop(member, None)
        self._order.add(member)

    def remove(self, member: K) -> None:
        """`member` left or was forgotten by the node: neither probe it nor hear of it."""
        self.roster.forget(member)
        self._order.remove(member)
        self._dead.pop(member, None)

    def accuse(self, member: K, now: float) -> None:
        """This node has its own evidence that `member` is dead (its direct heartbeats, or its
        port refused): tell the others."""
        claim = self.roster.dead(member, self.roster.incarnation_of(member), self.me, now)
        if claim is not None:
            self._dead[member] = now
            self._spread(Rumour(State.DEAD, member, claim.incarnation, self.me), now)

    def changes(self) -> list[Change[K]]:
        """The changes of members' states since the last call, in order."""
        changes, self._changes = self._changes, []
        return changes

    def state(self, member: K) -> State | None:
        return self.roster.state(member)

    def __len__(self) -> int:
        return len(self._order)

    # -- time -----------------------------------------------------------------------------

    def next_deadline(self) -> float:
        """When `tick` next has something to do without new input."""
        probe = self._probe
        if probe is None:
            deadline = self._next_probe
        else:
            deadline = probe.direct_until if probe.relays is None else probe.until
        expiry = self.roster.next_expiry(self.settings.probe_interval, self.settings.confirmations)
        deadline = min(deadline, expiry)
        if self._relays:
            deadline = min(deadline, min(relay.nack_at for relay in self._relays.values()))
        if self._dead:
            deadline = min(deadline, min(self._dead.values()) + self.settings.forget_after)
        if self._rumours:
            deadline = min(deadline, self._next_gossip)
        if self._verify:
            deadline = min(deadline, min(self._verify.values()))
        return deadline

    def tick(self, now: float, lateness: float = 0.0) -> list[Send[K]]:
        """Do what is due at `now`; `lateness`: how much later than planned this runs."""
        settings = self.settings
        out: list[Send[K]] = []
        for seq, relay in list(self._relays.items()):
            if now >= relay.nack_at:
                del self._relays[seq]
                out.append(self._message(relay.requester, Op.NACK, relay.seq, relay.target))
        probe = self._probe
        if probe is not None and lateness > settings.pause_threshold:
            probe.direct_until += lateness
            probe.until += lateness
        elif probe is not None and probe.relays is None and now >= probe.direct_until:
            self._ask_relays(probe, out)
        elif probe is not None and now >= probe.until:
            self._failed(probe, now)
        for member in self.roster.expired(now, settings.probe_interval, settings.confirmations):
            self._dead[member] = now
            self._changes.append(Change(member, State.SUSPECT, State.DEAD, "timeout"))
            incarnation = self.roster.incarnation_of(member)
            self._spread(Rumour(State.DEAD, member, incarnation, self.me), now)
        for member, since in list(self._dead.items()):
            if now >= since + settings.forget_after:
                old = self.roster.state(member)
                self.remove(member)
                self._changes.append(Change(member, old, None, "forgotten"))
        for member, at in list(self._verify.items()):
            if now >= at:
                del self._verify[member]
                if self.roster.state(member) is State.SUSPECT:
                    self._order.first(member)
        if self._probe is None and now >= self._next_probe:
            self._start_probe(now, out)
        if self._rumours and now >= self._next_gossip:
            self._gossip(now, out)
        return out

    # -- messages -------------------------------------------------------------------------

    def receive(self, sender: K, message: Message[K], now: float) -> list[Send[K]]:
        """`message` came from `sender` at `now`: what to send in return."""
        for rumour in message.rumours:
            self._hear(rumour, now)
        out: list[Send[K]] = []
        op, seq, target = message.op, message.seq, message.target
        if op is Op.PING:
            if target == self.me:
                out.append(self._message(sender, Op.ACK, seq, self.me, self._myself()))
        elif op is Op.ACK:
            probe = self._probe
            if probe is not None and probe.seq == seq and probe.target == target:
                self._probe = None
                self.awareness.apply(-1)
            relay = self._relays.get(seq)
            if relay is not None and relay.target == target == sender:
                del self._relays[seq]
                out.append(self._message(relay.requester, Op.ACK, relay.seq, target))
        elif op is Op.PING_REQ:
            if (
                target != self.me
                and target != sender
                and self.roster.state(target) in (State.ALIVE, State.SUSPECT)
                and len(self._relays) < MOST_RELAYS
            ):
                self._seq += 1
                nack_at = now + self.settings.probe_timeout
                self._relays[self._seq] = _Relay(sender, seq, target, nack_at)
                out.append(self._message(target, Op.PING, self._seq, target))
        elif op is Op.NACK:
            probe = self._probe
            # (A NACK from a member that was not asked is no relay's, and counts for nothing.)
            if probe is not None and probe.seq == seq and sender in (probe.relays or ()):
                probe.nacks.add(sender)
        return out

    # -- inside ---------------------------------------------------------------------------

    def _start_probe(self, now: float, out: list[Send[K]]) -> None:
        settings = self.settings
        self._next_probe = now + self.awareness.scale(settings.probe_interval)
        roster = self.roster
        target = self._order.next(lambda m: roster.state(m) not in (State.ALIVE, State.SUSPECT))
        if target is None:
            return
        self._seq += 1
        direct_until = now + settings.probe_timeout
        until = direct_until + self.awareness.scale(settings.probe_interval)
        self._probe = _Probe(self._seq, target, direct_until, until)
        extra: tuple[Rumour[K], ...] = ()
        if roster.state(target) is State.SUSPECT:  # the buddy system
            extra = (Rumour(State.SUSPECT, target, roster.incarnation_of(target), self.me),)
        out.append(self._message(target, Op.PING, self._seq, target, extra))

    def _gossip(self, now: float, out: list[Send[K]]) -> None:
        # Dead members too, while remembered: one declared dead falsely learns it, and refutes.
        self._next_gossip = now + self.settings.gossip_interval
        roster = self.roster
        for member in self._order.sample(
            self.settings.gossip_nodes, lambda m: roster.state(m) is State.LEFT
        ):
            if not self._rumours:
                return
            out.append(self._message(member, Op.GOSSIP, 0, member))

    def _ask_relays(self, probe: _Probe[K], out: list[Send[K]]) -> None:
        roster = self.roster
        relays = self._order.sample(
            self.settings.indirect_probes,
            lambda m: m == probe.target or roster.state(m) is not State.ALIVE,
        )
        probe.relays = relays
        for relay in relays:
            out.append(self._message(relay, Op.PING_REQ, probe.seq, probe.target))
        # And once more directly (memberlist tries TCP meanwhile): a lost PING or ACK alone is
        # then no suspicion; only silence on every way is.
        out.append(self._message(probe.target, Op.PING, probe.seq, probe.target))

    def _failed(self, probe: _Probe[K], now: float) -> None:
        self._probe = None
        self.failed_probes += 1
        asked = len(probe.relays or ())
        self.awareness.apply(asked - len(probe.nacks) if asked else 1)
        target = probe.target
        old = self.roster.state(target)
        claim = self.roster.suspect(target, self.roster.incarnation_of(target), self.me, now)
        if claim is not None:
            if old is not State.SUSPECT:
                self._changes.append(Change(target, old, State.SUSPECT, "probe"))
            self._spread(Rumour(State.SUSPECT, target, claim.incarnation, self.me), now)

    def _hear(self, rumour: Rumour[K], now: float) -> None:
        member = rumour.member
        roster = self.roster
        if member == self.me:
            if rumour.state is not State.ALIVE and rumour.incarnation < roster.incarnation:
                # Refuted already, and the refutation not heard there: say it again.
                self._spread(Rumour(State.ALIVE, self.me, roster.incarnation, self.me), now)
                return
        elif roster.state(member) is None:
            return  # not a member this node knows (module rules)
        old = roster.state(member)
        claim: Claim | None
        if rumour.state is State.ALIVE:
            claim = roster.alive(member, rumour.incarnation, now)
        elif rumour.state is State.SUSPECT:
            claim = roster.suspect(member, rumour.incarnation, rumour.accuser, now)
        else:
            claim = roster.dead(member, rumour.incarnation, rumour.accuser, now)
        if claim is None:
            return
        if claim.refute:
            self.awareness.apply(1)
            self._spread(Rumour(State.ALIVE, self.me, claim.incarnation, self.me), now)
            return
        self._spread(rumour, now)
        if claim.state is not old:
            if claim.state is State.SUSPECT:  # (heard: see for itself if it lasts)
                settings = self.settings
                expiry = roster.expiry(member, settings.probe_interval, settings.confirmations)
                self._verify[member] = now + (expiry - now) / 2
            if claim.state in (State.DEAD, State.LEFT):
                self._dead[member] = now
            else:
                self._dead.pop(member, None)
            self._changes.append(Change(member, old, claim.state, "rumour"))

    def _myself(self) -> tuple[Rumour[K], ...]:
        """What an ACK says of this node besides: its incarnation, once it has refuted a
        suspicion (at 0 nobody can hold one of it that is out of date). A member that missed
        the refutation, and probes it still suspecting it, learns it so."""
        incarnation = self.roster.incarnation
        return (Rumour(State.ALIVE, self.me, incarnation, self.me),) if incarnation else ()

    def _spread(self, rumour: Rumour[K], now: float) -> None:
        # (Keyed by member, as memberlist does: a newer rumour about it, a confirmation of a
        # suspicion included, replaces what is queued; the queue holds one a member at most.)
        if not self._rumours:  # gossip starts now, not when the last round was due
            self._next_gossip = max(self._next_gossip, now)
        self._rumours.add(rumour.member, rumour)

    def _message(
        self,
        to: K,
        op: Op,
        seq: int,
        target: K,
        extra: Sequence[Rumour[K]] = (),
    ) -> Send[K]:
        budget = self.settings.rumours_per_message - len(extra)
        rumours = self._rumours.take(budget, len(self.roster) + 1) if budget > 0 else []
        self.sent += 1
        rumours = [rumour for rumour in rumours if rumour not in extra]
        return Send(to, Message(op, seq, target, (*extra, *rumours)))


# -- the wire (a PROBE envelope's meta and body, docs/protocol.md) -------------------------------

_STATE_CODES: Final = {State.ALIVE: 0, State.SUSPECT: 1, State.DEAD: 2}
_STATES: Final = {code: state for state, code in _STATE_CODES.items()}
_OPS: Final = {int(op): op for op in Op}


def probe_meta(message: Message[bytes]) -> list[object]:
    """A PROBE envelope's meta: ``[op, seq, target]``."""
    return [int(message.op), message.seq, message.target]


def probe_body(message: Message[bytes]) -> list[list[object]]:
    """A PROBE envelope's body: its rumours, ``[state, member, incarnation, accuser]`` each
    (LEFT goes as DEAD from the member itself, which is what it is)."""
    return [
        [_STATE_CODES.get(r.state, 2), r.member, r.incarnation, r.accuser] for r in message.rumours
    ]


def read_probe(meta: tuple[object, ...], body: object) -> Message[bytes]:
    """The message a PROBE envelope's (type-checked) meta and body hold. Raises `ProtocolError`
    for an unknown op, an id that is not 16 bytes, or a rumour out of shape or range."""
    op_code, seq, target = meta
    if type(op_code) is not int or op_code not in _OPS:
        raise ProtocolError("malformed", f"PROBE op {op_code!r}")
    op = _OPS[op_code]
    if type(target) is not bytes or len(target) != _ID_SIZE or type(seq) is not int:
        raise ProtocolError("malformed", "PROBE target is not a 16-byte id")
    if type(body) is not list or len(body) > MOST_RUMOURS:
        raise ProtocolError("malformed", "PROBE rumours are not an array of at most 16")
    rumours = []
    for item in body:
        if type(item) is not list or len(item) != 4:
            raise ProtocolError("malformed", "a PROBE rumour is not an array of four")
        state, member, incarnation, accuser = item
        if (
            type(state) is not int
            or state not in _STATES
            or type(member) is not bytes
            or len(member) != _ID_SIZE
            or type(accuser) is not bytes
            or len(accuser) != _ID_SIZE
            or type(incarnation) is not int
            or not 0 <= incarnation <= _MAX_UINT64
        ):
            raise ProtocolError("malformed", "a PROBE rumour out of shape or range")
        rumours.append(Rumour(_STATES[state], member, incarnation, accuser))
    return Message(op, seq, target, tuple(rumours))
