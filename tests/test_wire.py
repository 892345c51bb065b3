"""Wire protocol v1 (mesh/_wire.py): encoding, round trips and strict decoding. Pure: no IO.

Every message is one frame: an inbox frame is the envelope alone (`decode_inbox`); a published
frame is ``b"E" + topic + b"\\x00" + envelope`` or ``b"!" + envelope`` (`decode_published`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery import PeerRecord
from mesh import ProtocolError
from mesh._batches import (
    BATCH_BYTES,
    BATCH_MESSAGES,
    batch_envelope,
    coalesce_direct,
    coalesce_published,
)
from mesh._hello import MAX_PEERS_LISTED, Hello
from mesh._names import topic_channel
from mesh._values import count_values
from mesh._wire import (
    BATCH,
    CONTROL_CHANNEL,
    EVENT_CHANNEL,
    MAX_BATCH,
    MAX_DATAGRAM_SIZE,
    MAX_FRAME_SIZE,
    MAX_NESTING,
    MAX_TOPIC_SIZE,
    MAX_UINT64,
    MAX_VALUES,
    TICKET_CHANNEL,
    TICKET_SIZE,
    Envelope,
    Kind,
    control_frame,
    decode_datagram,
    decode_inbox,
    decode_inbox_many,
    decode_published,
    decode_published_many,
    envelope_head,
    event_frame,
    pack,
    packed_kind,
)

from .conftest import make_record

SENDER = bytes(range(16))
OTHER = bytes(range(100, 116))
MIN_INT64 = -(2**63)
REASONS = {"truncated", "oversized", "malformed", "version", "kind", "type", "nesting", "record"}

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

Decoder = Callable[[bytes], Envelope]


# -- helpers ---------------------------------------------------------------------------------------


def record(node_id: bytes = SENDER, **changes: Any) -> PeerRecord:
    return make_record(node_id, **changes)


def raw(*items: Any) -> bytes:
    """An envelope packed by plain msgpack, bypassing `pack` (so it may break every rule)."""
    return msgpack.packb(list(items), use_bin_type=True)


def with_raw_body(kind: int, body: bytes, meta: Any = None) -> bytes:
    """An envelope whose body is the given msgpack bytes, spliced in verbatim."""
    head = raw(1, kind, SENDER, 1, meta, None)
    assert head.endswith(b"\xc0")
    return head[:-1] + body


def event(envelope: bytes, topic: str = "orders.new") -> bytes:
    return event_frame(topic_channel(topic), envelope)


def reason(decoder: Decoder, frame: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        decoder(frame)
    return info.value.reason


def inbox_reason(envelope: bytes) -> str:
    return reason(decode_inbox, envelope)


def published_reason(frame: bytes) -> str:
    return reason(decode_published, frame)


def outcome(decoder: Decoder, frame: bytes) -> Envelope | ProtocolError:
    """What `decoder` makes of `frame`: an envelope, or the ProtocolError it raised (anything else
    it raises propagates and fails the test)."""
    try:
        return decoder(frame)
    except ProtocolError as exc:
        return exc


def delivered(kind: Kind, envelope: bytes, topic: str = "orders.new") -> tuple[Decoder, bytes]:
    """The decoder and the frame that carry `kind` on its usual socket (BYE: the inbox)."""
    if kind in (Kind.EVENT, Kind.SYNCED):
        return decode_published, event(envelope, topic)
    if kind is Kind.HEARTBEAT or kind is Kind.DROPPED:
        return decode_published, control_frame(envelope)
    if kind is Kind.PROBE:
        return decode_datagram, envelope
    return decode_inbox, envelope


def natural_reason(kind: Kind, envelope: bytes) -> str:
    return reason(*delivered(kind, envelope))


def same(a: Any, b: Any) -> bool:
    """Equality that also requires equal types all the way down (1 == 1.0 == True otherwise)."""
    if type(a) is not type(b):
        return False
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is dict:
        if {(type(k), k) for k in a} != {(type(k), k) for k in b}:
            return False
        return all(same(a[k], b[k]) for k in a)
    if type(a) is float:
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def depth(value: Any) -> int:
    if type(value) is list:
        return 1 + max((depth(v) for v in value), default=0)
    if type(value) is dict:
        return 1 + max((depth(v) for v in value.values()), default=0)
    return 0


def nested_lists(levels: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(levels - 1):
        value = [value]
    return value


def nested_maps(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


HELLO_BODY = Hello(record(), ("127.0.0.1:6001", "[::1]:7001")).to_wire()

# kind -> (meta, body) of a valid message
VALID: dict[Kind, tuple[Any, Any]] = {
    Kind.EVENT: ([41], {"order": 42}),
    Kind.HEARTBEAT: (None, {}),
    Kind.BYE: (None, None),
    Kind.HELLO: (None, HELLO_BODY),
    Kind.WELCOME: (None, HELLO_BODY),
    Kind.UPDATE: (None, record().to_wire()),
    Kind.TASK: ([7, "resize", 1], b"\x89PNG"),
    Kind.ACK: ([7], None),
    Kind.NACK: ([7, "busy"], None),
    Kind.SYNC: ([3, "orders."], None),
    Kind.SYNCED: ([3, OTHER], None),
    Kind.TICKET: ([3, b"\x01" * 8], None),
    Kind.READY: (None, None),
    Kind.REQUEST: ([8, "price", 1, 2500], {"sku": "A1"}),
    Kind.REPLY: ([8, True], {"price": 12}),
    Kind.HISTORY: ([3, "chat.", 100, 0, 50, 57], None),
    Kind.EVENTS: ([3, True], [[55, 40, "chat.room", {"text": "hi"}], [56, "chat.y"]]),
    Kind.DROPPED: ([50, 57], None),
    Kind.PROBE: ([1, 7, bytes(16)], [[1, bytes(range(16)), 3, bytes(16)]]),
}
PUB_ONLY = [Kind.EVENT, Kind.SYNCED, Kind.DROPPED]
DIRECT_ONLY = [
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
]


def valid_envelope(kind: Kind, seq: int = 1) -> bytes:
    meta, body = VALID[kind]
    return pack(kind, SENDER, seq, meta, body)


def task_with_body(body: Any) -> bytes:
    return pack(Kind.TASK, SENDER, 1, [1, "svc", 1], body)


# -- round trips of every kind ---------------------------------------------------------------------


def test_kind_values_are_the_protocol_numbers() -> None:
    assert {k.name: int(k) for k in Kind} == {
        "EVENT": 1,
        "HEARTBEAT": 2,
        "BYE": 3,
        "HELLO": 4,
        "WELCOME": 5,
        "UPDATE": 6,
        "TASK": 7,
        "ACK": 8,
        "NACK": 9,
        "SYNC": 10,
        "SYNCED": 11,
        "READY": 12,
        "REQUEST": 14,
        "REPLY": 15,
        "HISTORY": 16,
        "EVENTS": 17,
        "DROPPED": 18,
        "PROBE": 19,
        "TICKET": 20,
    }


def test_pack_is_the_documented_six_item_array() -> None:
    envelope = pack(Kind.TASK, SENDER, 9, [7, "resize", 1], {"w": 64})
    assert msgpack.unpackb(envelope, raw=False) == [1, 7, SENDER, 9, [7, "resize", 1], {"w": 64}]
    assert envelope == raw(1, 7, SENDER, 9, [7, "resize", 1], {"w": 64})


def test_published_frame_layouts() -> None:
    envelope = pack(Kind.EVENT, SENDER, 1, None, 1)
    assert event_frame(topic_channel("orders.new"), envelope) == b"Eorders.new\x00" + envelope
    assert event_frame(topic_channel(""), envelope) == b"E\x00" + envelope
    bye = pack(Kind.BYE, SENDER, 1, None, None)
    assert control_frame(bye) == b"!" + bye
    assert EVENT_CHANNEL == b"E"
    assert CONTROL_CHANNEL == b"!"


def test_event_round_trip() -> None:
    frame = event(pack(Kind.EVENT, SENDER, 5, None, {"order": 42}), "orders.new")
    assert decode_published(frame) == Envelope(
        Kind.EVENT, SENDER, 5, None, {"order": 42}, "orders.new"
    )


def test_heartbeat_round_trip() -> None:
    frame = control_frame(pack(Kind.HEARTBEAT, SENDER, 2, None, {}))
    assert decode_published(frame) == Envelope(Kind.HEARTBEAT, SENDER, 2, None, {}, None)


def test_bye_round_trip_published_on_the_control_channel() -> None:
    frame = control_frame(pack(Kind.BYE, SENDER, 3, None, None))
    assert decode_published(frame) == Envelope(Kind.BYE, SENDER, 3, None, None, None)


def test_bye_round_trip_sent_to_an_inbox() -> None:
    assert decode_inbox(pack(Kind.BYE, SENDER, 3, None, None)) == Envelope(
        Kind.BYE, SENDER, 3, None, None, None
    )


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.WELCOME])
def test_hello_and_welcome_round_trip(kind: Kind) -> None:
    hello = Hello(record(), ("127.0.0.1:6001", "[::1]:7001"))
    envelope = decode_inbox(pack(kind, SENDER, 1, None, hello.to_wire()))
    assert envelope == Envelope(kind, SENDER, 1, None, hello, None)
    assert type(envelope.body) is Hello
    assert envelope.body.record == record()
    assert envelope.body.peers == ("127.0.0.1:6001", "[::1]:7001")


def test_hello_with_no_peers() -> None:
    body = {"record": record().to_wire(), "peers": []}
    assert decode_inbox(pack(Kind.HELLO, SENDER, 1, None, body)).body == Hello(record(), ())


def test_hello_peer_addresses_are_normalised() -> None:
    body = {
        "record": record().to_wire(),
        "peers": ["tcp://10.0.0.2:5555", "[0:0:0:0:0:0:0:1]:7", " 10.0.0.3:1 "],
    }
    envelope = decode_inbox(pack(Kind.HELLO, SENDER, 1, None, body))
    assert envelope.body.peers == ("10.0.0.2:5555", "[::1]:7", "10.0.0.3:1")


def test_hello_accepts_exactly_max_peers_listed() -> None:
    peers = [f"10.0.{i // 256}.{i % 256}:5000" for i in range(MAX_PEERS_LISTED)]
    body = {"record": record().to_wire(), "peers": peers}
    assert len(decode_inbox(pack(Kind.HELLO, SENDER, 1, None, body)).body.peers) == len(peers)


def test_hello_ignores_unknown_keys() -> None:
    body = {"record": record().to_wire(), "peers": [], "later": [1, 2]}
    assert decode_inbox(pack(Kind.HELLO, SENDER, 1, None, body)).body == Hello(record(), ())


def test_update_round_trip_gives_a_record() -> None:
    rec = record(public_key="rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7", host="::1")
    envelope = decode_inbox(pack(Kind.UPDATE, SENDER, 4, None, rec.to_wire()))
    assert envelope == Envelope(Kind.UPDATE, SENDER, 4, None, rec, None)
    assert type(envelope.body) is PeerRecord


def test_task_round_trip() -> None:
    envelope = pack(Kind.TASK, SENDER, 11, [7, "resize", 2], b"\x89PNG")
    assert decode_inbox(envelope) == Envelope(
        Kind.TASK, SENDER, 11, (7, "resize", 2), b"\x89PNG", None
    )


def test_ack_round_trip() -> None:
    assert decode_inbox(pack(Kind.ACK, SENDER, 12, [7], None)) == Envelope(
        Kind.ACK, SENDER, 12, (7,), None, None
    )


def test_nack_round_trip() -> None:
    assert decode_inbox(pack(Kind.NACK, SENDER, 13, [7, "service not offered here"], None)) == (
        Envelope(Kind.NACK, SENDER, 13, (7, "service not offered here"), None, None)
    )


def test_sync_round_trip() -> None:
    assert decode_inbox(pack(Kind.SYNC, SENDER, 14, [3, "orders."], None)) == Envelope(
        Kind.SYNC, SENDER, 14, (3, "orders."), None, None
    )


def test_synced_round_trip_carries_the_prefix_as_topic() -> None:
    frame = event(pack(Kind.SYNCED, SENDER, 15, [3, OTHER], None), "orders.")
    assert decode_published(frame) == Envelope(Kind.SYNCED, SENDER, 15, (3, OTHER), None, "orders.")


def test_synced_on_a_ticket_channel_has_an_empty_topic() -> None:
    envelope = pack(Kind.SYNCED, SENDER, 15, [3, OTHER], None)
    frame = TICKET_CHANNEL + b"\x00" * TICKET_SIZE + envelope  # any 8 bytes, NUL included
    assert decode_published(frame) == Envelope(Kind.SYNCED, SENDER, 15, (3, OTHER), None, "")
    assert decode_published_many(frame) == [decode_published(frame)]


def test_a_ticket_channel_sorts_after_every_event_channel() -> None:
    # A SUB sends its subscriptions to a new connection in byte order (ZeroMQ's trie): a
    # ticket's proof covers the event channels there only because they go first.
    assert TICKET_CHANNEL > EVENT_CHANNEL + b"\xff" * MAX_TOPIC_SIZE


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (b"S", "truncated"),
        (b"S" + b"t" * TICKET_SIZE, "truncated"),
        (
            b"S" + b"t" * (TICKET_SIZE - 1) + pack(Kind.SYNCED, SENDER, 1, [3, OTHER], None),
            "malformed",
        ),
        (b"S" + b"t" * TICKET_SIZE + pack(Kind.EVENT, SENDER, 1, [0], 1), "kind"),
        (b"S" + b"t" * TICKET_SIZE + pack(Kind.BYE, SENDER, 1, None, None), "kind"),
        (
            b"S"
            + b"t" * TICKET_SIZE
            + raw(1, 13, SENDER, 1, None, [[1, 11, SENDER, 1, [3, OTHER], None]]),
            "kind",
        ),
    ],
    ids=["empty", "no envelope", "short ticket", "EVENT", "BYE", "BATCH"],
)
def test_a_ticket_channel_carries_one_synced(frame: bytes, why: str) -> None:
    assert published_reason(frame) == why


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips_on_its_socket(kind: Kind) -> None:
    decoder, frame = delivered(kind, valid_envelope(kind, seq=77))
    envelope = decoder(frame)
    assert type(envelope) is Envelope
    assert envelope.kind is kind
    assert type(envelope.kind) is Kind
    assert envelope.sender == SENDER
    assert envelope.seq == 77
    meta, _ = VALID[kind]
    assert envelope.meta == (None if meta is None else tuple(meta))
    assert envelope.topic == ("orders.new" if kind in (Kind.EVENT, Kind.SYNCED) else None)


def test_meta_integers_up_to_uint64_max() -> None:
    envelope = pack(Kind.TASK, SENDER, MAX_UINT64, [MAX_UINT64, "s", MAX_UINT64], None)
    assert decode_inbox(envelope) == Envelope(
        Kind.TASK, SENDER, MAX_UINT64, (MAX_UINT64, "s", MAX_UINT64), None
    )


@pytest.mark.parametrize(
    ("kind", "meta"),
    [
        (Kind.TASK, [1, "s" * MAX_TOPIC_SIZE, 1]),
        (Kind.NACK, [1, "r" * MAX_TOPIC_SIZE]),
        (Kind.SYNC, [1, "p" * MAX_TOPIC_SIZE]),
        (Kind.SYNC, [1, "é" * (MAX_TOPIC_SIZE // 2)]),
    ],
)
def test_meta_strings_of_max_topic_size_bytes_are_accepted(kind: Kind, meta: list[Any]) -> None:
    assert decode_inbox(pack(kind, SENDER, 1, meta, None)).meta == tuple(meta)


# -- bodies ----------------------------------------------------------------------------------------

BODIES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    127,
    128,
    -33,
    255,
    65536,
    2**32,
    2**63,
    MAX_UINT64,
    MIN_INT64,
    0.0,
    -0.0,
    1.5,
    -2.25,
    1e308,
    5e-324,
    math.inf,
    -math.inf,
    "",
    "plain",
    "héllo wörld ✓ 日本 🚀",
    "\x00nul",
    "x" * 70_000,
    b"",
    b"\x00\xff" * 100,
    bytes(range(256)),
    [],
    [1, "a", b"b", None, 2.5, True],
    {},
    {"s": 1, 2: "int key", b"k": b"bytes key", -5: None},
    {None: 1, True: 2, 1.5: 3},
    {"a": [1, {"b": [b"x", None, {"c": {}}]}], "d": [[], [[]]]},
]


@pytest.mark.parametrize("body", BODIES, ids=lambda body: repr(body)[:40])
def test_event_body_round_trip(body: Any) -> None:
    envelope = decode_published(event(pack(Kind.EVENT, SENDER, 1, None, body), "t"))
    assert same(envelope.body, body)


@pytest.mark.parametrize("body", BODIES, ids=lambda body: repr(body)[:40])
def test_task_body_round_trip(body: Any) -> None:
    assert same(decode_inbox(task_with_body(body)).body, body)


def test_nan_body_round_trip() -> None:
    body = decode_published(event(pack(Kind.EVENT, SENDER, 1, None, math.nan))).body
    assert type(body) is float
    assert math.isnan(body)


def test_bytes_come_back_as_bytes_not_str() -> None:
    payload = "é".encode()  # valid UTF-8, still bytes
    body = decode_inbox(task_with_body({b"k": payload})).body
    assert type(body) is dict
    ((key, value),) = body.items()
    assert type(key) is bytes
    assert key == b"k"
    assert type(value) is bytes
    assert value == payload


def test_tuples_and_bytearrays_are_sent_as_lists_and_bytes() -> None:
    assert same(decode_inbox(task_with_body((1, bytearray(b"ab")))).body, [1, b"ab"])


def test_nesting_of_exactly_max_nesting_lists_is_accepted() -> None:
    body = nested_lists(MAX_NESTING)
    assert depth(body) == MAX_NESTING
    assert decode_inbox(task_with_body(body)).body == body


def test_nesting_of_exactly_max_nesting_maps_is_accepted() -> None:
    body = nested_maps(MAX_NESTING)
    assert depth(body) == MAX_NESTING
    assert decode_published(event(pack(Kind.EVENT, SENDER, 1, None, body))).body == body


def test_scalars_inside_the_deepest_allowed_container_are_accepted() -> None:
    body: Any = [1, "a", b"b", None]
    for level in range(MAX_NESTING - 1):
        body = {"k": body, 1: 2.5} if level % 2 else [None, body, b"x"]
    assert depth(body) == MAX_NESTING
    assert decode_inbox(task_with_body(body)).body == body


def _envelope_of_size(size: int) -> bytes:
    probe = 100_000  # a bin 32 header either way
    fill = size - len(task_with_body(b"x" * probe)) + probe
    envelope = task_with_body(b"x" * fill)
    assert len(envelope) == size
    return envelope


def test_envelope_of_exactly_max_frame_size_is_accepted() -> None:
    envelope = _envelope_of_size(MAX_FRAME_SIZE)
    assert len(decode_inbox(envelope).body) > MAX_FRAME_SIZE - 100


def test_a_published_frame_is_never_over_max_frame_size() -> None:
    fill = MAX_FRAME_SIZE - len(pack(Kind.EVENT, SENDER, 1, None, b"x" * 100_000)) + 100_000
    envelope = pack(Kind.EVENT, SENDER, 1, None, b"x" * fill)
    assert len(envelope) == MAX_FRAME_SIZE
    try:
        frame = event_frame(topic_channel("orders.new"), envelope)
    except ValueError:
        return
    assert len(frame) <= MAX_FRAME_SIZE


# -- topics ----------------------------------------------------------------------------------------


def test_topic_channel() -> None:
    assert topic_channel("orders.new") == b"Eorders.new"
    assert topic_channel("") == b"E"
    assert topic_channel("ünï 🚀") == b"E" + "ünï 🚀".encode()


def test_topic_channel_of_a_prefix_is_a_prefix_of_the_published_frame() -> None:
    """SUB sockets match subscriptions as byte prefixes of the frame."""
    envelope = pack(Kind.EVENT, SENDER, 1, None, 1)
    frame = event(envelope, "orders.new")
    for prefix in ("", "o", "orders.", "orders.new"):
        assert frame.startswith(topic_channel(prefix))
    assert not frame.startswith(topic_channel("orders.old"))
    assert not frame.startswith(control_frame(b""))


def test_empty_topic_round_trip() -> None:
    assert decode_published(event(pack(Kind.EVENT, SENDER, 1, None, 1), "")).topic == ""


def test_unicode_topic_round_trip() -> None:
    frame = event(pack(Kind.EVENT, SENDER, 1, None, 1), "ünï.日本.🚀")
    assert decode_published(frame).topic == "ünï.日本.🚀"


def test_topic_of_max_topic_size_bytes() -> None:
    for topic in ("t" * MAX_TOPIC_SIZE, "é" * (MAX_TOPIC_SIZE // 2)):
        channel = topic_channel(topic)
        assert len(channel) == 1 + MAX_TOPIC_SIZE
        frame = event_frame(channel, pack(Kind.EVENT, SENDER, 1, None, 1))
        assert decode_published(frame).topic == topic


@pytest.mark.parametrize("topic", [b"orders", 1, None, ["a"]], ids=repr)
def test_topic_channel_refuses_non_str(topic: Any) -> None:
    with pytest.raises(TypeError):
        topic_channel(topic)


@pytest.mark.parametrize(
    "topic",
    ["t" * (MAX_TOPIC_SIZE + 1), "é" * (MAX_TOPIC_SIZE // 2) + "t", "🚀" * 257],
    ids=["ascii", "2-byte", "4-byte"],
)
def test_topic_channel_refuses_topics_over_max_topic_size_bytes(topic: str) -> None:
    with pytest.raises(ValueError, match="longer than"):
        topic_channel(topic)


@pytest.mark.parametrize("topic", ["\x00", "a\x00b", "orders.\x00"], ids=repr)
def test_topic_channel_refuses_nul(topic: str) -> None:
    with pytest.raises(ValueError, match="NUL"):
        topic_channel(topic)


def test_topic_channel_refuses_lone_surrogates() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        topic_channel("bad\ud800")


# -- encoding errors -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        object(),
        {1, 2},
        frozenset({1}),
        {"nested": {1, 2}},
        [object()],
        1 + 2j,
        2**64,
        MIN_INT64 - 1,
        "lone \ud800 surrogate",
    ],
    ids=repr,
)
def test_pack_refuses_a_body_msgpack_cannot_carry(body: Any) -> None:
    with pytest.raises(TypeError, match="body cannot be sent"):
        pack(Kind.EVENT, SENDER, 1, None, body)


def test_pack_refuses_an_envelope_over_max_frame_size() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        task_with_body(b"x" * MAX_FRAME_SIZE)


# -- strict decoding: frame level ------------------------------------------------------------------


def test_empty_frame() -> None:
    assert inbox_reason(b"") == "truncated"
    assert published_reason(b"") == "malformed"  # no channel at all
    assert published_reason(b"!") == "truncated"
    assert published_reason(b"E") == "truncated"
    assert published_reason(b"E\x00") == "truncated"
    assert published_reason(b"Eorders.new") == "truncated"
    assert published_reason(b"Eorders.new\x00") == "truncated"


@pytest.mark.parametrize("kind", list(Kind))
def test_every_proper_prefix_of_a_frame_is_truncated(kind: Kind) -> None:
    """Also when a header announces more items than the cut frame holds (msgpack then says "N
    exceeds max_array_len")."""
    decoder, frame = delivered(kind, valid_envelope(kind))
    reasons = {cut: reason(decoder, frame[:cut]) for cut in range(1, len(frame))}
    assert {cut: r for cut, r in reasons.items() if r != "truncated"} == {}


@pytest.mark.parametrize("size", [30, 60])
def test_a_cut_container_that_announces_more_items_than_bytes_is_truncated(size: int) -> None:
    assert inbox_reason(task_with_body(list(range(100)))[:size]) == "truncated"
    assert inbox_reason(task_with_body({i: i for i in range(100)})[:size]) == "truncated"


@pytest.mark.parametrize("extra", [b"\x00", b"\xc0", b"\x90", b"\xff\xff"], ids=repr)
def test_trailing_data_after_the_envelope(extra: bytes) -> None:
    assert inbox_reason(valid_envelope(Kind.TASK) + extra) == "malformed"
    assert published_reason(event(valid_envelope(Kind.EVENT)) + extra) == "malformed"
    assert published_reason(control_frame(valid_envelope(Kind.HEARTBEAT)) + extra) == "malformed"


def test_two_envelopes_in_one_frame() -> None:
    envelope = valid_envelope(Kind.TASK)
    assert inbox_reason(envelope + envelope) == "malformed"


def test_oversized_frame() -> None:
    junk = b"\x00" * (MAX_FRAME_SIZE + 1)
    assert inbox_reason(junk) == "oversized"
    assert published_reason(b"!" + junk) == "oversized"
    assert published_reason(b"Eorders\x00" + junk) == "oversized"


def test_oversized_valid_envelope() -> None:
    envelope = raw(1, Kind.TASK, SENDER, 1, [1, "s", 1], b"x" * MAX_FRAME_SIZE)
    assert len(envelope) > MAX_FRAME_SIZE
    assert inbox_reason(envelope) == "oversized"
    envelope = raw(1, Kind.EVENT, SENDER, 1, None, b"x" * MAX_FRAME_SIZE)
    assert published_reason(b"Et\x00" + envelope) == "oversized"


def test_a_frame_of_empty_arrays_is_refused_before_it_is_decoded() -> None:
    # 16 MiB of one-byte empty arrays would decode to a gigabyte of lists: the frame is counted
    # from its headers and refused at the limit, before anything is built.
    body = b"\xdd" + (MAX_FRAME_SIZE - 64).to_bytes(4, "big") + b"\x90" * (MAX_FRAME_SIZE - 64)
    envelope = with_raw_body(Kind.TASK, body, [1, "s", 1])
    assert inbox_reason(envelope) == "oversized"
    assert published_reason(b"Et\x00" + with_raw_body(Kind.EVENT, body)) == "oversized"
    # Within a BATCH too: 4096 tasks of 100 empty arrays each, 1.9 million values in 0.6 MiB.
    tasks = [item(Kind.TASK, 1 + i, [i, "s", 1], [[]] * 100) for i in range(MAX_BATCH)]
    batch = raw_batch(tasks)
    assert len(batch) > MAX_VALUES
    assert inbox_reason(batch) == "oversized"
    assert len(decode_inbox_many(raw_batch(tasks[:2000]))) == 2000  # 0.22 million: taken


def test_a_large_frame_within_the_value_limit_decodes() -> None:
    body = [b"x" * 100] * (MAX_VALUES // 2)  # 13 MiB, half the values allowed
    frame = pack(Kind.TASK, SENDER, 1, [1, "s", 1], body)
    assert len(frame) > MAX_VALUES
    assert decode_inbox(frame).body == body


def test_the_value_limit_is_exact() -> None:
    # Besides the body's items: the envelope's array, four header items, meta's array and its
    # three items, and the body's array: 10 values.
    at_limit = [0] * (MAX_VALUES - 10)
    frame = msgpack.packb([1, Kind.TASK, SENDER, 1, [1, "s", 1], at_limit])
    assert count_values(frame, MAX_VALUES) == MAX_VALUES
    assert decode_inbox(frame).body == at_limit
    over = msgpack.packb([1, Kind.TASK, SENDER, 1, [1, "s", 1], [*at_limit, 0]])
    assert inbox_reason(over) == "oversized"


def test_a_node_refuses_to_send_more_values_than_a_frame_may_hold() -> None:
    with pytest.raises(ValueError, match="msgpack values"):
        pack(Kind.TASK, SENDER, 1, [1, "s", 1], [None] * MAX_VALUES)
    assert pack(Kind.TASK, SENDER, 1, [1, "s", 1], [None] * 1000)


@pytest.mark.parametrize(
    ("frame", "values"),
    [
        (msgpack.packb(None), 1),
        (msgpack.packb([]), 1),
        (msgpack.packb({}), 1),
        (msgpack.packb([1, [2, [3]], {"a": [None, True]}]), 11),
        (msgpack.packb({"k" * 40: b"v" * 70_000, 2**40: -(2**40), 1.5: "x" * 300}), 7),
        (msgpack.packb(list(range(70_000))), 70_001),
        (msgpack.packb({i: i for i in range(20)}), 41),
        (msgpack.packb([]) + b"junk after it", 1),
    ],
)
def test_values_are_counted_from_their_headers(frame: bytes, values: int) -> None:
    assert count_values(frame, 10**9) == values
    assert count_values(memoryview(frame), values) == values
    with pytest.raises(ProtocolError, match="more than"):
        count_values(frame, values - 1)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (b"", "truncated"),
        (b"\x92\x01", "truncated"),  # an array of two with one
        (b"\xdd\xff\xff\xff\xff", "truncated"),  # four billion announced, none there
        (b"\xc1", "malformed"),
        (b"\x91\xd6\xff\x00\x00\x00\x00", "type"),  # a timestamp
        (b"\xc7\x01\x05\x00", "type"),
    ],
)
def test_a_frame_that_cannot_be_counted(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        count_values(frame, 10**9)
    assert caught.value.reason == reason


@pytest.mark.parametrize(
    "envelope",
    [
        raw(1, 7, SENDER, 1, [1, "s", 1]),
        raw(1, 7, SENDER, 1, [1, "s", 1], None, None),
        raw(),
        raw(1),
        msgpack.packb({"version": 1}),
        msgpack.packb(1),
        msgpack.packb(None),
        msgpack.packb("envelope"),
        msgpack.packb(b"envelope"),
    ],
    ids=["5 items", "7 items", "0 items", "1 item", "map", "int", "nil", "str", "bin"],
)
def test_envelope_that_is_not_an_array_of_six(envelope: bytes) -> None:
    assert inbox_reason(envelope) == "malformed"
    assert published_reason(b"Et\x00" + envelope) == "malformed"
    assert published_reason(b"!" + envelope) == "malformed"


def test_not_msgpack_at_all() -> None:
    assert inbox_reason(b"\xc1") == "malformed"  # the one byte msgpack never uses
    assert inbox_reason(b"\x96\xc1\xc1\xc1\xc1\xc1\xc1") == "malformed"
    assert published_reason(b"!\xc1") == "malformed"


def test_invalid_utf8_in_a_str_item() -> None:
    assert inbox_reason(with_raw_body(Kind.TASK, b"\xa2\xff\xfe", meta=[1, "s", 1])) == "malformed"


def test_a_published_frame_sent_to_an_inbox_is_refused() -> None:
    assert inbox_reason(event(valid_envelope(Kind.EVENT))) == "malformed"  # b"E" is int 69
    assert inbox_reason(control_frame(valid_envelope(Kind.BYE))) == "malformed"  # b"!" is int 33


def test_an_inbox_frame_published_is_refused() -> None:
    assert published_reason(valid_envelope(Kind.TASK)) == "malformed"  # no channel


# -- strict decoding: header fields ----------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, 255, -1, MAX_UINT64])
def test_wrong_version(version: int) -> None:
    assert inbox_reason(raw(version, 7, SENDER, 1, [1, "s", 1], None)) == "version"
    assert published_reason(b"Et\x00" + raw(version, 1, SENDER, 1, None, None)) == "version"


@pytest.mark.parametrize("version", [True, "1", 1.0, None, b"\x01", [1]], ids=repr)
def test_version_not_an_integer(version: Any) -> None:
    assert inbox_reason(raw(version, 7, SENDER, 1, [1, "s", 1], None)) == "malformed"


@pytest.mark.parametrize(
    "kind", [0, 13, 99, -1, MAX_UINT64, True, "1", 7.0, None, b"\x07"], ids=repr
)
def test_unknown_kind(kind: Any) -> None:
    envelope = raw(1, kind, SENDER, 1, None, None)
    assert inbox_reason(envelope) == "kind"
    assert published_reason(b"!" + envelope) == "kind"
    assert published_reason(b"Et\x00" + envelope) == "kind"


@pytest.mark.parametrize(
    "sender",
    [b"", b"x" * 15, b"x" * 17, "x" * 16, None, 16, [0] * 16, bytes(32)],
    ids=repr,
)
def test_sender_not_16_bytes(sender: Any) -> None:
    assert inbox_reason(raw(1, 7, sender, 1, [1, "s", 1], None)) == "malformed"
    assert published_reason(b"!" + raw(1, 2, sender, 1, None, {})) == "malformed"


@pytest.mark.parametrize(
    "seq", [0, -1, MIN_INT64, "1", 1.0, True, False, None, b"\x01", [1]], ids=repr
)
def test_seq_not_a_positive_integer(seq: Any) -> None:
    assert inbox_reason(raw(1, 7, SENDER, seq, [1, "s", 1], None)) == "malformed"
    assert published_reason(b"!" + raw(1, 2, SENDER, seq, None, {})) == "malformed"


# -- strict decoding: meta -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "meta"),
    [
        (Kind.EVENT, []),
        (Kind.EVENT, [1, 2]),
        (Kind.EVENT, ["1"]),
        (Kind.EVENT, [-1]),
        (Kind.HEARTBEAT, []),
        (Kind.HEARTBEAT, {}),
        (Kind.BYE, [1]),
        (Kind.BYE, 0),
        (Kind.HELLO, []),
        (Kind.WELCOME, [1]),
        (Kind.UPDATE, ""),
        (Kind.TASK, None),
        (Kind.TASK, []),
        (Kind.TASK, [1, "s"]),
        (Kind.TASK, [1, "s", 1, 1]),
        (Kind.TASK, {"task_id": 1}),
        (Kind.TASK, "1,s,1"),
        (Kind.TASK, [1, b"s", 1]),
        (Kind.TASK, ["1", "s", 1]),
        (Kind.TASK, [1, "s", "1"]),
        (Kind.TASK, [1.0, "s", 1]),
        (Kind.TASK, [1, "s", 1.0]),
        (Kind.TASK, [1, None, 1]),
        (Kind.TASK, [True, "s", 1]),
        (Kind.TASK, [1, "s", False]),
        (Kind.TASK, [-1, "s", 1]),
        (Kind.TASK, [1, "s", -1]),
        (Kind.TASK, [1, ["s"], 1]),
        (Kind.ACK, None),
        (Kind.ACK, []),
        (Kind.ACK, [1, 2]),
        (Kind.ACK, [True]),
        (Kind.ACK, [False]),
        (Kind.ACK, [-1]),
        (Kind.ACK, [1.5]),
        (Kind.ACK, ["1"]),
        (Kind.ACK, [None]),
        (Kind.ACK, 1),
        (Kind.NACK, [1]),
        (Kind.NACK, [1, b"busy"]),
        (Kind.NACK, [1, None]),
        (Kind.NACK, [True, "busy"]),
        (Kind.NACK, [1, "busy", 1]),
        (Kind.SYNC, [1]),
        (Kind.SYNC, [1, b"orders."]),
        (Kind.SYNC, [True, "orders."]),
        (Kind.SYNC, [-3, "orders."]),
        (Kind.SYNC, [1, "orders.", 1]),
        (Kind.SYNCED, None),
        (Kind.SYNCED, [1]),
        (Kind.SYNCED, [1, b"short"]),
        (Kind.SYNCED, [1, b"x" * 17]),
        (Kind.SYNCED, [1, "x" * 16]),
        (Kind.SYNCED, [True, OTHER]),
        (Kind.SYNCED, [1, None]),
        (Kind.SYNCED, [1, OTHER, 1]),
        (Kind.TICKET, [1]),
        (Kind.TICKET, [1, b"short"]),
        (Kind.TICKET, [1, b"x" * 9]),
        (Kind.TICKET, [1, "x" * 8]),
        (Kind.TICKET, [True, b"x" * 8]),
        (Kind.TICKET, [1, b"x" * 8, 1]),
    ],
    ids=repr,
)
def test_wrong_meta_shape(kind: Kind, meta: Any) -> None:
    _, body = VALID[kind]
    assert natural_reason(kind, raw(1, kind, SENDER, 1, meta, body)) == "malformed"


