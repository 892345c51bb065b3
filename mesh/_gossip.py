"""Which peers a node judges by its own heartbeats, and SWIM for the rest: the probes, their
answers and the rumours they carry, as PROBE datagrams on the heartbeat sockets (the protocol
machine is `mesh/_probing.py`; `Heartbeats` owns the sockets and calls this).

Rules:

* A node *watches* a peer (heartbeats to it, and judges it with its failure detector) while the
  mesh has at most `heartbeat_all_up_to` peers besides it, or when it works with that peer: the
  peer offers a service this node has pushed a task or a request to. A peer that watches this
  node says so in its heartbeat datagrams, and gets this node's heartbeats too, for as long as
  its datagrams keep saying so (`WATCHED_FOR` seconds after the last that did: a peer that
  stopped watching, or is gone, may not have said so); it is judged only by the nodes that
  watch it. So an idle mesh past the small one sends no heartbeats, and a node's heartbeats
  cost what its work partners number, not what the mesh does.
* Every peer, watched or not, is probed by SWIM (`Prober`): one probe a `probe_interval`
  whatever the mesh's size. What SWIM decides about a peer this node does not watch is its
  verdict (SUSPECT, DEAD, ALIVE again, FORGOTTEN), as a `Transition`; about a watched peer, the
  node's own detector knows better, and SWIM's word is not taken. A watched peer the detector
  declares dead is passed on as a rumour (`accuse`), so that the rest of the mesh knows within a
  few gossip rounds, not after its own suspicion runs out.
* A crashed process is known at once as before, watched or not: the connection to its PUB
  drops, its heartbeat port refuses a datagram, and the two together are a death (`refused`),
  passed on as a rumour.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from discovery import PeerRecord

from . import _wire
from ._detector import Liveness, Transition
from ._probing import Change, Prober, ProbeSettings, Send, probe_body, probe_meta, read_probe
from ._swim import State
from ._wire import Envelope, Kind

#: Seconds a peer's heartbeat datagram saying it watches this node counts for: this node beats
#: to it until then (it beats to this node several times a second while it watches).
WATCHED_FOR: Final = 3.0
#: Seconds after a dropped connection within which a refusal of the peer's heartbeat port means
#: its process is gone (the detector's rule, for peers it does not judge).
REFUSAL_WINDOW: Final = 1.0

_LIVENESS: Final = {
    State.ALIVE: Liveness.ALIVE,
    State.SUSPECT: Liveness.SUSPECT,
    State.DEAD: Liveness.DEAD,
    State.LEFT: Liveness.DEAD,
}


class Gossip:
    """SWIM for the peers this node does not watch, and which peers it watches (module rules).
    `send(peer_id, datagram)` sends a datagram to a peer's heartbeat port (signed there, if
    keyed); `verdicts` takes the transitions SWIM decides about the peers not watched."""

    def __init__(
        self,
        node_id: bytes,
        *,
        settings: ProbeSettings,
        all_up_to: int,
        send: Callable[[bytes, bytes], None],
        verdicts: Callable[[Sequence[Transition]], None],
        now: float,
    ) -> None:
        self._id = node_id
        self.prober: Prober[bytes] = Prober(node_id, random.Random(), settings, now)
        self._all_up_to = all_up_to
        self._send = send
        self._verdicts = verdicts
        self._peers: set[bytes] = set()
        self._works_with: set[bytes] = set()  # watched whatever the mesh's size
        self.services: set[str] = set()  # those this node has pushed to
        self._watching_me: dict[bytes, float] = {}  # peers that say they watch this node, when
        self._disconnected: dict[bytes, float] = {}  # unwatched peers' dropped links, when
        self._seq = 0

    # -- whom to watch --------------------------------------------------------------------------

    @property
    def watch_all(self) -> bool:
        """Whether the mesh is small enough that this node watches every peer."""
        return len(self._peers) <= self._all_up_to

    def watches(self, peer_id: bytes) -> bool:
        """Whether this node judges `peer_id` by its own heartbeats."""
        return peer_id in self._peers and (self.watch_all or peer_id in self._works_with)

    def beat_targets(self, now: float) -> Iterable[bytes]:
        """The peers this node heartbeats to at `now`."""
        if self.watch_all:
            return self._peers
        watching = self._watching_me
        for peer_id in [p for p, said in watching.items() if now - said > WATCHED_FOR]:
            del watching[peer_id]
        return (self._works_with | watching.keys()) & self._peers

    def work_with(self, service: str, peer_ids: Iterable[bytes]) -> list[bytes]:
        """This node pushes to `service`, which `peer_ids` offer, from now on: the peers it
        did not watch before."""
        self.services.add(service)
        peer_ids = list(peer_ids)  # (read twice)
        new = [p for p in peer_ids if p in self._peers and not self.watches(p)]
        self._works_with.update(peer_ids)
        return new

    def offers(self, record: PeerRecord) -> list[bytes]:
        """A peer's record changed: the peer, if it now offers a service this node pushes to
        and was not watched."""
        peer_id = record.id
        if peer_id not in self._peers or self.services.isdisjoint(record.services):
            return []
        new = [] if self.watches(peer_id) else [peer_id]
        self._works_with.add(peer_id)
        return new

    def watched_by(self, peer_id: bytes, watching: bool, now: float) -> None:
        """A heartbeat datagram of `peer_id` said at `now` whether it watches this node."""
        if watching:
            self._watching_me[peer_id] = now
        else:
            self._watching_me.pop(peer_id, None)

    # -- peers ------------------------------------------------------------------------------

    def joined(self, record: PeerRecord, now: float) -> list[bytes]:
        """A peer joined: probe it. Returns the peers this node stops watching, as the mesh has
        just grown past `heartbeat_all_up_to` (their detector tracks go)."""
        was_all = self.watch_all
        self._peers.add(record.id)
        if not self.services.isdisjoint(record.services):
            self._works_with.add(record.id)
        self.prober.add(record.id, now)
        if was_all and not self.watch_all:
            return [p for p in self._peers if p not in self._works_with and p != record.id]
        return []

    def forget(self, peer_id: bytes) -> None:
        """A peer is gone (left, forgotten): nothing more of it."""
        self._peers.discard(peer_id)
        self._works_with.discard(peer_id)
        self._watching_me.pop(peer_id, None)
        self._disconnected.pop(peer_id, None)
        self.prober.remove(peer_id)

    def disconnected(self, peer_id: bytes, now: float) -> None:
        """The connection to a peer's PUB dropped (its port is being probed)."""
        if not self.watches(peer_id):
            self._disconnected[peer_id] = now

    def refused(self, peer_id: bytes, now: float) -> None:
        """A peer's heartbeat port refused a datagram: with a dropped connection just before,
        its process is gone."""
        dropped = self._disconnected.pop(peer_id, None)
        if dropped is None or now - dropped > REFUSAL_WINDOW or self.watches(peer_id):
            return
        old = self.prober.state(peer_id)
        if old in (State.ALIVE, State.SUSPECT):
            self.prober.accuse(peer_id, now)
            moved = Transition(peer_id, _LIVENESS[old], Liveness.DEAD, "refused", None, None)
            self._verdicts([moved])

    def accuse(self, peer_id: bytes, now: float) -> None:
        """The node's detector declared a peer it judges dead: tell the mesh."""
        self.prober.accuse(peer_id, now)

    # -- SWIM -------------------------------------------------------------------------------

    def next_deadline(self) -> float:
        return self.prober.next_deadline()

    def tick(self, now: float, lateness: float) -> None:
        """Do what SWIM has due at `now` (`lateness`: how late this runs)."""
        self._send_all(self.prober.tick(now, lateness))
        self._report(self.prober.changes())

    def on_probe(self, envelope: Envelope, now: float) -> None:
        """A PROBE datagram (checked: from one of its sender's hosts, and its MAC if keyed)."""
        if envelope.sender not in self._peers or envelope.meta is None:
            return  # (a node that is no peer: it joins by greeting, not by probing)
        message = read_probe(envelope.meta, envelope.body)  # (ProtocolError: the caller counts it)
        self._send_all(self.prober.receive(envelope.sender, message, now))
        self._report(self.prober.changes())

    def _send_all(self, sends: list[Send[bytes]]) -> None:
        for to, message in sends:
            self._seq += 1
            datagram = _wire.pack(
                Kind.PROBE, self._id, self._seq, probe_meta(message), probe_body(message)
            )
            self._send(to, datagram)

    def _report(self, changes: list[Change[bytes]]) -> None:
        transitions = []
        for member, old, new, reason in changes:
            if member not in self._peers or self.watches(member):
                continue  # the node's own detector judges it
            before = Liveness.ALIVE if old is None else _LIVENESS[old]
            after = Liveness.FORGOTTEN if new is None else _LIVENESS[new]
            if before is not after:
                transitions.append(Transition(member, before, after, reason, None, None))
        if transitions:
            self._verdicts(transitions)
