"""The DNS-SD TXT codec (discovery/_txt.py): encode_txt, decode_txt, instance_name. Pure: no IO.

TXT properties are fed to `decode_txt` as python-zeroconf hands them over: ``dict[bytes, bytes |
None]``, made here by a real `ServiceInfo` from the TXT wire bytes (no network involved).
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from zeroconf import ServiceInfo

from discovery import (
    PROTOCOL_VERSION,
    SERVICE_TYPE,
    Announcement,
    PeerRecord,
    RecordError,
    decode_txt,
    encode_txt,
    instance_name,
)
from discovery._record import MAX_MESH_SIZE

from .conftest import make_record

NODE_ID = bytes(range(16))
ID_HEX = NODE_ID.hex()

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def record(**changes: Any) -> PeerRecord:
    return make_record(NODE_ID, **changes)


def as_heard(properties: dict[str, str] | dict[bytes, bytes | None]) -> dict[bytes, bytes | None]:
    """`properties` after a trip through TXT wire bytes, as python-zeroconf decodes them."""
    name = f"{ID_HEX}.{SERVICE_TYPE}"
    text = ServiceInfo(SERVICE_TYPE, name, properties=properties).text
    return ServiceInfo(SERVICE_TYPE, name, properties=text).properties


def txt(**changes: str | bytes | None) -> dict[bytes, bytes | None]:
    """The TXT of `record()` as heard, with keys changed (a value of ``...`` removes the key)."""
    properties: dict[bytes, bytes | None] = {
        key.encode(): value.encode() for key, value in encode_txt(record()).items()
    }
    for key, value in changes.items():
        if value is ...:
            properties.pop(key.encode(), None)
        else:
            properties[key.encode()] = value.encode() if isinstance(value, str) else value
    return as_heard(properties)


def strings(properties: dict[str, str]) -> list[bytes]:
    return [f"{key}={value}".encode() for key, value in properties.items()]


# -- instance_name ------------------------------------------------------------------------------


def test_instance_name_is_the_id_in_hex_under_the_service_type() -> None:
    assert SERVICE_TYPE == "_zmesh._tcp.local."
    assert instance_name(NODE_ID) == "000102030405060708090a0b0c0d0e0f._zmesh._tcp.local."
    assert instance_name(b"\xff" * 16) == "f" * 32 + "._zmesh._tcp.local."


# -- encode_txt ---------------------------------------------------------------------------------


def test_encode_txt_has_exactly_the_documented_keys_and_values() -> None:
    assert encode_txt(record()) == {
        "v": str(PROTOCOL_VERSION),
        "id": ID_HEX,
        "mesh": "default",
        "name": "node-a",
        "pub": "5000",
        "services": "resize,thumbnail",
    }


def test_encode_txt_with_no_services_gives_an_empty_list() -> None:
    properties = encode_txt(record(services=frozenset()))
    assert properties["services"] == ""
    assert decode_txt(as_heard(properties), ["127.0.0.1"], 5001).services == frozenset()


def test_encode_txt_keeps_a_service_list_of_exactly_255_bytes() -> None:
    services = frozenset({"a" * 100, "b" * 100, "c" * 44})  # services= + 100+1+100+1+44 = 255
    properties = encode_txt(record(services=services))
    assert len(f"services={properties['services']}".encode()) == 255
    assert properties["services"] == ",".join(sorted(services))


def test_encode_txt_leaves_out_a_service_list_of_256_bytes() -> None:
    services = frozenset({"a" * 100, "b" * 100, "c" * 45})
    properties = encode_txt(record(services=services))
    assert "services" not in properties
    assert set(properties) == {"v", "id", "mesh", "name", "pub"}
    announcement = decode_txt(as_heard(properties), ["127.0.0.1"], 5001)
    assert announcement.services is None  # learnt from HELLO instead


def test_encode_txt_counts_service_bytes_not_characters() -> None:
    fits = frozenset({"é" * 123})  # services= (9) + 246 bytes = 255
    too_long = frozenset({"é" * 123 + "x"})
    assert encode_txt(record(services=fits))["services"] == "é" * 123
    assert "services" not in encode_txt(record(services=too_long))


def test_encode_txt_leaves_out_services_when_a_name_holds_a_comma() -> None:
    properties = encode_txt(record(services=frozenset({"a,b", "c"})))
    assert "services" not in properties
    assert decode_txt(as_heard(properties), ["127.0.0.1"], 5001).services is None


def test_encode_txt_leaves_out_many_services() -> None:
    services = frozenset(f"service-{i:03d}" for i in range(100))
    assert "services" not in encode_txt(record(services=services))


@pytest.mark.parametrize(
    "name",
    [
        "n" * 250,  # name= + 250 = 255: kept whole
        "n" * 251,
        "n" * 255,
        "é" * 127 + "x",  # 255 bytes, two-byte characters
        "€" * 85,  # 255 bytes, three-byte characters: the cut falls inside one
        "😀" * 63 + "abc",  # 255 bytes, four-byte characters
    ],
)
def test_every_txt_string_fits_in_255_bytes_even_for_a_255_byte_name(name: str) -> None:
    assert len(name.encode()) in {250, 251, 255}
    properties = encode_txt(record(name=name))
    for string in strings(properties):
        assert len(string) <= 255
    # Only the (cosmetic) name was cut, at a character boundary, and as little as possible.
    assert properties["name"] == name.encode()[:250].decode(errors="ignore")
    assert name.startswith(properties["name"])
    assert len(properties["name"].encode()) > 246
    # What zeroconf builds from it is valid TXT and decodes to the cut name.
    announcement = decode_txt(as_heard(properties), ["127.0.0.1"], 5001)
    assert announcement.name == properties["name"]
    assert announcement.mesh == "default"


@pytest.mark.parametrize(
    "mesh",
    ["m" * 250, "é" * 125, "€" * 83 + "x", "😀" * 62 + "ab"],  # 250 bytes each
)
def test_a_mesh_of_250_bytes_travels_whole(mesh: str) -> None:
    # Nodes compare the mesh they hear with their own: it must never be cut.
    assert len(mesh.encode()) == MAX_MESH_SIZE
    properties = encode_txt(record(mesh=mesh))
    assert properties["mesh"] == mesh
    assert len(f"mesh={mesh}".encode()) == 255
    assert all(len(string) <= 255 for string in strings(properties))
    assert decode_txt(as_heard(properties), ["127.0.0.1"], 5001).mesh == mesh


@pytest.mark.parametrize("mesh", ["m" * 251, "é" * 126, "m" * 255])
def test_a_mesh_too_long_for_one_txt_string_is_refused_by_the_record(mesh: str) -> None:
    with pytest.raises(RecordError, match="mesh must be 1 to 250 bytes"):
        record(mesh=mesh)


# -- decode_txt: round trips --------------------------------------------------------------------


@pytest.mark.parametrize(
    "rec",
    [
        record(),
        record(services=frozenset()),
        record(name="ノード", mesh="网格", services=frozenset({"画像", "x=y"})),
        record(host="::1", pub_port=1, pull_port=65535),
        record(host="10.0.0.7", services=frozenset({"a,b"})),
    ],
)
def test_decode_txt_reads_what_encode_txt_wrote(rec: PeerRecord) -> None:
    properties = encode_txt(rec)
    announcement = decode_txt(as_heard(properties), [rec.host], rec.pull_port)
    services = rec.services if "services" in properties else None
    assert announcement == Announcement(
        rec.id, rec.name, rec.mesh, rec.host, rec.pub_port, rec.pull_port, services
    )
    assert announcement.address == rec.address


def test_decode_txt_ignores_unknown_keys_and_empty_service_names() -> None:
    heard = txt(incarnation="7", flag=None, services=",resize,,thumbnail,")
    announcement = decode_txt(heard, ["127.0.0.1"], 5001)
    assert announcement.services == frozenset({"resize", "thumbnail"})


def test_decode_txt_reads_services_with_no_value_as_none_listed() -> None:
    assert decode_txt(txt(services=None), ["127.0.0.1"], 5001).services == frozenset()


def test_decode_txt_uses_the_first_usable_address() -> None:
    addresses = [
        "",
        "garbage",
        "127.0.0.1.5",
        "0.0.0.0",
        "::",
        "224.0.0.251",
        "ff02::fb",
        "::ffff:127.0.0.1",  # IPv4-mapped
        "::0:1",  # not canonical
        "127.0.0.9",
        "127.0.0.1",
    ]
    announcement = decode_txt(txt(), addresses, 5001)
    assert announcement.host == "127.0.0.9"
    assert announcement.address == "127.0.0.9:5001"
    assert decode_txt(txt(), ["::0:1", "::1"], 5001).address == "[::1]:5001"


# -- decode_txt: refusals -----------------------------------------------------------------------


def refused(heard: dict[bytes, bytes | None], match: str, **kwargs: Any) -> None:
    addresses = kwargs.get("addresses", ["127.0.0.1"])
    port = kwargs.get("port", 5001)
    with pytest.raises(RecordError, match=match):
        decode_txt(heard, addresses, port)


@pytest.mark.parametrize("key", ["id", "mesh", "name", "pub"])
def test_decode_txt_refuses_a_missing_key(key: str) -> None:
    refused(txt(**{key: ...}), f"TXT has no '{key}'")


def test_decode_txt_refuses_an_empty_txt() -> None:
    refused({}, "version")
    refused(as_heard(b"\x00"), "version")


ARABIC_INDIC_ONE = "\u0661"


@pytest.mark.parametrize("version", [..., None, "", "0", "2", "01", "1.0", " 1", ARABIC_INDIC_ONE])
def test_decode_txt_refuses_another_protocol_version(version: Any) -> None:
    refused(txt(v=version), "unsupported protocol version")


@pytest.mark.parametrize(
    "node_id",
    [
        "zz" * 16,
        "0" * 31,  # odd length
        "",
        None,
        "00" * 15,
        "00" * 17,
        "\u0660" * 32,  # Arabic-Indic zeros
        "\uff10" * 32,  # fullwidth zeros
        " ".join(f"{b:02x}" for b in NODE_ID),  # bytes.fromhex would skip the spaces
        " " + ID_HEX[:31],
        ID_HEX[:30] + " 0",
        ID_HEX[:31] + "\n",
        "0x" + ID_HEX[:30],
        "-" + ID_HEX[:31],
    ],
)
def test_decode_txt_refuses_an_id_that_is_not_32_hex_digits(node_id: str | None) -> None:
    refused(txt(id=node_id), "id is not 32 hex digits")


def test_decode_txt_reads_an_id_in_either_case() -> None:
    assert decode_txt(txt(id=ID_HEX.upper()), ["127.0.0.1"], 5001).id == NODE_ID
    assert decode_txt(txt(id="AbCdEf" * 5 + "00"), ["127.0.0.1"], 5001).id == bytes.fromhex(
        "abcdef" * 5 + "00"
    )


@pytest.mark.parametrize(
    ("pub", "match"),
    [
        ("0", "pub port is not a port number"),
        ("65536", "pub port is not a port number"),
        ("70000", "pub port is not a port number"),
        ("", "pub is not a port number"),
        (None, "pub is not a port number"),
        ("-1", "pub is not a port number"),
        ("+80", "pub is not a port number"),
        ("80 ", "pub is not a port number"),
        ("5e3", "pub is not a port number"),
        ("0x50", "pub is not a port number"),
        ("http", "pub is not a port number"),
        ("\u0665\u0660\u0660\u0660", "pub is not a port number"),  # Arabic-Indic: isdigit()
        ("\uff15\uff10\uff10\uff10", "pub is not a port number"),  # fullwidth digits
        ("²", "pub is not a port number"),
        ("000080", "pub is not a port number"),  # more than 5 digits
        ("9" * 251, "pub is not a port number"),  # the longest a TXT string can hold
    ],
)
def test_decode_txt_refuses_a_bad_pub_port(pub: str | None, match: str) -> None:
    refused(txt(pub=pub), match)


def test_decode_txt_refuses_a_pub_port_of_5000_digits_with_record_error() -> None:
    # int() alone would raise a plain ValueError (more than 4300 digits).
    refused({**txt(), b"pub": b"9" * 5000}, "pub is not a port number")


@pytest.mark.parametrize("port", [0, -1, 65536, 70000])
def test_decode_txt_refuses_a_bad_srv_port(port: int) -> None:
    refused(txt(), "SRV port is not a port number", port=port)


def test_decode_txt_accepts_the_extreme_ports() -> None:
    announcement = decode_txt(txt(pub="65535"), ["127.0.0.1"], 1)
    assert (announcement.pub_port, announcement.pull_port) == (65535, 1)
    announcement = decode_txt(txt(pub="1"), ["127.0.0.1"], 65535)
    assert (announcement.pub_port, announcement.pull_port) == (1, 65535)


@pytest.mark.parametrize(
    "heard",
    [
        {b"v": b"1", b"name": b"\xff\xfe"},
        {b"v": b"\xc3\x28"},
        {b"\xc3\x28": b"x", b"v": b"1"},
        {b"v": b"1", b"\xed\xa0\x80": None},  # an encoded lone surrogate
    ],
)
def test_decode_txt_refuses_txt_that_is_not_utf8(heard: dict[bytes, bytes | None]) -> None:
    refused({**txt(), **heard}, "TXT is not UTF-8")


def test_decode_txt_refuses_garbage_bytes_heard_as_txt() -> None:
    garbage = bytes((i * 151 + 17) % 256 for i in range(300))
    heard = as_heard(garbage)
    assert heard  # zeroconf splits anything into strings
    refused(heard, "TXT is not UTF-8")


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"mesh": ""}, "mesh must be 1 to 250 bytes"),
        ({"mesh": None}, "mesh must be 1 to 250 bytes"),
        ({"mesh": b"m" * 251}, "mesh must be 1 to 250 bytes"),  # "mesh=" + 251 > 255
        ({"mesh": "é" * 126}, "mesh must be 1 to 250 bytes"),
        ({"mesh": b"m" * 256}, "mesh must be 1 to 250 bytes"),
        ({"name": ""}, "name must be 1 to 255 bytes"),
        ({"name": None}, "name must be 1 to 255 bytes"),
        ({"name": b"n" * 256}, "name must be 1 to 255 bytes"),
    ],
)
def test_decode_txt_refuses_an_empty_or_oversized_mesh_or_name(
    changes: dict[str, str | bytes | None], match: str
) -> None:
    heard = txt()  # oversized values cannot be TXT strings: put them in the dict directly
    heard.update(
        {
            key.encode(): value.encode() if isinstance(value, str) else value
            for key, value in changes.items()
        }
    )
    refused(heard, match)


def test_decode_txt_accepts_a_250_byte_mesh_and_a_255_byte_name_in_the_dict() -> None:
    heard = {**txt(), b"mesh": "é".encode() * 125, b"name": "é".encode() * 127 + b"x"}
    announcement = decode_txt(heard, ["127.0.0.1"], 5001)
    assert announcement.mesh == "é" * 125
    assert announcement.name == "é" * 127 + "x"


@pytest.mark.parametrize(
    "services",
    [
        b"ok," + b"s" * 256,
        b"ok," + "é".encode() * 128,
    ],
)
def test_decode_txt_refuses_a_bad_service_name(services: bytes) -> None:
    refused({**txt(), b"services": services}, "service must be 1 to 255 bytes")


@pytest.mark.parametrize(
    "addresses",
    [
        [],
        ["garbage"],
        ["", "localhost", "127.0.0.1:5001", "[::1]", "1.2.3", "127.000.000.001"],
        ["0.0.0.0"],
        ["::"],
        ["224.0.0.251", "239.255.255.250", "ff02::fb"],
        ["0.0.0.0", "224.0.0.251", "::", "::ffff:10.0.0.1"],
    ],
)
def test_decode_txt_refuses_an_announcement_with_no_usable_address(addresses: list[str]) -> None:
    refused(txt(), "no usable address", addresses=addresses)


def test_decode_txt_checks_the_txt_before_the_addresses() -> None:
    refused(txt(v="2"), "version", addresses=[])
    refused(txt(), "SRV port", addresses=[], port=0)


# -- decode_txt: anything at all ----------------------------------------------------------------

KNOWN_KEYS = [b"v", b"id", b"mesh", b"name", b"pub", b"services"]
PLAUSIBLE_VALUES = [
    b"1",
    b"2",
    ID_HEX.encode(),
    b"default",
    b"node-a",
    b"5000",
    b"0",
    b"65536",
    b"resize,thumbnail",
    b",",
    b"",
    "\u0665".encode(),
    b"\xff",
]
PLAUSIBLE_ADDRESSES = [
    "127.0.0.1",
    "::1",
    "0.0.0.0",
    "::",
    "224.0.0.251",
    "::ffff:127.0.0.1",
    "10.1.2.3",
    "fe80::1",
    "",
]

txt_values = st.one_of(
    st.none(),
    st.sampled_from(PLAUSIBLE_VALUES),
    st.binary(max_size=254),
    st.text(max_size=80).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.integers(min_value=-(10**80), max_value=10**80).map(lambda n: str(n).encode()),
)
any_txt = st.dictionaries(
    st.one_of(st.sampled_from(KNOWN_KEYS), st.binary(max_size=20)), txt_values, max_size=10
)


def _mutated(
    changes: dict[bytes, bytes | None], removed: frozenset[bytes]
) -> dict[bytes, bytes | None]:
    heard = {**txt(), **changes}
    for key in removed:
        heard.pop(key, None)
    return heard


# A valid TXT with a few keys changed or removed: reaches every check, and sometimes passes.
mutated_txt = st.builds(
    _mutated,
    st.dictionaries(st.sampled_from(KNOWN_KEYS), txt_values, max_size=2),
    st.frozensets(st.sampled_from(KNOWN_KEYS), max_size=1),
)
txt_dicts = st.one_of(any_txt, mutated_txt)
address_lists = st.lists(
    st.one_of(
        st.sampled_from(PLAUSIBLE_ADDRESSES), st.text(max_size=45), st.ip_addresses().map(str)
    ),
    max_size=5,
)


@FUZZ
@given(
    properties=txt_dicts,
    addresses=address_lists,
    port=st.one_of(st.integers(), st.integers(min_value=-1, max_value=65536)),
)
def test_decode_txt_only_ever_raises_record_error(
    properties: dict[bytes, bytes | None], addresses: list[str], port: int
) -> None:
    try:
        announcement = decode_txt(properties, addresses, port)
    except RecordError:
        return
    # Whatever is accepted is fully valid.
    assert properties.get(b"v") == b"1"
    assert len(announcement.id) == 16
    assert announcement.host in addresses
    assert 0 < announcement.pull_port == port < 65536
    assert 0 < announcement.pub_port < 65536
    assert 0 < len(announcement.mesh.encode()) <= 255
    assert 0 < len(announcement.name.encode()) <= 255
    if announcement.services is not None:
        assert all(0 < len(s.encode()) <= 255 for s in announcement.services)


@FUZZ
@given(
    name=st.text(min_size=1, max_size=255).filter(lambda s: 0 < len(s.encode()) <= 255),
    mesh=st.text(min_size=1, max_size=250).filter(lambda s: 0 < len(s.encode()) <= 250),
    services=st.frozensets(st.text(min_size=1, max_size=40), max_size=12),
    pub_port=st.integers(min_value=1, max_value=65535),
    pull_port=st.integers(min_value=1, max_value=65535),
)
def test_encode_txt_fits_dns_sd_and_round_trips(
    name: str, mesh: str, services: frozenset[str], pub_port: int, pull_port: int
) -> None:
    try:
        rec = record(
            name=name, mesh=mesh, services=services, pub_port=pub_port, pull_port=pull_port
        )
    except RecordError:  # a lone surrogate in a generated name
        return
    properties = encode_txt(rec)
    assert all(len(string) <= 255 for string in strings(properties))
    announcement = decode_txt(as_heard(properties), ["127.0.0.1"], pull_port)
    assert announcement.id == rec.id
    assert announcement.mesh == rec.mesh
    assert rec.name.startswith(announcement.name)
    assert (announcement.pub_port, announcement.pull_port) == (pub_port, pull_port)
    if announcement.services is not None:
        assert announcement.services == rec.services
