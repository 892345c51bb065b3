"""SWIM membership at scale, in virtual time: up to a thousand `Prober`s (mesh/_probing.py) over
an in-memory network that loses, delays and batches datagrams, with a seeded schedule of
crashes, pauses and partitions. It measures what the protocol promises: how soon a crash is
known everywhere, how often a member that is up is suspected or declared dead, and that the
messages a node sends do not grow with the mesh. Deterministic: one event queue (heapq), one
`random.Random` for the network and one for each prober, all from the seed; no clock, no
threads, nothing iterated in an order that hashing decides.

Rules:

* Every node is a `Prober` that has `add`ed every other at time 0: a formed mesh, as after
  discovery and the greetings.
* A message is lost with probability `loss`, or when a partition separates its ends at the
  moment it is sent; else it arrives `delay` plus up to `jitter` seconds later (a datagram:
  messages overtake each other).
* A node reads what arrived only when its loop wakes, as the node does: on its own grid every
  `read_every` seconds (its heartbeat loop, at a phase of its own), and at its prober's
  `next_deadline()` (the judge's timer), which reads first and then ticks. `read_every` 0 reads
  each message as it arrives.
* A tick runs at `next_deadline()`, told how late it runs against the deadline it was planned
  for (as the node's judge does): late only after a pause.
* A crash stops a node for good: it neither sends nor reads again. A pause freezes a node for
  its length: what arrives waits; when it resumes it reads, then ticks, late by as long as its
  deadline passed. A partition cuts a group of nodes from the rest for its length.
* A suspicion is *false* when neither end of it was at fault: its member had not crashed, and
  within the probing window before it (`probe_timeout` plus the longest stretched probe
  interval) neither the member nor the node whose probe failed was paused, nor a partition
  between them. A suspicion heard as a rumour is judged by the probes it came from: it is
  excused if any probe that suspected that member at that incarnation was (an incarnation is
  one spell of suspicion, as only the member raises it, refuting). A death is false on the
  same terms.

It does not model: CPU time and its contention (a node handles any load at once), the node's
greetings, heartbeats and discovery (a member declared dead and forgotten never comes back, and
one that was declared dead and never hears of it does not refute), joins and leaves after the
start, datagram sizes, and clocks that drift.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from .._probing import Change, Message, Prober, ProbeSettings, Send
from .._swim import AWARENESS_MAX, State
from ._schedule import Fault

#: The kinds of fault a SWIM run draws, in the order the summary lists them.
SWIM_FAULT_KINDS = ("crash", "pause", "partition")

# Event kinds, in the order they run at one instant: a fault first (a node that crashes at `t`
# does nothing at `t`), then a resumption, then reads and ticks.
_FAULT, _RESUME, _WAKE, _TICK = range(4)
#: Ticks at one instant past which a node is taken to be stuck (its deadline does not move).
_MOST_TICKS_AT_ONCE = 8


@dataclass(frozen=True, slots=True)
class SwimSettings:
    """One simulated SWIM mesh (times in virtual seconds).

    Attributes:
        nodes: Members of the mesh. Default 16.
        seconds: How long the run lasts. Default 120.
        loss: Chance that a message is lost. Default 0.
        delay: One-way delay of every message. Default 0.2 ms.
        jitter: Most extra delay, drawn uniformly per message. Default 1 ms.
        read_every: Seconds between a node's reads (its heartbeat loop); 0: each message is
            read as it arrives. Default 0.2.
        crashes: Nodes that crash, at most one each. Default 0.
        pauses: Pauses, each of a node that does not crash. Default 0.
        partitions: Partitions, each cutting up to `partition_share` of the mesh. Default 0.
        faults_from: Earliest time of a fault. Default 5.
        faults_until: Latest time a fault starts (None: half the run, which leaves the other
            half for the crashes to be found). Default None.
        pause_lengths: Shortest and longest pause, drawn uniformly. Default 0.5 to 5 s.
        partition_lengths: Shortest and longest partition. Default 1 to 10 s.
        partition_share: Most of the mesh one partition cuts off (at least one node). Default
            a quarter.
        probe: The probers' settings. Default `ProbeSettings()`.

    Raises `ValueError` for a value out of range."""

    nodes: int = 16
    seconds: float = 120.0
    loss: float = 0.0
    delay: float = 0.0002
    jitter: float = 0.001
    read_every: float = 0.2
    crashes: int = 0
    pauses: int = 0
    partitions: int = 0
    faults_from: float = 5.0
    faults_until: float | None = None
    pause_lengths: tuple[float, float] = (0.5, 5.0)
    partition_lengths: tuple[float, float] = (1.0, 10.0)
    partition_share: float = 0.25
    probe: ProbeSettings = field(default_factory=ProbeSettings)

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError("a mesh needs at least 2 nodes")
        if not 0 <= self.loss < 1:
            raise ValueError("loss must be in [0, 1)")
        if min(self.seconds, self.delay, self.jitter, self.read_every) < 0:
            raise ValueError("times must not be negative")
        if min(self.crashes, self.pauses, self.partitions) < 0:
            raise ValueError("fault counts must not be negative")
        if self.crashes > self.nodes - 2:
            raise ValueError("at least two nodes must stay up")
        if not self.faults_from <= self.fault_window_end <= self.seconds:
            raise ValueError("faults must start within the run, faults_from first")
        for low, high in (self.pause_lengths, self.partition_lengths):
            if not 0 <= low <= high:
                raise ValueError("lengths go from shortest to longest, not negative")
        if not 0 < self.partition_share <= 0.5:
            raise ValueError("partition_share must be in (0, 0.5]")

    @property
    def fault_window_end(self) -> float:
        return self.seconds / 2 if self.faults_until is None else self.faults_until


@dataclass(frozen=True, slots=True)
class SwimSchedule:
    """A run to do: its seed (the network's and the probers' draws), settings and faults (the
    faults are plain data: a list edited by hand replays with the same network)."""

    seed: int
    settings: SwimSettings
    faults: tuple[Fault, ...] = ()

    def __post_init__(self) -> None:
        n = self.settings.nodes
        for fault in self.faults:
            nodes = fault.group if fault.kind == "partition" else (fault.node,)
            if fault.kind not in SWIM_FAULT_KINDS or not all(0 <= i < n for i in nodes):
                raise ValueError(f"fault {fault.to_dict()} does not fit {n} SWIM nodes")


def generate_swim(seed: int, settings: SwimSettings) -> SwimSchedule:
    """The schedule of `seed`: `crashes` different nodes crash, `pauses` pauses of nodes that do
    not crash, `partitions` partitions, each at a time drawn in `[faults_from, faults_until]`.
    Drawn from a stream of the seed of its own (the network's draws do not move with it)."""
    rng = random.Random(f"{seed}/swim-faults")
    n = settings.nodes
    start, end = settings.faults_from, settings.fault_window_end
    crashed = rng.sample(range(n), settings.crashes)
    faults = [Fault("crash", round(rng.uniform(start, end), 3), node) for node in crashed]
    spared = sorted(set(range(n)) - set(crashed))
    for _ in range(settings.pauses):
        at = round(rng.uniform(start, end), 3)
        length = round(rng.uniform(*settings.pause_lengths), 3)
        faults.append(Fault("pause", at, rng.choice(spared), length))
    for _ in range(settings.partitions):
        at = round(rng.uniform(start, end), 3)
        length = round(rng.uniform(*settings.partition_lengths), 3)
        size = rng.randint(1, max(1, int(n * settings.partition_share)))
        group = tuple(sorted(rng.sample(range(n), size)))
        faults.append(Fault("partition", at, length=length, group=group))
    faults.sort(key=lambda f: (f.at, f.kind, f.node))
    return SwimSchedule(seed, settings, tuple(faults))


@dataclass(frozen=True, slots=True)
class Detection:
    """One crash and how long it took to be known (DEAD in the node's `changes()`): by the
    first member, and by every member up at the end (None: not by the end of the run)."""

    node: int
    at: float
    first: float | None
    everyone: float | None


@dataclass(slots=True)
class SwimResult:
    """What one run measured."""

    schedule: SwimSchedule
    events: int = 0  # events taken off the queue
    ticks: int = 0
    sent: int = 0  # messages the probers sent (lost ones included)
    read: int = 0  # messages the probers read
    node_seconds: float = 0.0  # time the nodes were up, summed (a crash ends a node's)
    detections: list[Detection] = field(default_factory=list)
    suspicions: int = 0  # SUSPECT changes, at every node
    false_suspicions: int = 0  # of them, about members up and reachable (module rules)
    false_accusations: int = 0  # of those, first hand: the node's own probe failed
    live_deaths: int = 0  # DEAD changes about members that had not crashed
    false_deaths: int = 0  # of them, false (module rules)
    refutations: int = 0  # incarnations the nodes raised, answering suspicions of themselves
    failed_probes: int = 0
    trace: str = ""  # a digest of every change of state, in order, and the messages sent

    @property
    def msgs_per_node_second(self) -> float:
        return self.sent / self.node_seconds if self.node_seconds else 0.0

    @property
    def node_hours(self) -> float:
        return self.node_seconds / 3600

    def per_node_hour(self, count: int) -> float:
        return count / self.node_hours if self.node_seconds else 0.0

    def per_thousand_periods(self, count: int) -> float:
        """`count` per 1,000 probe periods of one node."""
        periods = self.node_seconds / self.schedule.settings.probe.probe_interval
        return 1000 * count / periods if periods else 0.0

    @property
    def undetected(self) -> int:
        """Crashes some member up at the end did not know of by then."""
        return sum(1 for d in self.detections if d.everyone is None)

    def first_known(self) -> tuple[float, float, float] | None:
        """Median, 99th percentile and most seconds from a crash to its first verdict."""
        return distribution([d.first for d in self.detections if d.first is not None])

    def known_everywhere(self) -> tuple[float, float, float] | None:
        """Median, 99th percentile and most seconds from a crash until every member up knew."""
        return distribution([d.everyone for d in self.detections if d.everyone is not None])


def distribution(values: Sequence[float]) -> tuple[float, float, float] | None:
    """Median, 99th percentile (nearest rank) and maximum of `values`; None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    n = len(ordered)
    middle = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return middle, ordered[max(0, math.ceil(0.99 * n) - 1)], ordered[-1]


class _Node:
    """A prober and what the world keeps of it: its socket (inbox), timers and faults."""

    __slots__ = (
        "crashed",
        "gen",
        "inbox",
        "index",
        "last_tick",
        "paused_until",
        "phase",
        "prober",
        "tick_at",
        "ticks_at_once",
        "wakes",
    )

    def __init__(self, index: int, prober: Prober[int], phase: float) -> None:
        self.index = index
        self.prober = prober
        self.phase = phase  # where its reading grid starts
        # Arrived or on their way: (arrival, sequence, sender, message), a heap by arrival.
        self.inbox: list[tuple[float, int, int, Message[int]]] = []
        self.wakes: set[float] = set()  # reads queued (looked up, never iterated)
        self.tick_at = math.inf  # the deadline its live tick event is for
        self.gen = 0  # of its live tick event: older ones are stale
        self.last_tick = -math.inf
        self.ticks_at_once = 0
        self.paused_until = -math.inf
        self.crashed = False


class SwimWorld:
    """The network, the clock and the tallies of one SWIM run (module rules)."""

    def __init__(self, schedule: SwimSchedule) -> None:
        self.schedule = schedule
        settings = self.settings = schedule.settings
        seed = schedule.seed
        self.rng = random.Random(f"{seed}/swim-net")
        self._queue: list[tuple[float, int, int, int, int]] = []
        self._seq = 0
        self._trace = hashlib.blake2b(digest_size=16)
        self.result = SwimResult(schedule)
        n = settings.nodes
        self.nodes: list[_Node] = []
        for i in range(n):
            prober: Prober[int] = Prober(i, random.Random(f"{seed}/swim-node/{i}"), settings.probe)
            phase = self.rng.uniform(0.0, settings.read_every)
            self.nodes.append(_Node(i, prober, phase))
        for node in self.nodes:  # a formed mesh: everyone knows everyone
            add = node.prober.add
            for j in range(n):
                add(j, 0.0)  # (itself is passed over)
        self.first_incarnations = [node.prober.roster.incarnation for node in self.nodes]
        for node in self.nodes:
            self._reschedule(node, node.prober.next_deadline(), 0.0, force=True)
        self.crashed_at: dict[int, float] = {}
        self.pauses: dict[int, list[tuple[float, float]]] = {}
        self.partitions: list[tuple[float, float, frozenset[int]]] = []
        for number, fault in enumerate(schedule.faults):
            self._at(fault.at, _FAULT, -1, number)
            if fault.kind == "pause":
                self.pauses.setdefault(fault.node, []).append((fault.at, fault.end))
            elif fault.kind == "partition":
                self.partitions.append((fault.at, fault.end, frozenset(fault.group)))
        probe = settings.probe
        # How far back a failed probe's cause may lie: a probe lasts `probe_timeout` plus the
        # probe interval stretched by the node's health, at worst `AWARENESS_MAX` times.
        self.lookback = probe.probe_timeout + AWARENESS_MAX * probe.probe_interval
        # (member, incarnation) -> whether some probe that suspected it had a fault to blame
        self.spells: dict[tuple[int, int], bool] = {}
        self.known: dict[int, dict[int, float]] = {}  # crashed -> observer -> DEAD since

    # -- the event queue

    def _at(self, when: float, kind: int, node: int, payload: int) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, kind, self._seq, node, payload))

    def run(self) -> SwimResult:
        """Run to `seconds` and tally (`SwimResult`)."""
        end = self.settings.seconds
        queue = self._queue
        nodes = self.nodes
        result = self.result
        events = 0
        while queue and queue[0][0] <= end:
            when, kind, _, index, payload = heapq.heappop(queue)
            events += 1
            if kind == _FAULT:
                self._fault(self.schedule.faults[payload], when)
                continue
            node = nodes[index]
            if node.crashed:
                continue
            if kind == _WAKE:
                node.wakes.discard(when)
            elif kind == _TICK:
                if payload != node.gen:
                    continue  # the deadline moved since
                node.gen += 1  # (consumed: none live until the step schedules one)
            if when < node.paused_until:
                continue  # it stands still: its resumption reads, ticks and reschedules
            if kind == _TICK:
                if when == node.last_tick:
                    node.ticks_at_once += 1
                    if node.ticks_at_once > _MOST_TICKS_AT_ONCE:
                        raise RuntimeError(
                            f"node {index} ticked {node.ticks_at_once} times at {when!r}:"
                            f" next_deadline() does not move ({node.prober.next_deadline()!r})"
                        )
                else:
                    node.last_tick, node.ticks_at_once = when, 1
            self._step(node, when, force=kind != _WAKE)
        result.events = events
        self._tally(end)
        return result

    def _step(self, node: _Node, now: float, force: bool) -> None:
        """The node wakes at `now`: it reads what has arrived, in order of arrival, then ticks
        if a deadline is due, late by as long as the tick planned has waited."""
        prober = node.prober
        inbox = node.inbox
        index = node.index
        while inbox and inbox[0][0] <= now:
            _, _, sender, message = heapq.heappop(inbox)
            self.result.read += 1
            out = prober.receive(sender, message, now)
            if out:
                self._send(index, out, now)
            changes = prober.changes()
            if changes:
                self._record(index, changes, now, message)
        # (`next_deadline()` once a step, if it need not tick: it looks at every suspicion
        # held, which under heavy loss is a good part of the mesh.)
        deadline = prober.next_deadline()
        if deadline <= now:
            planned = node.tick_at
            self.result.ticks += 1
            out = prober.tick(now, now - planned if planned <= now else 0.0)
            if out:
                self._send(index, out, now)
            changes = prober.changes()
            if changes:
                self._record(index, changes, now)
            deadline = prober.next_deadline()
        self._reschedule(node, deadline, now, force)
        if inbox:
            self._wake(node, inbox[0][0])

    def _reschedule(self, node: _Node, deadline: float, now: float, force: bool) -> None:
        """A tick event at the prober's `deadline`, unless one is live for it already (`force`:
        none is). The generation makes the event a deadline left behind stale."""
        if deadline == node.tick_at and not force:
            return
        node.gen += 1
        node.tick_at = deadline
        if deadline < math.inf:
            self._at(max(deadline, now), _TICK, node.index, node.gen)

    def _wake(self, node: _Node, arrival: float) -> None:
        """The node reads what arrives at `arrival` at its next wake on its grid."""
        every = self.settings.read_every
        when = arrival
        if every > 0:
            when = node.phase + math.ceil((arrival - node.phase) / every) * every
            if when < arrival:  # (rounding)
                when += every
        if when not in node.wakes:
            node.wakes.add(when)
            self._at(when, _WAKE, node.index, 0)

    # -- the network

    def _send(self, sender: int, out: list[Send[int]], now: float) -> None:
        rng = self.rng
        settings = self.settings
        nodes = self.nodes
        self.result.sent += len(out)
        trace = self._trace
        for to, message in out:
            trace.update(b"%d>%d;" % (sender, to))
            receiver = nodes[to]
            if receiver.crashed or rng.random() < settings.loss or self._cut(sender, to, now):
                continue
            arrival = now + settings.delay + rng.random() * settings.jitter
            self._seq += 1
            inbox = receiver.inbox
            first = not inbox or arrival < inbox[0][0]
            heapq.heappush(inbox, (arrival, self._seq, sender, message))
            if first:  # (later ones are read at its wake, or one scheduled after it)
                self._wake(receiver, arrival)

    def _cut(self, a: int, b: int, when: float) -> bool:
        """Whether a partition separates `a` and `b` at `when`."""
        for start, end, side in self.partitions:
            if start <= when < end and (a in side) != (b in side):
                return True
        return False

    # -- faults

    def _fault(self, fault: Fault, now: float) -> None:
        if fault.kind == "partition":
            return  # `_cut` reads the schedule
        node = self.nodes[fault.node]
        if node.crashed:
            return
        if fault.kind == "pause":
            node.paused_until = max(node.paused_until, fault.end)
            self._at(fault.end, _RESUME, node.index, 0)
            return
        node.crashed = True
        self.crashed_at[node.index] = now
        # Who holds it dead already (a pause or partition just before) knows it from now.
        known = self.known[node.index] = {}
        for other in self.nodes:
            if not other.crashed and other.prober.state(node.index) in (State.DEAD, None):
                known[other.index] = now

    def _excused(self, observer: int, member: int, now: float) -> bool:
        """Whether a fault explains `observer`'s probe of `member` failing at `now`."""
        if self.crashed_at.get(member, math.inf) <= now:
            return True
        since = now - self.lookback
        for who in (observer, member):
            for start, end in self.pauses.get(who, ()):
                if start <= now and end >= since:
                    return True
        for start, end, side in self.partitions:
            if start <= now and end >= since and (observer in side) != (member in side):
                return True
        return False

    # -- the tallies

    def _record(
        self,
        observer: int,
        changes: list[Change[int]],
        now: float,
        message: Message[int] | None = None,
    ) -> None:
        """Tally the changes a tick (no `message`) or reading `message` made at `observer`."""
        result = self.result
        for member, old, new, reason in changes:
            self._trace.update(f"{now!r} {observer} {member} {old} {new} {reason};".encode())
            if new is State.SUSPECT:
                result.suspicions += 1
                if reason == "probe":
                    spell = (member, self.nodes[observer].prober.roster.incarnation_of(member))
                    excused = self._excused(observer, member, now)
                    self.spells[spell] = self.spells.get(spell, False) or excused
                    if not excused:
                        result.false_accusations += 1
                if not self._justified(observer, member, new, message):
                    result.false_suspicions += 1
            elif new is State.DEAD:
                if self.crashed_at.get(member, math.inf) <= now:
                    self.known[member].setdefault(observer, now)
                else:
                    result.live_deaths += 1
                    if not self._justified(observer, member, new, message):
                        result.false_deaths += 1

    def _justified(
        self, observer: int, member: int, state: State, message: Message[int] | None
    ) -> bool:
        """Whether the spell of suspicion a change to `state` belongs to had a fault to blame:
        the spell at the incarnation the rumour said (a message may carry rumours of one member
        at two incarnations, its suspicion and its refutation), or at the one held now."""
        if message is None:
            incarnations = [self.nodes[observer].prober.roster.incarnation_of(member)]
        else:
            incarnations = [
                r.incarnation for r in message.rumours if r.member == member and r.state is state
            ]
        return any(self.spells.get((member, i), False) for i in incarnations)

    def _tally(self, end: float) -> None:
        result = self.result
        up = [node.index for node in self.nodes if not node.crashed]
        for node in self.nodes:
            result.node_seconds += self.crashed_at.get(node.index, end)
            result.refutations += (
                node.prober.roster.incarnation - self.first_incarnations[node.index]
            )
            result.failed_probes += node.prober.failed_probes
        for fault in self.schedule.faults:
            if fault.kind != "crash" or fault.node not in self.crashed_at:
                continue
            at = self.crashed_at[fault.node]
            known = self.known[fault.node]
            first = min(known.values()) - at if known else None
            everyone = None
            if all(i in known for i in up):
                everyone = max(known[i] for i in up) - at
            result.detections.append(Detection(fault.node, at, first, everyone))
        self._trace.update(repr([node.prober.sent for node in self.nodes]).encode())
        result.trace = self._trace.hexdigest()


def run_swim(schedule: SwimSchedule) -> SwimResult:
    """Run one SWIM schedule to its end (module rules)."""
    return SwimWorld(schedule).run()