@pytest.mark.parametrize(
    ("kind", "meta"),
    [
        (Kind.TASK, [1, "s" * (MAX_TOPIC_SIZE + 1), 1]),
        (Kind.NACK, [1, "r" * (MAX_TOPIC_SIZE + 1)]),
        (Kind.SYNC, [1, "p" * (MAX_TOPIC_SIZE + 1)]),
        (Kind.TASK, [1, "é" * MAX_TOPIC_SIZE, 1]),
        (Kind.NACK, [1, "é" * (MAX_TOPIC_SIZE // 2) + "r"]),
        (Kind.SYNC, [1, "é" * MAX_TOPIC_SIZE]),
        (Kind.SYNC, [1, "🚀" * 257]),
    ],
    ids=[
        "task service",
        "nack reason",
        "sync prefix",
        "task service 2-byte",
        "nack reason 2-byte",
        "sync prefix 2-byte",
        "sync prefix 4-byte",
    ],
)
def test_meta_string_over_max_topic_size_bytes(kind: Kind, meta: list[Any]) -> None:
    """Measured in UTF-8 bytes, not characters: a SYNC prefix is answered on
    topic_channel(prefix), which allows MAX_TOPIC_SIZE bytes."""
    assert inbox_reason(raw(1, kind, SENDER, 1, meta, None)) == "oversized"


@given(prefix=st.text(max_size=600))
@settings(FUZZ, max_examples=200)
def test_a_decoded_sync_prefix_fits_topic_channel(prefix: str) -> None:
    result = outcome(decode_inbox, raw(1, Kind.SYNC, SENDER, 1, [1, prefix], None))
    if isinstance(result, ProtocolError):
        assert result.reason == "oversized"
        assert len(prefix.encode()) > MAX_TOPIC_SIZE
    elif "\x00" not in prefix:  # the node drops a SYNC for a prefix with NUL: nothing matches it
        assert topic_channel(result.meta[1]) == b"E" + prefix.encode()


# -- strict decoding: kind on the wrong socket, channels -------------------------------------------


@pytest.mark.parametrize("kind", DIRECT_ONLY)
def test_direct_kind_published(kind: Kind) -> None:
    envelope = valid_envelope(kind)
    assert published_reason(control_frame(envelope)) == "kind"
    assert published_reason(event(envelope)) == "kind"
    assert published_reason(event(envelope, "")) == "kind"


@pytest.mark.parametrize("kind", PUB_ONLY)
def test_published_kind_sent_to_an_inbox(kind: Kind) -> None:
    assert inbox_reason(valid_envelope(kind)) == "kind"


@pytest.mark.parametrize(
    ("kind", "make_frame"),
    [
        (Kind.EVENT, control_frame),
        (Kind.SYNCED, control_frame),
        (Kind.HEARTBEAT, event),
        (Kind.BYE, event),
    ],
    ids=["EVENT on !", "SYNCED on !", "HEARTBEAT on E", "BYE on E"],
)
def test_published_kind_on_the_other_channel(
    kind: Kind, make_frame: Callable[[bytes], bytes]
) -> None:
    assert published_reason(make_frame(valid_envelope(kind))) == "kind"


@pytest.mark.parametrize("kind", [*PUB_ONLY, Kind.BYE])
@pytest.mark.parametrize("channel", [b"e", b"X", b"?", b"\x00", b"\x96", b" "], ids=repr)
def test_published_kind_on_an_unknown_channel(kind: Kind, channel: bytes) -> None:
    assert published_reason(channel + valid_envelope(kind)) == "malformed"
    assert published_reason(channel + b"orders\x00" + valid_envelope(kind)) == "malformed"


@pytest.mark.parametrize("topic", [b"\xff", b"\xc3", b"orders\x80", b"\xed\xa0\x80"], ids=repr)
def test_topic_that_is_not_utf8(topic: bytes) -> None:
    for kind in (Kind.EVENT, Kind.SYNCED):
        assert published_reason(b"E" + topic + b"\x00" + valid_envelope(kind)) == "malformed"


def test_topic_ends_at_the_first_nul() -> None:
    envelope = valid_envelope(Kind.EVENT)
    assert published_reason(b"Ea\x00b\x00" + envelope) == "malformed"  # envelope starts at "b"
    assert published_reason(b"E\x00\x00" + envelope) == "malformed"


def test_topic_longer_than_max_topic_size() -> None:
    for kind in (Kind.EVENT, Kind.SYNCED):
        envelope = valid_envelope(kind)
        frame = b"E" + b"t" * (MAX_TOPIC_SIZE + 1) + b"\x00" + envelope
        assert published_reason(frame) == "oversized"
        assert published_reason(b"E" + b"t" * 5000) == "oversized"


def test_topic_of_max_topic_size_without_its_nul_is_truncated() -> None:
    assert published_reason(b"E" + b"t" * MAX_TOPIC_SIZE) == "truncated"


# -- strict decoding: bodies fixed by kind ---------------------------------------------------------


@pytest.mark.parametrize(
    "kind", [Kind.BYE, Kind.ACK, Kind.NACK, Kind.SYNC, Kind.SYNCED, Kind.TICKET]
)
@pytest.mark.parametrize("body", [0, False, "", b"", [], {}, "bye"], ids=repr)
def test_kinds_with_a_nil_body_refuse_any_other(kind: Kind, body: Any) -> None:
    meta, _ = VALID[kind]
    assert natural_reason(kind, raw(1, kind, SENDER, 1, meta, body)) == "malformed"


def test_bye_with_a_body_is_refused_when_published_too() -> None:
    assert published_reason(control_frame(raw(1, Kind.BYE, SENDER, 1, None, 1))) == "malformed"


@pytest.mark.parametrize("body", [None, [], 0, "", b"", [{}]], ids=repr)
def test_heartbeat_body_must_be_a_map(body: Any) -> None:
    frame = control_frame(raw(1, Kind.HEARTBEAT, SENDER, 1, None, body))
    assert published_reason(frame) == "malformed"


def test_heartbeat_map_may_carry_fields() -> None:
    body = {"load": 0.5, "later": [1, b"x"], 7: None}
    assert decode_published(control_frame(pack(Kind.HEARTBEAT, SENDER, 1, None, body))).body == (
        body
    )


# -- strict decoding: body types and nesting -------------------------------------------------------


def test_nesting_one_deeper_than_max_nesting() -> None:
    assert inbox_reason(task_with_body(nested_lists(MAX_NESTING + 1))) == "nesting"
    frame = event(pack(Kind.EVENT, SENDER, 1, None, nested_maps(MAX_NESTING + 1)))
    assert published_reason(frame) == "nesting"


def test_nesting_one_too_deep_inside_a_wide_body() -> None:
    body = {
        "ok": nested_lists(MAX_NESTING - 1),
        "bad": [1, 2, {"x": nested_lists(MAX_NESTING - 2)}],
    }
    assert depth(body) == MAX_NESTING + 1
    assert inbox_reason(task_with_body(body)) == "nesting"


def test_nesting_far_deeper_than_max_nesting() -> None:
    body = b"\x91" * 999 + b"\x90"  # 1000 nested arrays, built without recursion
    assert inbox_reason(with_raw_body(Kind.TASK, body, meta=[1, "s", 1])) == "nesting"


def test_nesting_beyond_msgpack_stack_limit_is_reported_as_nesting() -> None:
    body = b"\x91" * 4999 + b"\x90"
    assert inbox_reason(with_raw_body(Kind.TASK, body, meta=[1, "s", 1])) == "nesting"


def test_nesting_beyond_msgpack_stack_limit_is_a_protocol_error() -> None:
    body = b"\x91" * 99_999 + b"\x90"
    with pytest.raises(ProtocolError):
        decode_inbox(with_raw_body(Kind.TASK, body, meta=[1, "s", 1]))


EXT = msgpack.ExtType(5, b"ab")
TIMESTAMP = msgpack.Timestamp(1_700_000_000, 5)


@pytest.mark.parametrize(
    "body",
    [
        EXT,
        [1, EXT],
        {"k": EXT},
        {EXT: 1},
        msgpack.ExtType(0, b""),
        msgpack.ExtType(127, b"x" * 300),
    ],
    ids=repr,
)
def test_ext_types_in_the_body(body: Any) -> None:
    assert inbox_reason(task_with_body(body)) == "type"
    assert published_reason(event(pack(Kind.EVENT, SENDER, 1, None, body))) == "type"


@pytest.mark.parametrize(
    "items",
    [
        (EXT, 7, SENDER, 1, [1, "s", 1], None),
        (1, EXT, SENDER, 1, [1, "s", 1], None),
        (1, 7, EXT, 1, [1, "s", 1], None),
        (1, 7, SENDER, EXT, [1, "s", 1], None),
        (1, 7, SENDER, 1, [1, EXT, 1], None),
        (1, 7, SENDER, 1, EXT, None),
    ],
    ids=["version", "kind", "sender", "seq", "meta item", "meta"],
)
def test_ext_types_anywhere_in_the_envelope(items: tuple[Any, ...]) -> None:
    assert inbox_reason(raw(*items)) == "type"


@pytest.mark.parametrize(
    "body",
    [TIMESTAMP, [TIMESTAMP], {"at": TIMESTAMP}, {TIMESTAMP: 1}, [{"x": [TIMESTAMP]}]],
    ids=repr,
)
def test_msgpack_timestamps_in_the_body(body: Any) -> None:
    assert published_reason(event(pack(Kind.EVENT, SENDER, 1, None, body))) == "type"
    assert inbox_reason(task_with_body(body)) == "type"


@pytest.mark.parametrize(
    "encoded",
    [b"\xd6\xff" + bytes(4), b"\xd7\xff" + bytes(8), b"\xc7\x0c\xff" + bytes(12)],
    ids=["timestamp 32", "timestamp 64", "timestamp 96"],
)
def test_every_timestamp_encoding_in_the_body(encoded: bytes) -> None:
    assert inbox_reason(with_raw_body(Kind.TASK, encoded, meta=[1, "s", 1])) == "type"


def test_timestamp_with_invalid_length() -> None:
    envelope = with_raw_body(Kind.TASK, b"\xc7\x05\xff" + bytes(5), meta=[1, "s", 1])
    assert inbox_reason(envelope) == "malformed"


@pytest.mark.parametrize(
    "body",
    [
        b"\x81\x91\x01\x02",  # {[1]: 2}
        b"\x81\x90\x02",  # {[]: 2}
        b"\x81\x81\x01\x02\x03",  # {{1: 2}: 3}
        b"\x91\x81\x80\x01",  # [{{}: 1}]
    ],
    ids=["list key", "empty list key", "map key", "nested map key"],
)
def test_maps_with_unhashable_keys(body: bytes) -> None:
    assert inbox_reason(with_raw_body(Kind.TASK, body, meta=[1, "s", 1])) == "malformed"
    assert published_reason(b"Et\x00" + with_raw_body(Kind.EVENT, body)) == "malformed"


# -- strict decoding: HELLO, WELCOME and UPDATE bodies ---------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        None,
        1,
        "record",
        [],
        {},
        {"id": SENDER},
        {**record().to_wire(), "id": SENDER[:15]},
        {**record().to_wire(), "pub": 0},
        {**record().to_wire(), "pull": 65536},
        {**record().to_wire(), "host": "localhost"},
        {**record().to_wire(), "host": "0.0.0.0"},
        {**record().to_wire(), "host": "0:0:0:0:0:0:0:1"},
        {**record().to_wire(), "name": ""},
        {**record().to_wire(), "name": "x" * 256},
        {**record().to_wire(), "mesh": None},
        {**record().to_wire(), "services": "resize"},
        {**record().to_wire(), "services": [1]},
        {**record().to_wire(), "v": 2},
        {**record().to_wire(), "key": ""},
    ],
    ids=repr,
)
def test_update_with_a_bad_record(body: Any) -> None:
    assert inbox_reason(raw(1, Kind.UPDATE, SENDER, 1, None, body)) == "record"


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.WELCOME])
@pytest.mark.parametrize(
    "body",
    [
        None,
        [],
        "hello",
        {},
        {"record": record().to_wire()},
        {"peers": []},
        {"record": record().to_wire(), "peers": None},
        {"record": record().to_wire(), "peers": "127.0.0.1:1"},
        {"record": record().to_wire(), "peers": {"127.0.0.1:1": 1}},
        {"record": record().to_wire(), "peers": [1]},
        {"record": record().to_wire(), "peers": [b"127.0.0.1:1"]},
        {"record": record().to_wire(), "peers": [None]},
        {"record": record().to_wire(), "peers": ["localhost:1"]},
        {"record": record().to_wire(), "peers": ["127.0.0.1"]},
        {"record": record().to_wire(), "peers": ["127.0.0.1:0"]},
        {"record": record().to_wire(), "peers": ["0.0.0.0:5000"]},
        {"record": record().to_wire(), "peers": ["127.0.0.1:1", "[::]:1"]},
    ],
    ids=repr,
)
def test_hello_with_a_bad_body(kind: Kind, body: Any) -> None:
    assert inbox_reason(raw(1, kind, SENDER, 1, None, body)) == "malformed"


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.WELCOME])
@pytest.mark.parametrize(
    "rec",
    [None, [], {}, {**record().to_wire(), "pub": -1}, {**record().to_wire(), "v": True}],
    ids=repr,
)
def test_hello_with_a_bad_record(kind: Kind, rec: Any) -> None:
    assert inbox_reason(raw(1, kind, SENDER, 1, None, {"record": rec, "peers": []})) == "record"


