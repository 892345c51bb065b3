"""Wire protocol v1 (mesh/_wire.py): encoding, round trips and strict decoding. Pure: no IO."""

from __future__ import annotations

import math
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery import PeerRecord
from mesh import ProtocolError
from mesh._wire import (
    CONTROL_CHANNEL,
    MAX_FRAME_SIZE,
    MAX_NESTING,
    MAX_PEERS_LISTED,
    MAX_TOPIC_SIZE,
    MAX_UINT64,
    Envelope,
    Hello,
    Kind,
    decode,
    decode_inbox,
    decode_published,
    pack,
    topic_channel,
)

SENDER = bytes(range(16))
OTHER = bytes(range(100, 116))
MIN_INT64 = -(2**63)

FUZZ = settings(
    max_examples=200,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# -- helpers ---------------------------------------------------------------------------------------


def record(node_id: bytes = SENDER, **changes: Any) -> PeerRecord:
    fields: dict[str, Any] = {
        "id": node_id,
        "name": "node-a",
        "mesh": "default",
        "host": "127.0.0.1",
        "pub_port": 5000,
        "pull_port": 5001,
        "services": frozenset({"resize", "thumbnail"}),
    }
    fields.update(changes)
    return PeerRecord(**fields)


def raw(*items: Any) -> bytes:
    """An envelope packed by plain msgpack, bypassing `pack` (so it may break every rule)."""
    return msgpack.packb(list(items), use_bin_type=True)


def with_raw_body(kind: int, body: bytes, meta: Any = None) -> bytes:
    """An envelope whose body is the given msgpack bytes, spliced in verbatim."""
    head = raw(1, kind, SENDER, 1, meta, None)
    assert head.endswith(b"\xc0")
    return head[:-1] + body


def reason(frames: list[bytes]) -> str:
    with pytest.raises(ProtocolError) as info:
        decode(frames)
    return info.value.reason


def outcome(frames: list[bytes]) -> Envelope | ProtocolError:
    """What decode makes of `frames`: an envelope, or the ProtocolError it raised (anything else
    it raises propagates and fails the test)."""
    try:
        return decode(frames)
    except ProtocolError as exc:
        return exc


REASONS = {"truncated", "oversized", "malformed", "version", "kind", "type", "nesting", "record"}


def on_socket(kind: Kind, frame: bytes, topic: str = "orders.new") -> list[bytes]:
    """The frames `kind` travels in: [channel, envelope] on PUB, [envelope] on PULL."""
    if kind in (Kind.EVENT, Kind.SYNCED):
        return [topic_channel(topic), frame]
    if kind is Kind.HEARTBEAT:
        return [CONTROL_CHANNEL, frame]
    return [frame]


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
    Kind.EVENT: (None, {"order": 42}),
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
}
PUB_ONLY = [Kind.EVENT, Kind.HEARTBEAT, Kind.SYNCED]
DIRECT_ONLY = [
    Kind.HELLO,
    Kind.WELCOME,
    Kind.UPDATE,
    Kind.TASK,
    Kind.ACK,
    Kind.NACK,
    Kind.SYNC,
]


def valid_frame(kind: Kind, seq: int = 1) -> bytes:
    meta, body = VALID[kind]
    return pack(kind, SENDER, seq, meta, body)


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
    }


def test_pack_is_the_documented_six_item_array() -> None:
    frame = pack(Kind.TASK, SENDER, 9, [7, "resize", 1], {"w": 64})
    assert msgpack.unpackb(frame, raw=False) == [1, 7, SENDER, 9, [7, "resize", 1], {"w": 64}]
    assert frame == raw(1, 7, SENDER, 9, [7, "resize", 1], {"w": 64})


def test_event_round_trip() -> None:
    frames = [topic_channel("orders.new"), pack(Kind.EVENT, SENDER, 5, None, {"order": 42})]
    assert frames[0] == b"Eorders.new"
    assert decode(frames) == Envelope(Kind.EVENT, SENDER, 5, None, {"order": 42}, "orders.new")


def test_heartbeat_round_trip() -> None:
    frames = [b"!", pack(Kind.HEARTBEAT, SENDER, 2, None, {})]
    assert decode(frames) == Envelope(Kind.HEARTBEAT, SENDER, 2, None, {}, None)


def test_bye_round_trip_published_on_the_control_channel() -> None:
    frames = [CONTROL_CHANNEL, pack(Kind.BYE, SENDER, 3, None, None)]
    assert decode(frames) == Envelope(Kind.BYE, SENDER, 3, None, None, None)


