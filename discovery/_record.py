"""The peer record: what a node tells others about itself. Pure: no IO.

A record is validated whenever it is built from outside data (`PeerRecord.from_wire`), so code
holding a `PeerRecord` can trust every field. Unknown keys in a wire record are ignored, so later
versions may add fields without breaking older nodes.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

PROTOCOL_VERSION: Final = 1
ID_SIZE: Final = 16
MAX_NAME_SIZE: Final = 255
# A mesh name travels whole in a DNS-SD TXT string ("mesh=" + name, at most 255 bytes).
MAX_MESH_SIZE: Final = 250
MAX_SERVICES: Final = 1024
MAX_EXTRA_HOSTS: Final = 15
#: A CurveZMQ public key as text: 32 bytes in Z85, 40 characters.
PUBLIC_KEY_SIZE: Final = 40
_Z85: Final = frozenset(
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
)


class RecordError(ValueError):
    """A peer record (from the network, or passed in) is not valid."""


@dataclass(frozen=True, slots=True)
class PeerRecord:
    """Who a node is and how to reach it.

    `id` is 16 random bytes chosen at every start (a restarted process is a new node); `id_hex`
    is its printable form. `host` is the IP address the node's sockets are bound to, `pub_port`
    and `pull_port` the ports of its PUB socket (events) and PULL socket (its inbox).
    """

    id: bytes
    name: str
    mesh: str
    host: str
    pub_port: int
    pull_port: int
    services: frozenset[str] = field(default_factory=frozenset)
    protocol: int = PROTOCOL_VERSION
    public_key: str | None = None
    #: Further addresses of a node bound to several interfaces (the sockets listen on the same
    #: ports on each); a peer connects to the one on its own network.
    extra_hosts: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_bytes(self.id, "id")
        _check_name(self.name, "name")
        _check_name(self.mesh, "mesh", MAX_MESH_SIZE)
        _check_host(self.host)
        _check_port(self.pub_port, "pub_port")
        _check_port(self.pull_port, "pull_port")
        if not isinstance(self.services, frozenset):
            raise RecordError("services must be a frozenset")
        if len(self.services) > MAX_SERVICES:
            raise RecordError(f"more than {MAX_SERVICES} services")
        for service in self.services:
            _check_name(service, "service")
        if type(self.protocol) is not int or self.protocol != PROTOCOL_VERSION:
            raise RecordError(f"unsupported protocol version {self.protocol!r}")
        if self.public_key is not None and not is_public_key(self.public_key):
            raise RecordError(f"public_key is not {PUBLIC_KEY_SIZE} characters of Z85")
        if not isinstance(self.extra_hosts, tuple) or len(self.extra_hosts) > MAX_EXTRA_HOSTS:
            raise RecordError(f"extra_hosts must be a tuple of at most {MAX_EXTRA_HOSTS}")
        for host in self.extra_hosts:
            _check_host(host)
        if len(set(self.hosts)) != len(self.hosts):
            raise RecordError("a host is listed twice")

    @property
    def id_hex(self) -> str:
        return self.id.hex()

    @property
    def address(self) -> str:
        """The one address another node needs to reach this one: ``host:pull_port``."""
        return format_address(self.host, self.pull_port)

    @property
    def hosts(self) -> tuple[str, ...]:
        """Every address the node is bound to, `host` first."""
        return (self.host, *self.extra_hosts)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Its inbox at each of its `hosts`."""
        return tuple(format_address(host, self.pull_port) for host in self.hosts)

    @property
    def pub_endpoint(self) -> str:
        return tcp_endpoint(self.host, self.pub_port)

    @property
    def pull_endpoint(self) -> str:
        return tcp_endpoint(self.host, self.pull_port)

    def with_services(self, services: Iterable[str]) -> PeerRecord:
        return PeerRecord(
            self.id,
            self.name,
            self.mesh,
            self.host,
            self.pub_port,
            self.pull_port,
            frozenset(services),
            self.protocol,
            self.public_key,
            self.extra_hosts,
        )

    def to_wire(self) -> dict[str, Any]:
        """The msgpack-ready map sent in HELLO, WELCOME and UPDATE messages."""
        wire = {
            "id": self.id,
            "name": self.name,
            "mesh": self.mesh,
            "host": self.host,
            "pub": self.pub_port,
            "pull": self.pull_port,
            "services": sorted(self.services),
            "v": self.protocol,
            "key": self.public_key,
        }
        if self.extra_hosts:
            wire["extra_hosts"] = list(self.extra_hosts)
        return wire

    @classmethod
    def from_wire(cls, data: Any) -> PeerRecord:
        """Build a record from an untrusted map. Raises `RecordError` and nothing else."""
        if not isinstance(data, Mapping):
            raise RecordError("record is not a map")
        try:
            services = data["services"]
            if not isinstance(services, list) or len(services) > MAX_SERVICES:
                raise RecordError("services is not a list of at most 1024 names")
            if not all(isinstance(s, str) for s in services):
                raise RecordError("a service name is not a string")
            return cls(
                id=data["id"],
                name=data["name"],
                mesh=data["mesh"],
                host=data["host"],
                pub_port=data["pub"],
                pull_port=data["pull"],
                services=frozenset(services),
                protocol=data["v"],
                public_key=data.get("key"),
                extra_hosts=_extra_hosts(data.get("extra_hosts", [])),
            )
        except KeyError as exc:
            raise RecordError(f"record has no {exc.args[0]!r}") from None
        except TypeError as exc:  # an unhashable value where a key was expected, and the like
            raise RecordError(str(exc)) from None


