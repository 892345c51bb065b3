"""Wire protocol v1: the frames nodes exchange, encoded and strictly decoded. Pure: no IO.

The rules (docs/protocol.md is the full text, written for someone with only pyzmq and msgpack):

* Every message is one ZeroMQ frame (one frame, not several: pyzmq sends and receives a single
  frame four to eight times faster than a two-part message, measured in docs/performance.md).
* Every message carries one *envelope*: a msgpack array of exactly six items,
  ``[version, kind, sender, seq, meta, body]``. `version` is 1; `kind` is a `Kind`; `sender` is the
  16-byte node id; `seq` counts the sender's messages on one stream from 1 (its PUB stream, or its
  direct link to one peer); `meta` is kind-specific (nil or an array); `body` is any msgpack value.
* On a PUB socket the envelope follows a *channel*, the prefix SUB sockets filter on:
  ``b"E" + topic + b"\x00" + envelope`` for events (and for the SYNCED answer to a subscription
  probe; topics are UTF-8 without NUL), ``b"!" + envelope`` for control (heartbeat, goodbye),
  and ``b"S" + ticket + envelope`` for the SYNCED answer to a TICKET (an 8-byte ticket: a
  channel one subscriber holds, subscribed after its event channels).
* On a PULL socket (a node's inbox) the frame is the envelope alone; so is a heartbeat datagram
  (UDP, at the inbox's port), which holds one HEARTBEAT or PROBE of at most `MAX_DATAGRAM_SIZE`
  bytes.
* A *batch* carries several consecutive messages of one sender in one frame (fewer, larger frames
  under load): an envelope of kind `BATCH` (13) whose body is the array of their envelopes, in an
  inbox as it is, on a PUB after the channel of the topic all its events share. It is a container,
  not a message: it is not a `Kind`, and decoding one (`decode_inbox_many`,
  `decode_published_many`) gives the envelopes it holds.
* A receiver never trusts a frame: any deviation raises `ProtocolError` here, and nowhere else.
"""

from __future__ import annotations

import enum
import functools
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final, NamedTuple

import msgpack

from discovery import PeerRecord

from ._errors import ProtocolError
from ._hello import Hello, parse_hello, parse_record
from ._values import count_values

VERSION: Final = 1
NODE_ID_SIZE: Final = 16
MAX_FRAME_SIZE: Final = 16 * 1024 * 1024
MAX_NESTING: Final = 32
MAX_TOPIC_SIZE: Final = 1024
MAX_NAME_SIZE: Final = 255
MAX_UINT64: Final = 2**64 - 1
#: Most msgpack values (each container, string, number, nil...) one frame may hold. A frame's
#: bytes do not bound what decoding it allocates: each one-byte empty array becomes a list of
#: 56 bytes and more, so 16 MiB of them would take a gigabyte. A frame up to this many bytes
#: cannot hold more values than that; a larger one is counted before it is decoded.
MAX_VALUES: Final = 256 * 1024
#: Heartbeat datagrams are a few dozen bytes; a larger one is invalid (docs/protocol.md §12).
MAX_DATAGRAM_SIZE: Final = 1024

EVENT_CHANNEL: Final = b"E"
CONTROL_CHANNEL: Final = b"!"
#: The first byte of a ticket channel. It sorts after `EVENT_CHANNEL`: a SUB sends its
#: subscriptions to a new connection in byte order, so its event channels arrive first there too.
TICKET_CHANNEL: Final = b"S"
TICKET_SIZE: Final = 8
#: The kind number of a batch envelope: body = an array of 1 … MAX_BATCH envelopes.
BATCH: Final = 13
MAX_BATCH: Final = 4096


