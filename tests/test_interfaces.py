"""Reading the machine's interfaces: every address of a device, each with its own network.

The pure part is tested on literal adapter lists. The integration test makes one network
namespace of its own (a veth pair born in it, nothing in the root namespace), gives one end
addresses of several prefix lengths in private subnets (10.213-10.216.x, clear of the 10.231/16
of tests/test_netns.py), and reads them from a Python process run inside it; it also checks
there that mDNS acceptance follows those networks. Names are unique per run; the fixture's
finalizer (which runs on failure too) kills whatever still runs in the namespace, deletes it, and
checks that it is gone. Skipped unless run as root with iproute2 and the right to create network
namespaces.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from ifaddr import IP, Adapter

from discovery._interfaces import addresses_in, device_in, network_in, network_of

from .netns_tools import empty_namespace, ip

# -- pure: literal adapter lists ----------------------------------------------------------------

LO = Adapter("lo", "lo", [IP("127.0.0.1", 8, "lo"), IP(("::1", 0, 0), 128, "lo")], index=1)
ETH0 = Adapter(
    "eth0",
    "eth0",
    [
        IP("10.20.30.1", 24, "eth0"),
        IP("172.16.5.1", 16, "eth0"),
        IP(("fd00:1:2::5", 0, 0), 56, "eth0"),
        IP(("fe80::1", 0, 2), 64, "eth0"),
    ],
    index=2,
)
ETH0_ALIAS = Adapter("eth0:1", "eth0:1", [IP("192.168.7.1", 20, "eth0:1")], index=2)
ETH1 = Adapter(
    "eth1",
    "eth1",
    [IP("10.99.0.1", 24, "eth1"), IP(("fe80::1", 0, 3), 64, "eth1")],
    index=3,
)
# What getifaddrs gives, grouped as ifaddr groups it: IPv4 device by device, then IPv6.
MACHINE = [LO, ETH0, ETH0_ALIAS, ETH1]


def test_every_ipv4_address_of_every_device_is_listed_once_in_order_without_loopback() -> None:
    twice = Adapter("eth2", "eth2", [IP("10.99.0.1", 24, "eth2")], index=4)
    assert addresses_in([*MACHINE, twice]) == [
        "10.20.30.1",
        "172.16.5.1",
        "192.168.7.1",
        "10.99.0.1",
    ]
    assert addresses_in([LO]) == []
    assert addresses_in([]) == []


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("10.20.30.1", "10.20.30.0/24"),
        ("172.16.5.1", "172.16.0.0/16"),  # a device's second address, of another prefix length
        ("192.168.7.1", "192.168.0.0/20"),  # an alias label's
        ("fd00:1:2::5", "fd00:1:2::/56"),
        ("fe80::1%eth1", "fe80::/64"),
        ("fe80::1%2", "fe80::/64"),
        ("fe80::1", "fe80::/64"),
        ("127.0.0.1", "127.0.0.0/8"),
        ("127.3.2.1", "127.0.0.0/8"),
        ("::1", "::1/128"),
        ("192.0.2.9", "192.0.2.9/32"),  # held by no device: a network of its own
        ("2001:db8::9", "2001:db8::9/128"),
        ("fe80::1%eth7", "fe80::1/128"),  # not on that link
    ],
)
def test_the_network_of_an_address_has_its_own_prefix(address: str, network: str) -> None:
    assert network_in(MACHINE, address) == ipaddress.ip_network(network)


def test_loopback_is_all_of_loopback_whatever_the_device_shows() -> None:
    narrow = Adapter("lo", "lo", [IP("127.0.0.1", 32, "lo"), IP(("::1", 0, 0), 128, "lo")])
    assert network_in([narrow], "127.0.0.1") == ipaddress.ip_network("127.0.0.0/8")
    assert network_in([], "127.0.0.2") == ipaddress.ip_network("127.0.0.0/8")
    assert network_in([], "::1") == ipaddress.ip_network("::1/128")


@pytest.mark.parametrize(
    ("address", "device"),
    [
        ("10.20.30.1", "eth0"),
        ("172.16.5.1", "eth0"),
        ("192.168.7.1", "eth0"),  # the alias label eth0:1 is an address of eth0
        ("10.99.0.1", "eth1"),
        ("fd00:1:2::5", "eth0"),
        ("fd00:1:2::5%eth0", "eth0"),
        ("fd00:1:2::5%eth1", None),
        ("fe80::1%eth0", "eth0"),
        ("fe80::1%eth1", "eth1"),
        ("fe80::1%2", "eth0"),
        ("fe80::1%3", "eth1"),
        ("fe80::1", None),  # on two links, and no scope says which
        ("fe80::1%9", None),
        ("127.0.0.1", "lo"),
        ("127.0.0.2", "lo"),  # the loopback device answers for all of 127/8
        ("::1", "lo"),
        ("192.0.2.9", None),
        ("2001:db8::9", None),
    ],
)
def test_the_device_that_holds_an_address(address: str, device: str | None) -> None:
    assert device_in(MACHINE, address) == device


def test_an_address_held_by_two_devices_has_no_one_device_but_its_first_network() -> None:
    other = Adapter("eth2", "eth2", [IP("10.20.30.1", 16, "eth2")], index=4)
    assert device_in([ETH0, other], "10.20.30.1") is None
    assert network_in([ETH0, other], "10.20.30.1") == ipaddress.ip_network("10.20.30.0/24")


@pytest.mark.parametrize("address", ["eth0", "10.20.30", "", "fe80::1%"])
def test_what_is_not_an_address_is_refused(address: str) -> None:
    with pytest.raises(ValueError, match="does not appear to be"):
        network_in(MACHINE, address)
    with pytest.raises(ValueError, match="does not appear to be"):
        device_in(MACHINE, address)


def test_the_first_network_an_address_is_on() -> None:
    networks = [
        ipaddress.ip_network("10.1.0.0/16"),
        ipaddress.ip_network("10.1.2.0/24"),
        ipaddress.ip_network("fd00::/8"),
    ]
    assert network_of("10.1.2.3", networks) == 0  # on both: the first
    assert network_of("10.1.9.9", networks) == 0
    assert network_of("fd00::5", networks) == 2
    assert network_of("fe80::1%eth0", networks) is None
    assert network_of("10.2.0.1", networks) is None
    assert network_of("not an address", networks) is None
    assert network_of("10.1.2.3", []) is None


# -- integration: a namespace of the test's own -------------------------------------------------

READ_TIMEOUT = 20.0  # the reading process: imports, then a few reads of the address list

# Run inside the namespace: reads with the public functions, and asks the check by which mDNS
# accepts an announced address (`network_of` the networks of the node's hosts), for a node bound
# on each host, which probe addresses it takes (no socket is opened).
READER = """
import json, sys
from discovery import device_of, interface_addresses, interface_network
from discovery._interfaces import network_of