def _extra_hosts(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_EXTRA_HOSTS:
        raise RecordError(f"extra_hosts is not a list of at most {MAX_EXTRA_HOSTS}")
    return tuple(value)


def _check_bytes(value: object, what: str) -> None:
    if type(value) is not bytes or len(value) != ID_SIZE:
        raise RecordError(f"{what} is not {ID_SIZE} bytes")


def _check_name(value: object, what: str, limit: int = MAX_NAME_SIZE) -> None:
    if type(value) is not str:
        raise RecordError(f"{what} is not a string")
    try:
        size = len(value.encode())
    except UnicodeEncodeError:  # a lone surrogate: not UTF-8, so msgpack could not send it
        raise RecordError(f"{what} is not valid Unicode text") from None
    if not 0 < size <= limit:
        raise RecordError(f"{what} must be 1 to {limit} bytes")


def _check_port(value: object, what: str) -> None:
    if type(value) is not int or not 0 < value < 65536:
        raise RecordError(f"{what} is not a port number")


def _check_host(value: object) -> None:
    if type(value) is not str:
        raise RecordError("host is not a string")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise RecordError(f"host {value[:64]!r} is not an IP address") from None
    if ip.is_unspecified or ip.is_multicast:
        raise RecordError(f"host {value} cannot be connected to")
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        # Python versions spell these differently, and the IPv4 address says the same.
        raise RecordError(f"host {value} is an IPv4-mapped address: give the IPv4 address")
    if str(ip) != value:  # addresses are compared as text: one spelling per address
        raise RecordError(f"host {value} is not in canonical form ({ip})")


def is_public_key(value: object) -> bool:
    """Whether `value` is a CurveZMQ public key as text (Z85, 40 characters)."""
    return type(value) is str and len(value) == PUBLIC_KEY_SIZE and _Z85.issuperset(value)


def parse_contact(contact: str) -> tuple[str, str | None]:
    """Split a contact, ``host:port`` or ``KEY@host:port`` (KEY: the node's public key, which a
    keyed node needs to reach it), into the canonical ``host:port`` and the key or None.

    Raises `ValueError` with a message fit for a user."""
    key: str | None = None
    text = contact.strip()
    if len(text) > PUBLIC_KEY_SIZE and text[PUBLIC_KEY_SIZE] == "@":
        key, text = text[:PUBLIC_KEY_SIZE], text[PUBLIC_KEY_SIZE + 1 :]
        if not is_public_key(key):
            raise ValueError(
                f"contact {contact!r}: {key!r} is not a public key (Z85, 40 characters)"
            )
    return format_address(*parse_address(text)), key


def format_contact(address: str, key: str | None) -> str:
    """``KEY@host:port``, or ``host:port`` when there is no key."""
    return address if key is None else f"{key}@{address}"


def format_address(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def tcp_endpoint(host: str, port: int) -> str:
    return f"tcp://{format_address(host, port)}"


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port``, ``[v6]:port`` or ``tcp://host:port`` into an IP literal and a port.

    Raises `ValueError` with a message fit for a user.
    """
    text = address.strip().removeprefix("tcp://")
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not (port_text.isascii() and port_text.isdigit()):
        raise ValueError(f"address {address!r} is not host:port")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    elif "[" in host or "]" in host:
        raise ValueError(f"address {address!r} is not host:port")
    port = int(port_text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"address {address!r}: {host!r} is not an IP address") from None
    if (ip.version == 6) != bracketed:
        raise ValueError(f"address {address!r}: write IPv6 hosts, and only those, in brackets")
    if not 0 < port < 65536:
        raise ValueError(f"address {address!r}: port out of range")
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"address {address!r}: cannot connect to {ip}")
    return str(ip), port
