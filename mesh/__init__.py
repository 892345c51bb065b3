"""mesh: a brokerless peer-to-peer messaging mesh on ZeroMQ and trio.

Services embed a node (`open_node`). Nodes find each other over mDNS (or through seeds and
`Node.connect`) and peer directly: events go PUB -> SUB (`Node.publish`, `Node.subscribe`), work
goes from a sender's per-peer PUSH to a worker's PULL (`Node.push`, `Node.work`) and is acked
back; `Node.watch_peers` reports who comes and goes. docs/protocol.md specifies the wire protocol.

Architecture: the pure parts (`_wire` codec, `_routing` dispatcher, and in `discovery` the peer
record, peer map and TXT codec) do no IO and read no clock; `_zmq` drives ZeroMQ sockets from trio
and `discovery.open_mdns` python-zeroconf; `_node` owns the sockets, the mDNS presence and the
tasks, and wires the rest together; `_streams` and `_types` are what it hands the application.
"""

from __future__ import annotations

from discovery import (
    Peer,
    PeerEvent,
    PeerJoined,
    PeerLeft,
    PeerState,
    PeerStateChanged,
    PeerUpdated,
)

from ._detector import DetectorSettings
from ._errors import (
    MeshError,
    MissingPeersError,
    NoWorkerError,
    PeerUnreachableError,
    ProtocolError,
)
from ._metrics import Histogram, PeerStatistics, ServiceStatistics, format_metrics
from ._node import ALL_INTERFACES, Node, open_node
from ._streams import PeerWatch, Subscription, Task, TaskStream
from ._types import DeadLetter, Endpoints, Message, NodeStatistics, PeerHealth, Settings

__version__ = "0.1.0"

__all__ = [
    "ALL_INTERFACES",
    "DeadLetter",
    "DetectorSettings",
    "Endpoints",
    "Histogram",
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
    "ProtocolError",
    "ServiceStatistics",
    "Settings",
    "Subscription",
    "Task",
    "TaskStream",
    "format_metrics",
    "open_node",
]
