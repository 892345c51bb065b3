"""Finding peers: who is in the mesh and how to reach them. It never imports `mesh`.

Pure parts: the `PeerRecord` a node tells its peers, the `PeerMap` that holds the peers one node
knows and reports each change as an event, and the DNS-SD TXT codec (`encode_txt`,
`decode_txt`). IO at the edge: `open_mdns`, python-zeroconf bridged into trio, which advertises a
node and reports the `Announced` and `Withdrawn` nodes it hears of.
"""

from __future__ import annotations

from ._interfaces import device_of, interface_addresses, interface_network
from ._mdns import Announced, DiscoveryEvent, Mdns, Refused, Withdrawn, open_mdns
from ._peers import (
    ForeignMeshError,
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerMap,
    PeerState,
    PeerStateChanged,
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
from ._txt import SERVICE_TYPE, Announcement, decode_txt, encode_txt, instance_name

__all__ = [
    "PROTOCOL_VERSION",
    "SERVICE_TYPE",
    "Announced",
    "Announcement",
    "DiscoveryEvent",
    "Mdns",
    "Refused",
    "Withdrawn",
    "decode_txt",
    "device_of",
    "encode_txt",
    "instance_name",
    "interface_addresses",
    "interface_network",
    "open_mdns",
    "ForeignMeshError",
    "Peer",
    "PeerEvent",
    "PeerJoined",
    "PeerLeft",
    "PeerMap",
    "PeerRecord",
    "PeerState",
    "PeerStateChanged",
    "PeerUpdated",
    "RecordError",
    "format_address",
    "parse_address",
    "tcp_endpoint",
]