queries, probes = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(json.dumps({
    "addresses": interface_addresses(),
    "networks": {a: str(interface_network(a)) for a in queries},
    "devices": {a: device_of(a) for a in queries},
    "accepted": {
        host: {p: network_of(p, [interface_network(host)]) is not None for p in ps}
        for host, ps in probes.items()
    },
}))
"""


@pytest.fixture
def namespace() -> Iterator[str]:
    """A network namespace of this test's own, with its loopback up; deleted afterwards (on
    failure too), and checked to be gone."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")
    name = f"mif{os.getpid() % 10000}{secrets.token_hex(2)}"
    try:
        ip("netns", "add", name)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create a network namespace: {exc.stderr.strip()}")
    try:
        ip("-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        stuck = empty_namespace(name)
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("netns", "del", name)  # its links go with it
        listed = {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}
        assert name not in listed, f"network namespace left behind: {name}"
        assert not stuck, f"processes that would not die in {name}: {stuck}"


@pytest.mark.slow
@pytest.mark.timeout(40)
def test_a_device_with_addresses_of_several_prefixes_in_a_namespace(namespace: str) -> None:
    n = os.getpid() % 250
    a24, a16, labelled = f"10.214.{n}.1", f"10.213.{n}.1", f"10.215.{n}.1"
    ula, link_local = f"fd21:3:{n:x}::1", f"fe80::213:{n:x}"
    # Both ends are born in the namespace; no address is generated, only those given here.
    ip("-n", namespace, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    for end in ("v0", "v1"):
        ip("-n", namespace, "link", "set", end, "addrgenmode", "none")
    # The /24 first: an ioctl per device (SIOCGIFADDR, SIOCGIFNETMASK) sees only the first address.
    ip("-n", namespace, "addr", "add", f"{a24}/24", "dev", "v0")
    ip("-n", namespace, "addr", "add", f"{a16}/16", "dev", "v0")
    ip("-n", namespace, "addr", "add", f"{labelled}/20", "dev", "v0", "label", "v0:1")
    ip("-n", namespace, "-6", "addr", "add", f"{ula}/56", "dev", "v0", "nodad")
    ip("-n", namespace, "-6", "addr", "add", f"{link_local}/64", "dev", "v0", "nodad")
    for end in ("v0", "v1"):
        ip("-n", namespace, "link", "set", end, "up")
    (link,) = json.loads(ip("-n", namespace, "-j", "link", "show", "v0"))
    index = link["ifindex"]

    absent = f"10.216.{n}.1"
    queries = [
        a24,
        a16,
        labelled,
        ula,
        f"{link_local}%v0",
        f"{link_local}%{index}",
        link_local,
        f"{link_local}%v1",
        absent,
        "127.0.0.9",
    ]
    beside = f"10.213.{(n + 1) % 256}.9"  # in a16's /16, outside every /24 on the device
    near = f"10.214.{n}.77"  # in a24's /24
    probes = {a16: [beside, near, absent], a24: [beside, near, f"10.214.{(n + 1) % 256}.9"]}
    reader = [sys.executable, "-c", READER, json.dumps(queries), json.dumps(probes)]
    done = subprocess.run(
        ["ip", "netns", "exec", namespace, *reader],
        capture_output=True,
        text=True,
        timeout=READ_TIMEOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert done.returncode == 0, done.stderr
    read: dict[str, Any] = json.loads(done.stdout)

    # Every IPv4 address of the device, in the kernel's order, and nothing of loopback.
    kernel = [
        info["local"]
        for entry in json.loads(ip("-n", namespace, "-j", "-4", "addr", "show"))
        for info in entry["addr_info"]
        if not ipaddress.ip_address(info["local"]).is_loopback
    ]
    assert read["addresses"] == kernel == [a24, a16, labelled]

    def network(text: str) -> str:
        return str(ipaddress.ip_network(text, strict=False))

    assert read["networks"] == {
        a24: network(f"{a24}/24"),
        a16: network(f"{a16}/16"),
        labelled: network(f"{labelled}/20"),
        ula: network(f"{ula}/56"),
        f"{link_local}%v0": "fe80::/64",
        f"{link_local}%{index}": "fe80::/64",
        link_local: "fe80::/64",
        f"{link_local}%v1": f"{link_local}/128",  # v1 does not hold it
        absent: f"{absent}/32",
        "127.0.0.9": "127.0.0.0/8",
    }
    assert read["devices"] == {
        a24: "v0",
        a16: "v0",
        labelled: "v0",
        ula: "v0",
        f"{link_local}%v0": "v0",
        f"{link_local}%{index}": "v0",
        link_local: "v0",
        f"{link_local}%v1": None,
        absent: None,
        "127.0.0.9": "lo",
    }
    # The network decides what mDNS accepts: bound on the /16 address, a peer anywhere in the
    # /16 is taken, not only one in the /24 around it.
    assert read["accepted"] == {
        a16: {beside: True, near: False, absent: False},
        a24: {beside: False, near: True, f"10.214.{(n + 1) % 256}.9": False},
    }
