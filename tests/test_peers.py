"""The peer map (discovery/_peers.py): who a node knows, as pure state with explicit time."""

from __future__ import annotations

from typing import Any

import pytest

from discovery import (
    AddressTakenError,
    ForeignMeshError,
    Peer,
    PeerJoined,
    PeerLeft,
    PeerLimitError,
    PeerMap,
    PeerRecord,
    PeerState,
    PeerUpdated,
)

OWN = b"\x00" * 16
A = b"\xaa" * 16
B = b"\xbb" * 16
C = b"\xcc" * 16
D = b"\xdd" * 16


def rec(node_id: bytes, port: int, *services: str, **changes: Any) -> PeerRecord:
    """A record whose inbox is 127.0.0.1:`port` (its PUB port is `port` + 1000)."""
    fields: dict[str, Any] = {
        "id": node_id,
        "name": f"node-{node_id[:1].hex()}",
        "mesh": "default",
        "host": "127.0.0.1",
        "pub_port": port + 1000,
        "pull_port": port,
        "services": frozenset(services),
    }
    fields.update(changes)
    return PeerRecord(**fields)


def new_map() -> PeerMap:
    return PeerMap(OWN, "default")


def test_empty_map() -> None:
    peers = new_map()
    assert len(peers) == 0
    assert list(peers) == []
    assert A not in peers
    assert peers.get(A) is None
    assert peers.by_address("127.0.0.1:5001") is None
    assert peers.offering("resize") == []


def test_observe_a_new_peer_joins() -> None:
    peers = new_map()
    record = rec(A, 5001, "resize")
    events = peers.observe(record, now=10.5)
    assert events == [PeerJoined(Peer(record, PeerState.ALIVE, 10.5))]
    peer = events[0].peer
    assert peer.id == A.hex()
    assert peer.name == "node-aa"
    assert peer.address == "127.0.0.1:5001"
    assert peer.services == frozenset({"resize"})
    assert peer.state is PeerState.ALIVE
    assert peer.since == 10.5
    assert peers.get(A) == peer


def test_the_same_record_again_changes_nothing() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001, "resize"), now=1.0)
    assert peers.observe(rec(A, 5001, "resize"), now=2.0) == []
    assert peers.get(A) == Peer(rec(A, 5001, "resize"), PeerState.ALIVE, 1.0)
    assert len(peers) == 1


def test_changed_services_update_the_peer_and_keep_since() -> None:
    peers = new_map()
    old = rec(A, 5001, "resize")
    new = rec(A, 5001, "resize", "crop")
    peers.observe(old, now=1.0)
    events = peers.observe(new, now=7.0)
    assert events == [PeerUpdated(Peer(new, PeerState.ALIVE, 1.0), previous=old)]
    assert peers.get(A) == Peer(new, PeerState.ALIVE, 1.0)
    assert len(peers) == 1


@pytest.mark.parametrize(
    "changes",
    [
        {"name": "renamed"},
        {"services": frozenset()},
    ],
    ids=repr,
)
def test_any_changed_field_is_an_update(changes: dict[str, Any]) -> None:
    peers = new_map()
    old = rec(A, 5001, "resize")
    new = rec(A, 5001, "resize", **changes)
    peers.observe(old, now=1.0)
    assert peers.observe(new, now=2.0) == [PeerUpdated(Peer(new, PeerState.ALIVE, 1.0), old)]


def test_since_is_kept_across_several_updates() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=3.0)
    peers.observe(rec(A, 5001, "x"), now=4.0)
    peers.observe(rec(A, 5001, "y"), now=5.0)
    peers.observe(rec(A, 5001, "y"), now=6.0)
    peer = peers.get(A)
    assert peer is not None
    assert peer.since == 3.0
    assert peer.services == frozenset({"y"})


def test_own_record_is_ignored() -> None:
    peers = new_map()
    assert peers.observe(rec(OWN, 5001, "resize"), now=1.0) == []
    assert OWN not in peers
    assert len(peers) == 0
    assert peers.by_address("127.0.0.1:5001") is None
    assert peers.offering("resize") == []


def test_record_of_another_mesh_is_refused() -> None:
    peers = new_map()
    with pytest.raises(ForeignMeshError, match="other"):
        peers.observe(rec(A, 5001, mesh="other"), now=1.0)
    assert len(peers) == 0
    assert issubclass(ForeignMeshError, ValueError)


def test_known_peer_moving_to_another_mesh_is_refused_and_kept() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    with pytest.raises(ForeignMeshError):
        peers.observe(rec(A, 5001, mesh="other"), now=2.0)
    assert peers.get(A) == Peer(rec(A, 5001), PeerState.ALIVE, 1.0)