class Kind(enum.IntEnum):
    """What an envelope carries. New kinds may be added within v1; receivers drop unknown ones."""

    EVENT = 1  # PUB, channel E+topic. meta: [prev], the seq of the sender's previous EVENT on the
    # same topic (0: none), or nil (no chain: nodes before 0.2). body: the event.
    HEARTBEAT = 2  # PUB channel ! and direct. body: map {"n": count}; the same n on both paths.
    BYE = 3  # PUB channel ! or direct. The sender is leaving. body: nil.
    HELLO = 4  # direct. body: {"record": record, "peers": [contact, ...]}. Answered by WELCOME.
    WELCOME = 5  # direct. Same body as HELLO; not answered.
    UPDATE = 6  # direct. body: the sender's new record.
    TASK = 7  # direct. meta: [task_id, service, attempt]. body: the task.
    ACK = 8  # direct. meta: [task_id]. The task is done.
    NACK = 9  # direct. meta: [task_id, reason]. The task failed or was refused.
    SYNC = 10  # direct. meta: [token, prefix]. "Answer on channel E+prefix once you see this."
    SYNCED = 11  # PUB, channel E+prefix. meta: [token, to]. Proves a subscription is live.
    READY = 12  # direct. The sender's subscriptions are live at the receiver's PUB. body: nil,
    # or from a keyed node {"beat": 32 bytes}: the key of the MAC on its datagrams to the receiver.
    # (13 is BATCH, a container rather than a kind.)
    REQUEST = 14  # direct. meta: [task_id, service, attempt, ttl_ms]. A task that wants a reply,
    # within ttl_ms milliseconds of its arrival (0: no deadline). body: the request.
    REPLY = 15  # direct. meta: [task_id, ok]. body: the reply if ok, else the error's message.
    HISTORY = 16  # direct. meta: [token, prefix, count, since_ms, after, upto]. "Send me the last
    # count events on prefix published since since_ms (unix ms; 0: any) numbered after..upto."
    EVENTS = (
        17  # direct. meta: [token, last]. body: [[seq, prev, topic, body] or [seq, topic], ...]
    )
    # by seq: the answer to a HISTORY, in as many EVENTS as it takes, the last one's `last` true.
    # [seq, topic]: the last event on topic, no longer kept.
    DROPPED = 18  # PUB channel !. meta: [first, last]. Events numbered first..last went past
    # subscriber connections that were full: their subscribers ask for what they lack.
    PROBE = 19  # datagram only. meta: [op, seq, target]. body: [[state, member, incarnation,
    # accuser], ...], the rumours it carries. SWIM's PING, ACK, PING_REQ and NACK (_probing.py).
    TICKET = 20  # direct. meta: [token, ticket]. A SYNC for every channel the sender subscribed
    # before its ticket channel S+ticket: "answer with SYNCED on S+ticket once you see this".


_DIRECT_KINDS: Final = frozenset(
    {
        Kind.HEARTBEAT,
        Kind.BYE,
        Kind.HELLO,
        Kind.WELCOME,
        Kind.UPDATE,
        Kind.TASK,
        Kind.ACK,
        Kind.NACK,
        Kind.SYNC,
        Kind.TICKET,
        Kind.READY,
        Kind.REQUEST,
        Kind.REPLY,
        Kind.HISTORY,
        Kind.EVENTS,
    }
)
_CONTROL_KINDS: Final = frozenset({Kind.HEARTBEAT, Kind.BYE, Kind.DROPPED})
# The kinds decoding compares with on every message, as module constants: `Kind.EVENT` goes
# through the enum's metaclass, 80 ns a lookup on CPython 3.11 (measured), a global does not.
_EVENT: Final = Kind.EVENT
_SYNCED: Final = Kind.SYNCED
_HEARTBEAT: Final = Kind.HEARTBEAT
_TASK: Final = Kind.TASK
_ACK: Final = Kind.ACK
_REQUEST: Final = Kind.REQUEST
_DIRECT_BY_NUMBER: Final = {int(k): k for k in _DIRECT_KINDS}
_EVENT_BY_NUMBER: Final = {int(k): k for k in (Kind.EVENT, Kind.SYNCED)}
_KINDS: Final = {int(k): k for k in Kind}
_NO_META: Final = frozenset(
    {Kind.EVENT, Kind.HEARTBEAT, Kind.BYE, Kind.HELLO, Kind.WELCOME, Kind.UPDATE, Kind.READY}
)
_SCALARS: Final = frozenset({str, bytes, int, float, bool, type(None)})


class Envelope(NamedTuple):
    """One decoded message. `topic` is set for EVENT and SYNCED (from the channel frame; "" for
    a SYNCED on a ticket channel).

    A named tuple rather than a dataclass: one is made per message received, and this is the
    cheapest immutable record Python has.
    """

    kind: Kind
    sender: bytes
    seq: int
    meta: tuple[Any, ...] | None
    body: Any
    topic: str | None = None


