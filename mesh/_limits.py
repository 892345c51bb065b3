"""How many peers and links a node can hold with the file descriptors it has. Pure: the numbers
are the caller's.

A node holds about `DESCRIPTORS_PER_PEER` descriptors for each peer (measured: 7.0 a peer from 3
to 9 peers): the TCP connection of its link, its two SUB connections, the peer's three
connections in (to its PULL and PUB), and the mailbox of the link's PUSH socket. Running out is
not an error a node can recover from: a socket that cannot be made fails whatever tried to make
it. So a node sizes its limits from its descriptor limit when it opens, refuses a new peer past
them (counted and logged), and keeps a share for what is not a peer: `STRANGER_LINKS` links to
addresses being introduced (seeds, mDNS, peer lists) and `BASE_DESCRIPTORS` for the node's own
sockets, threads and mDNS, and the application.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

DESCRIPTORS_PER_PEER: Final = 7
#: ZeroMQ sockets a link is made of: its PUSH (no monitor: the events SUB's tells of a crash).
SOCKETS_PER_LINK: Final = 1
#: Descriptors of a node with no peer (about 25 measured, mDNS included), with room to spare
#: for the application.
BASE_DESCRIPTORS: Final = 64
#: Links to addresses that are not peers (yet): introductions tried, seeds, mDNS announcements.
STRANGER_LINKS: Final = 32
#: A ZeroMQ context's sockets besides the links: PUB, PULL, two SUBs, and room to spare.
BASE_SOCKETS: Final = 32


@dataclass(frozen=True, slots=True)
class Limits:
    """What one node may hold: `peers`, `links` (to peers and strangers together), and the
    `sockets` its ZeroMQ context may make."""

    peers: int
    links: int
    sockets: int


def limits_for(descriptors: int, max_peers: int) -> Limits:
    """The limits of a node with `descriptors` file descriptors (its soft `RLIMIT_NOFILE`) and
    at most `max_peers` peers asked for: as many peers as fit in what is left after the base
    and the strangers' links, at least one, at most `max_peers`."""
    spare = descriptors - BASE_DESCRIPTORS - STRANGER_LINKS * (SOCKETS_PER_LINK + 1)
    peers = max(1, min(max_peers, spare // DESCRIPTORS_PER_PEER))
    links = peers + STRANGER_LINKS
    return Limits(peers, links, BASE_SOCKETS + SOCKETS_PER_LINK * links)
