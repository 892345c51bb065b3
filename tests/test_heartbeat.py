"""Heartbeat bodies, round trips and datagram losses (mesh/_heartbeat.py): pure, literal times."""

from __future__ import annotations

import hashlib
import math
import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from discovery import PeerRecord
from mesh._errors import ProtocolError
from mesh._heartbeat import (
    COPIES,
    ECHO_MAX_AGE,
    LOSSY_FOR,
    RECORD_DIFFERS_FOR,
    Beat,
    BeatDatagrams,
    DatagramLoss,
    PeerBeats,
    beat_body,
    echo_of,
    read_beat,
    record_digest,
    round_trip_sample,
    smoothed,
)
from mesh._wire import MAX_UINT64, Kind, envelope_head, pack

SENDER = os.urandom(16)


def test_a_body_made_here_reads_back() -> None:
    digest = bytes(range(8))
    body = beat_body(
        7, sent=12.5, load=3, credit=10, echo=(11.0, 0.25), datagram=4, want=1, record=digest
    )
    assert read_beat(msgpack.unpackb(msgpack.packb(body))) == Beat(
        7, 12.5, 3, 10, (11.0, 0.25), 4, 1, digest
    )


def test_an_older_peers_body_has_only_a_number() -> None:
    assert read_beat({"n": 1}) == Beat(1)


@pytest.mark.parametrize("body", [None, [1], {}, {"n": 0}, {"n": True}, {"n": 1.0}, {"n": "1"}])
def test_a_body_without_a_valid_number_is_no_beat(body: object) -> None:
    assert read_beat(body) is None


@pytest.mark.parametrize(
    "extra",
    [
        {"t": 1},  # an int, not a float
        {"t": math.nan},
        {"load": -1},
        {"load": True},
        {"credit": 0},
        {"echo": [1.0]},
        {"echo": [1.0, "x"]},
        {"echo": [1.0, math.inf]},
        {"echo": (1.0, 2.0, 3.0)},
        {"d": 0},
        {"want": 0},
        {"want": COPIES + 1},
        {"rec": bytes(7)},
        {"rec": "01234567"},
    ],
)
def test_a_garbled_optional_field_is_ignored_and_the_beat_stands(extra: dict[str, object]) -> None:
    assert read_beat({"n": 5, **extra}) == Beat(5)


def test_the_round_trip_leaves_out_the_time_the_echo_was_held() -> None:
    assert round_trip_sample((10.0, 0.150), now=10.153) == pytest.approx(0.003)
    assert echo_of((10.0, 10.001), now=10.151) == pytest.approx((10.0, 0.150))
    assert echo_of(None, now=1.0) is None


@pytest.mark.parametrize(
    "echo",
    [
        (11.0, 0.0),  # sent in this node's future
        (10.0 - ECHO_MAX_AGE - 1, 0.0),  # too old
        (10.0, 0.5),  # held longer than it was out
        (10.0, -0.1),
    ],
)
def test_an_echo_that_cannot_be_real_is_no_sample(echo: tuple[float, float]) -> None:
    assert round_trip_sample(echo, now=10.2) is None


def test_round_trips_are_smoothed_by_an_eighth() -> None:
    rtt = smoothed(None, 0.008)
    assert rtt == 0.008
    assert smoothed(rtt, 0.016) == pytest.approx(0.009)


def test_losses_are_the_gaps_in_datagram_numbers() -> None:
    loss = DatagramLoss()
    assert loss.want(0.0) == 1  # nothing lost yet: one copy a beat
    for number in (1, 2, 3):
        loss.datagram(number, now=0.2 * number)
    assert loss.lost == 0
    loss.datagram(6, now=1.0)  # 4 and 5 lost
    assert loss.lost == 2
    assert loss.want(1.0) == COPIES
    assert loss.want(1.0 + LOSSY_FOR - 0.001) == COPIES
    assert loss.want(1.0 + LOSSY_FOR) == 1