def test_bye_round_trip_sent_direct() -> None:
    assert decode([pack(Kind.BYE, SENDER, 3, None, None)]) == Envelope(
        Kind.BYE, SENDER, 3, None, None, None
    )


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.WELCOME])
def test_hello_and_welcome_round_trip(kind: Kind) -> None:
    hello = Hello(record(), ("127.0.0.1:6001", "[::1]:7001"))
    envelope = decode([pack(kind, SENDER, 1, None, hello.to_wire())])
    assert envelope == Envelope(kind, SENDER, 1, None, hello, None)
    assert type(envelope.body) is Hello
    assert envelope.body.record == record()
    assert envelope.body.peers == ("127.0.0.1:6001", "[::1]:7001")


def test_hello_with_no_peers() -> None:
    envelope = decode(
        [pack(Kind.HELLO, SENDER, 1, None, {"record": record().to_wire(), "peers": []})]
    )
    assert envelope.body == Hello(record(), ())


def test_hello_peer_addresses_are_normalised() -> None:
    body = {
        "record": record().to_wire(),
        "peers": ["tcp://10.0.0.2:5555", "[0:0:0:0:0:0:0:1]:7", " 10.0.0.3:1 "],
    }
    envelope = decode([pack(Kind.HELLO, SENDER, 1, None, body)])
    assert envelope.body.peers == ("10.0.0.2:5555", "[::1]:7", "10.0.0.3:1")


def test_hello_accepts_exactly_max_peers_listed() -> None:
    peers = [f"10.0.{i // 256}.{i % 256}:5000" for i in range(MAX_PEERS_LISTED)]
    envelope = decode(
        [pack(Kind.HELLO, SENDER, 1, None, {"record": record().to_wire(), "peers": peers})]
    )
    assert len(envelope.body.peers) == MAX_PEERS_LISTED


def test_hello_ignores_unknown_keys() -> None:
    body = {"record": record().to_wire(), "peers": [], "later": [1, 2]}
    assert decode([pack(Kind.HELLO, SENDER, 1, None, body)]).body == Hello(record(), ())


def test_update_round_trip_gives_a_record() -> None:
    rec = record(public_key="ed25519:abc", host="::1")
    envelope = decode([pack(Kind.UPDATE, SENDER, 4, None, rec.to_wire())])
    assert envelope == Envelope(Kind.UPDATE, SENDER, 4, None, rec, None)
    assert type(envelope.body) is PeerRecord


def test_task_round_trip() -> None:
    frame = pack(Kind.TASK, SENDER, 11, [7, "resize", 2], b"\x89PNG")
    assert decode([frame]) == Envelope(Kind.TASK, SENDER, 11, (7, "resize", 2), b"\x89PNG", None)


def test_ack_round_trip() -> None:
    assert decode([pack(Kind.ACK, SENDER, 12, [7], None)]) == Envelope(
        Kind.ACK, SENDER, 12, (7,), None, None
    )


def test_nack_round_trip() -> None:
    assert decode([pack(Kind.NACK, SENDER, 13, [7, "service not offered here"], None)]) == (
        Envelope(Kind.NACK, SENDER, 13, (7, "service not offered here"), None, None)
    )


def test_sync_round_trip() -> None:
    assert decode([pack(Kind.SYNC, SENDER, 14, [3, "orders."], None)]) == Envelope(
        Kind.SYNC, SENDER, 14, (3, "orders."), None, None
    )


def test_synced_round_trip_carries_the_prefix_as_topic() -> None:
    frames = [topic_channel("orders."), pack(Kind.SYNCED, SENDER, 15, [3, OTHER], None)]
    assert decode(frames) == Envelope(Kind.SYNCED, SENDER, 15, (3, OTHER), None, "orders.")


@pytest.mark.parametrize("kind", list(Kind))
def test_every_kind_round_trips_on_its_socket(kind: Kind) -> None:
    envelope = decode(on_socket(kind, valid_frame(kind, seq=77)))
    assert envelope.kind is kind
    assert type(envelope.kind) is Kind
    assert envelope.sender == SENDER
    assert envelope.seq == 77
    meta, _ = VALID[kind]
    assert envelope.meta == (None if meta is None else tuple(meta))
    expected_topic = "orders.new" if kind in (Kind.EVENT, Kind.SYNCED) else None
    assert envelope.topic == expected_topic


def test_meta_integers_up_to_uint64_max() -> None:
    frame = pack(Kind.TASK, SENDER, MAX_UINT64, [MAX_UINT64, "s", MAX_UINT64], None)
    assert decode([frame]) == Envelope(
        Kind.TASK, SENDER, MAX_UINT64, (MAX_UINT64, "s", MAX_UINT64), None
    )


@pytest.mark.parametrize(
    ("kind", "meta"),
    [
        (Kind.TASK, [1, "s" * MAX_TOPIC_SIZE, 1]),
        (Kind.NACK, [1, "r" * MAX_TOPIC_SIZE]),
        (Kind.SYNC, [1, "p" * MAX_TOPIC_SIZE]),
    ],
)
def test_meta_strings_of_max_topic_size_are_accepted(kind: Kind, meta: list[Any]) -> None:
    assert decode([pack(kind, SENDER, 1, meta, None)]).meta == tuple(meta)


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