def test_hello_listing_too_many_peers() -> None:
    body = {"record": record().to_wire(), "peers": ["10.0.0.1:5000"] * (MAX_PEERS_LISTED + 1)}
    assert inbox_reason(raw(1, Kind.HELLO, SENDER, 1, None, body)) == "oversized"


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.WELCOME, Kind.UPDATE])
def test_record_id_differs_from_the_sender(kind: Kind) -> None:
    rec = record(OTHER).to_wire()
    body = rec if kind is Kind.UPDATE else {"record": rec, "peers": []}
    assert inbox_reason(pack(kind, SENDER, 1, None, body)) == "malformed"


# -- properties ------------------------------------------------------------------------------------

INT64 = st.integers(min_value=MIN_INT64, max_value=MAX_UINT64)
SCALARS = st.none() | st.booleans() | INT64 | st.floats() | st.text() | st.binary()
KEYS = st.text() | INT64 | st.binary()
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
).filter(lambda value: depth(value) <= MAX_NESTING)
DECODERS = st.sampled_from([decode_inbox, decode_published])


@given(
    decoder=DECODERS,
    frame=st.binary(max_size=300)
    | st.tuples(st.sampled_from([b"E", b"Eorders\x00", b"E\x00", b"!"]), st.binary()).map(b"".join),
)
@FUZZ
def test_arbitrary_bytes_only_raise_protocol_error(decoder: Decoder, frame: bytes) -> None:
    result = outcome(decoder, frame)
    if isinstance(result, ProtocolError):
        assert result.reason in REASONS
    else:
        assert type(result) is Envelope


