"""A node's record as a DNS-SD service: the TXT properties codec, validated. Pure: no IO.

Rules:

* Every node advertises one service of type `SERVICE_TYPE`, named after its id (so names never
  collide, and no probing is needed), with SRV port = its inbox (PULL) port and A/AAAA = its host.
* TXT holds: ``v`` (protocol version), ``id`` (32 hex digits), ``mesh``, ``name``, ``pub`` (the PUB
  port) and, when they fit, ``services`` (comma-separated). DNS-SD caps one TXT string at 255 bytes
  (``key=value``); a service list that does not fit is left out and ``services`` is absent: peers
  learn it from the HELLO exchange, which has no such limit.
* What mDNS says is only a hint of where to say HELLO. It is validated all the same: a bad or
  foreign announcement is refused with `RecordError`, never half-used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Final

from ._record import (
    ID_SIZE,
    MAX_MESH_SIZE,
    PROTOCOL_VERSION,
    PeerRecord,
    RecordError,
    _check_host,
    _check_name,
    _check_port,
    format_address,
    is_public_key,
)

SERVICE_TYPE: Final = "_zmesh._tcp.local."
MAX_TXT_STRING: Final = 255
_HEX: Final = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class Announcement:
    """One node, as an mDNS service announces it. `services` is None when the list was too long
    for TXT (the HELLO exchange carries it)."""

    id: bytes
    name: str
    mesh: str
    host: str
    pub_port: int
    pull_port: int
    services: frozenset[str] | None
    #: The node's public key, if it is keyed (TXT ``key``).
    public_key: str | None = None

    @property
    def address(self) -> str:
        """Where to send HELLO: ``host:pull_port``."""
        return format_address(self.host, self.pull_port)


def instance_name(node_id: bytes) -> str:
    """The DNS-SD instance name of a node: its id, which is unique by construction."""
    return f"{node_id.hex()}.{SERVICE_TYPE}"


def encode_txt(record: PeerRecord) -> dict[str, str]:
    """The TXT properties that advertise `record` (every string within DNS-SD's 255 bytes)."""
    properties = {
        "v": str(record.protocol),
        "id": record.id_hex,
        "mesh": record.mesh,
        "name": record.name,
        "pub": str(record.pub_port),
    }
    if record.public_key is not None:
        properties["key"] = record.public_key
    services = ",".join(sorted(record.services))
    if "," not in "".join(record.services) and len(f"services={services}".encode()) <= 255:
        properties["services"] = services
    for key, value in list(properties.items()):
        if len(f"{key}={value}".encode()) > MAX_TXT_STRING:
            # Only a node name of 250+ bytes gets here (mesh names are at most 250): it is
            # cosmetic, and HELLO carries the real one.
            properties[key] = value.encode()[: MAX_TXT_STRING - len(key) - 1].decode(
                errors="ignore"
            )
    return properties


def decode_txt(
    properties: Mapping[bytes, bytes | None], addresses: Sequence[str], port: int
) -> Announcement:
    """Validate an announcement heard over mDNS: TXT `properties`, the service's `addresses` (the
    first that is a valid host is used) and SRV `port`. Raises `RecordError` and nothing else."""
    try:
        text = {
            key.decode(): (value or b"").decode()
            for key, value in properties.items()
            if isinstance(key, bytes)
        }
    except UnicodeDecodeError:
        raise RecordError("TXT is not UTF-8") from None
    if text.get("v") != str(PROTOCOL_VERSION):
        raise RecordError(f"unsupported protocol version {text.get('v', '')[:16]!r}")
    try:
        id_text, mesh, name, pub_text = text["id"], text["mesh"], text["name"], text["pub"]
    except KeyError as exc:
        raise RecordError(f"TXT has no {exc.args[0]!r}") from None
    if len(id_text) != 2 * ID_SIZE or not all(c in _HEX for c in id_text):
        raise RecordError(f"id is not {2 * ID_SIZE} hex digits")
    node_id = bytes.fromhex(id_text)
    _check_name(mesh, "mesh", MAX_MESH_SIZE)
    _check_name(name, "name")
    if not (pub_text.isascii() and pub_text.isdigit() and len(pub_text) <= 5) or (
        pub_text.startswith("0") and len(pub_text) > 1  # one spelling per port
    ):
        raise RecordError("pub is not a port number")
    pub_port = int(pub_text)
    _check_port(pub_port, "pub port")
    _check_port(port, "SRV port")
    services: frozenset[str] | None = None
    if "services" in text:
        names = [s for s in text["services"].split(",") if s]
        for service in names:
            _check_name(service, "service")
        services = frozenset(names)
    public_key = text.get("key")
    if public_key is not None and not is_public_key(public_key):
        raise RecordError("key is not a public key (Z85, 40 characters)")
    for host in addresses:
        try:
            _check_host(host)
        except RecordError:
            continue
        return Announcement(node_id, name, mesh, host, pub_port, port, services, public_key)
    raise RecordError("no usable address")
