"""Heartbeats and liveness: this node's heartbeats out (on the PUB, and as UDP datagrams to each
peer's inbox port), its peers' heartbeats in (datagrams, and the control SUB that also carries
goodbyes), and the failure detector that judges them, ticked by one judge task.

Rules:

* One loop (`serve`) sends and reads: it wakes once a heartbeat interval on a clean network,
  however many peers there are, and more often only to spread the extra datagram copies asked
  for after a loss. No task waits on the UDP sockets' or the control SUB's FDs: they are read
  (`take`) when the loop wakes and before each verdict of the judge.
* The first copy of each heartbeat number, by whichever path, feeds the detector and tells the
  peer's load, credit and record digest; every copy by datagram also counts losses and carries
  the echo from which the round trip is measured (docs/protocol.md §11).
* The judge (`judge`) ticks the detector at its next deadline, telling it how late the tick ran
  (a late tick means this node stood still, and its peers are not to blame); every verdict goes
  to the node (`HeartbeatWiring.verdicts`), which acts on it.
* This component holds what it learns of each peer's beats (`beats`) from its first heartbeat
  until the node forgets the peer (`forget`).
"""

from __future__ import annotations

import math
import socket as stdlib_socket
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Final, Protocol

import trio
import zmq

from discovery import PeerRecord

from . import _wire
from ._addresses import Addresses
from ._beatkeys import MAC_SIZE, BeatKeys
from ._beatplan import PUBLISHED_BEAT_EVERY, BeatPeer, BeatPlan
from ._detector import FailureDetector, Liveness, Transition
from ._errors import ProtocolError
from ._gossip import Gossip
from ._heartbeat import (
    Beat,
    BeatDatagrams,
    PeerBeats,
    beat_body,
    read_beat,
    round_trip_sample,
)
from ._metrics import RTT_BUCKETS, Tally
from ._ratelimit import RateLimitedLog
from ._types import PeerHealth, Settings
from ._udp import DatagramSockets
from ._wire import Envelope, Kind
from ._zmq import AsyncSocket, SocketOp, ZmqSocket

# Where a heartbeat datagram to a peer goes: its beats (for the echo it is owed), the UDP socket
# that reaches it, its address, and its id.
_Route = tuple[PeerBeats, stdlib_socket.socket, tuple[str, int], bytes]

#: Seconds after a dropped connection at which the peer's heartbeat port, probed then, is checked
#: for a refusal (loopback and a LAN answer within a millisecond; the second is for a slow one).
PROBE_CHECKS: Final = (0.005, 0.05)


class HeartbeatWiring(Protocol):
    """What heartbeats and liveness need of the rest of the node."""

    def peers(self) -> Iterable[PeerRecord]:
        """The records of the known peers."""

    def is_peer(self, node_id: bytes) -> bool:
        """Whether `node_id` is a known peer."""

    def hosts_of(self, node_id: bytes) -> tuple[str, ...] | None:
        """The hosts of a known peer's record (where its datagrams come from); None if it is not
        a peer."""

    def stranger(self, node_id: bytes) -> None:
        """A heartbeat came from a node that is not a peer (one forgotten while frozen, now
        back, say)."""

    def load(self) -> int:
        """The tasks this node holds as a worker (told in each beat)."""

    def record_digest(self) -> bytes:
        """The digest of this node's record (told in each beat)."""

    def publish_beat(self, body: Any) -> None:
        """Publish a heartbeat on the PUB (skipped if its outbox is full)."""

    def published_bye(self, envelope: Envelope) -> None:
        """A peer's goodbye came on the control SUB."""

    def published_dropped(self, envelope: Envelope) -> None:
        """A peer's DROPPED came on the control SUB."""

    def set_credit(self, peer_id: bytes, credit: int) -> None:
        """A peer told the credit it gives this node."""

    def check_record(self, peer_id: bytes, beats: PeerBeats, digest: bytes, now: float) -> None:
        """A peer's beat told its record's digest."""

    def verdicts(self, transitions: Sequence[Transition]) -> None:
        """The detector moved peers between states."""

    def bad_frame(self, exc: ProtocolError, where: str) -> None:
        """A frame or datagram broke the protocol."""