@pytest.mark.parametrize("body", BODIES, ids=repr)
def test_event_body_round_trip(body: Any) -> None:
    envelope = decode([topic_channel("t"), pack(Kind.EVENT, SENDER, 1, None, body)])
    assert same(envelope.body, body)


@pytest.mark.parametrize("body", BODIES, ids=repr)
def test_task_body_round_trip(body: Any) -> None:
    envelope = decode([pack(Kind.TASK, SENDER, 1, [1, "svc", 1], body)])
    assert same(envelope.body, body)


def test_nan_body_round_trip() -> None:
    body = decode([topic_channel("t"), pack(Kind.EVENT, SENDER, 1, None, math.nan)]).body
    assert type(body) is float
    assert math.isnan(body)


def test_bytes_come_back_as_bytes_not_str() -> None:
    payload = "é".encode()  # valid UTF-8, still bytes
    body = decode([pack(Kind.TASK, SENDER, 1, [1, "s", 1], {b"k": payload})]).body
    assert type(body) is dict
    ((key, value),) = body.items()
    assert type(key) is bytes
    assert key == b"k"
    assert type(value) is bytes
    assert value == payload


def test_tuples_and_bytearrays_are_sent_as_lists_and_bytes() -> None:
    body = decode([pack(Kind.TASK, SENDER, 1, [1, "s", 1], (1, bytearray(b"ab")))]).body
    assert same(body, [1, b"ab"])


def test_nesting_of_exactly_max_nesting_lists_is_accepted() -> None:
    body = nested_lists(MAX_NESTING)
    assert depth(body) == MAX_NESTING
    assert decode([pack(Kind.TASK, SENDER, 1, [1, "s", 1], body)]).body == body


def test_nesting_of_exactly_max_nesting_maps_is_accepted() -> None:
    body = nested_maps(MAX_NESTING)
    assert depth(body) == MAX_NESTING
    assert decode([topic_channel("t"), pack(Kind.EVENT, SENDER, 1, None, body)]).body == body


def test_scalars_inside_the_deepest_allowed_container_are_accepted() -> None:
    body: Any = [1, "a", b"b", None]
    for level in range(MAX_NESTING - 1):
        body = {"k": body, 1: 2.5} if level % 2 else [None, body, b"x"]
    assert depth(body) == MAX_NESTING
    assert decode([pack(Kind.TASK, SENDER, 1, [1, "s", 1], body)]).body == body


def test_frame_of_exactly_max_frame_size_is_accepted() -> None:
    probe = 100_000  # bin 32 header either way
    size = MAX_FRAME_SIZE - len(pack(Kind.TASK, SENDER, 1, [1, "s", 1], b"x" * probe)) + probe
    frame = pack(Kind.TASK, SENDER, 1, [1, "s", 1], b"x" * size)
    assert len(frame) == MAX_FRAME_SIZE
    assert len(decode([frame]).body) == size


# -- topics ----------------------------------------------------------------------------------------


def test_topic_channel() -> None:
    assert topic_channel("orders.new") == b"Eorders.new"
    assert topic_channel("") == b"E"
    assert topic_channel("ünï 🚀") == b"E" + "ünï 🚀".encode()


def test_topic_channel_of_a_prefix_is_a_prefix_of_the_topic_channel() -> None:
    assert topic_channel("orders.new").startswith(topic_channel("orders."))
    assert topic_channel("anything").startswith(topic_channel(""))


def test_empty_topic_round_trip() -> None:
    envelope = decode([topic_channel(""), pack(Kind.EVENT, SENDER, 1, None, 1)])
    assert envelope.topic == ""


def test_unicode_topic_round_trip() -> None:
    envelope = decode([topic_channel("ünï.日本.🚀"), pack(Kind.EVENT, SENDER, 1, None, 1)])
    assert envelope.topic == "ünï.日本.🚀"


