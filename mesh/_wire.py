"""Wire protocol v1: the frames nodes exchange, encoded and strictly decoded. Pure: no IO.

The rules (docs/protocol.md is the full text, written for someone with only pyzmq and msgpack):

* Every message carries one *envelope*: a msgpack array of exactly six items,
  ``[version, kind, sender, seq, meta, body]``. `version` is 1; `kind` is a `Kind`; `sender` is the
  16-byte node id; `seq` counts the sender's messages on one stream from 1 (its PUB stream, or its
  direct link to one peer); `meta` is kind-specific (nil or an array); `body` is any msgpack value.
* On a PUB socket a message has two frames, ``[channel, envelope]``. The channel is what SUB sockets
  filter on: ``b"E" + topic`` for events (and for the SYNCED answer to a subscription probe), and
  ``b"!"`` for control (heartbeat, goodbye).
* On a PULL socket (a node's inbox) a message has one frame, the envelope.
* A receiver never trusts a frame: any deviation raises `ProtocolError` here, and nowhere else.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from discovery import PeerRecord, RecordError, format_address, parse_address

from ._errors import ProtocolError

VERSION: Final = 1
NODE_ID_SIZE: Final = 16
MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
MAX_NESTING: Final = 32
MAX_TOPIC_SIZE: Final = 1024
MAX_NAME_SIZE: Final = 255
MAX_UINT64: Final = 2**64 - 1
MAX_PEERS_LISTED: Final = 4096

EVENT_CHANNEL: Final = b"E"
CONTROL_CHANNEL: Final = b"!"


class Kind(enum.IntEnum):
    """What an envelope carries. New kinds may be added within v1; receivers drop unknown ones."""

    EVENT = 1  # PUB, channel E+topic. body: the event.
    HEARTBEAT = 2  # PUB, channel !. body: map (empty in v1; later issues add fields).
    BYE = 3  # PUB channel ! or direct. The sender is leaving. body: nil.
    HELLO = 4  # direct. body: {"record": record, "peers": [address, ...]}. Answered by WELCOME.
    WELCOME = 5  # direct. Same body as HELLO; not answered.
    UPDATE = 6  # direct. body: the sender's new record.
    TASK = 7  # direct. meta: [task_id, service, attempt]. body: the task.
    ACK = 8  # direct. meta: [task_id]. The task is done.
    NACK = 9  # direct. meta: [task_id, reason]. The task failed or was refused.
    SYNC = 10  # direct. meta: [token, prefix]. "Answer on channel E+prefix once you see this."
    SYNCED = 11  # PUB, channel E+prefix. meta: [token, to]. Proves a subscription is live.


_PUB_KINDS: Final = frozenset({Kind.EVENT, Kind.HEARTBEAT, Kind.BYE, Kind.SYNCED})
_DIRECT_KINDS: Final = frozenset(
    {Kind.BYE, Kind.HELLO, Kind.WELCOME, Kind.UPDATE, Kind.TASK, Kind.ACK, Kind.NACK, Kind.SYNC}
)
_KINDS: Final = {int(k): k for k in Kind}
_RECORD_KINDS: Final = frozenset({Kind.HELLO, Kind.WELCOME, Kind.UPDATE})
_SCALARS: Final = frozenset({str, bytes, int, float, bool, type(None)})


@dataclass(frozen=True, slots=True)
class Envelope:
    """One decoded message. `topic` is set for EVENT and SYNCED (from the channel frame)."""

    kind: Kind
    sender: bytes
    seq: int
    meta: tuple[Any, ...] | None
    body: Any
    topic: str | None = None


@dataclass(frozen=True, slots=True)
class Hello:
    """The body of HELLO and WELCOME: the sender's record and the inbox addresses of the peers it
    knows (peer exchange)."""

    record: PeerRecord
    peers: tuple[str, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"record": self.record.to_wire(), "peers": list(self.peers)}


# -- encoding --------------------------------------------------------------------------------------


def pack(kind: Kind, sender: bytes, seq: int, meta: Sequence[Any] | None, body: Any) -> bytes:
    """Encode an envelope. Raises `TypeError` for a body msgpack cannot carry, `ValueError` when
    the result is larger than `MAX_FRAME_SIZE` (both are the caller's mistakes, not the peer's)."""
    try:
        frame: bytes = msgpack.packb([VERSION, kind, sender, seq, meta, body], use_bin_type=True)
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"body cannot be sent: {exc} (bodies are msgpack values)") from exc
    if len(frame) > MAX_FRAME_SIZE:
        raise ValueError(f"message of {len(frame)} bytes exceeds the {MAX_FRAME_SIZE} byte limit")
    return frame


def topic_channel(topic: str) -> bytes:
    """The PUB channel frame for `topic` (also the SUB subscription for a topic prefix)."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    channel = EVENT_CHANNEL + topic.encode()
    if len(channel) - 1 > MAX_TOPIC_SIZE:
        raise ValueError(f"topic is longer than {MAX_TOPIC_SIZE} bytes")
    return channel


