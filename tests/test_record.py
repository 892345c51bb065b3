"""The peer record (discovery/_record.py): validation, wire form, addresses. Pure: no IO."""

from __future__ import annotations

import ipaddress
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from discovery import (
    PROTOCOL_VERSION,
    PeerRecord,
    RecordError,
    format_address,
    format_contact,
    is_public_key,
    parse_address,
    parse_contact,
    tcp_endpoint,
)

from .conftest import make_record, record_fields

NODE_ID = bytes(range(16))
#: A public key as a keyed node has one (Z85, 40 characters; '@' and ':' are Z85 too).
Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"
KEY = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def fields(**changes: Any) -> dict[str, Any]:
    return record_fields(NODE_ID, **changes)


def record(**changes: Any) -> PeerRecord:
    return make_record(NODE_ID, **changes)


WIRE: dict[str, Any] = {
    "id": NODE_ID,
    "name": "node-a",
    "mesh": "default",
    "host": "127.0.0.1",
    "pub": 5000,
    "pull": 5001,
    "services": ["resize", "thumbnail"],
    "v": 1,
    "key": None,
}


def wire(**changes: Any) -> dict[str, Any]:
    return {**WIRE, **changes}


# -- construction and validation -------------------------------------------------------------------


def test_defaults() -> None:
    rec = PeerRecord(NODE_ID, "n", "m", "10.0.0.1", 1, 2)
    assert rec.services == frozenset()
    assert rec.protocol == PROTOCOL_VERSION == 1
    assert rec.public_key is None


def test_id_hex() -> None:
    assert record().id_hex == "000102030405060708090a0b0c0d0e0f"


@pytest.mark.parametrize(
    "value",
    [
        b"",
        NODE_ID[:15],
        NODE_ID + b"\x00",
        bytearray(NODE_ID),
        memoryview(NODE_ID),
        "x" * 16,
        None,
        16,
    ],
    ids=repr,
)
def test_bad_id(value: Any) -> None:
    with pytest.raises(RecordError, match="id"):
        record(id=value)


@pytest.mark.parametrize("field", ["name", "mesh"])
@pytest.mark.parametrize(
    "value",
    ["", "x" * 256, "é" * 128, "🚀" * 64, None, 1, b"name", ["name"]],
    ids=repr,
)
def test_bad_name_and_mesh(field: str, value: Any) -> None:
    with pytest.raises(RecordError, match=field):
        record(**{field: value})


@pytest.mark.parametrize("field", ["name", "mesh"])
@pytest.mark.parametrize("value", ["x", "x" * 250, "é" * 124 + "x", "🚀" * 62 + "a", "a b\tc"])
def test_good_name_and_mesh(field: str, value: str) -> None:
    assert getattr(record(**{field: value}), field) == value


def test_a_name_may_be_255_bytes_a_mesh_250() -> None:
    # A mesh name must fit whole in one DNS-SD TXT string: "mesh=" + 250 bytes.
    assert record(name="x" * 255).name == "x" * 255
    assert record(mesh="x" * 250).mesh == "x" * 250
    with pytest.raises(RecordError, match="mesh must be 1 to 250 bytes"):
        record(mesh="x" * 251)


@pytest.mark.parametrize("field", ["name", "mesh"])
@pytest.mark.parametrize("value", ["node\ud800", "\udfff", "a\udc80b"], ids=repr)
def test_lone_surrogate_in_a_name_is_refused(field: str, value: str) -> None:
    """Regression: a lone surrogate passed (it was measured with 'surrogatepass'), and then the
    record could not be packed: it is not UTF-8."""
    with pytest.raises(RecordError, match=field):
        record(**{field: value})


def test_lone_surrogate_in_a_service_is_refused() -> None:
    with pytest.raises(RecordError, match="service"):
        record(services=frozenset({"ok", "bad\ud800"}))


