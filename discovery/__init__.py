"""Finding peers: who is in the mesh and how to reach them.

This package is pure state and codecs (it never imports `mesh`): the `PeerRecord` a node
advertises, and the `PeerMap` that joins what the node hears about its peers into one view and
reports each change as an event. Discovery backends (mDNS, static seeds) feed it.
"""

from __future__ import annotations

from ._peers import (
    ForeignMeshError,
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerMap,
    PeerState,
    PeerUpdated,
)
from ._record import (
    PROTOCOL_VERSION,
    PeerRecord,
    RecordError,
    format_address,
    parse_address,
    tcp_endpoint,
)

__all__ = [
    "PROTOCOL_VERSION",
    "ForeignMeshError",
    "Peer",
    "PeerEvent",
    "PeerJoined",
    "PeerLeft",
    "PeerMap",
    "PeerRecord",
    "PeerState",
    "PeerUpdated",
    "RecordError",
    "format_address",
    "parse_address",
    "tcp_endpoint",
]