def test_own_record_of_another_mesh_is_refused() -> None:
    with pytest.raises(ForeignMeshError):
        new_map().observe(rec(OWN, 5001, mesh="other"), now=1.0)


def test_new_id_at_a_live_peers_address_is_refused() -> None:
    # Anyone can claim an address: a live peer's is not for the taking.
    peers = new_map()
    peers.observe(rec(A, 5001, "resize"), now=1.0)
    with pytest.raises(AddressTakenError):
        peers.observe(rec(B, 5001, "crop"), now=9.0)
    assert B not in peers
    assert peers.by_address("127.0.0.1:5001") == Peer(rec(A, 5001, "resize"), PeerState.ALIVE, 1.0)


@pytest.mark.parametrize("state", [PeerState.SUSPECT, PeerState.DEAD])
def test_new_id_at_an_address_whose_peer_is_not_alive_replaces_it(state: PeerState) -> None:
    # A node restarted there: its old self is suspected (its connection dropped) or dead.
    peers = new_map()
    old = rec(A, 5001, "resize")
    new = rec(B, 5001, "crop")
    peers.observe(old, now=1.0)
    peers.set_state(A, state, "disconnect", now=2.0)
    events = peers.observe(new, now=9.0)
    assert events == [
        PeerLeft(Peer(old, state, 1.0), "replaced"),
        PeerJoined(Peer(new, PeerState.ALIVE, 9.0)),
    ]
    assert A not in peers
    assert B in peers
    assert len(peers) == 1
    assert peers.by_address("127.0.0.1:5001") == Peer(new, PeerState.ALIVE, 9.0)
    assert peers.offering("resize") == []
    assert peers.offering("crop") == [B]


def test_a_full_map_refuses_new_peers_and_keeps_the_ones_it_has() -> None:
    peers = PeerMap(OWN, "default", max_peers=2)
    peers.observe(rec(A, 5001), now=1.0)
    peers.observe(rec(B, 5002), now=1.0)
    with pytest.raises(PeerLimitError):
        peers.observe(rec(C, 5003), now=2.0)
    assert C not in peers
    assert len(peers) == 2
    # A known peer still changes; a node restarted at a peer's address takes its place.
    assert peers.observe(rec(A, 5001, "resize"), now=3.0)
    peers.set_state(B, PeerState.DEAD, "phi", now=3.5)
    events = peers.observe(rec(D, 5002), now=4.0)
    assert [type(event) for event in events] == [PeerLeft, PeerJoined]
    assert {peer.record.id for peer in peers} == {A, D}
    peers.remove(A, "goodbye")
    peers.observe(rec(C, 5003), now=5.0)  # room again
    assert C in peers


def test_same_host_other_port_is_another_peer() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    events = peers.observe(rec(B, 5002), now=2.0)
    assert events == [PeerJoined(Peer(rec(B, 5002), PeerState.ALIVE, 2.0))]
    assert len(peers) == 2


def test_same_pull_port_on_another_host_is_another_peer() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    events = peers.observe(rec(B, 5001, host="10.0.0.2"), now=2.0)
    assert events == [PeerJoined(Peer(rec(B, 5001, host="10.0.0.2"), PeerState.ALIVE, 2.0))]
    assert len(peers) == 2


def test_remove() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001, "resize"), now=1.0)
    assert peers.remove(A, "goodbye") == [
        PeerLeft(Peer(rec(A, 5001, "resize"), PeerState.ALIVE, 1.0), "goodbye")
    ]
    assert A not in peers
    assert len(peers) == 0
    assert peers.get(A) is None
    assert peers.by_address("127.0.0.1:5001") is None
    assert peers.offering("resize") == []


def test_remove_unknown_or_twice() -> None:
    peers = new_map()
    assert peers.remove(A, "goodbye") == []
    peers.observe(rec(A, 5001), now=1.0)
    assert len(peers.remove(A, "goodbye")) == 1
    assert peers.remove(A, "goodbye") == []
    assert peers.remove(OWN, "goodbye") == []


def test_a_removed_peer_joins_again_with_a_new_since() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    peers.remove(A, "goodbye")
    assert peers.observe(rec(A, 5001), now=5.0) == [
        PeerJoined(Peer(rec(A, 5001), PeerState.ALIVE, 5.0))
    ]


def test_offering_is_in_join_order() -> None:
    peers = new_map()
    peers.observe(rec(C, 5003, "resize"), now=1.0)
    peers.observe(rec(A, 5001, "resize", "crop"), now=2.0)
    peers.observe(rec(B, 5002, "resize"), now=3.0)
    peers.observe(rec(D, 5004, "other"), now=4.0)
    assert peers.offering("resize") == [C, A, B]
    assert peers.offering("crop") == [A]
    assert peers.offering("other") == [D]
    assert peers.offering("nothing") == []


