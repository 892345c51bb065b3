"""mesh: a brokerless peer-to-peer messaging mesh on ZeroMQ and trio.

Services embed a node (`open_node`). Nodes find each other over mDNS (or through seeds and
`Node.connect`) and peer directly: events go PUB -> SUB (`Node.publish`, `Node.subscribe`), work
goes from a sender's per-peer PUSH to a worker's PULL (`Node.push`, `Node.work`) and is acked
back; `Node.watch_peers` reports who comes and goes. docs/protocol.md specifies the wire protocol.

Architecture (docs/architecture.md has the map): the pure cores (`_wire` codec, `_routing`
dispatcher, `_detector`, `_heartbeat`, `_beatplan`, `_probes`, `_metrics`, `_peerlog`, and in
`discovery` the peer record, peer map and TXT codec) do no IO and read no clock; `_zmq` drives
ZeroMQ sockets from trio and `discovery.open_mdns` python-zeroconf; `_node` is a facade over
components, one concern each (`_membership`, `_links`, `_events`, `_producer`, `_worker`,
`_heartbeats`, `_binding`), which it wires together; `_streams` and `_types` are what it hands
the application. Names are imported from their modules on first use, so importing a pure core
never imports trio, zmq or zeroconf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from discovery._lazy import lazy_exports

if TYPE_CHECKING:
    from discovery import (
        Peer,
        PeerEvent,
        PeerJoined,
        PeerLeft,
        PeerState,
        PeerStateChanged,
        PeerUpdated,
    )

    from ._binding import ALL_INTERFACES
    from ._detector import DetectorSettings
    from ._errors import (
        MeshError,
        MissingPeersError,
        NoWorkerError,
        PeerUnreachableError,
        ProtocolError,
        RemoteError,
        StateDirectoryInUseError,
    )
    from ._keys import KeyPair
    from ._metrics import Histogram, PeerStatistics, ServiceStatistics, format_metrics
    from ._node import Node
    from ._open import open_node
    from ._probing import ProbeSettings
    from ._streams import PeerWatch, Request, Subscription, Task, TaskStream
    from ._types import (
        DeadLetter,
        Endpoints,
        Gap,
        Message,
        NodeStatistics,
        PeerHealth,
        Settings,
    )

__version__ = "0.3.0"

__all__ = [
    "ALL_INTERFACES",
    "DeadLetter",
    "DetectorSettings",
    "Endpoints",
    "Gap",
    "Histogram",
    "KeyPair",
    "MeshError",
    "Message",
    "MissingPeersError",
    "NoWorkerError",
    "Node",
    "NodeStatistics",
    "Peer",
    "PeerEvent",
    "PeerHealth",
    "PeerJoined",
    "PeerLeft",
    "PeerState",
    "PeerStateChanged",
    "PeerStatistics",
    "PeerUpdated",
    "PeerWatch",
    "PeerUnreachableError",
    "ProbeSettings",
    "ProtocolError",
    "RemoteError",
    "Request",
    "ServiceStatistics",
    "Settings",
    "StateDirectoryInUseError",
    "Subscription",
    "Task",
    "TaskStream",
    "format_metrics",
    "open_node",
]

# Each name is imported on first use (PEP 562), not when the package is: importing a pure module
# (`mesh._wire`) runs this file first, and must not import trio, ZeroMQ and zeroconf with it. The
# imports above say the same for type checkers; tests/test_project.py holds the two together.
_EXPORTS = {
    "discovery": (
        "Peer",
        "PeerEvent",
        "PeerJoined",
        "PeerLeft",
        "PeerState",
        "PeerStateChanged",
        "PeerUpdated",
    ),
    "._detector": ("DetectorSettings",),
    "._probing": ("ProbeSettings",),
    "._errors": (
        "MeshError",
        "MissingPeersError",
        "NoWorkerError",
        "PeerUnreachableError",
        "ProtocolError",
        "RemoteError",
        "StateDirectoryInUseError",
    ),
    "._metrics": ("Histogram", "PeerStatistics", "ServiceStatistics", "format_metrics"),
    "._binding": ("ALL_INTERFACES",),
    "._keys": ("KeyPair",),
    "._node": ("Node",),
    "._open": ("open_node",),
    "._streams": ("PeerWatch", "Request", "Subscription", "Task", "TaskStream"),
    "._types": (
        "DeadLetter",
        "Endpoints",
        "Gap",
        "Message",
        "NodeStatistics",
        "PeerHealth",
        "Settings",
    ),
}
_import_export, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)

if not TYPE_CHECKING:
    # Hidden from type checkers, which would otherwise accept any attribute of the package.
    __getattr__ = _import_export
