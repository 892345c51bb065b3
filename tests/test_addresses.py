"""Address choice per peer (mesh/_addresses.py): which host of a peer this node uses, its inbox
and PUB there, and which of this node's datagram sockets sends to a host. Pure."""

from __future__ import annotations

import ipaddress

from mesh._addresses import Addresses

from .conftest import make_record

PEER = bytes(range(16))
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
LAN = ipaddress.ip_network("192.168.7.0/24")
LAN6 = ipaddress.ip_network("fd00:7::/64")


def test_a_peer_with_one_host_is_reached_there_whatever_the_networks() -> None:
    record = make_record(PEER, host="10.9.9.9", pub_port=7000, pull_port=7001)
    addresses = Addresses([LOOPBACK])
    assert addresses.host(record) == "10.9.9.9"
    assert addresses.inbox(record) == "10.9.9.9:7001"
    assert addresses.pub_endpoint(record) == "tcp://10.9.9.9:7000"


def test_a_peer_is_reached_at_its_first_host_on_one_of_this_nodes_networks() -> None:
    record = make_record(PEER, host="127.0.0.1", extra_hosts=("192.168.7.20", "fd00:7::20"))
    assert Addresses([LAN]).host(record) == "192.168.7.20"
    assert Addresses([LAN6]).host(record) == "fd00:7::20"
    assert Addresses([LAN6, LAN]).host(record) == "192.168.7.20"  # the peer's order counts
    assert Addresses([LOOPBACK, LAN]).host(record) == "127.0.0.1"
    assert Addresses([LAN6]).inbox(record) == "[fd00:7::20]:5001"
    assert Addresses([LAN6]).pub_endpoint(record) == "tcp://[fd00:7::20]:5000"


def test_a_peer_on_none_of_this_nodes_networks_is_reached_at_its_main_host() -> None:
    record = make_record(PEER, host="10.1.1.1", extra_hosts=("10.2.2.2",))
    assert Addresses([LAN, LAN6]).host(record) == "10.1.1.1"


def test_the_inbox_follows_the_record_when_it_changes_and_is_dropped_when_forgotten() -> None:
    addresses = Addresses([LOOPBACK])
    first = make_record(PEER, pull_port=6001)
    assert addresses.inbox(first) == "127.0.0.1:6001"
    moved = make_record(PEER, pull_port=6002)
    assert addresses.inbox(moved) == "127.0.0.1:6002"
    assert addresses.inbox(first) == "127.0.0.1:6001"  # by record, not only by id
    addresses.forget(PEER)
    assert addresses.inbox(moved) == "127.0.0.1:6002"


def test_a_datagram_leaves_from_the_socket_on_the_hosts_network_else_its_family() -> None:
    addresses = Addresses([LOOPBACK, LAN, LAN6])
    assert addresses.sender("192.168.7.40") == 1
    assert addresses.sender("127.0.0.5") == 0
    assert addresses.sender("10.0.0.1") == 0  # on none: the first IPv4 socket
    assert addresses.sender("fd00:7::40") == 2
    assert addresses.sender("fd99::1") == 2
    assert Addresses([LOOPBACK]).sender("fd00:7::40") is None  # no socket of that family
