"""Which of a peer's addresses this node uses, and which of its own sockets sends there. Pure:
no IO; the networks are the caller's (read once, when the node binds).

A node may be bound to several interfaces, and so may a peer (its record lists its hosts, the
main one first). The rules:

* A peer is reached at its first host that is on one of this node's networks, else at its main
  host: a peer's LAN address is no use to a node that is only on loopback, and the other way
  round.
* Its inbox is at that host and its inbox port; its PUB at that host and its PUB port.
* A datagram to a host leaves from this node's socket bound on that host's network, else from any
  socket of the same address family, else not at all.

A peer's inbox address is asked for on every task and ack, so it is kept per peer until the
peer's record changes (`forget` when the peer goes).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

from discovery import PeerRecord, format_address, tcp_endpoint
from discovery._interfaces import Network, network_of

# Hosts whose sending socket is remembered; past this many the memory starts afresh.
_SENDERS_KEPT: Final = 4096


class Addresses:
    """Address choice for this node, bound to the networks of its hosts (`networks[i]` is the
    network of its `i`-th host, and of its `i`-th datagram socket)."""

    __slots__ = ("_inboxes", "_networks", "_senders")

    def __init__(self, networks: Sequence[Network]) -> None:
        self._networks = tuple(networks)
        self._inboxes: dict[bytes, tuple[PeerRecord, str]] = {}  # id -> (record, inbox address)
        self._senders: dict[str, int | None] = {}  # host -> index of the socket that sends there

    def host(self, record: PeerRecord) -> str:
        """The host to reach `record`'s node at from here."""
        if record.extra_hosts:
            for host in record.hosts:
                if network_of(host, self._networks) is not None:
                    return host
        return record.host

    def inbox(self, record: PeerRecord) -> str:
        """``host:port`` of the peer's inbox, as this node reaches it."""
        kept = self._inboxes.get(record.id)
        if kept is not None and kept[0] is record:
            return kept[1]
        address = format_address(self.host(record), record.pull_port)
        self._inboxes[record.id] = (record, address)
        return address

    def pub_endpoint(self, record: PeerRecord) -> str:
        """The ZeroMQ endpoint of the peer's PUB, as this node reaches it."""
        return tcp_endpoint(self.host(record), record.pub_port)

    def sender(self, host: str) -> int | None:
        """Which of this node's datagram sockets (by index) sends to `host`: the one on its
        network, else the first of its address family; None if there is none of that family."""
        if host not in self._senders:
            if len(self._senders) >= _SENDERS_KEPT:
                self._senders.clear()
            self._senders[host] = self._sender(host)
        return self._senders[host]

    def _sender(self, host: str) -> int | None:
        on_network = network_of(host, self._networks)  # (a network holds its own family only)
        if on_network is not None:
            return on_network
        version = ipaddress.ip_address(host).version
        for index, network in enumerate(self._networks):
            if network.version == version:
                return index
        return None

    def forget(self, peer_id: bytes) -> None:
        """The peer is gone: drop what is kept of it."""
        self._inboxes.pop(peer_id, None)
