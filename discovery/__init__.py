"""Finding peers: who is in the mesh and how to reach them. It never imports `mesh`.

Pure parts: the `PeerRecord` a node tells its peers, the `PeerMap` that holds the peers one node
knows and reports each change as an event, and the DNS-SD TXT codec (`encode_txt`,
`decode_txt`). IO at the edge: `open_mdns`, python-zeroconf bridged into trio, which advertises a
node and reports the `Announced` and `Withdrawn` nodes it hears of.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_exports

if TYPE_CHECKING:
    from ._interfaces import device_of, interface_addresses, interface_network
    from ._mdns import Announced, DiscoveryEvent, Mdns, Refused, Withdrawn, open_mdns
    from ._peers import (
        AddressTakenError,
        ForeignMeshError,
        Peer,
        PeerEvent,
        PeerJoined,
        PeerLeft,
        PeerLimitError,
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
        format_contact,
        is_public_key,
        parse_address,
        parse_contact,
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
    "AddressTakenError",
    "ForeignMeshError",
    "Peer",
    "PeerEvent",
    "PeerJoined",
    "PeerLeft",
    "PeerLimitError",
    "PeerMap",
    "PeerRecord",
    "PeerState",
    "PeerStateChanged",
    "PeerUpdated",
    "RecordError",
    "format_address",
    "format_contact",
    "is_public_key",
    "parse_address",
    "parse_contact",
    "tcp_endpoint",
]

# Each name is imported on first use (PEP 562), not when the package is: importing a pure module
# (`discovery._record`) runs this file first, and must not import zeroconf and trio with it. The
# imports above say the same for type checkers; tests/test_project.py holds the two together.
_EXPORTS = {
    "._interfaces": ("device_of", "interface_addresses", "interface_network"),
    "._mdns": ("Announced", "DiscoveryEvent", "Mdns", "Refused", "Withdrawn", "open_mdns"),
    "._peers": (
        "AddressTakenError",
        "ForeignMeshError",
        "Peer",
        "PeerEvent",
        "PeerJoined",
        "PeerLeft",
        "PeerLimitError",
        "PeerMap",
        "PeerState",
        "PeerStateChanged",
        "PeerUpdated",
    ),
    "._record": (
        "PROTOCOL_VERSION",
        "PeerRecord",
        "RecordError",
        "format_address",
        "format_contact",
        "is_public_key",
        "parse_address",
        "parse_contact",
        "tcp_endpoint",
    ),
    "._txt": ("SERVICE_TYPE", "Announcement", "decode_txt", "encode_txt", "instance_name"),
}
_import_export, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if not TYPE_CHECKING:
    # Hidden from type checkers, which would otherwise accept any attribute of the package.
    __getattr__ = _import_export