# -- decoding --------------------------------------------------------------------------------------


def decode(frames: Sequence[bytes]) -> Envelope:
    """Decode a message received on a SUB socket (two frames) or a PULL socket (one frame).

    Raises `ProtocolError`, and nothing else, for any input that is not valid protocol v1.
    """
    if len(frames) == 1:
        envelope = _unpack(frames[0])
        if envelope.kind not in _DIRECT_KINDS:
            raise ProtocolError("kind", f"{envelope.kind.name} is not sent to an inbox")
        return envelope
    if len(frames) == 2:
        channel = frames[0]
        envelope = _unpack(frames[1])
        if envelope.kind not in _PUB_KINDS:
            raise ProtocolError("kind", f"{envelope.kind.name} is not published")
        if channel[:1] == EVENT_CHANNEL:
            if envelope.kind not in (Kind.EVENT, Kind.SYNCED):
                raise ProtocolError("malformed", f"{envelope.kind.name} on an event channel")
            if len(channel) - 1 > MAX_TOPIC_SIZE:
                raise ProtocolError("oversized", "topic too long")
            try:
                topic = channel[1:].decode()
            except UnicodeDecodeError:
                raise ProtocolError("malformed", "topic is not UTF-8") from None
            return Envelope(
                envelope.kind, envelope.sender, envelope.seq, envelope.meta, envelope.body, topic
            )
        if channel == CONTROL_CHANNEL and envelope.kind in (Kind.HEARTBEAT, Kind.BYE):
            return envelope
        raise ProtocolError("malformed", f"{envelope.kind.name} on channel {channel[:16]!r}")
    raise ProtocolError("malformed", f"{len(frames)} frames")