# A validated message before it becomes an `Envelope`: kind, sender, seq, meta, body.
_Message = tuple[Kind, bytes, int, tuple[Any, ...] | None, Any]
# Envelope(*fields) goes through the named tuple's Python-level __new__; this does not.
_new_envelope: Callable[[tuple[Any, ...]], Envelope] = functools.partial(tuple.__new__, Envelope)


# -- encoding --------------------------------------------------------------------------------------


# A packer is made once per thread, not per message (`packb` makes one each call, and packing an
# `IntEnum` takes msgpack's slow path: together twice the cost of a message's packing). One per
# thread: nodes of the blocking facade run in threads of their own, in one process.
_packers = threading.local()


def _packer() -> msgpack.Packer:
    packer: msgpack.Packer | None = getattr(_packers, "packer", None)
    if packer is None:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer


def pack(kind: Kind, sender: bytes, seq: int, meta: Sequence[Any] | None, body: Any) -> bytes:
    """Encode an envelope. Raises `TypeError` for a body msgpack cannot carry, `ValueError` when
    the result is larger than `MAX_FRAME_SIZE` or holds more than `MAX_VALUES` values (both are
    the caller's mistakes, not the peer's)."""
    try:
        frame: bytes = _packer().pack([VERSION, int(kind), sender, seq, meta, body])
    except (TypeError, ValueError, OverflowError) as exc:
        raise TypeError(f"body cannot be sent: {exc} (bodies are msgpack values)") from exc
    if len(frame) > MAX_FRAME_SIZE:
        raise ValueError(f"message of {len(frame)} bytes exceeds the {MAX_FRAME_SIZE} byte limit")
    if len(frame) > MAX_VALUES:
        try:
            count_values(frame, MAX_VALUES)
        except ProtocolError:
            raise ValueError(f"message holds more than {MAX_VALUES} msgpack values") from None
    return frame


def packed_kind(envelope: bytes) -> int:
    """The kind (its number) of an envelope made by `pack`, read without decoding it: `pack`
    writes an array of six whose version and kind take one byte each."""
    return envelope[2]


def envelope_head(kind: Kind, sender: bytes, seq: int) -> bytes:
    """The start of `pack(kind, sender, seq, None, body)` for any body: the envelope without its
    body, which the caller appends already packed."""
    packed: bytes = msgpack.packb([VERSION, kind, sender, seq, None], use_bin_type=True)
    return b"\x96" + packed[1:]  # an array of six, not five


def event_frame(channel: bytes, envelope: bytes) -> bytes:
    """The published frame of an EVENT or SYNCED envelope on `channel` (from `topic_channel`).
    Raises `ValueError` when it would exceed `MAX_FRAME_SIZE`."""
    if len(envelope) + len(channel) + 1 > MAX_FRAME_SIZE:
        raise ValueError(f"event exceeds the {MAX_FRAME_SIZE} byte frame limit")
    return channel + b"\x00" + envelope


def control_frame(envelope: bytes) -> bytes:
    """The published frame of a HEARTBEAT or BYE envelope (small by construction)."""
    return CONTROL_CHANNEL + envelope


# -- decoding --------------------------------------------------------------------------------------


def decode_inbox(frame: bytes) -> Envelope:
    """Decode a frame received on a node's PULL socket that holds one message (a BATCH is
    refused here: `decode_inbox_many` takes both). Raises `ProtocolError` and nothing else for
    any input that is not valid protocol v1."""
    kind, sender, seq, meta, body = _check_envelope(_load(frame))
    if kind not in _DIRECT_KINDS:
        raise ProtocolError("kind", f"{kind.name} is not sent to an inbox")
    return Envelope(kind, sender, seq, meta, body, None)


def decode_datagram(frame: bytes) -> Envelope:
    """Decode a datagram received on a node's UDP port: one HEARTBEAT or PROBE envelope of at most
    `MAX_DATAGRAM_SIZE` bytes (docs/protocol.md §11, §12). Raises `ProtocolError` and nothing
    else for anything else."""
    if len(frame) > MAX_DATAGRAM_SIZE:
        raise ProtocolError("oversized", f"{len(frame)} byte datagram")
    items = _load(frame)
    envelope = _usual_heartbeat(items)
    if envelope is not None:
        return envelope
    kind, sender, seq, meta, body = _check_envelope(items)
    if kind is not _HEARTBEAT and kind is not Kind.PROBE:
        raise ProtocolError("kind", f"{kind.name} in a datagram")
    return _new_envelope((kind, sender, seq, meta, body, None))


