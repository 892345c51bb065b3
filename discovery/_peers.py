"""The peer map: who this node knows, as pure state. No IO, no clock: callers pass `now`.

Rules:

* A peer is known by its id. The node itself is never in its own map.
* Only peers of this node's mesh are admitted; a record for another mesh is refused.
* A peer's addresses and key are its for life (a node that restarts has a new id): a record
  under a known id that changes them is refused, since it would redirect the peer's traffic.
* One inbox address (host and PULL port) belongs to one peer at a time: a record with a new id at
  an address already in the map means that node restarted, so the old peer leaves ("replaced")
  before the new one joins; but only once the old peer is suspected or dead. While it is alive
  the record is refused: anyone can claim an address, and a live peer's is not for the taking
  (a restarted node is taken when it asks again, its old self dead by then). A node bound to
  several interfaces has an address on each.
* Every change is returned as events (`PeerJoined`, `PeerUpdated`, `PeerStateChanged`,
  `PeerLeft`), in order, for the caller to act on (wire or unwire sockets, tell the application).
* A peer's state (alive, suspect, dead) is the failure detector's verdict, set with `set_state`;
  the map only records it.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass

from ._record import PeerRecord


class PeerState(enum.Enum):
    """Where a peer stands, as this node's failure detector judges it."""

    ALIVE = "alive"
    SUSPECT = "suspect"  # late or disconnected: no new work for now
    DEAD = "dead"  # silent too long: no new work; forgotten later unless it comes back


@dataclass(frozen=True, slots=True)
class Peer:
    """A known peer: its latest record, its state, and when it joined (node clock, seconds)."""

    record: PeerRecord
    state: PeerState
    since: float

    @property
    def id(self) -> str:
        """The peer's id as 32 hex digits."""
        return self.record.id_hex

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def address(self) -> str:
        return self.record.address

    @property
    def services(self) -> frozenset[str]:
        return self.record.services


@dataclass(frozen=True, slots=True)
class PeerJoined:
    peer: Peer


@dataclass(frozen=True, slots=True)
class PeerUpdated:
    peer: Peer
    previous: PeerRecord


@dataclass(frozen=True, slots=True)
class PeerLeft:
    peer: Peer
    reason: str


@dataclass(frozen=True, slots=True)
class PeerStateChanged:
    """The peer's state changed (`peer.state` is the new one); `reason` says on what evidence."""

    peer: Peer
    previous: PeerState
    reason: str


PeerEvent = PeerJoined | PeerUpdated | PeerLeft | PeerStateChanged


class ForeignMeshError(ValueError):
    """A record of another mesh was offered to the map."""


class PeerLimitError(ValueError):
    """A new peer was offered to a map that holds all the peers it may."""


class AddressTakenError(ValueError):
    """A record claims an inbox address that a live peer holds."""


def _fixed(record: PeerRecord) -> tuple[object, ...]:
    """What a node keeps for its life: where it is reached, and its key."""
    return (record.hosts, record.pub_port, record.pull_port, record.public_key)


