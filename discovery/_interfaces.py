"""The machine's network interfaces, read (never changed): which addresses it has, which
device holds an address, and the network an address is on. Linux; read with ioctl and /proc."""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct
from typing import Final

_SIOCGIFADDR: Final = 0x8915
_SIOCGIFNETMASK: Final = 0x891B

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def interface_addresses() -> list[str]:
    """The IPv4 address of every network device that has one, loopback excluded: what a node
    binds to when asked for all interfaces."""
    addresses = []
    for _, name in socket.if_nameindex():
        address = _ioctl_ipv4(name, _SIOCGIFADDR)
        if address is not None and not ipaddress.ip_address(address).is_loopback:
            addresses.append(address)
    return addresses


def device_of(address: str) -> str | None:
    """The name of the network device that holds `address`, or None."""
    ip = ipaddress.ip_address(address)
    if ip.is_loopback and ip.version == 4:
        address = "127.0.0.1"  # all of 127/8 is the loopback device's, only one is listed
    if ip.version == 6:
        try:
            with open("/proc/net/if_inet6") as table:
                for line in table:
                    fields = line.split()
                    if ipaddress.IPv6Address(int(fields[0], 16)) == ip:
                        return fields[5]
        except (OSError, ValueError, IndexError):
            return None
        return None
    for _, name in socket.if_nameindex():
        if _ioctl_ipv4(name, _SIOCGIFADDR) == address:
            return name
    return None


def interface_network(address: str) -> Network:
    """The network `address` is on (loopback: all of loopback). IPv4 prefixes are read from the
    device; where that fails, /24. IPv6: /64."""
    ip = ipaddress.ip_address(address)
    if ip.is_loopback:
        return ipaddress.ip_network("127.0.0.0/8" if ip.version == 4 else "::1/128")
    if ip.version == 4:
        device = device_of(address)
        mask = None if device is None else _ioctl_ipv4(device, _SIOCGIFNETMASK)
        prefix = 24 if mask is None else ipaddress.ip_network(f"0.0.0.0/{mask}").prefixlen
        return ipaddress.ip_network(f"{address}/{prefix}", strict=False)
    return ipaddress.ip_network(f"{address}/64", strict=False)


def _ioctl_ipv4(device: str, request: int) -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            reply = fcntl.ioctl(probe.fileno(), request, struct.pack("256s", device.encode()[:15]))
        except OSError:
            return None
    return socket.inet_ntoa(reply[20:24])