def test_offering_follows_service_changes() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001, "resize"), now=1.0)
    peers.observe(rec(B, 5002, "resize"), now=2.0)
    peers.observe(rec(A, 5001, "crop"), now=3.0)  # A stops resizing, starts cropping
    assert peers.offering("resize") == [B]
    assert peers.offering("crop") == [A]
    peers.observe(rec(A, 5001, "resize"), now=4.0)  # and resizes again: last in line
    assert peers.offering("resize") == [B, A]
    assert peers.offering("crop") == []
    peers.observe(rec(B, 5002), now=5.0)
    assert peers.offering("resize") == [A]


def test_offering_after_removal() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001, "resize"), now=1.0)
    peers.observe(rec(B, 5002, "resize"), now=2.0)
    peers.observe(rec(C, 5003, "resize"), now=3.0)
    peers.remove(B, "goodbye")
    assert peers.offering("resize") == [A, C]
    peers.remove(A, "goodbye")
    peers.remove(C, "goodbye")
    assert peers.offering("resize") == []


def test_offering_returns_a_copy() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001, "resize"), now=1.0)
    peers.offering("resize").append(B)
    assert peers.offering("resize") == [A]


def test_offering_keeps_the_order_of_services_a_peer_kept_offering() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001, "resize"), now=1.0)
    peers.observe(rec(B, 5002, "resize"), now=2.0)
    peers.observe(rec(A, 5001, "resize", "crop"), now=3.0)  # A still resizes, since before B
    assert peers.offering("resize") == [A, B]


def test_by_address() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    peers.observe(rec(B, 5002, host="::1"), now=2.0)
    assert peers.by_address("127.0.0.1:5001") == peers.get(A)
    assert peers.by_address("[::1]:5002") == peers.get(B)
    assert peers.by_address("127.0.0.1:6001") is None  # the PUB port is not an address
    assert peers.by_address("127.0.0.1:5002") is None
    assert peers.by_address("::1:5002") is None


def test_by_address_frees_an_address_when_its_peer_leaves() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    assert peers.by_address("127.0.0.1:5001") == peers.get(A)
    peers.remove(A, "goodbye")
    assert peers.by_address("127.0.0.1:5001") is None
    # the address is free again: a newcomer there is no replacement
    assert peers.observe(rec(B, 5001), now=3.0) == [
        PeerJoined(Peer(rec(B, 5001), PeerState.ALIVE, 3.0))
    ]


@pytest.mark.parametrize(
    "changes",
    [
        {"host": "127.0.0.2"},
        {"pull_port": 5009},
        {"pub_port": 9999},
        {"extra_hosts": ("127.0.0.3",)},
        {"public_key": "k" * 40},
    ],
    ids=repr,
)
def test_a_known_peers_addresses_and_key_do_not_change(changes: dict[str, Any]) -> None:
    # A node keeps them for its life (it restarts with a new id): a record that changes them
    # under a known id would redirect that peer's traffic, and is refused.
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    with pytest.raises(AddressTakenError):
        peers.observe(rec(A, 5001, **changes), now=2.0)
    assert peers.get(A) == Peer(rec(A, 5001), PeerState.ALIVE, 1.0)


def test_a_known_peer_cannot_move_even_onto_a_dead_peers_address() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    peers.observe(rec(B, 5002), now=2.0)
    peers.set_state(B, PeerState.DEAD, "phi", now=2.8)
    with pytest.raises(AddressTakenError):
        peers.observe(rec(A, 5002), now=3.0)
    assert B in peers


def test_len_iter_contains() -> None:
    peers = new_map()
    peers.observe(rec(B, 5002), now=2.0)
    peers.observe(rec(A, 5001), now=1.0)
    peers.observe(rec(C, 5003), now=3.0)
    assert len(peers) == 3
    assert [peer.record.id for peer in peers] == [B, A, C]
    assert A in peers
    assert B in peers
    assert D not in peers
    assert OWN not in peers
    assert A.hex() not in peers  # ids are bytes
    assert "anything" not in peers


def test_iterating_while_removing_is_safe() -> None:
    peers = new_map()
    peers.observe(rec(A, 5001), now=1.0)
    peers.observe(rec(B, 5002), now=2.0)
    for peer in peers:
        peers.remove(peer.record.id, "goodbye")
    assert len(peers) == 0


def test_events_are_frozen() -> None:
    peer = Peer(rec(A, 5001), PeerState.ALIVE, 1.0)
    with pytest.raises(AttributeError):
        peer.since = 2.0  # type: ignore[misc]
    with pytest.raises(AttributeError):
        PeerLeft(peer, "goodbye").reason = "x"  # type: ignore[misc]