@pytest.mark.parametrize(
    "value",
    [
        "",
        "localhost",
        "example.com",
        "127.0.0.1:80",
        "[::1]",
        "1.2.3.256",
        "1.2.3",
        "0.0.0.0",
        "::",
        "0:0:0:0:0:0:0:0",
        "224.0.0.1",
        "239.255.255.250",
        "ff02::1",
        None,
        1,
        b"127.0.0.1",
        ipaddress.ip_address("127.0.0.1"),
    ],
    ids=repr,
)
def test_bad_host(value: Any) -> None:
    with pytest.raises(RecordError, match="host"):
        record(host=value)


@pytest.mark.parametrize(
    "value",
    ["127.0.0.1", "10.1.2.3", "192.168.0.10", "::1", "fe80::1", "2001:db8::5", "fe80::1%eth0"],
)
def test_good_host(value: str) -> None:
    assert record(host=value).host == value


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ("0:0:0:0:0:0:0:1", "::1"),
        ("::0001", "::1"),
        ("FE80::1", "fe80::1"),
        ("2001:DB8::5", "2001:db8::5"),
        ("2001:db8:0:0:0:0:0:5", "2001:db8::5"),
        ("2001:0db8::0005", "2001:db8::5"),
    ],
)
def test_host_must_be_in_canonical_form(value: str, canonical: str) -> None:
    """Addresses are compared as text, so each has one spelling: str(ip_address(host))."""
    with pytest.raises(RecordError, match="canonical"):
        record(host=value)
    assert record(host=canonical).host == canonical


@pytest.mark.parametrize("field", ["pub_port", "pull_port"])
@pytest.mark.parametrize("value", [0, -1, 65536, 2**64, "80", 80.0, True, None], ids=repr)
def test_bad_port(field: str, value: Any) -> None:
    with pytest.raises(RecordError, match=field):
        record(**{field: value})


@pytest.mark.parametrize("field", ["pub_port", "pull_port"])
@pytest.mark.parametrize("value", [1, 80, 65535])
def test_good_port(field: str, value: int) -> None:
    assert getattr(record(**{field: value}), field) == value