def _usual_heartbeat(items: Any) -> Envelope | None:
    """`items` as an envelope if it is a HEARTBEAT of the shape nodes send, checked in one go
    (a third of what `_check_envelope` costs: every peer sends one by datagram every beat, and
    publishes one every other beat); else None, and `_check_envelope` says what it is."""
    if type(items) is not list or len(items) != 6:
        return None
    version, kind, sender, seq, meta, body = items
    if (
        type(version) is int
        and version == VERSION
        and type(kind) is int
        and kind == _HEARTBEAT
        and type(sender) is bytes
        and len(sender) == NODE_ID_SIZE
        and type(seq) is int
        and 0 < seq <= MAX_UINT64
        and meta is None
        and type(body) is dict
    ):
        _check_value(body, 1)
        return _new_envelope((_HEARTBEAT, sender, seq, None, body, None))
    return None


def decode_inbox_many(frame: bytes) -> list[Envelope]:
    """Decode a frame received on a node's PULL socket: one message, or the messages of a BATCH
    (in order). Raises `ProtocolError` and nothing else for any input that is not valid protocol
    v1; one bad message in a batch makes the whole frame invalid."""
    items = _load(frame)
    if type(items) is list and len(items) == 6 and _is_batch(items[1]):
        return _unbatch(items, _DIRECT_BY_NUMBER, "an inbox", None)
    kind, sender, seq, meta, body = _check_envelope(items)
    if kind not in _DIRECT_KINDS:
        raise ProtocolError("kind", f"{kind.name} is not sent to an inbox")
    return [Envelope(kind, sender, seq, meta, body, None)]


def decode_published(frame: bytes) -> Envelope:
    """Decode a frame received on a SUB socket that holds one message (a BATCH is refused here:
    `decode_published_many` takes both). Raises `ProtocolError` and nothing else for any input
    that is not valid protocol v1."""
    envelopes = _decode_published(frame, batch=False)
    return envelopes[0]


def decode_published_many(frame: bytes) -> list[Envelope]:
    """Decode a frame received on a SUB socket: one message, or the events of a BATCH on an
    event channel (in order). Raises `ProtocolError` and nothing else for any input that is not
    valid protocol v1; one bad message in a batch makes the whole frame invalid."""
    return _decode_published(frame, batch=True)


def _decode_published(frame: bytes, *, batch: bool) -> list[Envelope]:
    channel = frame[:1]
    if channel == EVENT_CHANNEL:
        end = frame.find(b"\x00", 1, MAX_TOPIC_SIZE + 2)
        if end < 0:
            reason = "oversized" if len(frame) > MAX_TOPIC_SIZE + 1 else "truncated"
            raise ProtocolError(reason, "no end of topic within the topic size limit")
        items = _load(_after(frame, end + 1))
        if batch and type(items) is list and len(items) == 6 and _is_batch(items[1]):
            return _unbatch(items, _EVENT_BY_NUMBER, "an event channel", _topic(frame, end))
        kind, sender, seq, meta, body = _check_envelope(items)
        if kind is not _EVENT and kind is not _SYNCED:
            raise ProtocolError("kind", f"{kind.name} on an event channel")
        return [Envelope(kind, sender, seq, meta, body, _topic(frame, end))]
    if channel == CONTROL_CHANNEL:
        items = _load(_after(frame, 1))
        heartbeat = _usual_heartbeat(items)
        if heartbeat is not None:
            return [heartbeat]
        kind, sender, seq, meta, body = _check_envelope(items)
        if kind not in _CONTROL_KINDS:
            raise ProtocolError("kind", f"{kind.name} on the control channel")
        return [Envelope(kind, sender, seq, meta, body, None)]
    if channel == TICKET_CHANNEL:
        if len(frame) <= 1 + TICKET_SIZE:
            raise ProtocolError("truncated", "no envelope after the ticket")
        kind, sender, seq, meta, body = _check_envelope(_load(_after(frame, 1 + TICKET_SIZE)))
        if kind is not _SYNCED:
            raise ProtocolError("kind", f"{kind.name} on a ticket channel")
        return [Envelope(kind, sender, seq, meta, body, "")]
    raise ProtocolError("malformed", f"unknown channel {channel!r}")