def test_topic_of_max_topic_size_bytes() -> None:
    ascii_topic = "t" * MAX_TOPIC_SIZE
    wide_topic = "é" * (MAX_TOPIC_SIZE // 2)  # 2 bytes each
    for topic in (ascii_topic, wide_topic):
        channel = topic_channel(topic)
        assert len(channel) == 1 + MAX_TOPIC_SIZE
        assert decode([channel, pack(Kind.EVENT, SENDER, 1, None, 1)]).topic == topic


@pytest.mark.parametrize("topic", [b"orders", 1, None, ["a"]])
def test_topic_channel_refuses_non_str(topic: Any) -> None:
    with pytest.raises(TypeError):
        topic_channel(topic)


@pytest.mark.parametrize(
    "topic",
    ["t" * (MAX_TOPIC_SIZE + 1), "é" * (MAX_TOPIC_SIZE // 2) + "t", "🚀" * 257],
)
def test_topic_channel_refuses_topics_over_max_topic_size_bytes(topic: str) -> None:
    with pytest.raises(ValueError, match="longer than"):
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


def test_pack_refuses_a_frame_over_max_frame_size() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        pack(Kind.TASK, SENDER, 1, [1, "s", 1], b"x" * MAX_FRAME_SIZE)


# -- strict decoding: frame level ------------------------------------------------------------------


@pytest.mark.parametrize("count", [0, 3, 4])
def test_wrong_number_of_frames(count: int) -> None:
    frame = valid_frame(Kind.EVENT)
    assert reason([topic_channel("t"), frame, frame, frame][:count]) == "malformed"


def test_empty_frame() -> None:
    assert reason([b""]) == "truncated"
    assert reason([b"E", b""]) == "truncated"


@pytest.mark.parametrize("kind", [Kind.EVENT, Kind.TASK])
def test_every_proper_prefix_of_a_frame_is_refused(kind: Kind) -> None:
    frame = pack(kind, SENDER, 1, VALID[kind][0], {"a": "héllo", "b": b"xx", "c": [1, 2.5, None]})
    for cut in range(len(frame)):
        with pytest.raises(ProtocolError):
            decode(on_socket(kind, frame[:cut]))


def test_a_frame_cut_short_near_its_end_is_truncated() -> None:
    frame = valid_frame(Kind.TASK)
    assert reason([frame[:-1]]) == "truncated"
    assert reason([frame[: len(frame) // 2]]) == "truncated"


@pytest.mark.parametrize("kind", [Kind.EVENT, Kind.TASK, Kind.HELLO, Kind.SYNCED])
def test_every_proper_prefix_of_a_frame_is_truncated(kind: Kind) -> None:
    """Also when a header announces more items than the cut frame holds (regression: those were
    'malformed', from msgpack's "N exceeds max_array_len")."""
    frame = valid_frame(kind)
    reasons = {cut: reason(on_socket(kind, frame[:cut])) for cut in range(len(frame))}
    assert {cut: r for cut, r in reasons.items() if r != "truncated"} == {}


def test_a_cut_array_that_announces_more_items_than_bytes_is_truncated() -> None:
    frame = pack(Kind.TASK, SENDER, 1, [1, "s", 1], list(range(100)))
    assert reason([frame[:30]]) == "truncated"
    frame = pack(Kind.TASK, SENDER, 1, [1, "s", 1], {i: i for i in range(100)})
    assert reason([frame[:30]]) == "truncated"


@pytest.mark.parametrize("extra", [b"\x00", b"\xc0", b"\x90", b"\xff\xff"])
def test_trailing_data_after_the_envelope(extra: bytes) -> None:
    assert reason([valid_frame(Kind.TASK) + extra]) == "malformed"


def test_two_envelopes_in_one_frame() -> None:
    frame = valid_frame(Kind.TASK)
    assert reason([frame + frame]) == "malformed"


def test_oversized_frame() -> None:
    assert reason([b"\x00" * (MAX_FRAME_SIZE + 1)]) == "oversized"
    assert reason([b"E", b"\x00" * (MAX_FRAME_SIZE + 1)]) == "oversized"


def test_oversized_valid_envelope() -> None:
    frame = raw(1, Kind.TASK, SENDER, 1, [1, "s", 1], b"x" * MAX_FRAME_SIZE)
    assert len(frame) > MAX_FRAME_SIZE
    assert reason([frame]) == "oversized"


@pytest.mark.parametrize(
    "frame",
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
def test_envelope_that_is_not_an_array_of_six(frame: bytes) -> None:
    assert reason([frame]) == "malformed"
    assert reason([b"E", frame]) == "malformed"


def test_not_msgpack_at_all() -> None:
    assert reason([b"\xc1"]) == "malformed"  # the one byte msgpack never uses
    assert reason([b"\x96\xc1\xc1\xc1\xc1\xc1\xc1"]) == "malformed"


def test_invalid_utf8_in_a_str_item() -> None:
    frame = with_raw_body(Kind.TASK, b"\xa2\xff\xfe", meta=[1, "s", 1])
    assert reason([frame]) == "malformed"


# -- strict decoding: header fields ----------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, 255, -1, MAX_UINT64])
def test_wrong_version(version: int) -> None:
    assert reason([raw(version, 7, SENDER, 1, [1, "s", 1], None)]) == "version"


@pytest.mark.parametrize("version", [True, "1", 1.0, None, b"\x01", [1]], ids=repr)
def test_version_not_an_integer(version: Any) -> None:
    assert reason([raw(version, 7, SENDER, 1, [1, "s", 1], None)]) == "malformed"


@pytest.mark.parametrize(
    "kind", [0, 12, 99, -1, MAX_UINT64, True, "1", 7.0, None, b"\x07"], ids=repr
)
def test_unknown_kind(kind: Any) -> None:
    assert reason([raw(1, kind, SENDER, 1, None, None)]) == "kind"
    assert reason([b"!", raw(1, kind, SENDER, 1, None, None)]) == "kind"


@pytest.mark.parametrize(
    "sender",
    [b"", b"x" * 15, b"x" * 17, "x" * 16, None, 16, [0] * 16, bytes(32)],
    ids=repr,
)
def test_sender_not_16_bytes(sender: Any) -> None:
    assert reason([raw(1, 7, sender, 1, [1, "s", 1], None)]) == "malformed"
    assert reason([b"!", raw(1, 2, sender, 1, None, {})]) == "malformed"


@pytest.mark.parametrize(
    "seq", [0, -1, MIN_INT64, "1", 1.0, True, False, None, b"\x01", [1]], ids=repr
)
def test_seq_not_a_positive_integer(seq: Any) -> None:
    assert reason([raw(1, 7, SENDER, seq, [1, "s", 1], None)]) == "malformed"
    assert reason([b"!", raw(1, 2, SENDER, seq, None, {})]) == "malformed"


# -- strict decoding: meta -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "meta"),
    [
        (Kind.EVENT, []),
        (Kind.EVENT, [1]),
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
    ],
    ids=repr,
)
def test_wrong_meta_shape(kind: Kind, meta: Any) -> None:
    _, body = VALID[kind]
    assert reason(on_socket(kind, raw(1, kind, SENDER, 1, meta, body))) == "malformed"


@pytest.mark.parametrize(
    ("kind", "meta"),
    [
        (Kind.TASK, [1, "s" * (MAX_TOPIC_SIZE + 1), 1]),
        (Kind.NACK, [1, "r" * (MAX_TOPIC_SIZE + 1)]),
        (Kind.SYNC, [1, "p" * (MAX_TOPIC_SIZE + 1)]),
    ],
    ids=["task service", "nack reason", "sync prefix"],
)
def test_meta_string_too_long(kind: Kind, meta: list[Any]) -> None:
    assert reason([raw(1, kind, SENDER, 1, meta, None)]) == "oversized"


@pytest.mark.parametrize(
    ("kind", "meta"),
    [
        (Kind.TASK, [1, "é" * MAX_TOPIC_SIZE, 1]),
        (Kind.NACK, [1, "é" * (MAX_TOPIC_SIZE // 2) + "r"]),
        (Kind.SYNC, [1, "é" * MAX_TOPIC_SIZE]),
        (Kind.SYNC, [1, "🚀" * 257]),
    ],
    ids=["task service", "nack reason", "sync prefix", "sync prefix 4-byte"],
)
def test_meta_string_over_max_topic_size_bytes_in_fewer_characters(
    kind: Kind, meta: list[Any]
) -> None:
    """Measured in UTF-8 bytes (regression: it was characters, so a SYNC prefix of 1024 'é'
    decoded and then made topic_channel() raise in the node's SYNC handler)."""
    assert reason([raw(1, kind, SENDER, 1, meta, None)]) == "oversized"


def test_meta_string_of_max_topic_size_bytes_in_fewer_characters() -> None:
    prefix = "é" * (MAX_TOPIC_SIZE // 2)
    envelope = decode([raw(1, Kind.SYNC, SENDER, 1, [1, prefix], None)])
    assert topic_channel(envelope.meta[1]) == b"E" + prefix.encode()


@given(prefix=st.text(max_size=600))
@settings(FUZZ, max_examples=200)
def test_every_decoded_sync_prefix_can_be_answered_on_its_channel(prefix: str) -> None:
    """What decode accepts as a SYNC prefix, the node answers on topic_channel(prefix)."""
    result = outcome([raw(1, Kind.SYNC, SENDER, 1, [1, prefix], None)])
    if isinstance(result, ProtocolError):
        assert result.reason == "oversized"
        assert len(prefix.encode()) > MAX_TOPIC_SIZE
    else:
        assert topic_channel(result.meta[1]) == b"E" + prefix.encode()


# -- strict decoding: kind on the wrong socket, channels -------------------------------------------


@pytest.mark.parametrize("kind", DIRECT_ONLY)
def test_direct_kind_published_in_two_frames(kind: Kind) -> None:
    frame = valid_frame(kind)
    assert reason([CONTROL_CHANNEL, frame]) == "kind"
    assert reason([topic_channel("t"), frame]) == "kind"


@pytest.mark.parametrize("kind", PUB_ONLY)
def test_published_kind_sent_as_one_frame(kind: Kind) -> None:
    assert reason([valid_frame(kind)]) == "kind"


@pytest.mark.parametrize(
    ("kind", "channel"),
    [
        (Kind.EVENT, CONTROL_CHANNEL),
        (Kind.SYNCED, CONTROL_CHANNEL),
        (Kind.HEARTBEAT, b"E"),
        (Kind.HEARTBEAT, b"Eorders"),
        (Kind.BYE, b"E"),
        (Kind.BYE, b"E!"),
    ],
    ids=repr,
)
def test_published_kind_on_the_other_known_channel(kind: Kind, channel: bytes) -> None:
    assert reason([channel, valid_frame(kind)]) == "kind"


@pytest.mark.parametrize("kind", [*PUB_ONLY, Kind.BYE])
@pytest.mark.parametrize("channel", [b"", b"e", b"Xorders", b"!!", b"!x", b"?", b"\x00E"], ids=repr)
def test_published_kind_on_an_unknown_channel(kind: Kind, channel: bytes) -> None:
    assert reason([channel, valid_frame(kind)]) == "malformed"


# -- decode_inbox and decode_published: the node's socket-specific decoders ------------------------


@pytest.mark.parametrize("kind", [*DIRECT_ONLY, Kind.BYE])
def test_decode_inbox_takes_every_direct_kind(kind: Kind) -> None:
    frames = [valid_frame(kind, seq=5)]
    assert decode_inbox(frames) == decode(frames)
    assert decode_inbox(frames).topic is None


@pytest.mark.parametrize("kind", [*PUB_ONLY, Kind.BYE])
def test_decode_published_takes_every_published_kind(kind: Kind) -> None:
    frames = on_socket(kind, valid_frame(kind, seq=5))
    if kind is Kind.BYE:
        frames = [CONTROL_CHANNEL, *frames]
    assert decode_published(frames) == decode(frames)


@pytest.mark.parametrize("kind", PUB_ONLY)
def test_decode_inbox_refuses_published_kinds(kind: Kind) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_inbox([valid_frame(kind)])
    assert info.value.reason == "kind"


@pytest.mark.parametrize("kind", DIRECT_ONLY)
def test_decode_published_refuses_direct_kinds(kind: Kind) -> None:
    for channel in (CONTROL_CHANNEL, b"E", b"Eorders"):
        with pytest.raises(ProtocolError) as info:
            decode_published([channel, valid_frame(kind)])
        assert info.value.reason == "kind"


@pytest.mark.parametrize("count", [0, 2, 3])
def test_decode_inbox_wants_exactly_one_frame(count: int) -> None:
    frame = valid_frame(Kind.TASK)
    with pytest.raises(ProtocolError) as info:
        decode_inbox([frame] * count)
    assert info.value.reason == "malformed"


@pytest.mark.parametrize("count", [0, 1, 3])
def test_decode_published_wants_exactly_two_frames(count: int) -> None:
    frames = [topic_channel("t"), valid_frame(Kind.EVENT), b"x"][:count]
    if count == 1:
        frames = [valid_frame(Kind.EVENT)]
    with pytest.raises(ProtocolError) as info:
        decode_published(frames)
    assert info.value.reason == "malformed"


def test_decode_published_checks_the_envelope_before_the_channel() -> None:
    with pytest.raises(ProtocolError) as info:
        decode_published([b"Xbad", b"\xc1"])
    assert info.value.reason == "malformed"
    with pytest.raises(ProtocolError) as info:
        decode_published([b"Xbad", raw(2, 1, SENDER, 1, None, None)])
    assert info.value.reason == "version"


# -- strict decoding: bodies fixed by kind ---------------------------------------------------------


@pytest.mark.parametrize("kind", [Kind.BYE, Kind.ACK, Kind.NACK, Kind.SYNC, Kind.SYNCED])
@pytest.mark.parametrize("body", [0, False, "", b"", [], {}, "bye"], ids=repr)
def test_kinds_with_a_nil_body_refuse_any_other(kind: Kind, body: Any) -> None:
    meta, _ = VALID[kind]
    assert reason(on_socket(kind, raw(1, kind, SENDER, 1, meta, body))) == "malformed"


def test_bye_with_a_body_is_refused_when_published_too() -> None:
    assert reason([CONTROL_CHANNEL, raw(1, Kind.BYE, SENDER, 1, None, 1)]) == "malformed"


@pytest.mark.parametrize("body", [None, [], 0, "", b"", [{}]], ids=repr)
def test_heartbeat_body_must_be_a_map(body: Any) -> None:
    assert reason([CONTROL_CHANNEL, raw(1, Kind.HEARTBEAT, SENDER, 1, None, body)]) == "malformed"


def test_heartbeat_map_may_carry_fields() -> None:
    body = {"load": 0.5, "later": [1, b"x"], 7: None}
    frames = [CONTROL_CHANNEL, pack(Kind.HEARTBEAT, SENDER, 1, None, body)]
    assert decode(frames).body == body


@pytest.mark.parametrize("channel", [b"E\xff", b"E\xc3", b"Eorders\x80", b"E\xed\xa0\x80"])
def test_topic_that_is_not_utf8(channel: bytes) -> None:
    assert reason([channel, valid_frame(Kind.EVENT)]) == "malformed"
    assert reason([channel, valid_frame(Kind.SYNCED)]) == "malformed"


def test_topic_longer_than_max_topic_size() -> None:
    channel = b"E" + b"t" * (MAX_TOPIC_SIZE + 1)
    assert reason([channel, valid_frame(Kind.EVENT)]) == "oversized"
    assert reason([channel, valid_frame(Kind.SYNCED)]) == "oversized"


# -- strict decoding: body types and nesting -------------------------------------------------------


def test_nesting_one_deeper_than_max_nesting() -> None:
    frame = pack(Kind.TASK, SENDER, 1, [1, "s", 1], nested_lists(MAX_NESTING + 1))
    assert reason([frame]) == "nesting"
    frame = pack(Kind.EVENT, SENDER, 1, None, nested_maps(MAX_NESTING + 1))
    assert reason([b"E", frame]) == "nesting"


def test_nesting_one_too_deep_inside_a_wide_body() -> None:
    body = {
        "ok": nested_lists(MAX_NESTING - 1),
        "bad": [1, 2, {"x": nested_lists(MAX_NESTING - 2)}],
    }
    assert depth(body) == MAX_NESTING + 1
    assert reason([pack(Kind.TASK, SENDER, 1, [1, "s", 1], body)]) == "nesting"


def test_nesting_far_deeper_than_max_nesting() -> None:
    body = b"\x91" * 999 + b"\x90"  # 1000 nested arrays, built without recursion
    assert reason([with_raw_body(Kind.TASK, body, meta=[1, "s", 1])]) == "nesting"


@pytest.mark.xfail(
    reason="BUG: nesting deep enough to hit msgpack's own stack limit raises StackError, which "
    "_unpack reports as 'malformed' (with an empty detail) instead of 'nesting'",
    strict=True,
)
def test_nesting_beyond_msgpack_stack_limit_is_reported_as_nesting() -> None:
    body = b"\x91" * 4999 + b"\x90"
    assert reason([with_raw_body(Kind.TASK, body, meta=[1, "s", 1])]) == "nesting"


def test_nesting_beyond_msgpack_stack_limit_is_a_protocol_error() -> None:
    body = b"\x91" * 99_999 + b"\x90"
    with pytest.raises(ProtocolError):
        decode([with_raw_body(Kind.TASK, body, meta=[1, "s", 1])])


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
    assert reason([pack(Kind.TASK, SENDER, 1, [1, "s", 1], body)]) == "type"


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
    assert reason([raw(*items)]) == "type"


@pytest.mark.parametrize(
    "body",
    [TIMESTAMP, [TIMESTAMP], {"at": TIMESTAMP}, {TIMESTAMP: 1}, [{"x": [TIMESTAMP]}]],
    ids=repr,
)
def test_msgpack_timestamps_in_the_body(body: Any) -> None:
    frame = pack(Kind.EVENT, SENDER, 1, None, body)
    assert reason([b"E", frame]) == "type"


@pytest.mark.parametrize("items", [(b"\xd6\xff", 4), (b"\xd7\xff", 8), (b"\xc7\x0c\xff", 12)])
def test_every_timestamp_encoding_in_the_body(items: tuple[bytes, int]) -> None:
    head, size = items
    frame = with_raw_body(Kind.TASK, head + b"\x00" * size, meta=[1, "s", 1])
    assert reason([frame]) == "type"


def test_timestamp_with_invalid_length() -> None:
    frame = with_raw_body(Kind.TASK, b"\xc7\x05\xff" + b"\x00" * 5, meta=[1, "s", 1])
    assert reason([frame]) == "malformed"


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
    assert reason([with_raw_body(Kind.TASK, body, meta=[1, "s", 1])]) == "malformed"
    assert reason([b"Et", with_raw_body(Kind.EVENT, body)]) == "malformed"


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
        {**record().to_wire(), "name": "x" * 256},
        {**record().to_wire(), "name": ""},
        {**record().to_wire(), "mesh": None},
        {**record().to_wire(), "services": "resize"},
        {**record().to_wire(), "services": [1]},
        {**record().to_wire(), "v": 2},
        {**record().to_wire(), "key": ""},
    ],
    ids=repr,
)
def test_update_with_a_bad_record(body: Any) -> None:
    assert reason([raw(1, Kind.UPDATE, SENDER, 1, None, body)]) == "record"


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
    assert reason([raw(1, kind, SENDER, 1, None, body)]) == "malformed"


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.WELCOME])
@pytest.mark.parametrize(
    "rec",
    [None, [], {}, {**record().to_wire(), "pub": -1}, {**record().to_wire(), "v": True}],
    ids=repr,
)
def test_hello_with_a_bad_record(kind: Kind, rec: Any) -> None:
    assert reason([raw(1, kind, SENDER, 1, None, {"record": rec, "peers": []})]) == "record"


def test_hello_listing_too_many_peers() -> None:
    peers = ["10.0.0.1:5000"] * (MAX_PEERS_LISTED + 1)
    body = {"record": record().to_wire(), "peers": peers}
    assert reason([raw(1, Kind.HELLO, SENDER, 1, None, body)]) == "oversized"


@pytest.mark.parametrize("kind", [Kind.HELLO, Kind.WELCOME, Kind.UPDATE])
def test_record_id_differs_from_the_sender(kind: Kind) -> None:
    rec = record(OTHER).to_wire()
    body = rec if kind is Kind.UPDATE else {"record": rec, "peers": []}
    assert reason([pack(kind, SENDER, 1, None, body)]) == "malformed"


# -- properties ------------------------------------------------------------------------------------

INT64 = st.integers(min_value=MIN_INT64, max_value=MAX_UINT64)
SCALARS = st.none() | st.booleans() | INT64 | st.floats() | st.text() | st.binary()
KEYS = st.text() | INT64 | st.binary()
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=4),
    max_leaves=20,
).filter(lambda value: depth(value) <= MAX_NESTING)


@given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=2))
@FUZZ
def test_arbitrary_bytes_only_raise_protocol_error(frames: list[bytes]) -> None:
    result = outcome(frames)
    if isinstance(result, ProtocolError):
        assert result.reason in REASONS
    else:
        assert type(result) is Envelope


@given(frames=st.lists(st.binary(max_size=300), min_size=1, max_size=2))
@FUZZ
def test_arbitrary_bytes_after_a_valid_header_only_raise_protocol_error(
    frames: list[bytes],
) -> None:
    """The same, but past the first checks: a valid six-item array header, version and kind."""
    frames[-1] = b"\x96\x01\x01" + frames[-1]
    result = outcome(frames)
    assert isinstance(result, ProtocolError | Envelope)


def _valid_messages() -> st.SearchStrategy[list[bytes]]:
    literal = st.sampled_from(list(Kind)).map(lambda kind: on_socket(kind, valid_frame(kind)))
    events = st.builds(
        lambda topic, body: [topic_channel(topic), pack(Kind.EVENT, SENDER, 1, None, body)],
        st.text(max_size=20),
        VALUES,
    )
    tasks = st.builds(
        lambda body: [pack(Kind.TASK, SENDER, 1, [1, "svc", 1], body)],
        VALUES,
    )
    return literal | events | tasks


@given(message=_valid_messages(), data=st.data())
@settings(FUZZ, max_examples=300)
def test_mutated_valid_frames_decode_or_raise_protocol_error(
    message: list[bytes], data: st.DataObject
) -> None:
    frame = bytearray(message[-1])
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
    frames = [*message[:-1], bytes(frame)]
    try:
        envelope = decode(frames)
    except ProtocolError:
        return
    assert type(envelope) is Envelope
    assert envelope.kind in Kind
    assert type(envelope.sender) is bytes
    assert len(envelope.sender) == 16
    assert 0 < envelope.seq <= MAX_UINT64


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
    channel=st.sampled_from([None, b"!", b"E", b"Eorders", b"E\xff", b"X", b""]),
    version=st.just(1) | SCALARS,
    kind=st.integers(0, 12) | SCALARS,
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
    items = [version, kind, sender, seq, meta, body, None][:length]
    frame = raw(*items)
    frames = [frame] if channel is None else [channel, frame]
    try:
        envelope = decode(frames)
    except ProtocolError:
        return
    assert envelope.kind in Kind


@given(topic=st.text(max_size=40), seq=st.integers(1, MAX_UINT64), body=VALUES)
@FUZZ
def test_event_round_trip_of_any_body(topic: str, seq: int, body: Any) -> None:
    envelope = decode([topic_channel(topic), pack(Kind.EVENT, SENDER, seq, None, body)])
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
    envelope = decode([pack(Kind.TASK, SENDER, 1, [task_id, service, attempt], body)])
    assert envelope.kind is Kind.TASK
    assert envelope.meta == (task_id, service, attempt)
    assert same(envelope.body, body)