@given(
    prefix=st.sampled_from([b"", b"!", b"Et\x00"]),
    decoder=DECODERS,
    tail=st.binary(max_size=300),
)
@FUZZ
def test_arbitrary_bytes_after_a_valid_header_only_raise_protocol_error(
    prefix: bytes, decoder: Decoder, tail: bytes
) -> None:
    """The same, past the first checks: a six-item array header, version 1 and a known kind."""
    for kind in (1, 2, 7):
        result = outcome(decoder, prefix + bytes([0x96, 1, kind]) + tail)
        assert isinstance(result, ProtocolError | Envelope)


def _valid_frames() -> st.SearchStrategy[tuple[Decoder, bytes]]:
    literal = st.sampled_from(list(Kind)).map(lambda kind: delivered(kind, valid_envelope(kind)))
    published_bye = st.just((decode_published, control_frame(valid_envelope(Kind.BYE))))
    events = st.builds(
        lambda topic, body: (
            decode_published,
            event(pack(Kind.EVENT, SENDER, 1, None, body), topic),
        ),
        st.text(max_size=20).filter(lambda topic: "\x00" not in topic),
        VALUES,
    )
    tasks = st.builds(lambda body: (decode_inbox, task_with_body(body)), VALUES)
    return literal | published_bye | events | tasks