def _unbatch(
    items: list[Any], allowed: dict[int, Kind], where: str, topic: str | None
) -> list[Envelope]:
    """The envelopes of a BATCH whose outer array `items` has six items and kind 13, sent to
    `where`, which takes the kinds `allowed` (by number)."""
    version, _, sender, seq, meta, body = items
    if type(version) is not int:
        raise ProtocolError("malformed", "version is not an integer")
    if version != VERSION:
        raise ProtocolError("version", f"protocol version {version} (this node speaks {VERSION})")
    if type(sender) is not bytes or len(sender) != NODE_ID_SIZE:
        raise ProtocolError("malformed", "sender is not a 16-byte id")
    if type(seq) is not int or not 0 < seq <= MAX_UINT64:
        raise ProtocolError("malformed", "seq is not a positive integer")
    if meta is not None:
        raise ProtocolError("malformed", "BATCH takes no meta")
    if type(body) is not list or not body:
        raise ProtocolError("malformed", "BATCH body is not a non-empty array")
    if len(body) > MAX_BATCH:
        raise ProtocolError("oversized", f"more than {MAX_BATCH} messages in a BATCH")
    envelopes = []
    # The checks of `_check_envelope`, inlined: this loop runs once per message under load. Any
    # doubt goes to `_check_envelope` itself, which says exactly what is wrong.
    for item in body:
        if type(item) is not list or len(item) != 6:
            raise ProtocolError("malformed", "envelope is not an array of six items")
        item_version, number, item_sender, item_seq, item_meta, item_body = item
        kind = allowed.get(number) if type(number) is int else None
        if (
            kind is None
            or item_version != VERSION
            or type(item_version) is not int
            or item_sender != sender
            or type(item_seq) is not int
            or not 0 < item_seq <= MAX_UINT64
        ):
            if _is_batch(number):
                raise ProtocolError("kind", "a BATCH inside a BATCH")
            checked_kind = _check_envelope(item)[0]
            if checked_kind not in allowed.values():
                raise ProtocolError("kind", f"{checked_kind.name} in a BATCH to {where}")
            raise ProtocolError("malformed", "a message in a BATCH from another sender")
        if type(item_body) not in _SCALARS:
            _check_value(item_body, 1)
        if kind is _EVENT:  # (the one kind of published batches: its `[prev]` inline)
            if (
                type(item_meta) is list
                and len(item_meta) == 1
                and type(item_meta[0]) is int
                and 0 <= item_meta[0] <= MAX_UINT64
            ):
                checked_meta: tuple[Any, ...] | None = (item_meta[0],)
            else:
                checked_meta = None if item_meta is None else _check_meta(kind, item_meta)
        else:
            checked_meta = (
                None if item_meta is None and kind in _NO_META else _check_meta(kind, item_meta)
            )
            body_rule = _BODY_RULES.get(kind)
            if body_rule is not None:
                item_body = body_rule(kind, sender, item_body)
        envelopes.append(_new_envelope((kind, sender, item_seq, checked_meta, item_body, topic)))
    if envelopes[0].seq != seq:
        raise ProtocolError("malformed", "BATCH seq is not its first message's")
    return envelopes


def _is_batch(kind_number: Any) -> bool:
    return type(kind_number) is int and kind_number == BATCH


def _topic(frame: bytes, end: int) -> str:
    try:
        return frame[1:end].decode()
    except UnicodeDecodeError:
        raise ProtocolError("malformed", "topic is not UTF-8") from None


def _after(frame: bytes, start: int) -> bytes | memoryview:
    # Copying a small frame's tail is cheaper than making a view of it; a large one is not copied.
    return frame[start:] if len(frame) < 65536 else memoryview(frame)[start:]