def test_a_peer_that_counts_afresh_is_no_loss() -> None:
    loss = DatagramLoss()
    loss.datagram(40, now=0.0)
    loss.datagram(1, now=0.2)  # it forgot this node and met it again
    loss.datagram(2, now=0.4)
    assert loss.lost == 0
    assert loss.want(0.4) == 1


UINTS = st.integers(0, MAX_UINT64)
FLOATS = st.floats(allow_nan=False)


@given(
    number=st.integers(1, MAX_UINT64),
    sent=FLOATS,
    load=UINTS,
    credit=st.none() | st.integers(1, MAX_UINT64),
    echo=st.none() | st.tuples(FLOATS, FLOATS),
    datagram=st.integers(1, MAX_UINT64),
    want=st.integers(1, COPIES),
    record=st.none() | st.binary(min_size=8, max_size=8),
)
def test_a_beats_datagrams_are_what_packing_each_whole_makes(
    number: int,
    sent: float,
    load: int,
    credit: int | None,
    echo: tuple[float, float] | None,
    datagram: int,
    want: int,
    record: bytes | None,
) -> None:
    datagrams = BeatDatagrams(
        envelope_head(Kind.HEARTBEAT, SENDER, number),
        number,
        sent=sent,
        load=load,
        credit=credit,
        record=record,
    )
    body = beat_body(
        number,
        sent=sent,
        load=load,
        credit=credit,
        echo=echo,
        datagram=datagram,
        want=want,
        record=record,
    )
    assert datagrams.for_peer(echo, datagram, want) == pack(
        Kind.HEARTBEAT, SENDER, number, None, body
    )


def test_a_peers_first_copy_of_each_beat_counts_and_the_others_do_not() -> None:
    beats = PeerBeats(0.2)
    assert beats.take(Beat(1, load=2), arrival=0.2)
    assert beats.load == 2
    assert not beats.take(Beat(1, load=5), arrival=0.25)  # the same beat by another path
    assert beats.load == 2
    assert beats.take(Beat(3), arrival=0.6)  # 2 never came: 3 counts all the same
    assert not beats.take(Beat(2), arrival=0.61)  # late: older than what was taken
    assert beats.heard == 3
    assert beats.load == 2  # a beat that does not say keeps what the last one said


def test_a_beat_number_may_move_ahead_only_as_far_as_time_allows() -> None:
    # 0.2 s a beat: after 1 s, 16 + 2 * 5 = 26 numbers ahead at most.
    beats = PeerBeats(0.2)
    assert beats.take(Beat(2**40), arrival=10.0)  # the first may be any: a peer up for long
    with pytest.raises(ProtocolError) as caught:
        beats.take(Beat(MAX_UINT64), arrival=10.2)  # a forgery: every real beat would be "old"
    assert caught.value.reason == "jump"
    with pytest.raises(ProtocolError):
        beats.take(Beat(2**40 + 27), arrival=11.0)
    assert beats.heard == 2**40  # nothing of either was taken
    assert beats.take(Beat(2**40 + 26), arrival=11.0)
    assert beats.take(Beat(2**40 + 26 + 16 + 300), arrival=41.0)  # 30 s cut off: 300 beats


def test_a_peers_echoes_give_the_round_trip() -> None:
    beats = PeerBeats(0.2)
    assert beats.take(Beat(1, echo=(10.0, 0.150)), arrival=10.154)
    assert beats.rtt == pytest.approx(0.004)
    assert beats.take(Beat(2, echo=(10.2, 0.0)), arrival=10.212)
    assert beats.rtt == pytest.approx(0.004 + (0.012 - 0.004) / 8)
    assert beats.take(Beat(3, echo=(99.0, 0.0)), arrival=10.4)  # from the future: no sample
    assert beats.rtt == pytest.approx(0.005)