@given(message=_valid_frames(), data=st.data())
@settings(FUZZ, max_examples=300)
def test_mutated_valid_frames_decode_or_raise_protocol_error(
    message: tuple[Decoder, bytes], data: st.DataObject
) -> None:
    decoder, original = message
    frame = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        operation = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if operation == "insert":
            at = data.draw(st.integers(0, len(frame)))
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif not frame:
            continue
        else:
            at = data.draw(st.integers(0, len(frame) - 1))
            if operation == "flip":
                frame[at] ^= 1 << data.draw(st.integers(0, 7))
            elif operation == "set":
                frame[at] = data.draw(st.integers(0, 255))
            else:
                del frame[at]
    result = outcome(decoder, bytes(frame))
    if isinstance(result, ProtocolError):
        assert result.reason in REASONS
        return
    assert type(result) is Envelope
    assert type(result.kind) is Kind
    assert type(result.sender) is bytes
    assert len(result.sender) == 16
    assert 0 < result.seq <= MAX_UINT64


def _fuzz_record() -> st.SearchStrategy[dict[Any, Any]]:
    good = record().to_wire()
    return st.fixed_dictionaries(
        {},
        optional={
            "id": st.just(good["id"]) | st.binary(max_size=17) | SCALARS,
            "name": st.just("n") | st.text(max_size=3) | SCALARS,
            "mesh": st.just("default") | SCALARS,
            "host": st.sampled_from(["127.0.0.1", "::1", "0.0.0.0", "ff02::1", "x"]) | SCALARS,
            "pub": st.integers(-1, 65536) | SCALARS,
            "pull": st.integers(-1, 65536) | SCALARS,
            "services": st.lists(st.text(max_size=3) | SCALARS, max_size=3) | SCALARS,
            "v": st.sampled_from([1, 2, True]) | SCALARS,
            "key": st.none() | st.text(max_size=3) | SCALARS,
            "extra": VALUES,
        },
    )