@pytest.mark.parametrize(
    "value",
    [
        {"resize"},
        ["resize"],
        ("resize",),
        "resize",
        None,
        frozenset({""}),
        frozenset({"x" * 256}),
        frozenset({1}),
        frozenset({b"resize"}),
        frozenset({"ok", None}),
        frozenset(f"s{i}" for i in range(1025)),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_bad_services(value: Any) -> None:
    with pytest.raises(RecordError):
        record(services=value)


def test_max_services() -> None:
    services = frozenset(f"s{i}" for i in range(1024))
    assert record(services=services).services == services


@pytest.mark.parametrize("value", [0, 2, -1, True, "1", 1.0, None], ids=repr)
def test_bad_protocol(value: Any) -> None:
    with pytest.raises(RecordError, match="protocol"):
        record(protocol=value)


@pytest.mark.parametrize(
    "value",
    ["", "k" * 39, "k" * 41, "k" * 39 + "~", "k" * 39 + "\u00e9", 1, b"k" * 40, ["key"]],
    ids=repr,
)
def test_bad_public_key(value: Any) -> None:
    with pytest.raises(RecordError, match="public_key"):
        record(public_key=value)


def test_record_is_frozen_and_hashable() -> None:
    rec = record()
    with pytest.raises(AttributeError):
        rec.name = "other"  # type: ignore[misc]
    assert hash(rec) == hash(record())
    assert rec == record()
    assert rec != record(name="node-b")


def test_with_services() -> None:
    rec = record(public_key=KEY, host="::1")
    changed = rec.with_services(["b", "a", "b"])
    assert changed.services == frozenset({"a", "b"})
    assert changed == PeerRecord(**fields(host="::1", public_key=KEY, services=changed.services))
    assert rec.services == frozenset({"resize", "thumbnail"})
    with pytest.raises(RecordError):
        rec.with_services([""])


# -- addresses and endpoints -----------------------------------------------------------------------


def test_addresses_ipv4() -> None:
    rec = record()
    assert rec.address == "127.0.0.1:5001"
    assert rec.pub_endpoint == "tcp://127.0.0.1:5000"
    assert rec.pull_endpoint == "tcp://127.0.0.1:5001"


def test_addresses_ipv6() -> None:
    rec = record(host="fe80::1")
    assert rec.address == "[fe80::1]:5001"
    assert rec.pub_endpoint == "tcp://[fe80::1]:5000"
    assert rec.pull_endpoint == "tcp://[fe80::1]:5001"


def test_format_address_and_tcp_endpoint() -> None:
    assert format_address("10.0.0.1", 80) == "10.0.0.1:80"
    assert format_address("::1", 80) == "[::1]:80"
    assert format_address("2001:db8::5", 65535) == "[2001:db8::5]:65535"
    assert tcp_endpoint("10.0.0.1", 80) == "tcp://10.0.0.1:80"
    assert tcp_endpoint("::1", 80) == "tcp://[::1]:80"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:80", ("127.0.0.1", 80)),
        ("10.0.0.2:65535", ("10.0.0.2", 65535)),
        ("10.0.0.2:1", ("10.0.0.2", 1)),
        ("10.0.0.2:00080", ("10.0.0.2", 80)),
        ("[::1]:80", ("::1", 80)),
        ("[2001:db8::5]:9000", ("2001:db8::5", 9000)),
        ("[0:0:0:0:0:0:0:1]:80", ("::1", 80)),
        ("[2001:DB8::5]:9000", ("2001:db8::5", 9000)),
        ("tcp://10.0.0.2:5555", ("10.0.0.2", 5555)),
        ("tcp://[fe80::1]:9", ("fe80::1", 9)),
        ("  127.0.0.1:80\n", ("127.0.0.1", 80)),
        (" tcp://127.0.0.1:80 ", ("127.0.0.1", 80)),
    ],
)
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "127.0.0.1",
        "127.0.0.1:",
        ":80",
        "localhost:80",
        "example.com:80",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:99999999999999999999",
        "127.0.0.1:-1",
        "127.0.0.1:+80",
        "127.0.0.1:8a",
        "127.0.0.1: 80",
        "127.0.0.1:80:90",
        "0.0.0.0:80",
        "[::]:80",
        "[::1]",
        "::1",
        "tcp://",
        "tcp://127.0.0.1",
        "udp://127.0.0.1:80",
        "http://127.0.0.1:80",
        "1.2.3.256:80",
        "::1:80",  # IPv6 without brackets is ambiguous
        "[::1:80",
        "[1.2.3.4]:5",  # brackets are for IPv6 only
        "127.0.0.1:\u0668\u0660",  # non-ASCII digits
        "224.0.0.251:5353",  # multicast
    ],
)
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_address(text)


@given(host=st.ip_addresses(), port=st.integers(1, 65535))
@FUZZ
def test_parse_address_inverts_format_address(
    host: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
) -> None:
    text = format_address(str(host), port)
    if host.is_unspecified or host.is_multicast:
        with pytest.raises(ValueError, match="cannot connect"):
            parse_address(text)
    else:
        assert parse_address(text) == (str(host), port)
        assert parse_address(tcp_endpoint(str(host), port)) == (str(host), port)


@given(text=st.text(max_size=60) | st.from_regex(r"\A(tcp://)?\[?[0-9a-f.:]{0,20}\]?:\d{0,6}\Z"))
@FUZZ
def test_parse_address_only_raises_value_error(text: str) -> None:
    try:
        host, port = parse_address(text)
    except ValueError:
        return
    assert 0 < port < 65536
    assert str(ipaddress.ip_address(host)) == host


# -- wire form -------------------------------------------------------------------------------------


def test_to_wire() -> None:
    assert record().to_wire() == WIRE
    assert record(public_key=KEY).to_wire() == wire(key=KEY)


def test_to_wire_sorts_services() -> None:
    assert record(services=frozenset({"c", "a", "b"})).to_wire()["services"] == ["a", "b", "c"]


