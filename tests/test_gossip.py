"""Which peers a node watches, and SWIM's verdicts about the rest (mesh/_gossip.py), with the
datagrams it would send captured and the times given."""

from __future__ import annotations

from collections.abc import Sequence

from mesh import _wire
from mesh._detector import Liveness, Transition
from mesh._gossip import WATCHED_FOR, Gossip
from mesh._probing import Op, ProbeSettings, read_probe
from mesh._wire import Kind

from .conftest import make_record

ME = bytes(16)


def peer(n: int) -> bytes:
    return bytes([n]) * 16


class Harness:
    def __init__(self, all_up_to: int = 2) -> None:
        self.sent: list[tuple[bytes, bytes]] = []
        self.verdicts: list[Transition] = []
        self.gossip = Gossip(
            ME,
            settings=ProbeSettings(),
            all_up_to=all_up_to,
            send=lambda to, datagram: self.sent.append((to, datagram)),
            verdicts=self.take,
            now=0.0,
        )

    def take(self, transitions: Sequence[Transition]) -> None:
        self.verdicts.extend(transitions)

    def join(self, n: int, *services: str, now: float = 0.0) -> list[bytes]:
        return self.gossip.joined(make_record(peer(n), services=frozenset(services)), now)


def test_a_small_mesh_is_watched_whole_and_a_larger_one_only_where_it_works() -> None:
    h = Harness(all_up_to=2)
    assert h.join(1) == []
    assert h.join(2) == []
    assert h.gossip.watch_all
    assert all(h.gossip.watches(peer(n)) for n in (1, 2))
    # A third peer: past two, this node stops watching those it does not work with.
    assert sorted(h.join(3)) == [peer(1), peer(2)]
    assert not h.gossip.watch_all
    assert not any(h.gossip.watches(peer(n)) for n in (1, 2, 3))
    assert list(h.gossip.beat_targets(0.0)) == []


def test_pushing_to_a_service_watches_its_providers_now_and_later() -> None:
    h = Harness(all_up_to=0)
    h.join(1, "job")
    h.join(2)
    assert h.gossip.work_with("job", [peer(1)]) == [peer(1)]
    assert h.gossip.watches(peer(1))
    assert not h.gossip.watches(peer(2))
    assert h.gossip.work_with("job", [peer(1)]) == []  # already watched
    # A later provider, by joining or by a record that changed.
    h.join(3, "job")
    assert h.gossip.watches(peer(3))
    assert h.gossip.offers(make_record(peer(2), services=frozenset({"job"}))) == [peer(2)]
    assert h.gossip.offers(make_record(peer(2), services=frozenset({"job"}))) == []
    assert set(h.gossip.beat_targets(0.0)) == {peer(1), peer(2), peer(3)}


def test_a_peer_that_watches_this_node_gets_its_beats_until_it_stops_saying_so() -> None:
    h = Harness(all_up_to=0)
    h.join(1)
    h.gossip.watched_by(peer(1), True, 10.0)
    assert list(h.gossip.beat_targets(10.0)) == [peer(1)]
    assert not h.gossip.watches(peer(1))  # beaten to, but not judged
    assert list(h.gossip.beat_targets(10.0 + WATCHED_FOR)) == [peer(1)]
    assert list(h.gossip.beat_targets(10.0 + WATCHED_FOR + 0.01)) == []  # it went quiet
    h.gossip.watched_by(peer(1), True, 20.0)
    h.gossip.watched_by(peer(1), False, 20.1)  # it said it stopped
    assert list(h.gossip.beat_targets(20.1)) == []


def test_a_refused_port_soon_after_a_dropped_link_is_a_death_told_to_the_mesh() -> None:
    h = Harness(all_up_to=0)
    h.join(1)
    h.join(2)
    h.gossip.refused(peer(1), 1.0)  # no dropped link: anyone can forge a refusal
    assert h.verdicts == []
    h.gossip.disconnected(peer(1), 2.0)
    h.gossip.refused(peer(1), 2.01)
    assert h.verdicts == [Transition(peer(1), Liveness.ALIVE, Liveness.DEAD, "refused", None, None)]
    h.gossip.disconnected(peer(2), 3.0)
    h.gossip.refused(peer(2), 5.0)  # too long after: not evidence
    assert len(h.verdicts) == 1
    # The death goes out at once, gossiped (and rides the probes).
    h.gossip.tick(h.gossip.next_deadline(), 0.0)
    told = set()
    for to, datagram in h.sent:
        envelope = _wire.decode_datagram(datagram)
        assert envelope.kind is Kind.PROBE
        assert envelope.meta is not None
        message = read_probe(envelope.meta, envelope.body)
        if [(r.member, r.accuser) for r in message.rumours] == [(peer(1), ME)]:
            told.add(to)
    assert peer(2) in told


def test_swim_verdicts_are_given_only_for_peers_not_watched() -> None:
    h = Harness(all_up_to=5)
    h.join(1)
    h.gossip.disconnected(peer(1), 0.0)
    h.gossip.refused(peer(1), 0.001)  # watched: the detector judges it, not this
    assert h.verdicts == []
    probe = _wire.decode_datagram(
        _wire.pack(Kind.PROBE, peer(1), 1, [int(Op.PING), 1, ME], [[2, peer(1), 5, peer(1)]])
    )
    h.gossip.on_probe(probe, 1.0)  # its goodbye, as a rumour: watched, so not taken from here
    assert h.verdicts == []
    assert [to for to, _ in h.sent] == [peer(1)]  # the ping answered
