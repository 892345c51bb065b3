"""The simulated node: the node's pure cores (`FailureDetector`, `Dispatcher`, `RecentTasks`,
`PeerMap`, `PeerBeats`, `Sessions`) and the small synchronous driver that follows the node's
rules with them (docs/simulation.md says which part of the node each rule mirrors), and the
kinds of event and message it exchanges with the `World` that runs it."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

# From the pure modules themselves: the simulation needs nothing of discovery's IO.
from discovery._peers import PeerJoined, PeerLeft, PeerMap, PeerState
from discovery._record import PeerRecord

from .._detector import FailureDetector, Liveness, Transition
from .._heartbeat import Beat, PeerBeats
from .._routing import Dispatcher, InFlightTask, RecentTasks
from .._sessions import Sessions

if TYPE_CHECKING:
    from ._world import World

MESH = "sim"
SERVICE = "work"

# Event kinds, in the order they run at one instant.
_FAULT, _BEAT, _JUDGE, _EXPIRE, _MESSAGE, _DONE, _PUSH = range(7)
_NAMES = ("fault", "beat", "judge", "expire", "message", "done", "push")
# Message kinds.
_TASK, _ACK, _NACK, _BYE, _HINT = range(5)

# A task in the ledger: pushed, acked by its sender, or given up (dead-lettered).
_PUSHED, _ACKED, _GIVEN_UP = range(3)

_PEER_STATES = {
    Liveness.ALIVE: PeerState.ALIVE,
    Liveness.SUSPECT: PeerState.SUSPECT,
    Liveness.DEAD: PeerState.DEAD,
}


class SimNode:
    """One node: the pure cores and the driver's rules. Messages go through `world`."""

    def __init__(self, world: World, index: int, record: PeerRecord) -> None:
        settings = world.settings
        self.world = world
        self.index = index
        self.record = record
        self.id = record.id
        self.offers = SERVICE in record.services
        self.detector = FailureDetector(settings.detector)
        self.peers = PeerMap(record.id, MESH)
        self.beats: dict[bytes, PeerBeats] = {}
        self.dispatcher = Dispatcher(settings.max_in_flight, settings.ack_timeout)
        self.finished = RecentTasks(settings.dedup_window)
        # (Goodbyes are modelled in the inbox only, which ends a peer at once: no leaving peer
        # waits for a deadline here.)
        self.sessions = Sessions(goodbye_wait=math.inf)
        self.waiting: deque[tuple[int, Any]] = deque()  # pushes waiting for a worker
        self.redelivery: deque[InFlightTask] = deque()
        self.in_flight: set[int] = set()  # task ids, as the dispatcher's returns tell
        self.held: dict[tuple[int, int], int] = {}  # (sender, task id) -> copies being run
        self.inbox: list[tuple[float, int, Beat]] = []  # heartbeats arrived, not taken yet
        self.beat_count = 0
        self.judge_at = math.inf
        self.expiry_at = math.inf
        self.paused_until = -math.inf
        self.stopped = False  # crashed or left

    # -- heartbeats and liveness (the node's Heartbeats: serve, _on_heartbeat, judge)

    def beat(self, now: float, planned: float) -> None:
        self.detector.lagged(now, now - planned)
        self.take(now)
        self.beat_count += 1
        beat = Beat(self.beat_count, credit=self.world.settings.prefetch)
        self.world.send_beats(self, beat, now)
        interval = self.world.settings.detector.heartbeat_interval
        self.world.at(max(planned + interval, now), _BEAT, self.index, max(planned + interval, now))

    def take(self, now: float) -> None:
        """Take in the heartbeats that arrived by `now`, in order of arrival."""
        inbox = self.inbox
        if not inbox:
            return
        ready = [b for b in inbox if b[0] <= now]
        if len(ready) < len(inbox):
            self.inbox = [b for b in inbox if b[0] > now]
        else:
            self.inbox = []
        ready.sort(key=lambda b: (b[0], b[1]))
        world = self.world
        nodes = world.nodes
        cut = world.cut
        for arrival, sender, beat in ready:
            if cut(sender, self.index, arrival):
                continue
            world.heartbeats += 1
            self.on_heartbeat(nodes[sender].id, beat, arrival)
        self.reschedule_judge(now)

    def on_heartbeat(self, sender: bytes, beat: Beat, arrival: float) -> None:
        beats = self.beats.get(sender)
        if beats is None:
            if sender in self.peers:
                beats = self.beats[sender] = PeerBeats(
                    self.world.settings.detector.heartbeat_interval
                )
            else:
                address = self.sessions.returned(sender)
                if address is not None:  # forgotten while frozen, now back: HELLO again
                    record = self.world.at_address[address]
                    self.apply(self.peers.observe(record, arrival), arrival)
                return
        if not beats.take(beat, arrival):
            return
        if beat.credit is not None:
            self.dispatcher.set_credit(sender, beat.credit)
        transitions = self.detector.heartbeat(sender, arrival)
        if transitions:
            self.apply_liveness(transitions, arrival)

    def reschedule_judge(self, now: float) -> None:
        deadline = self.detector.next_deadline()
        if deadline is None:
            self.judge_at = math.inf
        elif deadline != self.judge_at:
            self.judge_at = deadline
            self.world.at(max(deadline, now), _JUDGE, self.index, deadline)

    def judge(self, now: float, planned: float) -> None:
        if planned != self.judge_at:
            return  # moved since
        self.judge_at = math.inf
        self.world.ticks += 1
        self.take(now)
        self.apply_liveness(self.detector.tick(now, lateness=max(0.0, now - planned)), now)
        self.reschedule_judge(now)

    def disconnected(self, peer: bytes, now: float) -> None:
        # The heartbeats that came before the connection dropped are read first: one read
        # after the verdict would revive the peer and wipe out the hint (as the node's
        # Membership.on_link_dropped does).
        self.take(now)
        if peer in self.peers:
            self.apply_liveness(self.detector.disconnected(peer, now), now)
            self.reschedule_judge(now)

    def apply_liveness(self, transitions: Sequence[Transition], now: float) -> None:
        for transition in transitions:
            self.world.on_transition(self, transition, now)
            if transition.new is Liveness.FORGOTTEN:
                peer = self.peers.get(transition.peer)
                if peer is not None:
                    self.sessions.forgot(transition.peer, peer.record.address)
                self.apply(self.peers.remove(transition.peer, "dead"), now)
            elif transition.new is not Liveness.LEFT:
                state = _PEER_STATES[transition.new]
                self.peers.set_state(transition.peer, state, transition.reason, now)
                if state is PeerState.DEAD:
                    self.reclaim(transition.peer)
        if transitions:
            self.pump(now)

    def reclaim(self, worker: bytes) -> None:
        """A worker died: what it held unacked goes to other workers."""
        self.redeliver(self.forget_worker(worker), "worker dead")

    def apply(self, events: Sequence[object], now: float) -> None:
        for event in events:
            if isinstance(event, PeerJoined):
                peer = event.peer.record.id
                self.sessions.open(peer)
                self.detector.joined(peer, now)
                self.detector.wired(peer, now)  # its READY: modelled as coming at once
            elif isinstance(event, PeerLeft):
                peer = event.peer.record.id
                self.sessions.close(peer)
                self.detector.remove(peer)
                self.beats.pop(peer, None)
                self.redeliver(self.forget_worker(peer), event.reason)
        self.reschedule_judge(now)
        self.pump(now)

    # -- sending work (the node's push and ProducerSide: send, redeliver, serve_redeliveries)

    def ready_workers(self) -> list[bytes]:
        ready = []
        for worker in self.peers.offering(SERVICE):
            peer = self.peers.get(worker)
            if (
                peer is not None
                and peer.state is PeerState.ALIVE
                and not self.sessions.leaving(worker)
            ):
                ready.append(worker)
        return ready

    def push(self, body: Any, now: float) -> None:
        task_id = self.dispatcher.new_task_id()
        self.world.pushed(self, task_id)
        self.waiting.append((task_id, body))
        self.pump(now)

    def pump(self, now: float) -> None:
        """Send what waits (redeliveries first, then pushes) to the workers with room."""
        if not (self.redelivery or self.waiting) or self.stopped:
            return
        ready = self.ready_workers()
        while self.redelivery:
            worker = self.dispatcher.pick(ready)
            if worker is None:
                return
            task = self.redelivery.popleft()
            self.send_task(worker, task.task_id, task.attempt + 1, task.body, now)
        while self.waiting:
            worker = self.dispatcher.pick(ready)
            if worker is None:
                return
            task_id, body = self.waiting.popleft()
            self.send_task(worker, task_id, 1, body, now)

    def send_task(self, worker: bytes, task_id: int, attempt: int, body: Any, now: float) -> None:
        self.world.send(self.index, self.world.index[worker], (_TASK, task_id, attempt), now)
        self.dispatcher.sent(InFlightTask(task_id, SERVICE, body, worker, attempt, now))
        self.in_flight.add(task_id)
        if self.expiry_at == math.inf:
            self.arm_expiry(now)

    def arm_expiry(self, now: float) -> None:
        deadline = self.dispatcher.next_deadline()
        if deadline is not None:
            self.expiry_at = deadline
            self.world.at(max(deadline, now), _EXPIRE, self.index, deadline)

    def expire(self, now: float, planned: float) -> None:
        if planned != self.expiry_at:
            return
        self.expiry_at = math.inf
        self.redeliver(self.taken(self.dispatcher.expired(now)), "ack deadline")
        self.arm_expiry(now)
        self.pump(now)

    def redeliver(self, tasks: Sequence[InFlightTask], why: str) -> None:
        for task in tasks:
            if task.attempt >= self.world.settings.max_attempts:
                self.world.given_up(self, task, why)
            else:
                self.redelivery.append(task)

    def forget_worker(self, worker: bytes) -> list[InFlightTask]:
        return self.taken(self.dispatcher.forget_worker(worker))

    def taken(self, tasks: list[InFlightTask]) -> list[InFlightTask]:
        """Tasks the dispatcher took out of flight (its returns are the only record of it)."""
        for task in tasks:
            self.in_flight.discard(task.task_id)
        return tasks

    # -- messages (WorkerSide.on_task and settle, ProducerSide.on_settled, Membership.on_bye, Links)

    def on_message(self, sender: int, message: tuple[Any, ...], now: float) -> None:
        kind = message[0]
        origin = self.world.nodes[sender].id
        if kind == _TASK:
            self.on_task(sender, message[1], now)
        elif kind in (_ACK, _NACK):
            self.on_settled(origin, kind, message[1], now)
        elif kind == _BYE:  # on the PUB and in the inbox, both (as the node sends it)
            self.sessions.said_goodbye(origin, now)
            self.sessions.goodbye_in_inbox(origin)
            self.apply(self.peers.remove(origin, "goodbye"), now)
        elif kind == _HINT:
            self.disconnected(origin, now)

    def on_task(self, sender: int, task_id: int, now: float) -> None:
        origin = self.world.nodes[sender].id
        if (origin, task_id) in self.finished:
            self.settle(sender, _ACK, task_id, now)  # done already: its ack was lost
            return
        if not self.offers:
            self.settle(sender, _NACK, task_id, now)
            return
        key = (sender, task_id)
        self.held[key] = self.held.get(key, 0) + 1
        run = self.world.settings.task_time * (0.1 + 0.9 * self.world.rng.random())
        self.world.at(now + run, _DONE, self.index, key)

    def done(self, key: tuple[int, int], now: float) -> None:
        left = self.held.get(key, 0) - 1
        if left < 0:
            return  # handed back when this node left
        if left:
            self.held[key] = left
        else:
            del self.held[key]
        sender, task_id = key
        self.world.executed.add(key)
        self.settle(sender, _ACK, task_id, now)

    def settle(self, sender: int, kind: int, task_id: int, now: float) -> None:
        origin = self.world.nodes[sender].id
        if origin not in self.peers:
            return  # not a known peer: nowhere to send it
        if kind == _ACK:
            self.finished.add((origin, task_id))
        self.world.send(self.index, sender, (kind, task_id), now)

    def on_settled(self, worker: bytes, kind: int, task_id: int, now: float) -> None:
        task = self.dispatcher.settle(worker, task_id)
        if task is None:
            return
        self.in_flight.discard(task_id)
        if kind == _ACK:
            self.world.acked(self, task)
        else:
            self.redeliver([task], "nack")
        self.pump(now)

    def leave(self, now: float) -> None:
        """Hand back the tasks held, say goodbye, stop."""
        for sender, task_id in list(self.held):
            self.settle(sender, _NACK, task_id, now)
        self.held.clear()
        for peer in self.peers:
            self.world.send(self.index, self.world.index[peer.record.id], (_BYE,), now)
        self.stopped = True