def test_wire_round_trip() -> None:
    for rec in (
        record(),
        record(host="::1", public_key=KEY),
        record(services=frozenset()),
        record(name="ünï 🚀", mesh="m" * 250),
    ):
        assert PeerRecord.from_wire(rec.to_wire()) == rec
        packed = msgpack.packb(rec.to_wire(), use_bin_type=True)
        assert PeerRecord.from_wire(msgpack.unpackb(packed, raw=False)) == rec


def test_from_wire() -> None:
    assert PeerRecord.from_wire(WIRE) == record()


def test_from_wire_without_key_means_no_public_key() -> None:
    data = dict(WIRE)
    del data["key"]
    assert PeerRecord.from_wire(data).public_key is None


def test_from_wire_ignores_unknown_keys() -> None:
    data = wire(later={"x": [1]}, weight=3)
    data[1] = b"int key"
    data[b"bytes"] = None
    assert PeerRecord.from_wire(data) == record()


def test_from_wire_ipv6_host() -> None:
    rec = PeerRecord.from_wire(wire(host="2001:db8::5"))
    assert rec.host == "2001:db8::5"
    assert rec.address == "[2001:db8::5]:5001"


def test_from_wire_deduplicates_services() -> None:
    assert PeerRecord.from_wire(wire(services=["a", "b", "a"])).services == frozenset({"a", "b"})


@pytest.mark.parametrize("missing", ["id", "name", "mesh", "host", "pub", "pull", "services", "v"])
def test_from_wire_missing_key(missing: str) -> None:
    data = dict(WIRE)
    del data[missing]
    with pytest.raises(RecordError):
        PeerRecord.from_wire(data)


@pytest.mark.parametrize(
    "data",
    [None, [], list(WIRE.items()), "record", b"record", 1, set(WIRE)],
    ids=repr,
)
def test_from_wire_not_a_map(data: Any) -> None:
    with pytest.raises(RecordError, match="not a map"):
        PeerRecord.from_wire(data)


@pytest.mark.parametrize(
    "changes",
    [
        {"id": NODE_ID.hex()},
        {"id": NODE_ID[:8]},
        {"id": None},
        {"name": b"node-a"},
        {"name": ""},
        {"mesh": 1},
        {"host": "localhost"},
        {"host": b"127.0.0.1"},
        {"host": "0.0.0.0"},
        {"host": "224.0.0.1"},
        {"host": "0:0:0:0:0:0:0:1"},
        {"host": "FE80::1"},
        {"pub": "5000"},
        {"pub": 0},
        {"pull": 65536},
        {"pull": True},
        {"pull": 5001.0},
        {"services": None},
        {"services": "resize"},
        {"services": ("resize",)},
        {"services": {"resize": 1}},
        {"services": [1]},
        {"services": [["resize"]]},
        {"services": [{"a": 1}]},
        {"services": [""]},
        {"services": [f"s{i}" for i in range(1025)]},
        {"services": ["s"] * 1025},
        {"v": 2},
        {"v": "1"},
        {"v": True},
        {"v": None},
        {"key": ""},
        {"key": 1},
        {"key": b"k"},
    ],
    ids=lambda changes: repr(changes)[:40],
)
def test_from_wire_wrong_values(changes: dict[str, Any]) -> None:
    with pytest.raises(RecordError):
        PeerRecord.from_wire(wire(**changes))


_WIRE_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=18),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text(max_size=4) | st.integers(), children, max_size=3)
        | st.frozensets(st.text(max_size=4), max_size=3)
    ),
    max_leaves=8,
)