_FUZZ_BODIES = (
    VALUES
    | _fuzz_record()
    | st.fixed_dictionaries(
        {},
        optional={
            "record": _fuzz_record() | VALUES,
            "peers": st.lists(
                st.sampled_from(["127.0.0.1:1", "[::1]:2", "0.0.0.0:1", "x:1"]) | SCALARS,
                max_size=3,
            )
            | SCALARS,
        },
    )
)


@given(
    channel=st.sampled_from([None, b"!", b"E\x00", b"Eorders\x00", b"E\xff\x00", b"X"]),
    version=st.just(1) | SCALARS,
    kind=st.integers(0, 13) | SCALARS,
    sender=st.just(SENDER) | st.binary(max_size=17) | SCALARS,
    seq=st.integers(-1, 3) | SCALARS,
    meta=st.none() | st.lists(st.integers(-1, 3) | st.just(OTHER) | SCALARS, max_size=4) | VALUES,
    body=_FUZZ_BODIES,
    length=st.sampled_from([6, 6, 6, 5, 7]),
)
@settings(FUZZ, max_examples=300)
def test_structured_garbage_only_raises_protocol_error(
    channel: bytes | None,
    version: Any,
    kind: Any,
    sender: Any,
    seq: Any,
    meta: Any,
    body: Any,
    length: int,
) -> None:
    envelope = raw(*[version, kind, sender, seq, meta, body, None][:length])
    if channel is None:
        result = outcome(decode_inbox, envelope)
    else:
        result = outcome(decode_published, channel + envelope)
    if isinstance(result, ProtocolError):
        assert result.reason in REASONS
    else:
        assert type(result.kind) is Kind


@given(
    topic=st.text(max_size=40).filter(lambda topic: "\x00" not in topic),
    seq=st.integers(1, MAX_UINT64),
    body=VALUES,
)
@FUZZ
def test_event_round_trip_of_any_body(topic: str, seq: int, body: Any) -> None:
    envelope = decode_published(event(pack(Kind.EVENT, SENDER, seq, None, body), topic))
    assert envelope.kind is Kind.EVENT
    assert envelope.topic == topic
    assert envelope.seq == seq
    assert envelope.meta is None
    assert same(envelope.body, body)


@given(
    task_id=st.integers(0, MAX_UINT64),
    service=st.text(max_size=40),
    attempt=st.integers(0, MAX_UINT64),
    body=VALUES,
)
@FUZZ
def test_task_round_trip_of_any_body(task_id: int, service: str, attempt: int, body: Any) -> None:
    envelope = decode_inbox(pack(Kind.TASK, SENDER, 1, [task_id, service, attempt], body))
    assert envelope.kind is Kind.TASK
    assert envelope.meta == (task_id, service, attempt)
    assert same(envelope.body, body)


def test_a_heartbeat_is_valid_on_both_paths() -> None:
    body = {"n": 7}
    expected = Envelope(Kind.HEARTBEAT, SENDER, 3, None, body, None)
    assert decode_inbox(pack(Kind.HEARTBEAT, SENDER, 3, None, body)) == expected
    assert decode_published(control_frame(pack(Kind.HEARTBEAT, SENDER, 3, None, body))) == expected


# -- batches: several messages of one sender in one frame ------------------------------------------


def tasks(count: int, first_seq: int = 1, body: Any = b"x") -> list[bytes]:
    return [pack(Kind.TASK, SENDER, first_seq + i, [i, "svc", 1], body) for i in range(count)]


def events(count: int, topic: str = "orders.new", first_seq: int = 1) -> list[bytes]:
    return [event(pack(Kind.EVENT, SENDER, first_seq + i, None, i), topic) for i in range(count)]


def raw_batch(items: list[Any], seq: int = 1, sender: Any = SENDER, meta: Any = None) -> bytes:
    return raw(1, BATCH, sender, seq, meta, items)


def item(
    kind: int, seq: int, meta: Any = None, body: Any = None, sender: Any = SENDER
) -> list[Any]:
    return [1, kind, sender, seq, meta, body]


def many_outcome(
    decoder: Callable[[bytes], list[Envelope]], frame: bytes
) -> list[Envelope] | ProtocolError:
    """What `decoder` makes of `frame`: envelopes, or the ProtocolError it raised (anything else
    it raises propagates and fails the test)."""
    try:
        return decoder(frame)
    except ProtocolError as exc:
        return exc


def many_reason(decoder: Callable[[bytes], list[Envelope]], frame: bytes) -> str:
    with pytest.raises(ProtocolError) as info:
        decoder(frame)
    return info.value.reason


