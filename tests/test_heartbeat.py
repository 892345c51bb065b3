"""Heartbeat bodies, round trips and datagram losses (mesh/_heartbeat.py): pure, literal times."""

from __future__ import annotations

import math
import os

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh._heartbeat import (
    COPIES,
    ECHO_MAX_AGE,
    LOSSY_FOR,
    Beat,
    BeatDatagrams,
    DatagramLoss,
    PeerBeats,
    beat_body,
    echo_of,
    read_beat,
    round_trip_sample,
    smoothed,
)
from mesh._wire import MAX_UINT64, Kind, envelope_head, pack

SENDER = os.urandom(16)


def test_a_body_made_here_reads_back() -> None:
    body = beat_body(7, sent=12.5, load=3, credit=10, echo=(11.0, 0.25), datagram=4, want=1)
    assert read_beat(msgpack.unpackb(msgpack.packb(body))) == Beat(
        7, 12.5, 3, 10, (11.0, 0.25), 4, 1
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
)
def test_a_beats_datagrams_are_what_packing_each_whole_makes(
    number: int,
    sent: float,
    load: int,
    credit: int | None,
    echo: tuple[float, float] | None,
    datagram: int,
    want: int,
) -> None:
    datagrams = BeatDatagrams(
        envelope_head(Kind.HEARTBEAT, SENDER, number), number, sent=sent, load=load, credit=credit
    )
    body = beat_body(
        number, sent=sent, load=load, credit=credit, echo=echo, datagram=datagram, want=want
    )
    assert datagrams.for_peer(echo, datagram, want) == pack(
        Kind.HEARTBEAT, SENDER, number, None, body
    )


def test_a_peers_first_copy_of_each_beat_counts_and_the_others_do_not() -> None:
    beats = PeerBeats()
    assert beats.take(Beat(1, load=2), arrival=0.2)
    assert beats.load == 2
    assert not beats.take(Beat(1, load=5), arrival=0.25)  # the same beat by another path
    assert beats.load == 2
    assert beats.take(Beat(3), arrival=0.6)  # 2 never came: 3 counts all the same
    assert not beats.take(Beat(2), arrival=0.61)  # late: older than what was taken
    assert beats.heard == 3
    assert beats.load == 2  # a beat that does not say keeps what the last one said


def test_a_peers_echoes_give_the_round_trip() -> None:
    beats = PeerBeats()
    assert beats.take(Beat(1, echo=(10.0, 0.150)), arrival=10.154)
    assert beats.rtt == pytest.approx(0.004)
    assert beats.take(Beat(2, echo=(10.2, 0.0)), arrival=10.212)
    assert beats.rtt == pytest.approx(0.004 + (0.012 - 0.004) / 8)
    assert beats.take(Beat(3, echo=(99.0, 0.0)), arrival=10.4)  # from the future: no sample
    assert beats.rtt == pytest.approx(0.005)


def test_what_a_peer_is_owed_comes_from_its_datagrams() -> None:
    beats = PeerBeats()
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