_NEAR_RECORDS = st.fixed_dictionaries(
    {},
    optional={
        "id": st.just(NODE_ID) | st.binary(max_size=17) | _WIRE_VALUES,
        "name": st.text(max_size=4) | _WIRE_VALUES,
        "mesh": st.just("default") | _WIRE_VALUES,
        "host": st.sampled_from(["127.0.0.1", "::1", "0.0.0.0", "224.0.0.1", "fe80::1%1", "x"])
        | _WIRE_VALUES,
        "pub": st.integers(-1, 65536) | _WIRE_VALUES,
        "pull": st.integers(-1, 65536) | _WIRE_VALUES,
        "services": st.lists(st.text(max_size=3) | _WIRE_VALUES, max_size=4) | _WIRE_VALUES,
        "v": st.sampled_from([1, 2, True, 1.0]) | _WIRE_VALUES,
        "key": st.none() | st.text(max_size=3) | _WIRE_VALUES,
        "later": _WIRE_VALUES,
    },
)


@given(data=st.dictionaries(st.text(max_size=8), _WIRE_VALUES, max_size=10) | _NEAR_RECORDS)
@FUZZ
def test_from_wire_of_any_map_only_raises_record_error(data: dict[Any, Any]) -> None:
    try:
        rec = PeerRecord.from_wire(data)
    except RecordError:
        return
    assert type(rec) is PeerRecord
    assert PeerRecord.from_wire(rec.to_wire()) == rec


@given(data=_WIRE_VALUES)
@FUZZ
def test_from_wire_of_any_value_only_raises_record_error(data: Any) -> None:
    with pytest.raises(RecordError):
        PeerRecord.from_wire(data)


@given(
    name=st.text(min_size=1, max_size=60),
    host=st.ip_addresses().filter(
        lambda ip: (
            not (ip.is_unspecified or ip.is_multicast or (ip.version == 6 and ip.ipv4_mapped))
        )
    ),
    ports=st.tuples(st.integers(1, 65535), st.integers(1, 65535)),
    services=st.frozensets(st.text(min_size=1, max_size=20), max_size=5),
    public_key=st.none() | st.text(alphabet=sorted(Z85), min_size=40, max_size=40),
)
@FUZZ
def test_any_valid_record_round_trips_through_msgpack(
    name: str,
    host: ipaddress.IPv4Address | ipaddress.IPv6Address,
    ports: tuple[int, int],
    services: frozenset[str],
    public_key: str | None,
) -> None:
    rec = PeerRecord(NODE_ID, name, "default", str(host), *ports, services, 1, public_key)
    packed = msgpack.packb(rec.to_wire(), use_bin_type=True)
    assert PeerRecord.from_wire(msgpack.unpackb(packed, raw=False)) == rec
    assert parse_address(rec.address) == (str(host), ports[1])


def test_an_ipv4_mapped_host_is_refused() -> None:
    # Python versions spell ::ffff:10.0.0.1 differently; the IPv4 form is the one spelling.
    with pytest.raises(RecordError, match="IPv4-mapped"):
        record(host="::ffff:10.0.0.1")


# -- keys and contacts ---------------------------------------------------------------------------


def test_is_public_key() -> None:
    assert is_public_key(KEY)
    assert not is_public_key(KEY[:-1])
    assert not is_public_key(KEY + "a")
    assert not is_public_key(KEY[:-1] + "~")  # not in Z85's alphabet
    assert not is_public_key(KEY.encode())


def test_contact_with_and_without_a_key() -> None:
    assert parse_contact("127.0.0.1:5000") == ("127.0.0.1:5000", None)
    assert parse_contact(f"{KEY}@127.0.0.1:5000") == ("127.0.0.1:5000", KEY)
    assert parse_contact(f" {KEY}@[::1]:7 ") == ("[::1]:7", KEY)
    assert format_contact("127.0.0.1:5000", KEY) == f"{KEY}@127.0.0.1:5000"
    assert format_contact("127.0.0.1:5000", None) == "127.0.0.1:5000"


@pytest.mark.parametrize(
    "contact",
    ["~" * 40 + "@127.0.0.1:5", KEY + "@127.0.0.1", KEY + "@host:5", KEY[:39] + "@127.0.0.1:5"],
    ids=repr,
)
def test_bad_contact(contact: str) -> None:
    with pytest.raises(ValueError, match=r"contact|address"):
        parse_contact(contact)
