"""Membership: who this node's peers are, and keeping the node wired to them.

Rules:

* A peer is made only by the HELLO exchange (HELLO, answered by WELCOME; each carries the
  sender's record and the inbox addresses of the peers it knows, which are greeted in turn).
  Seeds and mDNS only say where to say HELLO (`Introductions`). A record's later changes come
  by UPDATE, or by a WELCOME asked for when a peer's heartbeats tell of a record this node does
  not hold.
* A peer leaves by its goodbye: BYE in the inbox ends it at once (it came after everything else
  the peer sent there); a BYE on the PUB, which may overtake the peer's last acks, only stops new
  work until the inbox BYE or a grace period. Or it dies (the failure detector's verdicts,
  `apply_liveness`): dead, it gets no new work and its tasks are taken back; forgotten, it is
  removed, and its address kept to greet it if it comes back.
* What the peer map decides is carried out at once (`_apply`): links opened and closed, the SUBs
  connected and disconnected, the detector told, watchers told.
* A peer counts for `wait_for_peers` once it has said READY (its subscriptions are live here);
  this node says READY to a peer once its own subscriptions are live there (`_greet`), and says
  HELLO again, at growing intervals, to a peer that has not said READY.
* All that is known of a peer beyond its record is its `Session` (mesh/_sessions.py), which goes
  when it goes; which of its addresses to use is `Addresses`' choice (mesh/_addresses.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import trio

from discovery import (
    AddressTakenError,
    ForeignMeshError,
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerLimitError,
    PeerMap,
    PeerRecord,
    PeerState,
    PeerUpdated,
    format_contact,
    parse_contact,
)

from . import _batches, _peerlog, _wire
from ._addresses import Addresses
from ._detector import Liveness, Transition
from ._errors import MissingPeersError, PeerUnreachableError
from ._events import Subscriptions, connect_op, disconnect_op
from ._heartbeat import PeerBeats, record_digest
from ._heartbeats import Heartbeats
from ._hello import Hello
from ._links import Link, Links
from ._members import Members
from ._metrics import PeerStatistics
from ._producer import ProducerSide, Route
from ._ratelimit import RateLimitedLog, TokenBucket
from ._sessions import Sessions
from ._streams import PeerWatch
from ._types import Settings
from ._wire import Envelope, Kind

logger = logging.getLogger("mesh")

# A peer that has not said READY this long after it joined is said HELLO again, then at doubling
# intervals up to the last (seconds): on a loaded 2-core machine a 32-node mesh takes 4 to 10 s
# to wire fully, so the first HELLOs again are often redundant, and harmless.
_READY_WAIT_FIRST: Final = 3.0
_READY_WAIT_LAST: Final = 60.0
#: New peers taken a second on average, and at once: a mesh of a few hundred nodes forms at this
#: rate; a HELLO flood from new ids costs no more.
JOIN_RATE: Final = 50.0
JOIN_BURST: Final = 256
# How long a dropped connection waits for a goodbye that may be on its way (see `Links`), and a
# goodbye on the PUB for the inbox's (added to `Settings.goodbye_timeout`).
GOODBYE_GRACE: Final = 0.02

_PEER_STATES: Final = {
    Liveness.ALIVE: PeerState.ALIVE,
    Liveness.SUSPECT: PeerState.SUSPECT,
    Liveness.DEAD: PeerState.DEAD,
}


class Membership:
    """This node's peers and its wiring to them (see the module's rules)."""

    def __init__(
        self,
        record: PeerRecord,
        settings: Settings,
        addresses: Addresses,
        *,
        max_peers: int,
        counts: dict[str, int],
        links: Links,
        events: Subscriptions,
        heartbeats: Heartbeats,
        producer: ProducerSide,
        advertise: Callable[[PeerRecord], None],
        heard_of: Callable[[Iterable[str]], None],
        check_open: Callable[[], None],
        closing: Callable[[], bool],
        log: RateLimitedLog,
        members: Members | None = None,
    ) -> None:
        self._record = record
        self.record_digest = record_digest(record)  # what heartbeats say of it (`rec`)
        self._id = record.id
        self._settings = settings
        self._addresses = addresses
        self._counts = counts
        self._links = links
        self._events = events
        self._heartbeats = heartbeats
        self._producer = producer
        self._advertise = advertise
        self._heard_of = heard_of
        self._check_open = check_open
        self._closing = closing
        self._log = log
        self._members = members
        self._peers = PeerMap(record.id, record.mesh, max_peers)
        #: Unparked at every change of the peers (joined, left, updated, ready, state).
        self.changed = trio.lowlevel.ParkingLot()
        self._watchers: list[PeerWatch] = []
        self._nursery: trio.Nursery | None = None
        self.sessions = Sessions(settings.goodbye_timeout + GOODBYE_GRACE)
        self._joins = TokenBucket(JOIN_RATE, JOIN_BURST)

    @property
    def record(self) -> PeerRecord:
        """What this node tells its peers about itself."""
        return self._record

    @property
    def peers(self) -> PeerMap:
        return self._peers

    def start(self, nursery: trio.Nursery) -> None:
        """Greetings and waits run in `nursery` from now on."""
        self._nursery = nursery

    def stranger(self, node_id: bytes) -> None:
        """A heartbeat from a node that is not a peer: one forgotten while it was frozen, now
        back, is said HELLO again, once."""
        if (address := self.sessions.returned(node_id)) is not None:
            self.introduce(address, again=True)

    def goodbye(self) -> None:
        """The node is leaving: BYE to each peer's inbox."""
        for peer in self._peers:
            self._links.send(self.reach(peer.record), Kind.BYE, None, None)

    def end(self) -> None:
        """The node has closed: watchers end, waiters wake (and find it closed)."""
        for watch in list(self._watchers):
            watch._end()
        self.changed.unpark_all()

    async def connect(self, address: str, *, timeout: float | None = None) -> Peer:
        """`Node.connect`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        address, key = parse_contact(address)
        if address in self._record.addresses:
            raise ValueError("a node cannot connect to itself")
        if self._members is not None and not self._members.learn(address, key):
            why = "not on this node's allow list" if key else f"needed: give KEY@{address}"
            raise ValueError(f"this node is keyed: the node's key is {why}")
        timeout = self._settings.connect_timeout if timeout is None else timeout
        self.introduce(address, ask=True)
        with trio.move_on_after(timeout):
            while (peer := self._peers.by_address(address)) is None:
                await self.changed.park()
            return peer
        raise PeerUnreachableError(address, timeout)

    async def wait_for_peers(
        self,
        count: int | None = None,
        *,
        names: Iterable[str] = (),
        service: str | None = None,
        timeout: float = math.inf,
    ) -> list[Peer]:
        """`Node.wait_for_peers`."""
        await trio.lowlevel.checkpoint_if_cancelled()
        self._check_open()
        wanted = set(names)
        count = (0 if wanted else 1) if count is None else count
        deadline = trio.current_time() + timeout
        with trio.move_on_at(deadline):
            while (missing := self._missing(count, wanted, service)) is not None:
                await self.changed.park()
                self._check_open()
            peers = self._counted(service)
            await self._events.sync(self._events.prefixes(), [peer.record.id for peer in peers])
            return peers
        raise MissingPeersError(missing or "subscriptions not confirmed", timeout)

    def watch(self) -> PeerWatch:
        """`Node.watch_peers`."""
        self._check_open()
        watch = PeerWatch(self._settings.subscription_buffer, self._watchers.remove)
        self._watchers.append(watch)
        return watch

    def check_record(self, sender: bytes, beats: PeerBeats, digest: bytes, now: float) -> None:
        """A peer's beat tells the digest of its record: if the record held here has differed
        from it for a while, an UPDATE went missing (dropped by a full outbox, say), so say
        HELLO again: its WELCOME brings the record (docs/protocol.md §11)."""
        peer = self._peers.get(sender)
        if peer is not None and beats.record_differs(peer.record, digest, now):
            logger.info(
                "%s's heartbeats tell of a record this node does not hold; asking for it",
                peer.record.name,
            )
            self.introduce(self.reach(peer.record), again=True)

    def apply_liveness(self, transitions: Sequence[Transition]) -> None:
        now = trio.current_time()
        for transition in transitions:
            self._log_state(transition, now)
            if transition.new is Liveness.FORGOTTEN:
                peer = self._peers.get(transition.peer)
                if peer is not None:
                    self.sessions.forgot(transition.peer, self.reach(peer.record))
                self._apply(self._peers.remove(transition.peer, "dead"))
            elif transition.new is not Liveness.LEFT:
                state = _PEER_STATES[transition.new]
                if (session := self.sessions.get(transition.peer)) is not None:
                    session.reason = transition.reason
                self._apply(self._peers.set_state(transition.peer, state, transition.reason, now))
                if state is PeerState.DEAD:
                    self.reclaim(transition.peer)

    def _log_state(self, transition: Transition, now: float) -> None:
        """Log a liveness change of a known peer (INFO, with its evidence)."""
        peer = self._peers.get(transition.peer) if logger.isEnabledFor(logging.INFO) else None
        line = None if peer is None else _peerlog.state_changed(peer.record, transition, now)
        if line is not None:
            _log_peer(line)

    def reclaim(self, worker: bytes) -> None:
        """A worker died: what it held unacked, and the tasks still waiting in its outbox, go to
        other workers (if it comes back and acks some of them too, at-least-once allows it).
        The rest of its outbox stays: a death can be wrong (the peer may be only slow, as when
        a loaded mesh forms), and a WELCOME or READY dropped here would not be sent again."""
        link = self.link_of(worker)
        if link is not None:
            link.outbox.discard(_is_task)
        self._producer.forget_worker(worker, "worker dead")

    def on_hello(self, envelope: Envelope) -> None:
        hello = envelope.body
        assert isinstance(hello, Hello)
        known = envelope.sender in self._peers
        if not self._observe(hello.record):
            return
        if (session := self.sessions.get(envelope.sender)) is not None:
            session.batching, session.tickets = hello.batch, hello.tickets
        link = self._links.find(self.reach(hello.record))
        if link is not None:
            link.outbox.coalesce = _batches.coalesce_direct if hello.batch else None
        if envelope.kind is Kind.HELLO:  # (its peers listed only if asked: protocol.md §8)
            welcome = self._hello(hello.ask is not False).to_wire()
            self._links.send(self.reach(hello.record), Kind.WELCOME, None, welcome)
            if known and not hello.ask and self._nursery and not self._closing():  # READY lost?
                self._nursery.start_soon(self._greet, envelope.sender)
        elif self._record.services:
            # Our HELLO may have left before a service was offered, and the UPDATE for it went
            # only to peers known then: make sure this one has our current record.
            self._links.send(self.reach(hello.record), Kind.UPDATE, None, self._record.to_wire())
        self._heard_of(hello.peers)

    def on_update(self, envelope: Envelope) -> None:
        assert isinstance(envelope.body, PeerRecord)
        if envelope.sender in self._peers:
            self._observe(envelope.body)

    def on_bye(self, envelope: Envelope) -> None:
        """A goodbye in the inbox: it came after everything else the peer sent here (acks,
        nacks), on the same connection, so the peer can go at once, if its PUB said goodbye too
        (`Sessions.goodbye_in_inbox`: an inbox message may be anyone's)."""
        if self.sessions.goodbye_in_inbox(envelope.sender):
            self._apply(self._peers.remove(envelope.sender, "goodbye"))
        else:
            self._heartbeats.take()  # its PUB goodbye left first: take it now if it is here

    def on_published_bye(self, envelope: Envelope) -> None:
        """A goodbye on the PUB may overtake the peer's last acks, which travel on the inbox
        connection: taking its tasks back now would send done work again. So it gets no new
        work at once, and goes when its inbox goodbye arrives, or after a grace period (the
        time a leaving node gives its last messages) for a peer that sends none."""
        now = trio.current_time()
        deadline = self.sessions.said_goodbye(envelope.sender, now)
        if deadline is None:
            return
        if deadline <= now:  # its inbox goodbye came first
            self._apply(self._peers.remove(envelope.sender, "goodbye"))
            return
        self._producer.capacity_changed()
        if self._nursery is not None and not self._closing():
            self._nursery.start_soon(self._remove_leaving, deadline)

    async def _remove_leaving(self, deadline: float) -> None:
        await trio.sleep_until(deadline)
        for peer_id in self.sessions.overdue(trio.current_time()):
            self._apply(self._peers.remove(peer_id, "goodbye"))

    def on_ready(self, envelope: Envelope) -> None:
        if (session := self.sessions.get(envelope.sender)) is not None:
            session.ready = True
            self._heartbeats.on_ready(envelope.sender, envelope.body)
            self.changed.unpark_all()
            # Its heartbeats start now: a death from here on is judged as any other.
            self._heartbeats.wired(envelope.sender, trio.current_time())

    def probe(self, peer_id: bytes, token: int, prefix: str, ticket: bytes) -> bool:
        """Send a TICKET (a SYNC for `prefix` if its HELLO did not take them) to a known peer;
        False if it is gone."""
        if (peer := self._peers.get(peer_id)) is None:
            return False
        tickets = (session := self.sessions.get(peer_id)) is not None and session.tickets
        kind, meta = (Kind.TICKET, [token, ticket]) if tickets else (Kind.SYNC, [token, prefix])
        self._links.send(self.reach(peer.record), kind, meta, None)
        return True

    def _observe(self, record: PeerRecord, *, paid: bool = False) -> bool:
        """Take in a record; False if refused (logged; counted unless foreign). `paid`: its
        join token is spent (taken in again once room was made)."""
        now = trio.current_time()
        if self._members is not None and (why := self._members.refuses(record)):
            return self._refuse(record, why, now)
        if not paid and record.id not in self._peers and not self._joins.take(now):
            # New peers cost links, connections and heartbeats: a flood of HELLOs from new ids
            # is taken at a bounded rate (a node refused is told again by other peers).
            return self._refuse(record, "too many new peers at once", now)
        try:
            events = self._peers.observe(record, now)
        except ForeignMeshError:
            mesh = self._record.mesh
            why = f"it belongs to mesh {record.mesh!r}, this node to {mesh!r}"
            self._log.warning("foreign-mesh", now, "ignoring node %s: %s", record.name, why)
            return False
        except AddressTakenError as exc:
            return self._refuse(record, str(exc), now)
        except PeerLimitError as exc:
            # A full node drops the oldest peer that never said READY: forged HELLOs must not
            # keep out the members, who say READY within moments of joining.
            crowded = self.sessions.oldest_unready()
            if crowded is None:
                return self._refuse(record, str(exc), now)
            self._apply(self._peers.remove(crowded, "crowded out"))
            return self._observe(record, paid=True)
        self._apply(events)
        return True

    def _refuse(self, record: PeerRecord, why: str, now: float) -> bool:
        self._counts["peers_refused"] += 1
        self._log.warning(
            "refused", now, "refused node %s at %s: %s", record.name, record.address, why
        )
        return False

    def _apply(self, events: Sequence[PeerEvent]) -> None:
        """Carry out what the peer map decided: wire, rewire or unwire sockets; tell watchers."""
        for event in events:
            for watcher in self._watchers:
                watcher._offer(event)
            if isinstance(event, PeerJoined):
                record = event.peer.record
                self.sessions.open(record.id)
                key, pub = record.public_key, self._addresses.pub_endpoint(record)
                self._links.open(self.reach(record), key)
                self._events.connect(pub, key, record.id)
                self._heartbeats.control_op(connect_op(pub, key))
                if self._nursery is not None and not self._closing():
                    self._nursery.start_soon(self._greet, record.id)
                    self._nursery.start_soon(self._await_ready, record.id)
                # Joining is its first sign of life: a peer that dies before its first heartbeat
                # arrives is still judged (and one that never sends any is declared dead), with
                # time for its heartbeats to start (`first_heartbeat_grace`).
                self._heartbeats.joined(record, trio.current_time())
                _log_peer(_peerlog.joined(record))
            elif isinstance(event, PeerUpdated):
                self._heartbeats.updated(event.peer.record)
            elif isinstance(event, PeerLeft):
                record = event.peer.record
                self.sessions.close(record.id)
                pub = self._addresses.pub_endpoint(record)
                self._events.disconnect_later(pub, self._closing())
                self._heartbeats.control_op(disconnect_op(pub))
                self._heartbeats.forget(record.id)
                self._links.close(self.reach(record))
                self._addresses.forget(record.id)
                self._producer.forget_worker(record.id, event.reason)
                _log_peer(_peerlog.left(record, event.reason))
        self._producer.capacity_changed()
        self.changed.unpark_all()

    def drop_keys(self, keys: frozenset[str]) -> None:
        """Remove the peers whose key is one of `keys` (no longer allowed)."""
        for peer in [p for p in self._peers if p.record.public_key in keys]:
            self._apply(self._peers.remove(peer.record.id, "key no longer allowed"))

    def reach(self, record: PeerRecord) -> str:
        """The peer's inbox address to use from here (`Addresses.inbox`)."""
        return self._addresses.inbox(record)

    def on_dropped(self, peer_id: bytes) -> None:
        """A dropped connection to a peer's PUB is a hint that it crashed: the detector
        suspects it almost at once; silence then confirms."""
        self._heartbeats.take()  # the goodbye on the PUB, if that is the way it came
        if peer_id not in self._peers or self.sessions.leaving(peer_id):
            return
        session = self.sessions.get(peer_id)
        if session is not None and session.bye_in_inbox:  # its goodbye, with the proof
            self._apply(self._peers.remove(peer_id, "goodbye"))
        else:
            self._heartbeats.disconnected(peer_id, trio.current_time())

    def introduce(self, address: str, *, again: bool = False, ask: bool = False) -> None:
        """Send HELLO to the inbox at `address`; it is delivered whenever that node is up. Only
        once per link unless `again` (a new node announced itself at a known address). `ask`:
        exchange peer lists (a first contact, or the periodic exchange: protocol.md §8)."""
        if again or address not in self._links:
            self._links.send(address, Kind.HELLO, None, self._hello(ask, ask=ask).to_wire())

    def _hello(self, listed: bool, *, ask: bool | None = None) -> Hello:
        reach, peers = self.reach, self._peers if listed else ()
        known = tuple(format_contact(reach(p.record), p.record.public_key) for p in peers)
        return Hello(self._record, known, batch=True, ask=ask, tickets=True)

    def set_services(self, services: Iterable[str]) -> None:
        self._record = self._record.with_services(services)
        self.record_digest = record_digest(self._record)
        body = self._record.to_wire()
        for peer in self._peers:
            self._links.send(self.reach(peer.record), Kind.UPDATE, None, body)
        self._advertise(self._record)

    def ready_workers(self, service: str) -> dict[bytes, Route]:
        """The live peers offering `service` whose outbox has room, in the order they started
        offering it, each with its link (`Dispatcher.pick` chooses among them)."""
        ready: dict[bytes, Route] = {}  # (on every task sent: the lookups are bound once)
        peers, leaving, inbox = self._peers, self.sessions.leaving_peers, self._addresses.inbox
        find = self._links.find
        if service not in self._heartbeats.gossip.services:  # the first push to it: watch them
            self._heartbeats.work_with(service, peers.offering(service))
        for worker in peers.offering(service):
            peer = peers.get(worker)
            if peer is None or peer.state is not PeerState.ALIVE or worker in leaving:
                continue  # suspect, dead or leaving: no new work
            link = find(inbox(peer.record))
            if link is not None and link.outbox.has_room():
                ready[worker] = link
        return ready

    def peer_rows(self, in_flight: Callable[[bytes], int]) -> list[tuple[str, PeerStatistics]]:
        """Each peer's outbox and the tasks it holds (`in_flight`), by id (hex): what
        `Node.statistics` reports of the peers."""
        rows = []
        for peer in self._peers:
            link = self.link_of(peer.record.id)
            queued = 0 if link is None else len(link.outbox)
            rows.append(
                (peer.id, PeerStatistics(peer.record.name, queued, in_flight(peer.record.id)))
            )
        return rows

    def link_of(self, peer_id: bytes) -> Link | None:
        """The link to a known peer's inbox, if there is one."""
        peer = self._peers.get(peer_id)
        return None if peer is None else self._links.find(self._addresses.inbox(peer.record))

    async def _greet(self, peer_id: bytes) -> None:
        """Make this node's subscriptions live at a new peer, then tell it so (READY): its
        `wait_for_peers` counts this node only then, so its first events are not lost. Also
        when a known peer says HELLO again (it may have missed the READY); once at a time."""
        session = self.sessions.get(peer_id)
        if session is None or session.greeting:
            return
        session.greeting = True
        try:
            self._events.resynced(await self._events.sync(self._events.prefixes(), [peer_id]))
            peer = self._peers.get(peer_id)
            if peer is not None:
                ready = self._heartbeats.ready_body(peer_id)
                self._links.send(self.reach(peer.record), Kind.READY, None, ready)
        finally:
            session.greeting = False

    async def _await_ready(self, peer_id: bytes) -> None:
        """Say HELLO again, at growing intervals, to a peer that has not said READY: it may not
        know this node at all (one lost HELLO or WELCOME, with the mDNS announcement missed,
        left two nodes of a loaded 32-node mesh without each other for good: docs/decisions.md).
        A HELLO makes a peer that does not know this node join it, and one that does greet it
        again (`_on_hello`)."""
        interval = _READY_WAIT_FIRST
        while True:
            with trio.move_on_after(interval):
                while not self.sessions.is_ready(peer_id):
                    if peer_id not in self._peers:
                        return  # gone (and if it comes back, it is awaited afresh)
                    await self.changed.park()
                return
            peer = self._peers.get(peer_id)
            if peer is None:
                return
            logger.debug("no READY from %s after %g s: HELLO again", peer.record.name, interval)
            self.introduce(self.reach(peer.record), again=True)
            interval = min(2 * interval, _READY_WAIT_LAST)

    def _counted(self, service: str | None) -> list[Peer]:
        """The peers `wait_for_peers` counts: ready ones (READY received), offering `service`."""
        return [
            peer
            for peer in self._peers
            if self.sessions.is_ready(peer.record.id)
            and (service is None or service in peer.services)
        ]

    def _missing(self, count: int, names: set[str], service: str | None) -> str | None:
        peers = self._counted(service)
        absent = names - {peer.name for peer in peers}
        offering = "" if service is None else f" offering {service!r}"
        if absent:
            return f"no peer named {', '.join(sorted(absent))}{offering}"
        if len(peers) < count:
            return f"{len(peers)} of {count} peers{offering}"
        return None


def _log_peer(line: _peerlog.PeerLogLine) -> None:
    logger.info("%s", line.message, extra=line.fields)


def _is_task(envelope: bytes) -> bool:
    return _wire.packed_kind(envelope) in (Kind.TASK, Kind.REQUEST)