def test_batch_is_the_documented_envelope_of_envelopes() -> None:
    envelopes = tasks(3, first_seq=300)
    batch = batch_envelope(envelopes)
    assert msgpack.unpackb(batch, raw=False) == [
        1,
        13,
        SENDER,
        300,
        None,
        [msgpack.unpackb(e, raw=False) for e in envelopes],
    ]
    assert batch == raw(1, 13, SENDER, 300, None, [msgpack.unpackb(e) for e in envelopes])
    assert BATCH == 13
    assert BATCH not in set(Kind)  # a container, not a message kind


@pytest.mark.parametrize(
    "first_seq", [1, 127, 128, 255, 256, 65535, 65536, 2**32, MAX_UINT64 - 300]
)
@pytest.mark.parametrize("count", [1, 2, 15, 16, 17, 256])
def test_batch_round_trip_in_an_inbox(first_seq: int, count: int) -> None:
    envelopes = tasks(count, first_seq)
    decoded = decode_inbox_many(batch_envelope(envelopes))
    assert decoded == [decode_inbox(e) for e in envelopes]
    assert [e.seq for e in decoded] == list(range(first_seq, first_seq + count))


def test_a_single_message_decodes_to_a_list_of_one() -> None:
    envelope = valid_envelope(Kind.ACK)
    assert decode_inbox_many(envelope) == [decode_inbox(envelope)]
    frame = event(valid_envelope(Kind.EVENT))
    assert decode_published_many(frame) == [decode_published(frame)]
    control = control_frame(valid_envelope(Kind.HEARTBEAT))
    assert decode_published_many(control) == [decode_published(control)]


def test_the_one_message_decoders_refuse_a_batch() -> None:
    batch = batch_envelope(tasks(2))
    assert inbox_reason(batch) == "kind"
    frame, count = coalesce_published(events(2))
    assert count == 2
    assert published_reason(frame) == "kind"


