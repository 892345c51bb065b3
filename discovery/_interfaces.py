"""The machine's network interfaces, read (never changed): which addresses it has, which device
holds an address, and the network an address is on.

Read with `ifaddr` (``getifaddrs``), which lists every address of every device, each with its
prefix length as the kernel has it. The rules:

* Every address counts, not only a device's first: a device may hold several, of different
  prefix lengths, and each is on its own network (a /16 address's network is the /16).
* An IPv4 address with an alias label (``eth0:1``) belongs to the device (``eth0``).
* IPv6 addresses may carry a scope (``fe80::1%eth0`` or ``fe80::1%2``, by device name or index):
  a link-local address is matched on its link then. Without a scope, an address held by several
  devices has no one device.
* Loopback is all of 127.0.0.0/8 (any of which the loopback device answers for) and ``::1/128``,
  whatever prefix the loopback device shows.
* An address that no device holds (gone, or never there) is a network of its own, its /32 or
  /128: nothing else is taken to be on it. Never a guessed prefix.

The answers come from pure functions of the adapter list (`addresses_in`, `device_in`,
`network_in`); the public functions call them on `ifaddr.get_adapters()`, read afresh each call.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

import ifaddr

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
_Interface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_LOOPBACK_V4 = ipaddress.IPv4Network("127.0.0.0/8")
_LOOPBACK_V6 = ipaddress.IPv6Network("::1/128")


def interface_addresses() -> list[str]:
    """Every IPv4 address of every network device, loopback excluded, each once, in a stable
    order (device by device as the kernel lists them, a device's primary address first): what a
    node binds to when asked for all interfaces. Raises `OSError` if the kernel's list cannot be
    read."""
    return addresses_in(ifaddr.get_adapters())


def device_of(address: str) -> str | None:
    """The name of the network device that holds `address` (IPv4 or IPv6, with or without a
    ``%scope``); None if none does, or several do and no scope says which. An IPv4 loopback
    address belongs to the loopback device. Raises `ValueError` if `address` is not an IP
    address, `OSError` if the kernel's list cannot be read."""
    return device_in(ifaddr.get_adapters(), address)


def interface_network(address: str) -> Network:
    """The network `address` is on: its own prefix length as the kernel has it; all of loopback
    for a loopback address (127.0.0.0/8, ``::1/128``); its /32 or /128 if no device holds it.
    Raises `ValueError` if `address` is not an IP address, `OSError` if the kernel's list
    cannot be read."""
    return network_in(ifaddr.get_adapters(), address)


# -- pure: answers from a list of adapters ------------------------------------------------------


def network_of(address: str, networks: Iterable[Network]) -> int | None:
    """The index of the first of `networks` that `address` is on; None if it is on none of
    them or is not an IP address."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    for index, network in enumerate(networks):
        if ip in network:
            return index
    return None


@dataclass(frozen=True, slots=True)
class Held:
    """One address a device holds, with its prefix length."""

    device: str
    index: int | None  # the device's index, if known
    interface: _Interface  # the address and its network
    scope_id: int  # an IPv6 address's link (a device index) if link-scoped, else 0

    @property
    def address(self) -> _Address:
        return self.interface.ip


def held_addresses(adapters: Iterable[ifaddr.Adapter]) -> list[Held]:
    """Every address in `adapters`, as ifaddr lists them, in their order."""
    held = []
    for adapter in adapters:
        # An alias label ("eth0:1") names an address of the device before the colon, which no
        # device name may contain.
        device = adapter.name.partition(":")[0]
        for ip in adapter.ips:
            if isinstance(ip.ip, tuple):
                address, _flowinfo, scope_id = ip.ip
                interface: _Interface = ipaddress.IPv6Interface(
                    f"{_unscoped_text(address)}/{ip.network_prefix}"
                )
            else:
                scope_id = 0
                interface = ipaddress.IPv4Interface(f"{ip.ip}/{ip.network_prefix}")
            held.append(Held(device, adapter.index, interface, scope_id))
    return held


def addresses_in(adapters: Iterable[ifaddr.Adapter]) -> list[str]:
    """`interface_addresses` for this list of adapters."""
    addresses: list[str] = []
    for held in held_addresses(adapters):
        text = str(held.address)
        if held.address.version == 4 and not held.address.is_loopback and text not in addresses:
            addresses.append(text)
    return addresses


def device_in(adapters: Iterable[ifaddr.Adapter], address: str) -> str | None:
    """`device_of` for this list of adapters."""
    devices = {held.device for held in _holding(held_addresses(adapters), address)}
    return devices.pop() if len(devices) == 1 else None


def network_in(adapters: Iterable[ifaddr.Adapter], address: str) -> Network:
    """`interface_network` for this list of adapters. Held by several devices with different
    prefixes (and no scope saying which), the first the kernel lists wins."""
    ip, _ = _parse(address)
    if ip.is_loopback:
        return _LOOPBACK_V4 if ip.version == 4 else _LOOPBACK_V6
    for held in _holding(held_addresses(adapters), address):
        return held.interface.network
    return ipaddress.ip_network(ip)


def _holding(held: list[Held], address: str) -> list[Held]:
    """The entries of `held` that hold `address`: on its scope's device if it has a scope. Any
    IPv4 loopback address is held where the loopback network is (the kernel answers for all of
    it)."""
    ip, scope = _parse(address)
    if ip.version == 4 and ip.is_loopback:
        return [h for h in held if h.address.version == 4 and ip in h.interface.network]
    found = [h for h in held if h.address == ip]
    if scope is not None:
        found = [h for h in found if scope in _scope_names(h)]
    return found


def _scope_names(held: Held) -> set[str]:
    """What a ``%scope`` naming `held`'s link may say: its device's name or index, or the link
    index its address came with."""
    names = {held.device}
    if held.index is not None:
        names.add(str(held.index))
    if held.scope_id:
        names.add(str(held.scope_id))
    return names


def _parse(address: str) -> tuple[_Address, str | None]:
    """`address` without its scope, and its scope (None if it has none). Raises `ValueError`."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        return ipaddress.IPv6Address(_unscoped_text(address)), ip.scope_id
    return ip, None


def _unscoped_text(address: str) -> str:
    return address.partition("%")[0]
