"""How many peers and links a node may hold with its file descriptors (mesh/_limits.py). Pure."""

from __future__ import annotations

import pytest

from mesh._limits import (
    BASE_DESCRIPTORS,
    BASE_SOCKETS,
    DESCRIPTORS_PER_PEER,
    SOCKETS_PER_LINK,
    STRANGER_LINKS,
    Limits,
    limits_for,
)


@pytest.mark.parametrize(
    ("descriptors", "max_peers", "peers"),
    [
        (256, 1024, 18),  # (256 - 64 - 32 * 2) // 7
        (1024, 1024, 128),  # (1024 - 128) // 7
        (1 << 20, 1024, 1024),  # plenty: the setting decides
        (1 << 20, 10, 10),
        (100, 1024, 1),  # too few for one: one all the same
    ],
)
def test_peers_fit_in_what_the_base_and_the_strangers_leave(
    descriptors: int, max_peers: int, peers: int
) -> None:
    limits = limits_for(descriptors, max_peers)
    assert limits == Limits(
        peers, peers + STRANGER_LINKS, BASE_SOCKETS + SOCKETS_PER_LINK * (peers + STRANGER_LINKS)
    )


def test_the_limits_keep_within_the_descriptors() -> None:
    for descriptors in range(300, 5000, 97):
        limits = limits_for(descriptors, 10**6)
        peers_cost = limits.peers * DESCRIPTORS_PER_PEER
        strangers_cost = STRANGER_LINKS * (SOCKETS_PER_LINK + 1)
        assert BASE_DESCRIPTORS + strangers_cost + peers_cost <= descriptors