def _unpack(frame: bytes) -> Envelope:
    if len(frame) > MAX_FRAME_SIZE:
        raise ProtocolError("oversized", f"{len(frame)} byte frame")
    try:
        items = msgpack.unpackb(frame, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
    except ProtocolError:
        raise
    except ValueError as exc:  # UnpackException, StackError, ExtraData, UnicodeDecodeError
        reason = "truncated" if "incomplete" in str(exc) else "malformed"
        raise ProtocolError(reason, f"not msgpack: {exc}") from None
    except (TypeError, RecursionError, MemoryError, OverflowError) as exc:  # unhashable map key
        raise ProtocolError("malformed", f"not msgpack: {exc}") from None
    if type(items) is not list or len(items) != 6:
        raise ProtocolError("malformed", "envelope is not an array of six items")
    version, kind, sender, seq, meta, body = items
    if type(version) is not int:
        raise ProtocolError("malformed", "version is not an integer")
    if version != VERSION:
        raise ProtocolError("version", f"protocol version {version} (this node speaks {VERSION})")
    if type(kind) is not int or kind not in _KINDS:
        raise ProtocolError("kind", f"unknown kind {kind!r}")
    if type(sender) is not bytes or len(sender) != NODE_ID_SIZE:
        raise ProtocolError("malformed", "sender is not a 16-byte id")
    if type(seq) is not int or not 0 < seq <= MAX_UINT64:
        raise ProtocolError("malformed", "seq is not a positive integer")
    kind = _KINDS[kind]
    if type(body) not in _SCALARS:
        _check_value(body, 1)
    meta = _check_meta(kind, meta)
    if kind in _RECORD_KINDS:
        if kind is Kind.UPDATE:
            record = body = _parse_record(body)
        else:
            body = _parse_hello(body)
            record = body.record
        if record.id != sender:
            raise ProtocolError("malformed", "the record's id is not the sender's")
    return Envelope(kind, sender, seq, meta, body)


def _parse_record(data: Any) -> PeerRecord:
    try:
        return PeerRecord.from_wire(data)
    except RecordError as exc:
        raise ProtocolError("record", str(exc)) from None


def _parse_hello(data: Any) -> Hello:
    if type(data) is not dict or "record" not in data or type(data.get("peers")) is not list:
        raise ProtocolError("malformed", "HELLO body is not {record, peers}")
    peers = data["peers"]
    if len(peers) > MAX_PEERS_LISTED:
        raise ProtocolError("oversized", f"more than {MAX_PEERS_LISTED} peers listed")
    addresses = []
    for address in peers:
        if type(address) is not str:
            raise ProtocolError("malformed", "a listed peer address is not a string")
        try:
            addresses.append(format_address(*parse_address(address)))
        except ValueError as exc:
            raise ProtocolError("malformed", str(exc)) from None
    return Hello(_parse_record(data["record"]), tuple(addresses))


def _refuse_ext(code: int, data: bytes) -> Any:
    raise ProtocolError("type", f"msgpack extension type {code}")


def _check_value(value: Any, depth: int) -> None:
    """Only plain msgpack types, nested at most `MAX_NESTING` deep (the timestamp extension, which
    msgpack decodes without asking `ext_hook`, is refused here)."""
    if depth > MAX_NESTING:
        raise ProtocolError("nesting", f"nested deeper than {MAX_NESTING}")
    kind = type(value)
    if kind is list:
        for item in value:
            if type(item) not in _SCALARS:
                _check_value(item, depth + 1)
    elif kind is dict:
        for key, item in value.items():
            if type(key) not in _SCALARS:
                raise ProtocolError("type", f"map key of type {type(key).__name__}")
            if type(item) not in _SCALARS:
                _check_value(item, depth + 1)
    elif kind not in _SCALARS:
        raise ProtocolError("type", f"value of type {kind.__name__}")


def _check_meta(kind: Kind, meta: Any) -> tuple[Any, ...] | None:
    shape = _META_SHAPES[kind]
    if shape is None:
        if meta is not None:
            raise ProtocolError("malformed", f"{kind.name} takes no meta")
        return None
    if type(meta) is not list or len(meta) != len(shape):
        raise ProtocolError("malformed", f"{kind.name} meta must be an array of {len(shape)}")
    for item, expected in zip(meta, shape, strict=True):
        if type(item) is not expected:
            raise ProtocolError("malformed", f"{kind.name} meta holds a {type(item).__name__}")
        if type(item) is int and not 0 <= item <= MAX_UINT64:
            raise ProtocolError("malformed", f"{kind.name} meta integer out of range")
        if type(item) is str and len(item) > MAX_TOPIC_SIZE:
            raise ProtocolError("oversized", f"{kind.name} meta string too long")
    if kind is Kind.SYNCED and len(meta[1]) != NODE_ID_SIZE:
        raise ProtocolError("malformed", "SYNCED addressee is not a 16-byte id")
    return tuple(meta)


_META_SHAPES: Final[dict[Kind, tuple[type, ...] | None]] = {
    Kind.EVENT: None,
    Kind.HEARTBEAT: None,
    Kind.BYE: None,
    Kind.HELLO: None,
    Kind.WELCOME: None,
    Kind.UPDATE: None,
    Kind.TASK: (int, str, int),
    Kind.ACK: (int,),
    Kind.NACK: (int, str),
    Kind.SYNC: (int, str),
    Kind.SYNCED: (int, bytes),
}