class PeerMap:
    """The peers one node knows, indexed by id, inbox address and service; at most `max_peers`
    of them (None: no limit)."""

    def __init__(self, own_id: bytes, mesh: str, max_peers: int | None = None) -> None:
        self._own_id = own_id
        self._mesh = mesh
        self._max_peers = max_peers
        self._peers: dict[bytes, Peer] = {}
        self._by_address: dict[str, bytes] = {}
        self._by_service: dict[str, dict[bytes, None]] = {}  # dict as an ordered set

    def observe(self, record: PeerRecord, now: float) -> list[PeerEvent]:
        """Take in a record heard from the network. Returns what changed.

        Raises `ForeignMeshError` for a record of another mesh, `PeerLimitError` for a new peer
        when the map holds `max_peers` already (unless the record takes the place of a peer at
        one of its addresses: a node restarted there), `AddressTakenError` for a record at an
        inbox address another peer holds while that peer is alive (a node restarted there takes
        it once its old self is suspected or dead: until then the claim may be anyone's), or
        for a known peer's record with other addresses or another key (a node keeps both for
        its life; one that moves or changes its key has a new id).
        """
        if record.mesh != self._mesh:
            raise ForeignMeshError(f"record of mesh {record.mesh!r}, this is {self._mesh!r}")
        if record.id == self._own_id:
            return []
        known = self._peers.get(record.id)
        if known is not None and known.record == record:
            return []
        if known is not None and _fixed(known.record) != _fixed(record):
            raise AddressTakenError(f"{known.record.name}'s addresses and key do not change")
        if (
            known is None
            and self._max_peers is not None
            and len(self._peers) >= self._max_peers
            and not any(address in self._by_address for address in record.addresses)
        ):
            raise PeerLimitError(f"this node holds {len(self._peers)} peers, all it may")
        holders: list[Peer] = []
        for address in record.addresses:
            holder = self._by_address.get(address)
            if holder is not None and holder != record.id:
                peer = self._peers[holder]
                if peer.state is PeerState.ALIVE:
                    raise AddressTakenError(f"{address} is {peer.record.name}'s, alive")
                if peer not in holders:
                    holders.append(peer)
        events: list[PeerEvent] = []
        for holder_peer in holders:
            events.extend(self.remove(holder_peer.record.id, "replaced"))
        if known is not None:
            # Unindex only what changed, so a service kept keeps its place in `offering`.
            self._unindex(known.record, keep=record)
            peer = Peer(record, known.state, known.since)
            events.append(PeerUpdated(peer, known.record))
        else:
            peer = Peer(record, PeerState.ALIVE, now)
            events.append(PeerJoined(peer))
        self._peers[record.id] = peer
        self._index(record)
        return events

    def set_state(
        self, peer_id: bytes, state: PeerState, reason: str, now: float
    ) -> list[PeerEvent]:
        """Record what the failure detector concluded. Unknown ids and no-ops are ignored."""
        peer = self._peers.get(peer_id)
        if peer is None or peer.state is state:
            return []
        changed = Peer(peer.record, state, peer.since)
        self._peers[peer_id] = changed
        return [PeerStateChanged(changed, peer.state, reason)]

    def remove(self, peer_id: bytes, reason: str) -> list[PeerEvent]:
        """Forget a peer (it said goodbye, or was replaced). Unknown ids are ignored."""
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            return []
        self._unindex(peer.record)
        return [PeerLeft(peer, reason)]

    def get(self, peer_id: bytes) -> Peer | None:
        return self._peers.get(peer_id)

    def by_address(self, address: str) -> Peer | None:
        peer_id = self._by_address.get(address)
        return None if peer_id is None else self._peers[peer_id]

    def offering(self, service: str) -> list[bytes]:
        """Ids of the peers that offer `service`, in the order they started offering it."""
        return list(self._by_service.get(service, ()))

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers

    def __iter__(self) -> Iterator[Peer]:
        return iter(list(self._peers.values()))

    def __len__(self) -> int:
        return len(self._peers)

    def _index(self, record: PeerRecord) -> None:
        for address in record.addresses:
            self._by_address[address] = record.id
        for service in record.services:
            self._by_service.setdefault(service, {}).setdefault(record.id, None)

    def _unindex(self, record: PeerRecord, keep: PeerRecord | None = None) -> None:
        """Remove `record` from the indexes, except the entries `keep` (its successor) shares."""
        kept_addresses = () if keep is None else keep.addresses
        for address in record.addresses:
            if self._by_address.get(address) == record.id and address not in kept_addresses:
                del self._by_address[address]
        kept = frozenset() if keep is None else keep.services
        for service in record.services - kept:
            holders = self._by_service.get(service)
            if holders is not None:
                holders.pop(record.id, None)
                if not holders:
                    del self._by_service[service]