def test_what_a_peer_is_owed_comes_from_its_datagrams() -> None:
    beats = PeerBeats(0.2)
    assert beats.next_datagram(now=1.0) == (None, 1, 1)  # nothing taken yet, nothing lost
    beats.datagram(Beat(1, sent=50.0, echo=(0.9, 0.01), datagram=1, want=1), arrival=1.1)
    assert beats.wanted == 1
    assert beats.echoed == 0.9
    echo, number, want = beats.next_datagram(now=1.3)
    assert echo == pytest.approx((50.0, 0.2))
    assert (number, want) == (2, 1)
    # Datagrams 2 and 3 lost; copies of a beat (any, each with its own `t`) are echoed.
    beats.datagram(Beat(4, sent=50.6, echo=(0.5, 0.0), datagram=4, want=COPIES), arrival=1.7)
    assert beats.echoed == 0.9  # an older echo (reordered) does not go back
    assert beats.wanted == COPIES
    assert beats.loss.lost == 2
    echo, number, want = beats.next_datagram(now=1.8)
    assert echo == pytest.approx((50.6, 0.1))
    assert (number, want) == (3, COPIES)
    beats.datagram(Beat(5), arrival=1.9)  # a peer that asks nothing gets every copy
    assert beats.wanted == COPIES


# Record digests

RECORD = PeerRecord(SENDER, "worker", "default", "127.0.0.1", 5000, 5001)


def test_a_record_and_its_copy_off_the_wire_have_one_digest() -> None:
    record = RECORD.with_services(["resize", "crop"])
    wired = PeerRecord.from_wire(msgpack.unpackb(msgpack.packb(record.to_wire())))
    assert wired is not record
    assert record_digest(wired) == record_digest(record)
    assert len(record_digest(record)) == 8
    # Sorted on the wire, so the order the services were given in does not count.
    assert record_digest(RECORD.with_services(["crop", "resize"])) == record_digest(record)


def test_a_digest_is_of_the_encoding_protocol_md_gives() -> None:
    # §11: BLAKE2b-64 of the map id, name, mesh, host, pub, pull, services, v, key.
    wire = {
        "id": SENDER,
        "name": "worker",
        "mesh": "default",
        "host": "127.0.0.1",
        "pub": 5000,
        "pull": 5001,
        "services": ["crop", "resize"],
        "v": 1,
        "key": None,
    }
    packed = msgpack.packb(wire, use_bin_type=True)
    expected = hashlib.blake2b(packed, digest_size=8).digest()
    assert record_digest(RECORD.with_services(["resize", "crop"])) == expected


@pytest.mark.parametrize(
    "changed",
    [
        RECORD.with_services(["resize"]),
        PeerRecord(SENDER, "worker", "default", "127.0.0.1", 5000, 5002),
        PeerRecord(SENDER, "worker", "default", "127.0.0.1", 5000, 5001, extra_hosts=("::1",)),
    ],
)
def test_a_changed_record_has_another_digest(changed: PeerRecord) -> None:
    assert record_digest(changed) != record_digest(RECORD)


def test_a_record_that_differs_for_a_while_is_asked_for_again_once_a_while() -> None:
    beats = PeerBeats(0.2)
    theirs = record_digest(RECORD.with_services(["resize"]))  # the peer took up a service
    assert not beats.record_differs(RECORD, record_digest(RECORD), 10.0)
    # Its UPDATE may be on its way: heartbeats overtake it.
    assert not beats.record_differs(RECORD, theirs, 10.2)
    assert not beats.record_differs(RECORD, theirs, 10.2 + RECORD_DIFFERS_FOR - 0.001)
    assert beats.record_differs(RECORD, theirs, 10.2 + RECORD_DIFFERS_FOR)
    # Asked: not again until as long again has passed without the record coming.
    assert not beats.record_differs(RECORD, theirs, 10.4 + RECORD_DIFFERS_FOR)
    assert beats.record_differs(RECORD, theirs, 10.2 + 2 * RECORD_DIFFERS_FOR)
    # The record came (a new object, the peer's current one): they agree, and the clock resets.
    current = RECORD.with_services(["resize"])
    assert not beats.record_differs(current, theirs, 13.0)
    assert not beats.record_differs(current, record_digest(RECORD), 13.2)
    assert not beats.record_differs(current, record_digest(RECORD), 14.1)
    assert beats.record_differs(current, record_digest(RECORD), 13.2 + RECORD_DIFFERS_FOR)