def _load(frame: bytes | memoryview) -> Any:
    """msgpack-decode a whole frame, mapping every failure to a `ProtocolError`."""
    if len(frame) > MAX_FRAME_SIZE:
        raise ProtocolError("oversized", f"{len(frame)} byte frame")
    if len(frame) > MAX_VALUES:
        count_values(frame, MAX_VALUES)
    try:
        return msgpack.unpackb(frame, raw=False, strict_map_key=False, ext_hook=_refuse_ext)
    except ProtocolError:
        raise
    except msgpack.StackError:  # msgpack's own depth limit (1024), far past ours
        raise ProtocolError("nesting", f"nested deeper than {MAX_NESTING}") from None
    except ValueError as exc:  # UnpackException, StackError, ExtraData, UnicodeDecodeError
        # msgpack caps every length at the buffer's size, so "exceeds max_" means a header
        # announced more than the frame holds: it was cut short.
        text = str(exc)
        reason = "truncated" if "incomplete" in text or "exceeds max_" in text else "malformed"
        raise ProtocolError(reason, f"not msgpack: {exc}") from None
    except (TypeError, RecursionError, MemoryError, OverflowError) as exc:  # unhashable map key
        raise ProtocolError("malformed", f"not msgpack: {exc}") from None


def _check_envelope(items: Any) -> _Message:
    """Validate one decoded envelope (a message, not a BATCH: kind 13 is unknown here)."""
    if type(items) is not list or len(items) != 6:
        raise ProtocolError("malformed", "envelope is not an array of six items")
    version, kind_number, sender, seq, meta, body = items
    if version != VERSION or type(version) is not int:
        if type(version) is not int:
            raise ProtocolError("malformed", "version is not an integer")
        raise ProtocolError("version", f"protocol version {version} (this node speaks {VERSION})")
    kind = _KINDS.get(kind_number) if type(kind_number) is int else None
    if kind is None:
        raise ProtocolError("kind", f"unknown kind {kind_number!r}")
    if type(sender) is not bytes or len(sender) != NODE_ID_SIZE:
        raise ProtocolError("malformed", "sender is not a 16-byte id")
    if type(seq) is not int or not 0 < seq <= MAX_UINT64:
        raise ProtocolError("malformed", "seq is not a positive integer")
    if type(body) not in _SCALARS:
        _check_value(body, 1)
    checked_meta = None if meta is None and kind in _NO_META else _check_meta(kind, meta)
    body_rule = _BODY_RULES.get(kind)
    if body_rule is not None:
        body = body_rule(kind, sender, body)
    return kind, sender, seq, checked_meta, body


def _nil_body(kind: Kind, sender: bytes, body: Any) -> None:
    if body is not None:
        raise ProtocolError("malformed", f"{kind.name} takes no body")


def _map_body(kind: Kind, sender: bytes, body: Any) -> Any:
    if type(body) is not dict:
        raise ProtocolError("malformed", f"{kind.name} body is not a map")
    return body


#: Bytes of the key a keyed node's heartbeat datagrams to a peer are authenticated with.
BEAT_KEY_SIZE: Final = 32


def _ready_body(kind: Kind, sender: bytes, body: Any) -> bytes | None:
    """READY's body: nothing, or (from a keyed node) ``{"beat": key}``, the key of the MAC on
    its heartbeat datagrams to the receiver; decoded to the key or None."""
    if body is None:
        return None
    key = body.get("beat") if type(body) is dict else None
    if type(key) is not bytes or len(key) != BEAT_KEY_SIZE:
        raise ProtocolError(
            "malformed", f"READY body is not nil or {{beat: {BEAT_KEY_SIZE} bytes}}"
        )
    return key


def _events_body(kind: Kind, sender: bytes, body: Any) -> list[tuple[Any, ...]]:
    """EVENTS' body: at most `MAX_BATCH` items by seq, each an event ``[seq, prev, topic,
    body]`` (``prev < seq``) or the mark of one no longer kept, ``[seq, topic]``."""
    if type(body) is not list or len(body) > MAX_BATCH:
        raise ProtocolError("malformed", f"EVENTS body is not an array of at most {MAX_BATCH}")
    items = []
    previous = 0
    for item in body:
        if type(item) is not list or len(item) not in (2, 4) or type(item[0]) is not int:
            raise ProtocolError("malformed", "an EVENTS item is not [seq, prev, topic, body]")
        seq, prev, topic = (item[0], 0, item[1]) if len(item) == 2 else item[:3]
        if (
            not previous < seq <= MAX_UINT64
            or type(prev) is not int
            or not 0 <= prev < seq
            or type(topic) is not str
            or "\x00" in topic
        ):
            raise ProtocolError("malformed", "an EVENTS item's seq, prev or topic is not valid")
        previous = seq
        items.append(tuple(item))
    return items


