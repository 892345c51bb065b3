"""A mesh in virtual time: nodes made of the node's pure cores (`FailureDetector`, `Dispatcher`,
`RecentTasks`, `PeerMap`, `PeerBeats`) and a small synchronous driver that follows the node's
rules (`SimNode`, in `_driver`), over an in-memory network that drops, delays and duplicates
messages and suffers the schedule's faults. Deterministic: one event queue (heapq), one
`random.Random` per run, no clock, no threads, nothing iterated in an order that hashing decides.

The driver's rules, and which part of the node each mirrors, are in docs/simulation.md. In short:
a node beats every `heartbeat_interval` (telling its detector how late the beat ran), takes the
heartbeats that arrived when it beats and before each verdict (dated when they arrived, as the
kernel dates datagrams), ticks its detector at `next_deadline()` (telling it how late), reclaims a
DEAD worker's tasks, redelivers on nack and on ack deadline, gives up after `max_attempts`, and as
a worker acks a task it already finished without running it again.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# From the pure modules themselves: the simulation needs nothing of discovery's IO.
from discovery._record import PeerRecord

from .._detector import Liveness, Transition, _inverse
from .._heartbeat import Beat
from .._routing import InFlightTask
from ._driver import (
    _ACKED,
    _BEAT,
    _DONE,
    _EXPIRE,
    _FAULT,
    _GIVEN_UP,
    _HINT,
    _JUDGE,
    _MESSAGE,
    _PUSH,
    _PUSHED,
    MESH,
    SERVICE,
    SimNode,
)
from ._schedule import FAULT_KINDS, Fault, Schedule


@dataclass(frozen=True, slots=True)
class Violation:
    """An invariant that did not hold: which (`kind`), and the evidence (`detail`)."""

    kind: str
    detail: str


@dataclass(slots=True)
class Result:
    """What one run did, and what went wrong in it."""

    schedule: Schedule
    violations: list[Violation] = field(default_factory=list)
    events: int = 0  # events processed
    heartbeats: int = 0  # heartbeat copies taken in
    ticks: int = 0  # detector ticks (each judges every peer of one node)
    end: float = 0.0  # virtual time at the end
    pushed: int = 0
    acked: int = 0
    given_up: int = 0
    trace: str = ""  # a digest of every event and verdict, in order

    @property
    def ok(self) -> bool:
        return not self.violations

    def report(self) -> str:
        """The violations, the seed and the schedule as JSON to replay it with."""
        lines = [f"seed {self.schedule.seed}: {len(self.violations)} violation(s)"]
        lines += [f"  {v.kind}: {v.detail}" for v in self.violations]
        lines.append(f"  replay: python -m mesh._sim --replay '{self.schedule.to_json()}'")
        return "\n".join(lines)


class World:
    """The network, the clock and the ledger of one run."""

    def __init__(self, schedule: Schedule) -> None:
        settings = self.settings = schedule.settings
        self.schedule = schedule
        self.rng = random.Random(f"{schedule.seed}/net")
        self._queue: list[tuple[float, int, int, int, Any]] = []
        self._seq = 0
        self.now = 0.0
        self._trace = hashlib.blake2b(digest_size=16)
        self.heartbeats = 0
        # (start, end, the cut-off side): checked for every message, so a set for the side
        self.partitions = [
            (f.at, f.end, frozenset(f.group)) for f in schedule.faults if f.kind == "partition"
        ]
        self.ticks = 0
        self._link_last: dict[tuple[int, int], float] = {}  # FIFO per link for non-heartbeats
        self.stopped_at: dict[int, tuple[str, float]] = {}  # node -> (crash or leave, when)
        self.ledger: dict[tuple[int, int], int] = {}
        self.executed: set[tuple[int, int]] = set()
        self.violations: list[Violation] = []
        # (observer, crashed peer) -> when the observer last declared it DEAD, and the bound
        self.declared_dead: dict[tuple[int, int], tuple[float, float]] = {}
        # (observer, peer) -> since when the observer holds the peer DEAD
        self.dead_since: dict[tuple[int, int], float] = {}
        self.dead_spells: list[tuple[int, int, float, float]] = []
        self.nodes: list[SimNode] = []
        self.index: dict[bytes, int] = {}
        self.at_address: dict[str, PeerRecord] = {}  # inbox address -> the record of its node
        for i in range(settings.nodes):
            services = frozenset({SERVICE}) if i < settings.worker_count else frozenset()
            record = PeerRecord(
                i.to_bytes(16, "big"),
                f"n{i}",
                MESH,
                f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}",
                5000,
                5001,
                services,
            )
            self.index[record.id] = i
            self.at_address[record.address] = record
            self.nodes.append(SimNode(self, i, record))
        # Every node knows every other from the start (as after discovery), wired at once.
        for node in self.nodes:
            joined: list[object] = []
            for other in self.nodes:
                if other is not node:
                    joined += node.peers.observe(other.record, 0.0)
            node.apply(joined, 0.0)
        interval = settings.detector.heartbeat_interval
        for node in self.nodes:
            first = self.rng.uniform(0.0, interval)  # nodes do not beat in step
            self.at(first, _BEAT, node.index, first)
        for fault in schedule.faults:
            self.at(fault.at, _FAULT, -1, fault)
        for i in range(settings.worker_count, settings.nodes):
            for k in range(settings.tasks_per_pusher):
                self.at(round(self.rng.uniform(0.0, settings.duration), 6), _PUSH, i, k)
        ends = [f.end for f in schedule.faults] + [settings.duration]
        self.quiet_from = max(ends)
        self.pause_of: dict[int, list[Fault]] = {}
        for fault in schedule.faults:
            if fault.kind == "pause":
                self.pause_of.setdefault(fault.node, []).append(fault)

    # -- the event queue

    def at(self, when: float, kind: int, node: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._queue, (when, kind, self._seq, node, payload))

    def run(self) -> Result:
        settings = self.settings
        limit = settings.duration + settings.settle
        events = 0
        queue = self._queue
        trace = self._trace
        nodes = self.nodes
        next_check = self.quiet_from + settings.heal
        while queue:
            when, kind, seq, index, payload = queue[0]
            if when > limit:
                break
            if when >= next_check:
                if self._settled():
                    break
                next_check += 0.5
            heapq.heappop(queue)
            self.now = when
            if kind == _FAULT:
                self._fault(payload, when)
                trace.update(f"{when!r} f {payload.kind} {payload.node};".encode())
                events += 1
                continue
            node = nodes[index]
            if node.stopped:
                continue
            if when < node.paused_until:  # stood still: it runs this when it resumes
                heapq.heappush(queue, (node.paused_until, kind, seq, index, payload))
                continue
            events += 1
            trace.update(f"{when!r} {kind} {index};".encode())
            if kind == _BEAT:
                node.beat(when, payload)
            elif kind == _JUDGE:
                node.judge(when, payload)
            elif kind == _MESSAGE:
                sender, message, sent = payload
                if not self.cut(sender, index, sent) and not self.cut(sender, index, when):
                    node.on_message(sender, message, when)
            elif kind == _EXPIRE:
                node.expire(when, payload)
            elif kind == _DONE:
                node.done(payload, when)
            elif kind == _PUSH:
                node.push(payload, when)
        self.now = min(self.now, limit) if queue else self.now
        end = max(self.now, self.quiet_from)
        self._check(end)
        result = Result(
            self.schedule, self.violations, events=events, heartbeats=self.heartbeats, end=end
        )
        result.pushed = len(self.ledger)
        result.acked = sum(1 for v in self.ledger.values() if v == _ACKED)
        result.given_up = sum(1 for v in self.ledger.values() if v == _GIVEN_UP)
        result.trace = trace.hexdigest()
        result.ticks = self.ticks
        return result

    # -- the network

    def cut(self, a: int, b: int, when: float) -> bool:
        """Whether a partition separates nodes `a` and `b` at `when`."""
        for start, end, side in self.partitions:
            if start <= when < end and ((a in side) != (b in side)):
                return True
        return False

    def send(self, sender: int, to: int, message: tuple[Any, ...], now: float) -> None:
        """A task, ack, nack or goodbye: kept in order on its link (one TCP connection)."""
        rng = self.rng
        s = self.settings
        draw = rng.random()
        if draw < s.drop:
            return
        copies = 2 if draw < s.drop + s.duplicate else 1
        for _ in range(copies):
            arrival = now + s.delay + rng.random() * s.jitter
            link = (sender, to)
            arrival = max(arrival, self._link_last.get(link, 0.0))
            self._link_last[link] = arrival
            self.at(arrival, _MESSAGE, to, (sender, message, now))

    def send_beats(self, node: SimNode, beat: Beat, now: float) -> None:
        """One heartbeat to each peer node knows: datagrams, each dropped, late or doubled alone;
        they wait in the peer's socket (its inbox) until it takes them in."""
        rng = self.rng
        s = self.settings
        drop, twice = s.drop, s.drop + s.duplicate
        base, jitter = now + s.delay, s.jitter
        nodes = self.nodes
        sender = node.index
        item_index = self.index
        for peer in node.peers:
            to = nodes[item_index[peer.record.id]]
            if to.stopped:
                continue
            draw = rng.random()
            if draw < drop:
                continue
            to.inbox.append((base + rng.random() * jitter, sender, beat))
            if draw < twice:
                to.inbox.append((base + rng.random() * jitter, sender, beat))

    # -- faults

    def _fault(self, fault: Fault, now: float) -> None:
        if fault.kind == "partition":
            return  # `cut` reads the schedule
        node = self.nodes[fault.node]
        if node.stopped:
            return
        if fault.kind == "pause":
            node.paused_until = max(node.paused_until, fault.end)
            return
        self.stopped_at[node.index] = (fault.kind, now)
        if fault.kind == "leave":
            node.leave(now)
        else:
            node.stopped = True
        # Its connections drop: each peer's socket monitor tells of it a little later, unless a
        # partition holds the packets that would tell it.
        for peer in self.nodes:
            if peer is not node and not peer.stopped:
                when = now + self.settings.hint_delay
                self.at(when, _MESSAGE, peer.index, (node.index, (_HINT,), when))

    # -- the ledger and the invariants

    def pushed(self, node: SimNode, task_id: int) -> None:
        self.ledger[(node.index, task_id)] = _PUSHED

    def acked(self, node: SimNode, task: InFlightTask) -> None:
        key = (node.index, task.task_id)
        if self.ledger.get(key) != _PUSHED:
            self.violations.append(Violation("double-settle", f"task {key} acked when settled"))
        self.ledger[key] = _ACKED
        if key not in self.executed:
            self.violations.append(Violation("ack-without-work", f"task {key} acked, never run"))

    def given_up(self, node: SimNode, task: InFlightTask, why: str) -> None:
        key = (node.index, task.task_id)
        if self.ledger.get(key) != _PUSHED:
            self.violations.append(Violation("double-settle", f"task {key} given up when settled"))
        self.ledger[key] = _GIVEN_UP

    def on_transition(self, node: SimNode, transition: Transition, now: float) -> None:
        self._trace.update(
            f"{now!r} {node.index} {self.index[transition.peer]} {transition.new.value};".encode()
        )
        pair = (node.index, self.index[transition.peer])
        if transition.new is Liveness.DEAD:
            stopped = self.stopped_at.get(pair[1])
            if stopped is not None and stopped[0] == "crash":
                # The bound from the evidence as it stands now: forgotten, it is gone.
                self.declared_dead[pair] = (now, self.crash_bound(node, pair[1], stopped[1]))
            self.dead_since[pair] = now
        elif transition.old is Liveness.DEAD:
            start = self.dead_since.pop(pair, None)
            if start is not None:
                self.dead_spells.append((*pair, start, now))

    def _settled(self) -> bool:
        return all(
            state != _PUSHED
            for (pusher, _), state in self.ledger.items()
            if pusher not in self.stopped_at
        )

    def crash_bound(self, observer: SimNode, peer: int, crashed_at: float) -> float:
        """The latest time `observer` may declare `peer`, crashed at `crashed_at`, DEAD.

        The detector adapts to each peer's beats, so the silence it waits for comes from its
        evidence: mean + y(phi_dead) * std of the peer's intervals (`phi_dead`'s crossing; the
        disconnect hint only brings it earlier). Its last beat arrives by `crashed_at` plus the
        network's largest delay. To that come the allowances the detector grants for the
        observer's own stalls: its pauses that end within `stall_memory` before the crash or
        later count twice (the verdict waits for the node to resume, and the time it stood
        still is added to every peer's), plus one `heartbeat_interval` of quiet after a late
        tick."""
        s = self.settings.detector
        track = observer.detector._peers.get(self.nodes[peer].id)
        if track is None:
            return -math.inf  # not tracked: nothing to declare
        mean, std = observer.detector._estimate(track)
        bound = crashed_at + self.settings.max_delay + mean + _inverse(s.phi_dead) * std
        stalls = [
            f.length
            for f in self.pause_of.get(observer.index, ())
            if f.end > crashed_at - s.stall_memory
        ]
        if stalls:
            bound += 2 * sum(stalls) + s.heartbeat_interval
        return bound + 1e-9

    def stall_bound(self) -> float:
        """How long a peer that every node can reach may stay DEAD at one of them: a heartbeat
        gets through within `lost_beats` lost in a row (drop ** lost_beats: about 6e-11 at the
        defaults), and is taken in at the observer's next beat: one interval for the peer's beat
        loop, one for the observer's, and the network's delay."""
        interval = self.settings.detector.heartbeat_interval
        return (self.settings.lost_beats + 2) * interval + self.settings.max_delay

    def _unhealthy(self, a: int, b: int, start: float, end: float) -> float:
        """The last moment in [start, end] at which `a` and `b` could not hear each other (a
        partition between them, or either paused), or `start` if none."""
        last = start
        for at, until, side in self.partitions:
            if at < end and until > start and (a in side) != (b in side):
                last = max(last, min(until, end))
        for node in (a, b):
            for fault in self.pause_of.get(node, ()):
                if fault.at < end and fault.end > start:
                    last = max(last, min(fault.end, end))
        return last

    def _check(self, end: float) -> None:
        bad = self.violations
        # Every task of a pusher still running is acked or given up, never silently gone.
        for key, status in self.ledger.items():
            pusher, task_id = key
            if status != _PUSHED or pusher in self.stopped_at:
                continue
            node = self.nodes[pusher]
            queued = any(t.task_id == task_id for t in node.redelivery) or any(
                t == task_id for t, _ in node.waiting
            )
            if task_id in node.in_flight or queued:
                bad.append(Violation("unsettled", f"task {key} not settled by {end:.3f}"))
            else:
                bad.append(Violation("lost", f"task {key} neither acked nor given up"))
        for node in self.nodes:
            if not node.stopped and node.dispatcher.in_flight() != len(node.in_flight):
                bad.append(
                    Violation(
                        "in-flight-count",
                        f"node {node.index}: dispatcher counts {node.dispatcher.in_flight()}, "
                        f"its returns leave {len(node.in_flight)}",
                    )
                )
        # A crashed node is declared DEAD by every node still running, in time.
        for peer, (kind, at) in self.stopped_at.items():
            if kind != "crash":
                continue
            for observer in self.nodes:
                if observer.stopped:
                    continue
                state = observer.detector.state(self.nodes[peer].id)
                if state in (Liveness.ALIVE, Liveness.SUSPECT):
                    bound = self.crash_bound(observer, peer, at)
                    if end > bound:
                        bad.append(
                            Violation(
                                "crash-undetected",
                                f"node {observer.index} holds node {peer} (crashed at {at:.3f})"
                                f" {state.value} at {end:.3f}, bound {bound:.3f}",
                            )
                        )
                    continue
                declared, bound = self.declared_dead.get((observer.index, peer), (at, at))
                if declared > bound:
                    bad.append(
                        Violation(
                            "crash-late",
                            f"node {observer.index} declared node {peer} (crashed at {at:.3f})"
                            f" DEAD at {declared:.3f}, bound {bound:.3f}",
                        )
                    )
        # A node every other can reach is not DEAD anywhere for longer than the stall bound.
        limit = self.stall_bound()
        spells = list(self.dead_spells)
        spells += [(a, b, start, end) for (a, b), start in self.dead_since.items()]
        for seer, peer, start, stop in spells:
            for who in (seer, peer):
                if who in self.stopped_at:
                    stop = min(stop, self.stopped_at[who][1])
            healthy = self._unhealthy(seer, peer, start, stop)
            if stop - healthy > limit:
                bad.append(
                    Violation(
                        "false-dead",
                        f"node {seer} held reachable node {peer} DEAD from {start:.3f} to"
                        f" {stop:.3f} (reachable from {healthy:.3f}; bound {limit:.3f})",
                    )
                )


def run(schedule: Schedule) -> Result:
    """Run one schedule to its end and check the invariants (docs/simulation.md)."""
    return World(schedule).run()


def count_faults(faults: Sequence[Fault]) -> dict[str, int]:
    counts = dict.fromkeys(FAULT_KINDS, 0)
    for fault in faults:
        counts[fault.kind] += 1
    return counts
