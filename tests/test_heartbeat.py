"""Heartbeat bodies, round trips and datagram losses (mesh/_heartbeat.py): pure, literal times."""

from __future__ import annotations

import math
import os

import msgpack
import pytest

from mesh._heartbeat import (
    COPIES,
    ECHO_MAX_AGE,
    LOSSY_FOR,
    Beat,
    DatagramLoss,
    beat_body,
    echo_of,
    read_beat,
    round_trip_sample,
    smoothed,
)

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