def _list_body(kind: Kind, sender: bytes, body: Any) -> Any:
    if type(body) is not list:
        raise ProtocolError("malformed", f"{kind.name} body must be an array")
    return body


def _record_body(kind: Kind, sender: bytes, body: Any) -> PeerRecord | Hello:
    parsed: PeerRecord | Hello
    if kind is Kind.UPDATE:
        parsed = record = parse_record(body)
    else:
        parsed = parse_hello(body)
        record = parsed.record
    if record.id != sender:
        raise ProtocolError("malformed", "the record's id is not the sender's")
    return parsed


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
    # The kinds of every task's round trip, checked in one expression each (the general loop
    # below costs several times as much, and these come once per task); anything doubtful
    # falls through to it, which says what is wrong.
    if type(meta) is list:
        if kind is _EVENT or kind is _ACK:
            if len(meta) == 1 and type(meta[0]) is int and 0 <= meta[0] <= MAX_UINT64:
                return (meta[0],)
        elif kind is _TASK:
            if (
                len(meta) == 3
                and type(meta[0]) is int
                and type(meta[1]) is str
                and type(meta[2]) is int
                and 0 <= meta[0] <= MAX_UINT64
                and 0 <= meta[2] <= MAX_UINT64
                and len(meta[1]) <= MAX_TOPIC_SIZE // 4
            ):
                return (meta[0], meta[1], meta[2])
        elif kind is _REQUEST and (
            len(meta) == 4
            and type(meta[0]) is int
            and type(meta[1]) is str
            and type(meta[2]) is int
            and type(meta[3]) is int
            and 0 <= meta[0] <= MAX_UINT64
            and 0 <= meta[2] <= MAX_UINT64
            and 0 <= meta[3] <= MAX_UINT64
            and len(meta[1]) <= MAX_TOPIC_SIZE // 4
        ):
            return (meta[0], meta[1], meta[2], meta[3])
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
        # (a str of at most a quarter of the limit in characters fits it in UTF-8)
        if (
            type(item) is str
            and len(item) > MAX_TOPIC_SIZE // 4
            and (len(item.encode()) > MAX_TOPIC_SIZE)
        ):
            raise ProtocolError("oversized", f"{kind.name} meta string too long")
    if kind is _SYNCED and len(meta[1]) != NODE_ID_SIZE:
        raise ProtocolError("malformed", "SYNCED addressee is not a 16-byte id")
    if kind is Kind.TICKET and len(meta[1]) != TICKET_SIZE:
        raise ProtocolError("malformed", f"a ticket is not {TICKET_SIZE} bytes")
    return tuple(meta)


_BODY_RULES: Final[dict[Kind, Callable[[Kind, bytes, Any], Any]]] = {
    Kind.HEARTBEAT: _map_body,
    Kind.BYE: _nil_body,
    Kind.HELLO: _record_body,
    Kind.WELCOME: _record_body,
    Kind.UPDATE: _record_body,
    Kind.ACK: _nil_body,
    Kind.NACK: _nil_body,
    Kind.HISTORY: _nil_body,
    Kind.EVENTS: _events_body,
    Kind.SYNC: _nil_body,
    Kind.TICKET: _nil_body,
    Kind.SYNCED: _nil_body,
    Kind.READY: _ready_body,
    Kind.DROPPED: _nil_body,
    Kind.PROBE: _list_body,
}

_META_SHAPES: Final[dict[Kind, tuple[type, ...] | None]] = {
    Kind.EVENT: (int,),
    Kind.HEARTBEAT: None,
    Kind.BYE: None,
    Kind.HELLO: None,
    Kind.WELCOME: None,
    Kind.UPDATE: None,
    Kind.TASK: (int, str, int),
    Kind.ACK: (int,),
    Kind.NACK: (int, str),
    Kind.REQUEST: (int, str, int, int),
    Kind.REPLY: (int, bool),
    Kind.HISTORY: (int, str, int, int, int, int),
    Kind.EVENTS: (int, bool),
    Kind.DROPPED: (int, int),
    Kind.PROBE: (int, int, bytes),
    Kind.SYNC: (int, str),
    Kind.TICKET: (int, bytes),
    Kind.SYNCED: (int, bytes),
    Kind.READY: None,
}