class Heartbeats:
    """This node's heartbeats, its peers', and the detector that judges them (see the module's
    rules). Owns the UDP sockets and the control SUB, and closes them (`close`)."""

    def __init__(
        self,
        wiring: HeartbeatWiring,
        node_id: bytes,
        *,
        settings: Settings,
        datagrams: list[stdlib_socket.socket],
        addresses: Addresses,
        control: ZmqSocket,
        counts: dict[str, int],
        bytes_in: dict[str, int],
        log: RateLimitedLog,
        beat_keys: BeatKeys | None = None,
    ) -> None:
        self._wiring = wiring
        self._keys = beat_keys  # a keyed node's: the MACs on its datagrams
        self._id = node_id
        self._interval = settings.detector.heartbeat_interval
        self._credit = settings.prefetch
        self._receive_batch = settings.receive_batch
        self.detector = FailureDetector(settings.detector)
        self.gossip = Gossip(
            node_id,
            settings=settings.probing,
            all_up_to=settings.heartbeat_all_up_to,
            send=self._send_probe,
            verdicts=wiring.verdicts,
            now=trio.current_time(),  # (the first probe is due within a period of it)
        )
        self._records: dict[bytes, PeerRecord] = {}  # the peers, for their datagrams' routes
        self._ready: set[bytes] = set()  # peers that said READY: nodes, which take datagrams
        self.udp = DatagramSockets(
            datagrams,
            addresses,
            receive_batch=settings.receive_batch,
            bytes_in=bytes_in,
            log=log,
            refused=self._refused,
        )
        self._control = AsyncSocket(control)
        self._control_socket = control
        self._counts = counts
        self._bytes_in = bytes_in
        self._log = log
        # Each peer's heartbeats taken here (its load, the round trip to it, its datagrams), and
        # what this node's datagrams owe it, from its first heartbeat on (docs/protocol.md §11).
        self.beats: dict[bytes, PeerBeats] = {}
        self.count = 0  # heartbeats sent
        self.rtt = Tally(RTT_BUCKETS)
        self._liveness_changed = trio.lowlevel.ParkingLot()
        self._judge_timer: trio.CancelScope | None = None  # `judge`'s, while it waits
        self._probe_checks: list[float] = []  # when to look for refusals of probes sent

    def health(self, now: float) -> Callable[[bytes, str], PeerHealth]:
        """How a peer is doing at `now`, by id, given why it is in its state (`Node.health`)."""
        tracked = self.detector.snapshot(now)

        def of(peer_id: bytes, reason: str) -> PeerHealth:
            status = tracked.get(peer_id)
            beats = self.beats.get(peer_id)
            return PeerHealth(
                last_heard=0.0 if status is None else max(0.0, now - status.last_heard),
                phi=0.0 if status is None else status.phi,
                reason=reason,
                load=None if beats is None else beats.load,
                rtt=None if beats is None else beats.rtt,
            )

        return of

    def joined(self, record: PeerRecord, now: float) -> None:
        """A peer joined: probed from now, and judged from now if this node watches it (its
        first heartbeat has some grace)."""
        self._records[record.id] = record
        for unwatched in self.gossip.joined(record, now):  # the mesh outgrew watching all
            self.detector.remove(unwatched)
        if self.gossip.watches(record.id):
            self.detector.joined(record.id, now)
        self._liveness_changed.unpark_all()

    def work_with(self, service: str, peer_ids: Iterable[bytes]) -> None:
        """This node pushes to `service`, which these peers offer: watch them, and the peers
        that offer it later."""
        self._watch(self.gossip.work_with(service, peer_ids))

    def updated(self, record: PeerRecord) -> None:
        """A peer's record changed: watch it if it now offers a service this node pushes to."""
        self._watch(self.gossip.offers(record))

    def _watch(self, peer_ids: Iterable[bytes]) -> None:
        now = trio.current_time()
        for peer_id in peer_ids:
            self.detector.joined(peer_id, now)
        self._liveness_changed.unpark_all()

    def wired(self, peer_id: bytes, now: float) -> None:
        """A peer said READY: its heartbeats start now."""
        self._ready.add(peer_id)
        self.detector.wired(peer_id, now)
        self.reschedule_judge()

    def disconnected(self, peer_id: bytes, now: float) -> None:
        """The connection to a peer's PUB dropped: a hint that it crashed. Its heartbeat port
        is probed at once with a copy of the last beat: if nothing listens there any more, the
        refusal comes back within a millisecond on a LAN, and the peer is dead at once."""
        self._judged(self.detector.disconnected(peer_id, now))
        self.gossip.disconnected(peer_id, now)
        record = self._records.get(peer_id)
        if record is None or not self.count:
            return
        # (A peer not heard yet gets a probe numbered afresh, as a peer met again does.)
        beats = self.beats.get(peer_id) or PeerBeats(self._interval)
        route = self.udp.route(record)
        if route is not None:
            load = self._wiring.load()
            self._send_datagrams([(beats, *route, peer_id)], self.count, load, self._credit, now)
            self._probe_checks.extend(now + wait for wait in PROBE_CHECKS)
            self.reschedule_judge()
        self._liveness_changed.unpark_all()

    def forget(self, peer_id: bytes) -> None:
        """A peer is gone: stop judging it, and forget its beats."""
        self.detector.remove(peer_id)
        self.gossip.forget(peer_id)
        self._records.pop(peer_id, None)
        self._ready.discard(peer_id)
        self.beats.pop(peer_id, None)
        if self._keys is not None:
            self._keys.forget(peer_id)

    def ready_body(self, peer_id: bytes) -> dict[str, bytes] | None:
        """What this node's READY to a peer carries: a keyed node's the key of the MACs on its
        datagrams to that peer."""
        return None if self._keys is None else {"beat": self._keys.given(peer_id)}

    def on_ready(self, peer_id: bytes, beat_key: bytes | None) -> None:
        """A peer said READY (with the key of its datagrams' MACs, if keyed)."""
        if self._keys is not None and beat_key is not None:
            self._keys.take(peer_id, beat_key)

    def _judged(self, transitions: Sequence[Transition]) -> None:
        """The detector's verdicts, to the node; a death is told to the mesh too (a rumour)."""
        if transitions:
            self._wiring.verdicts(transitions)
            for transition in transitions:
                if transition.new is Liveness.DEAD:
                    self.gossip.accuse(transition.peer, trio.current_time())

    def _send_probe(self, peer_id: bytes, datagram: bytes) -> None:
        """A PROBE datagram to a peer's heartbeat port (signed for it, if keyed)."""
        record = self._records.get(peer_id)
        route = None if record is None else self.udp.route(record)
        if route is None:
            return
        if self._keys is not None:
            datagram = self._keys.sign(datagram, peer_id)
        self.udp.send(route, datagram, trio.current_time(), "probe")

    def close(self) -> None:
        """Close the control SUB (the node's context closes the rest of ZeroMQ) and the UDP
        sockets."""
        self._control.close()
        self.udp.close()

    async def serve(self) -> None:
        """Send this node's heartbeats and take in its peers' (datagrams, and the control SUB's
        heartbeats and goodbyes), in one loop that wakes once an interval on a clean network,
        however many peers there are. It never waits on the UDP sockets' or the control SUB's
        FDs: it reads what they hold when it wakes, and so does the liveness judge before each
        verdict (`take`).

        Every `heartbeat_interval`, a numbered heartbeat goes on two independent paths: the PUB
        (to every peer at once; only one beat in `PUBLISHED_BEAT_EVERY` while every peer echoes
        this node's datagrams lately) and a UDP datagram to each peer's inbox port. Each path
        can fail alone: the PUB stalls behind a full subscriber (backpressure) and, like any
        TCP connection, for its retransmission back-off (0.2 s, then doubling) when packets are
        lost; a datagram is only ever lost, never late. Peers keep the first copy of each
        number. Datagrams go only to peers that send heartbeats themselves (nodes, not
        third-party tools), as many copies as each asked for (one on a clean network,
        `DATAGRAM_COPIES` spread over the interval after a loss: only then does the loop wake
        more than once a beat), and each carries the echo of that peer's last beat, from which
        the peer learns its round trip (docs/protocol.md §11). When each goes, and where, is
        `BeatPlan`'s decision (mesh/_beatplan.py); this loop reads, sends and sleeps.

        Leaving the PUB copy out of all but one beat in `PUBLISHED_BEAT_EVERY` while datagrams
        reach every peer saves a TCP frame to and from every peer, in both ZeroMQ I/O threads
        and in the reader: most of what was left of an idle node's cost. A peer that does not
        echo (a new one, one that datagrams do not reach, a third-party tool, one dying) gets
        every beat on the PUB again, from the next beat on.

        Reading once a beat rather than at each arrival (one wake-up per datagram) or at fixed
        short steps (six wake-ups a beat, the largest idle cost of a node: about 0.3 ms of CPU
        per trio wake-up here, docs/performance.md) costs no accuracy: a datagram's arrival
        time is the kernel's, and the judge reads before it rules. A beat that came only by the
        PUB is dated when read, up to an interval late; a revival is seen as late."""
        credit = self._credit
        wake = trio.current_time()
        plan: BeatPlan[_Route] = BeatPlan(self._interval, wake)
        load = 0
        while True:
            now = trio.current_time()
            # How late this loop woke: a node starved of CPU is told so every beat, and gives its
            # peers as much more time (they are likely starved too: `FailureDetector.lagged`).
            self.detector.lagged(now, now - wake)
            self.take()
            now = trio.current_time()
            # (A node that watches only some peers publishes a beat only for one that its
            # datagrams do not reach: the PUB goes to every peer, whom it does not watch.)
            plan.publish_every = PUBLISHED_BEAT_EVERY if self.gossip.watch_all else 0
            step = plan.next(now, self._beat_peers())
            if step.copy == 0:
                self.count = step.number
                load = self._wiring.load()
                if step.publish:
                    body = beat_body(
                        step.number,
                        sent=now,
                        load=load,
                        credit=credit,
                        record=self._wiring.record_digest(),
                    )
                    self._wiring.publish_beat(body)
            # Datagrams are their own stream, numbered by the heartbeat (protocol §5): a lost
            # copy costs a beat only if every copy is lost.
            self._send_datagrams(step.to, step.number, load, credit, now)
            wake = step.wake
            await trio.sleep_until(wake)

    def _beat_peers(self) -> Iterator[BeatPeer[_Route]]:
        """The peers as the beat plan sees them, found when a beat is due (a peer gone
        meanwhile costs a datagram nobody reads; one first heard meanwhile waits a beat).
        Datagrams go only to peers that send heartbeats themselves (nodes, not third-party
        tools)."""
        beats, records, ready = self.beats, self._records, self._ready
        for peer_id in self.gossip.beat_targets(trio.current_time()):
            record = records.get(peer_id)
            peer_beats = beats.get(peer_id)
            if peer_beats is None and peer_id in ready:  # a node that has not beaten yet
                peer_beats = beats[peer_id] = PeerBeats(self._interval)
            if peer_beats is None or record is None:
                yield BeatPeer(-math.inf, None, 0)
                continue
            takes = peer_beats.heard or peer_id in ready
            route = self.udp.route(record) if takes else None
            yield BeatPeer(
                peer_beats.echoed,
                None if route is None else (peer_beats, *route, record.id),
                peer_beats.wanted,
            )

    def take(self) -> None:
        """Take in what the UDP sockets and the control SUB hold (no task waits on them)."""
        self._take_datagrams()
        self._take_control()
        self.reschedule_judge()

    def _send_datagrams(
        self, targets: Sequence[_Route], number: int, load: int, credit: int | None, now: float
    ) -> None:
        """A copy of heartbeat `number` to each target, with the echo of that peer's last beat,
        the datagram's number, the copies asked of that peer, and whether this node watches it."""
        head = _wire.envelope_head(Kind.HEARTBEAT, self._id, number)
        datagrams = BeatDatagrams(
            head, number, sent=now, load=load, credit=credit, record=self._wiring.record_digest()
        )
        keys, watches, send = self._keys, self.gossip.watches, self.udp.send
        for beats, sock, destination, peer_id in targets:
            datagram = datagrams.for_peer(*beats.next_datagram(now), watches(peer_id))
            if keys is not None:
                datagram = keys.sign(datagram, peer_id)
            send((sock, destination), datagram, now, "heartbeat")

    def _take_datagrams(self) -> None:
        """Read every datagram the UDP sockets hold, each decoded in full (copies too: their
        numbers count losses), and counted if bad."""
        for datagram, arrival, source in self.udp.receive():
            self._on_datagram(datagram, arrival, source)

    def _refused(self, host: str, port: int, now: float) -> None:
        for record in self._records.values():
            if record.pull_port == port and host in record.hosts:
                self._judged(self.detector.refused(record.id, now))
                self.gossip.refused(record.id, now)

    def _on_datagram(self, datagram: bytes, arrival: float, source: str) -> None:
        """A datagram from the host `source`. A peer's counts only from one of its own hosts:
        anyone can send a datagram under any id, but not from another's address (beyond the
        machine itself, or the link)."""
        try:
            if self._keys is None:
                envelope = _wire.decode_datagram(datagram)
            else:
                body, mac = datagram[:-MAC_SIZE], datagram[-MAC_SIZE:]
                envelope = _wire.decode_datagram(body)
                if not self._keys.verify(envelope.sender, body, mac):
                    if self._keys.knows(envelope.sender):
                        raise ProtocolError("mac", "a heartbeat datagram whose MAC does not check")
                    # No key from that node: a new peer's (the key is in its READY, on its way),
                    # or a node that is no peer, as an open node's datagram from it would be.
                    if not self._wiring.is_peer(envelope.sender):
                        self._wiring.stranger(envelope.sender)  # a forgotten peer back, maybe
                    return
            hosts = self._wiring.hosts_of(envelope.sender)
            if hosts is not None and source.partition("%")[0] not in hosts:
                raise ProtocolError("source", f"a peer's heartbeat from {source}, not its host")
        except ProtocolError as exc:
            self._wiring.bad_frame(exc, "heartbeat socket")
            return
        if envelope.kind is Kind.PROBE:
            self._counts["probe_datagrams"] += 1
            try:
                self.gossip.on_probe(envelope, arrival)
            except ProtocolError as exc:
                self._wiring.bad_frame(exc, "heartbeat socket")
            return
        self._counts["heartbeat_datagrams"] += 1
        self._on_heartbeat(envelope.sender, read_beat(envelope.body), arrival, by_datagram=True)

    def _on_heartbeat(
        self,
        sender: bytes,
        beat: Beat | None,
        arrival: float | None = None,
        *,
        by_datagram: bool = False,
    ) -> None:
        """A heartbeat by any path (PUB, datagram, or an inbox, where third-party tools and older
        nodes may still send them): the first copy of each number feeds the failure detector
        and tells the peer's load, credit, and the round trip its echo measures; every copy by
        datagram also tells what only datagrams do (`PeerBeats.datagram`). `beat`: its body
        read (None if it has no valid number); `arrival`: when the kernel took it in, if known
        (else now)."""
        if beat is None:
            return
        beats = self.beats.get(sender)
        if beats is None:
            if self._wiring.is_peer(sender):  # its first heartbeat
                beats = self.beats[sender] = PeerBeats(self._interval)
            else:
                self._wiring.stranger(sender)  # a forgotten peer back, maybe
                return
        if by_datagram:
            assert arrival is not None
            beats.datagram(beat, arrival)  # any copy: its arrival time is the kernel's
            self.gossip.watched_by(sender, beat.watching, arrival)
        if arrival is None:
            arrival = trio.current_time()
        try:
            if not beats.take(beat, arrival):
                return  # a copy that came another way, or later
        except ProtocolError as exc:
            self._wiring.bad_frame(exc, "heartbeat socket" if by_datagram else "heartbeat")
            return
        if beat.echo is not None:
            sample = round_trip_sample(beat.echo, arrival)
            if sample is not None:
                self.rtt.observe(sample)
        if beat.credit is not None:
            self._wiring.set_credit(sender, beat.credit)
        if beat.record is not None:
            self._wiring.check_record(sender, beats, beat.record, arrival)
        if not self.gossip.watches(sender):
            return  # (a PUB beat, or beats it sends because it watches this node)
        transitions = self.detector.heartbeat(sender, arrival)
        if transitions:
            self._judged(transitions)
            self._liveness_changed.unpark_all()

    def on_inbox_heartbeat(self, envelope: Envelope) -> None:
        self._on_heartbeat(envelope.sender, read_beat(envelope.body))
        self.reschedule_judge()

    def reschedule_judge(self) -> None:
        """Set the judge's next tick to the detector's next deadline, after heartbeats were
        taken: later, mostly (it is not woken for nothing: once a heartbeat, or at each stale
        deadline, was a large part of the idle cost), or sooner (a peer new to the detector)."""
        timer = self._judge_timer
        if timer is not None:
            deadline = self.detector.next_deadline()
            timer.deadline = min(
                math.inf if deadline is None else deadline,
                min(self._probe_checks, default=math.inf),
                self.gossip.next_deadline(),
            )

    async def judge(self) -> None:
        """Tick the failure detector when it next needs to, telling it how late the tick runs
        (a late tick means this node itself stalled, and its peers are not to blame)."""
        while True:
            with trio.CancelScope() as timer:
                self._judge_timer = timer
                self.reschedule_judge()  # its deadline, moved again after each read
                await self._liveness_changed.park()  # woken by transitions from elsewhere
            self._judge_timer = None
            if timer.cancelled_caught:
                now = trio.current_time()
                lateness = max(0.0, now - timer.deadline)
                self.take()  # beats (and refusals) that came since the heartbeat loop last read
                self._probe_checks = [at for at in self._probe_checks if at > now]
                self._judged(self.detector.tick(now, lateness=lateness))
                self.gossip.tick(now, lateness)

    def _take_control(self) -> None:
        """Read every frame the control SUB holds: peers' PUB heartbeats and goodbyes, decoded
        whole (a beat's number is in its body; the envelope's `seq` numbers the peer's PUB
        stream). The SUB's only reader (`take`)."""
        for _ in range(self._receive_batch):
            try:
                frame = self._control.receive_nowait()
            except (zmq.Again, trio.ClosedResourceError):
                return
            self._bytes_in["control"] += len(frame)
            try:
                envelopes = _wire.decode_published_many(frame)
            except ProtocolError as exc:
                self._wiring.bad_frame(exc, "control")
                continue
            for envelope in envelopes:
                if envelope.kind is Kind.BYE:
                    self._wiring.published_bye(envelope)
                elif envelope.kind is Kind.DROPPED:
                    self._wiring.published_dropped(envelope)
                else:
                    self._on_heartbeat(envelope.sender, read_beat(envelope.body))

    def control_op(self, op: SocketOp) -> None:
        """Connect or disconnect the control SUB now. Safe from any task, as no task waits on
        its FD (a waiter could miss the edge such a call consumes)."""
        if not self._control.closed:
            op(self._control_socket)
