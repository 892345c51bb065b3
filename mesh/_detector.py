"""The failure detector: how alive each peer is, judged from when its heartbeats arrive. Pure: no
IO, no clock, no randomness; every method takes `now` (seconds, the node's monotonic clock).

Rules:

* A peer is tracked from its first heartbeat, or from its joining (`joined`), as ALIVE. Its *phi* at
  a time `now` is -log10 of the chance that a peer beating as it has so far would still be silent at
  `now` (phi accrual, Hayashibara et al. 2004, with Akka's logistic approximation of the normal
  distribution). Intervals between heartbeats are taken to be normal with the mean and deviation of
  the last `window` intervals, the deviation never below `min_std`, the mean lengthened by
  `acceptable_pause`. The window starts with two made-up intervals, `heartbeat_interval` plus and
  minus a quarter of it (as Akka does), so that the first real ones do not decide alone.
* A peer tracked from its joining has `first_heartbeat_grace` more seconds than that for its
  first heartbeat (its heartbeats start only once it has wired its own sockets to this node,
  which a loaded machine can take a while to do), or until it says it has (`wired`), from when
  its first heartbeat is awaited as usual; the wait is not sampled as an interval.
* ALIVE -> SUSPECT when phi reaches `phi_suspect`; SUSPECT -> DEAD when it reaches `phi_dead`;
  DEAD -> FORGOTTEN `forget_after` seconds after the death. A heartbeat brings a SUSPECT or DEAD
  peer back to ALIVE.
* A disconnect (a socket monitor's hint) brings the verdict one stage forward: an ALIVE peer is
  SUSPECT at once, and a disconnected peer is DEAD as soon as phi reaches `phi_suspect`, unless a
  heartbeat comes first. A disconnect alone never kills: heartbeats may ride another connection.
* A refusal (its heartbeat port answered "port unreachable": nothing listens there any more)
  makes a disconnected peer DEAD at once (`refused`): the two together mean its process is gone.
  A refusal alone changes nothing, since anyone can forge one (it is unauthenticated ICMP),
  and neither does one after a heartbeat has come since the disconnect.
* A goodbye makes a peer LEFT. LEFT and FORGOTTEN are final: heartbeats and hints for that id are
  ignored until the caller `remove`s it, after which a heartbeat tracks it afresh. A restarted
  process is a new node with a new id, so a final id only hears stragglers.
* This node's own stalls are not held against its peers. The caller says how late its timers run
  (`tick`'s `lateness`, and `lagged` for its other timers): a timer that ran L late means this
  node stood still for the L before it ran (a GC pause, a starved CPU). Two things follow:
  - a tick more than `pause_threshold` late: the heartbeats sent meanwhile may still be queued,
    unread, so nothing changes for silence until `heartbeat_interval` after it, time enough to
    take them in;
  - a node that stands still is likely short of what its peers are short of too (the same
    machine's CPU, the same network), so every peer gets as much more time before silence
    changes its state as this node stood still in the last `stall_memory` seconds: the stalls
    over `stall_threshold` reported in that time, each counted once where two timers saw the
    same one. This is Lifeguard's argument (Dadgar et al. 2018): a node that sees itself slow
    trusts its own verdicts less. A node whose timers run on time is never affected.
* An interval longer than phi takes to reach `phi_dead` is sampled as that long: a death and
  revival, or a stall of ours, shows that the peer can be that late, not how late, and one long
  gap must not blunt detection for the next `window` heartbeats.
* Silence changes a state only in `tick`; `heartbeat`, `disconnected`, `refused` and `left` act
  at once.
  Every change is returned as a `Transition`, in order. `next_deadline()` is the earliest time at
  which a tick can change something without new input, and a tick at that time does.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass, fields

# Akka's approximation: P(interval > mean + y * std) = 1 / (1 + exp(y * (_B + _A * y * y))).
_A = 0.070566
_B = 1.5976
_LN10 = math.log(10.0)


class Liveness(enum.Enum):
    """Where a tracked peer stands."""

    ALIVE = "alive"
    SUSPECT = "suspect"  # late or disconnected: routing should prefer others
    DEAD = "dead"  # no new work; its unacked work goes elsewhere
    FORGOTTEN = "forgotten"  # dead long enough: close its sockets (final)
    LEFT = "left"  # said goodbye (final)


_FINAL = (Liveness.FORGOTTEN, Liveness.LEFT)


@dataclass(frozen=True, slots=True)
class DetectorSettings:
    """Thresholds of the failure detector (the rules are in this module's docstring).

    With the defaults a peer beating every 0.2 s that falls silent is SUSPECT 0.46 s and DEAD
    0.69 s after its last heartbeat (more if its intervals have varied).

    Attributes:
        heartbeat_interval: Seconds between the heartbeats this node sends, and the mean
            interval assumed for a peer before any sample. Default 0.2.
        phi_suspect: Phi at which an ALIVE peer becomes SUSPECT (routing prefers others).
            Default 8.0.
        phi_dead: Phi at which a SUSPECT peer becomes DEAD (no new work; its unacked work goes
            elsewhere). Default 36.0: three beats lost in a row, not two, as
            `docs/decisions.md` explains.
        min_std: Floor, in seconds, on the deviation of a peer's intervals, so that one late
            beat of a peer that beats like a metronome is no death. Default 0.05.
        window: Intervals kept per peer for the mean and deviation. Default 100.
        acceptable_pause: Seconds added to the mean interval: pauses of a peer to tolerate.
            Default 0.0.
        forget_after: Seconds from DEAD to FORGOTTEN (its sockets are closed). Default 30.0.
        pause_threshold: Seconds late a tick may run before it counts as this node's pause:
            silence then changes nothing for one `heartbeat_interval`, time enough to read the
            heartbeats queued meanwhile. Default 0.1.
        stall_threshold: Seconds late a timer may run before this node counts as having stood
            still. Default 0.02.
        stall_memory: Seconds over which this node's stalls are added to every peer's time
            before silence changes its state. Default 2.0.
        first_heartbeat_grace: Extra seconds for a peer's first heartbeat after it `joined`.
            Default 2.0.

    Raises `ValueError` for a value out of range.
    """

    heartbeat_interval: float = 0.2
    phi_suspect: float = 8.0
    phi_dead: float = 36.0
    min_std: float = 0.05
    window: int = 100
    acceptable_pause: float = 0.0
    forget_after: float = 30.0
    pause_threshold: float = 0.1
    stall_threshold: float = 0.02
    stall_memory: float = 2.0
    first_heartbeat_grace: float = 2.0

    def __post_init__(self) -> None:
        for name in (f.name for f in fields(self)):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} must be a finite number")
        for name in ("heartbeat_interval", "phi_suspect", "min_std", "pause_threshold"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "acceptable_pause",
            "forget_after",
            "first_heartbeat_grace",
            "stall_threshold",
            "stall_memory",
        ):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.phi_dead < self.phi_suspect:
            raise ValueError("phi_dead must not be below phi_suspect")
        if self.window < 2:
            raise ValueError("window must be at least 2")


@dataclass(frozen=True, slots=True)
class Transition:
    """A peer changed state. `phi` and `last_heard` are the evidence just before the change
    (None for a peer's first heartbeat or its joining, and `old` is None then too). Reasons:
    "heartbeat", "joined", "phi", "disconnect", "goodbye", "forgotten"."""

    peer: bytes
    old: Liveness | None
    new: Liveness
    reason: str
    phi: float | None
    last_heard: float | None


@dataclass(frozen=True, slots=True)
class PeerStatus:
    """One peer as the detector sees it at a given time."""

    state: Liveness
    since: float  # when it entered `state`
    last_heard: float
    phi: float


@dataclass(slots=True)
class _Track:
    state: Liveness
    since: float
    last_heard: float
    intervals: deque[float]
    total: float
    squares: float
    added: int = 0
    awaiting_first: bool = False  # tracked from joining: no heartbeat yet
    disconnected: bool = False
    deadline: float | None = None  # when silence changes `state`, once asked


class FailureDetector:
    """Per-peer liveness from heartbeat arrival times; see the module's rules.

    The node feeds it heartbeats, socket-monitor disconnects and goodbyes as it reads them, and
    calls `tick` at `next_deadline()`. Each method returns the transitions it caused. Nothing
    here raises but `phi` (KeyError) and the settings (ValueError).
    """

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings if settings is not None else DetectorSettings()
        self._peers: dict[bytes, _Track] = {}
        self._quiet_until = -math.inf  # no verdict for silence before this (our own stall)
        # The stretches this node stood still, still remembered: (start, end), apart and in
        # order (stretches that overlap are merged), each remembered until `stall_memory` after
        # its end.
        self._stalls: deque[tuple[float, float]] = deque()
        self._y = {
            phi: _inverse(phi) for phi in (self.settings.phi_suspect, self.settings.phi_dead)
        }

    def heartbeat(self, peer: bytes, now: float) -> list[Transition]:
        """A heartbeat from `peer` arrived at `now` (it may be read later: a time before the
        peer's last transition counts as that time)."""
        track = self._peers.get(peer)
        if track is None:
            self._track(peer, now)
            return [Transition(peer, None, Liveness.ALIVE, "heartbeat", None, None)]
        if track.state in _FINAL:
            return []
        now = max(now, track.since)
        alive = track.state is Liveness.ALIVE
        phi = 0.0 if alive else self._phi(track, now)  # for the transition, as it was
        if track.awaiting_first:
            track.awaiting_first = False  # the wait since joining is no heartbeat interval
        else:
            elapsed = now - track.last_heard
            mean, std = self._estimate(track)
            # Below phi_dead (phi grows with y, so compared by y: one heartbeat's cheapest
            # test), the gap is a sample; a longer one counts as the gap to phi_dead, so that
            # one long silence does not blunt detection afterwards.
            if elapsed < mean + self._y[self.settings.phi_dead] * std:
                self._sample(track, max(elapsed, 0.0))
            else:
                crossing = self._crossing(track, self.settings.phi_dead)
                self._sample(track, crossing - track.last_heard)
        heard = track.last_heard
        track.last_heard, track.disconnected, track.deadline = now, False, None
        if alive:
            return []
        return [self._move(peer, track, Liveness.ALIVE, "heartbeat", now, phi, heard)]

    def joined(self, peer: bytes, now: float) -> list[Transition]:
        """`peer` joined at `now`: track it from then, as ALIVE, with `first_heartbeat_grace`
        more for its first heartbeat (so a peer that never sends one is still declared dead).
        A peer already tracked is left as it is."""
        if peer in self._peers:
            return []
        self._track(peer, now).awaiting_first = True
        return [Transition(peer, None, Liveness.ALIVE, "joined", None, None)]

    def wired(self, peer: bytes, now: float) -> None:
        """`peer`, tracked from its joining, says at `now` that it has joined this node in turn
        (the node's READY): its heartbeats start now, so the grace for the first one ends, and
        it is awaited as a usual one from `now`. Does nothing once a heartbeat has come."""
        track = self._peers.get(peer)
        if track is not None and track.awaiting_first:
            track.awaiting_first = False
            track.last_heard = max(now, track.last_heard)
            track.deadline = None

    def disconnected(self, peer: bytes, now: float) -> list[Transition]:
        """The connection to `peer` dropped (a socket monitor's DISCONNECTED)."""
        track = self._peers.get(peer)
        if track is None or track.state not in (Liveness.ALIVE, Liveness.SUSPECT):
            return []
        track.disconnected, track.deadline = True, None
        moved = []
        if track.state is Liveness.ALIVE:
            phi = self._phi(track, now)
            moved.append(self._move(peer, track, Liveness.SUSPECT, "disconnect", now, phi))
        return moved + self._judge(peer, track, now)

    def refused(self, peer: bytes, now: float) -> list[Transition]:
        """`peer`'s heartbeat port refused a datagram (ICMP port unreachable) at `now`."""
        track = self._peers.get(peer)
        if track is None or not track.disconnected or track.state in _FINAL:
            return []
        if track.state is Liveness.DEAD:
            return []
        phi = self._phi(track, now)
        return [self._move(peer, track, Liveness.DEAD, "refused", now, phi)]

    def left(self, peer: bytes, now: float) -> list[Transition]:
        """`peer` said goodbye."""
        track = self._peers.get(peer)
        if track is None or track.state in _FINAL:
            return []
        phi = self._phi(track, now)
        return [self._move(peer, track, Liveness.LEFT, "goodbye", now, phi)]

    def tick(self, now: float, lateness: float = 0.0) -> list[Transition]:
        """Judge every peer's silence at `now`.

        `lateness` is how much later than planned this tick runs: `now` minus the time the
        caller meant to tick at. Over `pause_threshold`, this node was stalled: nothing changes
        for silence until `heartbeat_interval` from `now`, so that queued heartbeats come first,
        and the time it stood still counts for `stall_memory` seconds (as `lagged`).
        """
        if lateness > self.settings.pause_threshold:
            self._quiet_until = max(self._quiet_until, now + self.settings.heartbeat_interval)
        self.lagged(now, lateness)
        moved = []
        for peer, track in self._peers.items():
            moved.extend(self._judge(peer, track, now))
        return moved

    def lagged(self, now: float, lateness: float) -> None:
        """One of this node's timers ran `lateness` seconds later than planned, at `now` (a tick
        says so itself): this node stood still from `now - lateness` to `now`. Over
        `stall_threshold`, that stretch counts in every peer's allowance until `stall_memory`
        after it (merged with any it overlaps: two timers late together count once). `now`
        must not go back."""
        stalls = self._stalls
        memory = self.settings.stall_memory
        while stalls and stalls[0][1] + memory <= now:  # forgotten
            stalls.popleft()
        if lateness <= self.settings.stall_threshold:
            return
        start = now - lateness
        while stalls and stalls[-1][1] >= start:  # overlaps this one (whose end is the latest)
            start = min(start, stalls.pop()[0])
        stalls.append((start, now))
        for track in self._peers.values():
            track.deadline = None  # every deadline moves

    def next_deadline(self) -> float | None:
        """The earliest time at which `tick` can change a state without new input, or None."""
        deadlines = []
        for track in self._peers.values():
            if track.deadline is None:  # kept until the track changes: cheap to ask often
                track.deadline = self._deadline(track)
            if track.deadline < math.inf:
                deadlines.append(max(track.deadline, self._quiet_until))
        return min(deadlines, default=None)

    def deadline(self, peer: bytes) -> float:
        """The earliest time at which silence can change `peer`'s state (math.inf if never).
        `next_deadline()` is never earlier than the least of these, so a caller that waits for
        it need be woken after a heartbeat only if that peer's deadline is now earlier than the
        one it waits for. KeyError if `peer` is not tracked."""
        track = self._peers[peer]
        if track.deadline is None:  # the same cache as next_deadline's: no work done twice
            track.deadline = self._deadline(track)
        return track.deadline

    def phi(self, peer: bytes, now: float) -> float:
        """How sure the detector is at `now` that `peer` is gone. KeyError if not tracked."""
        return self._phi(self._peers[peer], now)

    def state(self, peer: bytes) -> Liveness | None:
        """`peer`'s state, or None if it is not tracked."""
        track = self._peers.get(peer)
        return None if track is None else track.state

    def snapshot(self, now: float) -> dict[bytes, PeerStatus]:
        """Every tracked peer (final ones included) as seen at `now`."""
        return {
            peer: PeerStatus(track.state, track.since, track.last_heard, self._phi(track, now))
            for peer, track in self._peers.items()
        }

    def remove(self, peer: bytes) -> None:
        """Stop tracking `peer`; its next heartbeat starts afresh. Unknown ids are ignored."""
        self._peers.pop(peer, None)

    def __contains__(self, peer: object) -> bool:
        return peer in self._peers

    def __len__(self) -> int:
        return len(self._peers)

    def __repr__(self) -> str:
        counts = {state: 0 for state in Liveness}
        for track in self._peers.values():
            counts[track.state] += 1
        shown = ", ".join(f"{n} {state.value}" for state, n in counts.items() if n)
        return f"<FailureDetector peers={shown or 0}>"

    def _track(self, peer: bytes, now: float) -> _Track:
        interval = self.settings.heartbeat_interval
        seed = deque((interval * 0.75, interval * 1.25), maxlen=self.settings.window)
        track = _Track(Liveness.ALIVE, now, now, seed, sum(seed), sum(x * x for x in seed))
        self._peers[peer] = track
        return track

    def _judge(self, peer: bytes, track: _Track, now: float) -> list[Transition]:
        if now < self._quiet_until:
            return []
        if track.state is Liveness.DEAD:
            if now < track.since + self.settings.forget_after:
                return []
            phi = self._phi(track, now)
            return [self._move(peer, track, Liveness.FORGOTTEN, "forgotten", now, phi)]
        if track.state in _FINAL:
            return []
        phi = self._phi(track, now)
        reason = "disconnect" if track.disconnected else "phi"
        moved = []
        if track.state is Liveness.ALIVE and phi >= self.settings.phi_suspect:
            moved.append(self._move(peer, track, Liveness.SUSPECT, reason, now, phi))
        if track.state is Liveness.SUSPECT and phi >= self._phi_dead(track):
            moved.append(self._move(peer, track, Liveness.DEAD, reason, now, phi))
        return moved

    def _move(
        self,
        peer: bytes,
        track: _Track,
        new: Liveness,
        reason: str,
        now: float,
        phi: float,
        heard: float | None = None,
    ) -> Transition:
        old, track.state, track.since, track.deadline = track.state, new, now, None
        last_heard = track.last_heard if heard is None else heard
        return Transition(peer, old, new, reason, phi, last_heard)

    def _deadline(self, track: _Track) -> float:
        if track.state is Liveness.DEAD:
            return track.since + self.settings.forget_after
        if track.state is Liveness.ALIVE:
            threshold = self.settings.phi_suspect
        elif track.state is Liveness.SUSPECT:
            threshold = self._phi_dead(track)
        else:
            return math.inf
        crossing = self._crossing(track, threshold)
        # The first time t >= crossing + (the time stood still remembered at t), stall by stall:
        # until a stall is forgotten, it and every later one count.
        memory = self.settings.stall_memory
        remembered = sum(end - start for start, end in self._stalls)
        since = -math.inf
        for start, end in self._stalls:
            deadline = max(since, crossing + remembered)
            if deadline < end + memory:
                return self._nudged(track, threshold, deadline)
            since = end + memory
            remembered -= end - start
        return max(since, crossing)

    def _nudged(self, track: _Track, threshold: float, deadline: float) -> float:
        """`deadline`, or the first float after it at which `_phi` reaches `threshold` (the
        slack taken off and added back may have missed by a rounding)."""
        step = max(math.ulp(deadline), 1e-12)
        while self._phi(track, deadline) < threshold:
            deadline += step
            step *= 2
        return deadline

    def _slack(self, now: float) -> float:
        """How much more time peers get at `now` for this node's own stalls."""
        memory = self.settings.stall_memory
        return sum(end - start for start, end in self._stalls if now < end + memory)

    def _phi_dead(self, track: _Track) -> float:
        return self.settings.phi_suspect if track.disconnected else self.settings.phi_dead

    def _sample(self, track: _Track, interval: float) -> None:
        window = track.intervals
        if len(window) == window.maxlen:
            oldest = window[0]
            track.total -= oldest
            track.squares -= oldest * oldest
        window.append(interval)
        track.total += interval
        track.squares += interval * interval
        track.added += 1
        if track.added % self.settings.window == 0:  # sum afresh now and then: no drift
            track.total = math.fsum(window)
            track.squares = math.fsum(x * x for x in window)

    def _estimate(self, track: _Track) -> tuple[float, float]:
        count = len(track.intervals)
        mean = track.total / count
        variance = max(track.squares / count - mean * mean, 0.0)
        std = max(math.sqrt(variance), self.settings.min_std)
        mean += self.settings.acceptable_pause
        if track.awaiting_first:
            mean += self.settings.first_heartbeat_grace
        return mean, std

    def _phi(self, track: _Track, now: float) -> float:
        mean, std = self._estimate(track)
        return _phi(now - track.last_heard - self._slack(now), mean, std)

    def _crossing(self, track: _Track, threshold: float) -> float:
        """The first time at which phi reaches `threshold` with no stall of ours remembered
        (from the inverse, then checked)."""
        mean, std = self._estimate(track)
        last_heard = track.last_heard
        deadline = last_heard + mean + self._y[threshold] * std
        step = max(math.ulp(deadline), 1e-12)
        # The inverse may miss by a rounding.
        while _phi(deadline - last_heard, mean, std) < threshold:
            deadline += step
            step *= 2
        return deadline


def _phi(silence: float, mean: float, std: float) -> float:
    """Phi after `silence` seconds, for intervals of that mean and deviation."""
    y = (silence - mean) / std
    z = y * (_B + _A * y * y)
    # -log10(1 / (1 + e^z)), written so that neither branch can overflow.
    return (z + math.log1p(math.exp(-z)) if z > 0 else math.log1p(math.exp(z))) / _LN10


def _inverse(phi: float) -> float:
    """The y of Akka's formula at which phi is reached: solves _A*y^3 + _B*y = ln(10^phi - 1)."""
    z = phi * _LN10 + math.log1p(-(10.0**-phi))
    target = abs(z)
    y = min(target / _B, math.cbrt(target / _A))  # above the root, where Newton only descends
    for _ in range(60):
        step = (_A * y * y * y + _B * y - target) / (3 * _A * y * y + _B)
        if step <= 0:
            break
        y -= step
    return math.copysign(y, z)