def test_coalesce_direct_takes_what_fits() -> None:
    envelopes = tasks(BATCH_MESSAGES + 10)
    frame, count = coalesce_direct(envelopes)
    assert count == BATCH_MESSAGES
    assert decode_inbox_many(frame) == [decode_inbox(e) for e in envelopes[:count]]
    assert coalesce_direct(envelopes[:1]) == (envelopes[0], 1)
    # By size: a batch stays within BATCH_BYTES; a message larger than that goes alone.
    big = tasks(4, body=bytes(BATCH_BYTES // 3))
    frame, count = coalesce_direct(big)
    assert count == 2
    assert len(frame) <= BATCH_BYTES + 64
    huge = tasks(2, body=bytes(BATCH_BYTES + 1))
    assert coalesce_direct(huge) == (huge[0], 1)


def test_coalesce_published_joins_consecutive_events_of_one_topic_only() -> None:
    frames = [
        *events(3, "orders.new", 1),
        *events(2, "orders.newer", 4),  # a longer topic with the same start: another channel
        control_frame(pack(Kind.HEARTBEAT, SENDER, 6, None, {"n": 1})),
        *events(2, "orders.new", 7),
    ]
    sent = []
    while frames:
        frame, count = coalesce_published(frames)
        sent.append((frame, count))
        del frames[:count]
    assert [count for _, count in sent] == [3, 2, 1, 2]
    first, second, heartbeat, _ = (frame for frame, _ in sent)
    assert first.startswith(b"Eorders.new\x00")
    assert second.startswith(b"Eorders.newer\x00")
    assert heartbeat.startswith(b"!")
    decoded = [e for frame, _ in sent for e in decode_published_many(frame)]
    assert [e.seq for e in decoded] == list(range(1, 9))
    assert [e.topic for e in decoded] == ["orders.new"] * 3 + ["orders.newer"] * 2 + [None] + [
        "orders.new"
    ] * 2
    assert coalesce_published(events(1)) == (events(1)[0], 1)


def test_a_published_batch_filters_like_its_events() -> None:
    # ZeroMQ matches a subscription against the frame's first bytes: a batch starts with its
    # events' channel, so exactly the subscriptions that take one of its events take the batch.
    frame, _ = coalesce_published(events(5, "orders.new"))
    for subscription, takes in [
        (b"E", True),
        (b"Eorders.", True),
        (b"Eorders.new", True),
        (b"Eorders.new\x00", True),
        (b"Eorders.newer", False),
        (b"Einvoices", False),
        (b"!", False),
    ]:
        assert frame.startswith(subscription) is takes


def test_hello_says_whether_its_sender_takes_tickets() -> None:
    hello = Hello(record(), (), tickets=True)
    assert hello.to_wire()["tickets"] is True
    assert decode_inbox(pack(Kind.HELLO, SENDER, 1, None, hello.to_wire())).body == hello
    assert "tickets" not in Hello(record(), ()).to_wire()
    for value in [False, 1, "true", None, [True]]:  # only true says yes
        body = {"record": record().to_wire(), "peers": [], "tickets": value}
        assert decode_inbox(pack(Kind.HELLO, SENDER, 1, None, body)).body.tickets is False


def test_hello_says_whether_its_sender_takes_batches() -> None:
    hello = Hello(record(), (), batch=True)
    assert hello.to_wire()["batch"] is True
    assert decode_inbox(pack(Kind.HELLO, SENDER, 1, None, hello.to_wire())).body == hello
    assert "batch" not in Hello(record(), ()).to_wire()
    for value in [False, 1, "true", None, [True]]:  # only true says yes
        body = {"record": record().to_wire(), "peers": [], "batch": value}
        assert decode_inbox(pack(Kind.HELLO, SENDER, 1, None, body)).body.batch is False


BAD_INBOX_BATCHES = [
    (raw_batch([]), "malformed"),  # empty
    (raw_batch([item(8, 1, [1])], meta=[]), "malformed"),  # meta
    (raw_batch([item(8, 1, [1])], seq=2), "malformed"),  # seq is not the first message's
    (raw_batch([item(8, 1, [1])], seq=0), "malformed"),
    (raw_batch([item(8, 1, [1])], sender=b"short"), "malformed"),
    (raw_batch([item(8, 1, [1]), item(8, 2, [2], sender=OTHER)]), "malformed"),  # two senders
    (raw_batch([item(8, 1, [1]), item(1, 2)]), "kind"),  # EVENT in an inbox
    (raw_batch([item(8, 1, [1]), item(11, 2, [1, OTHER])]), "kind"),  # SYNCED in an inbox
    (raw_batch([item(8, 1, [1]), item(13, 2, None, [item(8, 3, [3])])]), "kind"),  # nested
    (raw_batch([item(8, 1, [1]), item(99, 2)]), "kind"),
    (raw_batch([item(8, 1, [1]), [1, 8, SENDER, 2, [2]]]), "malformed"),  # five items
    (raw_batch([item(8, 1, [1]), "not an envelope"]), "malformed"),
    (raw_batch([item(8, 1, [1]), item(8, 2, [2], "ACK takes no body")]), "malformed"),
    (raw_batch([item(8, 1, [1]), item(8, 2, ["x"])]), "malformed"),  # meta types
    (raw_batch([item(8, 1, [1]), [2, 8, SENDER, 2, [2], None]]), "version"),
    (raw_batch([item(8, 1, [1]), [True, 8, SENDER, 2, [2], None]]), "malformed"),
    (raw_batch([item(8, 1, [1]), item(8, 0, [2])]), "malformed"),  # seq 0
    (raw_batch([item(7, 1, [1, "s", 1], nested_lists(MAX_NESTING + 1))]), "nesting"),
    (raw_batch([item(8, i + 1, [i]) for i in range(MAX_BATCH + 1)]), "oversized"),
    (raw(2, BATCH, SENDER, 1, None, [item(8, 1, [1])]), "version"),
    (raw(1, BATCH, SENDER, 1, None, "not a list"), "malformed"),
    (raw(1, BATCH, SENDER, 1, None, [item(8, 1, [1])], None), "malformed"),  # seven items
    (raw(1, 13.0, SENDER, 1, None, [item(8, 1, [1])]), "kind"),  # 13.0 is not 13
    (raw(1, True, SENDER, 1, None, [item(8, 1, [1])]), "kind"),
]


@pytest.mark.parametrize(("frame", "expected"), BAD_INBOX_BATCHES)
def test_bad_batches_in_an_inbox(frame: bytes, expected: str) -> None:
    assert many_reason(decode_inbox_many, frame) == expected


def test_bad_batches_published() -> None:
    good = raw_batch([item(1, 1, None, "a"), item(1, 2, None, "b")])
    assert len(decode_published_many(b"Et\x00" + good)) == 2
    assert many_reason(decode_published_many, b"!" + good) == "kind"  # no batches on control
    for items, expected in [
        ([item(1, 1), item(7, 2, [1, "s", 1])], "kind"),  # a TASK on an event channel
        ([item(1, 1), item(2, 2, None, {})], "kind"),  # a HEARTBEAT on an event channel
        ([item(1, 1), item(1, 2, sender=OTHER)], "malformed"),
        ([item(1, 1), item(11, 2, [1, OTHER])], None),  # SYNCED may share a batch
    ]:
        frame = b"Et\x00" + raw_batch(items)
        if expected is None:
            assert [e.kind for e in decode_published_many(frame)] == [Kind.EVENT, Kind.SYNCED]
        else:
            assert many_reason(decode_published_many, frame) == expected
    assert many_reason(decode_published_many, b"E\xff\x00" + good) == "malformed"  # topic


def test_every_proper_prefix_of_a_batch_is_truncated() -> None:
    for frame, decoder in [
        (batch_envelope(tasks(3)), decode_inbox_many),
        (coalesce_published(events(3))[0], decode_published_many),
    ]:
        reasons = {cut: many_reason(decoder, frame[:cut]) for cut in range(1, len(frame))}
        assert {cut: r for cut, r in reasons.items() if r != "truncated"} == {}


def test_trailing_data_after_a_batch() -> None:
    assert many_reason(decode_inbox_many, batch_envelope(tasks(2)) + b"\xc0") == "malformed"


MANY_DECODERS = st.sampled_from([decode_inbox_many, decode_published_many])


def _valid_batches() -> st.SearchStrategy[tuple[Callable[[bytes], list[Envelope]], bytes]]:
    inbox = st.builds(
        lambda bodies, seq: (
            decode_inbox_many,
            batch_envelope(
                [pack(Kind.TASK, SENDER, seq + i, [i, "s", 1], b) for i, b in enumerate(bodies)]
            ),
        ),
        st.lists(VALUES, min_size=1, max_size=5),
        st.integers(1, 2**40),
    )
    published = st.builds(
        lambda bodies, topic: (
            decode_published_many,
            coalesce_published(
                [
                    event(pack(Kind.EVENT, SENDER, i + 1, None, b), topic)
                    for i, b in enumerate(bodies)
                ]
            )[0],
        ),
        st.lists(VALUES, min_size=1, max_size=5),
        st.text(max_size=10).filter(lambda topic: "\x00" not in topic),
    )
    return inbox | published


@given(message=_valid_batches(), data=st.data())
@settings(FUZZ, max_examples=300)
def test_mutated_batches_decode_or_raise_protocol_error(
    message: tuple[Callable[[bytes], list[Envelope]], bytes], data: st.DataObject
) -> None:
    decoder, original = message
    frame = bytearray(original)
    for _ in range(data.draw(st.integers(1, 4), label="mutations")):
        operation = data.draw(st.sampled_from(["flip", "set", "insert", "delete"]))
        if operation == "insert":
            at = data.draw(st.integers(0, len(frame)))
            frame[at:at] = data.draw(st.binary(min_size=1, max_size=4))
        elif frame:
            at = data.draw(st.integers(0, len(frame) - 1))
            if operation == "flip":
                frame[at] ^= 1 << data.draw(st.integers(0, 7))
            elif operation == "set":
                frame[at] = data.draw(st.integers(0, 255))
            else:
                del frame[at]
    result = many_outcome(decoder, bytes(frame))
    if isinstance(result, ProtocolError):
        assert result.reason in REASONS
        return
    assert type(result) is list
    assert result
    for envelope in result:
        assert type(envelope) is Envelope
        assert type(envelope.kind) is Kind
        assert envelope.sender == result[0].sender
        assert 0 < envelope.seq <= MAX_UINT64


@given(
    decoder=MANY_DECODERS,
    channel=st.sampled_from([b"", b"Et\x00", b"!"]),
    version=st.just(1) | SCALARS,
    sender=st.just(SENDER) | st.binary(max_size=17) | SCALARS,
    seq=st.integers(-1, 3) | SCALARS,
    meta=st.none() | VALUES,
    items=st.lists(
        st.lists(
            st.just(1) | st.integers(0, 14) | st.just(SENDER) | st.just(OTHER) | VALUES,
            min_size=5,
            max_size=7,
        )
        | VALUES,
        max_size=4,
    )
    | VALUES,
)
@settings(FUZZ, max_examples=300)
def test_structured_garbage_in_a_batch_only_raises_protocol_error(
    decoder: Callable[[bytes], list[Envelope]],
    channel: bytes,
    version: Any,
    sender: Any,
    seq: Any,
    meta: Any,
    items: Any,
) -> None:
    frame = channel + raw(version, BATCH, sender, seq, meta, items)
    result = many_outcome(decoder, frame)
    if isinstance(result, ProtocolError):
        assert result.reason in REASONS
    else:
        assert all(type(envelope.kind) is Kind for envelope in result)


@given(bodies=st.lists(VALUES, min_size=1, max_size=8), seq=st.integers(1, MAX_UINT64 - 8))
@FUZZ
def test_batch_round_trip_of_any_bodies(bodies: list[Any], seq: int) -> None:
    envelopes = [pack(Kind.EVENT, SENDER, seq + i, None, b) for i, b in enumerate(bodies)]
    frame, count = coalesce_published([event(e, "t") for e in envelopes])
    assert count == len(bodies)
    decoded = decode_published_many(frame)
    assert [e.seq for e in decoded] == [seq + i for i in range(len(bodies))]
    assert all(same(e.body, b) for e, b in zip(decoded, bodies, strict=True))
    assert all(e.topic == "t" for e in decoded)


# -- heartbeat datagrams ---------------------------------------------------------------------------


def datagram_reference(frame: bytes) -> Envelope:
    """What protocol §11 says a datagram is, by the general decoder: one HEARTBEAT envelope of at
    most MAX_DATAGRAM_SIZE bytes (`decode_datagram` has a quicker path for the usual shape)."""
    if len(frame) > MAX_DATAGRAM_SIZE:
        raise ProtocolError("oversized", "datagram")
    envelope = decode_inbox(frame)
    if envelope.kind is not Kind.HEARTBEAT:
        raise ProtocolError("kind", "not a heartbeat")
    return envelope


def control_reference(frame: bytes) -> Envelope:
    """What §3 says a frame on the control channel is, by the general decoder: `!` and one
    HEARTBEAT or BYE envelope (`decode_published` has a quicker path for the usual heartbeat)."""
    assert frame.startswith(CONTROL_CHANNEL)
    envelope = decode_inbox(frame[1:])
    if envelope.kind not in (Kind.HEARTBEAT, Kind.BYE):
        raise ProtocolError("kind", "not on the control channel")
    return envelope


def same_outcome(frame: bytes) -> None:
    """The quick paths for heartbeats decide `frame`, as a datagram and on the control channel,
    as the general decoder does."""
    decides_as(decode_datagram, datagram_reference, frame)
    decides_as(decode_published, control_reference, CONTROL_CHANNEL + frame)


def decides_as(decoder: Decoder, reference_decoder: Decoder, frame: bytes) -> None:
    quick, reference = outcome(decoder, frame), outcome(reference_decoder, frame)
    if isinstance(reference, ProtocolError):
        assert isinstance(quick, ProtocolError), frame
        assert quick.reason == reference.reason, frame
    else:
        assert repr(quick) == repr(reference), frame  # (repr: a NaN in the body is not == itself)
        assert type(quick.kind) is Kind


def test_a_heartbeat_datagram_decodes() -> None:
    body = {"n": 3, "t": 1.5, "echo": [1.0, 0.25], "d": 9, "want": 1}
    frame = pack(Kind.HEARTBEAT, SENDER, 3, None, body)
    assert decode_datagram(frame) == Envelope(Kind.HEARTBEAT, SENDER, 3, None, body, None)


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        (pack(Kind.TASK, SENDER, 1, [1, "svc", 1], None), "kind"),
        (pack(Kind.BYE, SENDER, 1, None, None), "kind"),
        (pack(Kind.EVENT, SENDER, 1, None, {}), "kind"),
        (pack(Kind.HEARTBEAT, SENDER, 1, None, [1]), "malformed"),
        (pack(Kind.HEARTBEAT, SENDER, 1, [1], {}), "malformed"),
        (pack(Kind.HEARTBEAT, SENDER[:15], 1, None, {}), "malformed"),
        (pack(Kind.HEARTBEAT, SENDER, 0, None, {}), "malformed"),
        (pack(Kind.HEARTBEAT, SENDER, 1, None, {"x": msgpack.Timestamp(0)}), "type"),
        (pack(Kind.HEARTBEAT, SENDER, 1, None, {"n": 1, "pad": bytes(1024)}), "oversized"),
        (raw(2, Kind.HEARTBEAT, SENDER, 1, None, {}), "version"),
        (raw(True, Kind.HEARTBEAT, SENDER, 1, None, {}), "malformed"),
        (raw(1, 2.0, SENDER, 1, None, {}), "kind"),
        (batch_envelope([pack(Kind.HEARTBEAT, SENDER, 1, None, {})]), "kind"),
    ],
)
def test_a_datagram_that_is_not_one_heartbeat_is_refused(frame: bytes, reason: str) -> None:
    with pytest.raises(ProtocolError) as raised:
        decode_datagram(frame)
    assert raised.value.reason == reason
    same_outcome(frame)  # and on the control channel, BYE aside, as the general decoder decides


@given(body=VALUES, seq=st.integers(1, MAX_UINT64), data=st.data())
@settings(FUZZ, max_examples=300)
def test_the_quick_heartbeat_paths_decide_as_the_general_decoder(
    body: Any, seq: int, data: st.DataObject
) -> None:
    frame = bytearray(pack(Kind.HEARTBEAT, SENDER, seq, None, {"n": 1, "x": body}))
    same_outcome(bytes(frame))
    for _ in range(data.draw(st.integers(0, 3), label="mutations")):
        at = data.draw(st.integers(0, len(frame) - 1))
        frame[at] = data.draw(st.integers(0, 255))
    same_outcome(bytes(frame))


@given(frame=st.binary(max_size=200))
@FUZZ
def test_arbitrary_heartbeats_decide_as_the_general_decoder(frame: bytes) -> None:
    same_outcome(frame)


@given(kind=st.sampled_from(list(Kind)), seq=st.integers(1, MAX_UINT64), body=VALUES)
@FUZZ
def test_an_envelope_head_and_a_packed_body_make_the_envelope(
    kind: Kind, seq: int, body: Any
) -> None:
    assert envelope_head(kind, SENDER, seq) + msgpack.packb(body) == pack(
        kind, SENDER, seq, None, body
    )


@given(
    kind=st.sampled_from(list(Kind)),
    seq=st.integers(1, MAX_UINT64),
    meta=st.one_of(st.none(), st.lists(st.integers(0, MAX_UINT64), max_size=3)),
    body=VALUES,
)
@FUZZ
def test_the_kind_of_a_packed_envelope_is_read_without_decoding_it(
    kind: Kind, seq: int, meta: list[int] | None, body: Any
) -> None:
    assert packed_kind(pack(kind, SENDER, seq, meta, body)) == kind
