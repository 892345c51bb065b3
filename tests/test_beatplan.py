"""The heartbeat loop's plan (mesh/_beatplan.py): beat numbers, the PUB, datagram copies, and
when the loop wakes. Pure: literal times, an interval of 3 s so that copies fall on whole
seconds."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest

from mesh._beatplan import BeatPeer, BeatPlan, BeatStep, all_echo

INTERVAL = 3.0
START = 100.0
FRESH = 95.0  # an echo of a beat sent at 95: fresh until 104 (three intervals)


def peer(target: str | None, wanted: int = 1, echoed: float = FRESH) -> BeatPeer[str]:
    return BeatPeer(echoed, target, wanted)


def never_read() -> Iterator[BeatPeer[str]]:
    raise AssertionError("peers read between beats")
    yield  # a generator, as the loop passes


def test_a_clean_network_beats_once_an_interval_and_publishes_every_other_beat() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    peers = [peer("a"), peer("b")]
    assert plan.number == 0
    assert plan.next(100.0, peers) == BeatStep(1, 0, False, ("a", "b"), 103.0)
    assert plan.next(103.0, peers) == BeatStep(2, 0, True, ("a", "b"), 106.0)
    assert plan.number == 2


def test_with_publish_every_zero_a_beat_is_published_only_for_a_peer_that_does_not_echo() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START, publish_every=0)
    assert not plan.next(100.0, [peer("a")]).publish
    assert not plan.next(103.0, [peer("a")]).publish
    assert not plan.next(106.0, []).publish  # nobody to beat to: nothing on the PUB either
    assert plan.next(109.0, [peer("a", echoed=90.0)]).publish
    plan.publish_every = 2  # (the mesh shrank: every other beat again)
    assert not plan.next(112.0, [peer("a", echoed=111.0)]).publish  # beat 5
    assert plan.next(115.0, [peer("a", echoed=111.0)]).publish  # beat 6


def test_the_cadence_is_kept_when_the_loop_wakes_a_little_late() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    assert plan.next(100.25, [peer("a")]).wake == 103.0
    assert plan.next(103.5, [peer("a")]).wake == 106.0


def test_copies_asked_for_are_spread_over_the_interval_to_the_peers_that_asked() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    peers = [peer("a", wanted=3), peer("b"), peer("c", wanted=2)]
    assert plan.next(100.0, peers) == BeatStep(1, 0, False, ("a", "b", "c"), 101.0)
    assert plan.next(101.0, never_read()) == BeatStep(1, 1, False, ("a", "c"), 102.0)
    assert plan.next(102.0, never_read()) == BeatStep(1, 2, False, ("a",), 103.0)
    assert plan.next(103.0, [peer("b")]) == BeatStep(2, 0, True, ("b",), 106.0)


def test_a_peer_asking_for_more_copies_than_there_are_gets_them_all_and_no_more() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START, copies=2)
    assert plan.next(100.0, [peer("a", wanted=9)]) == BeatStep(1, 0, False, ("a",), 101.5)
    assert plan.next(101.5, never_read()) == BeatStep(1, 1, False, ("a",), 103.0)
    assert plan.next(103.0, [peer("a", wanted=9)]).copy == 0


def test_a_peer_that_takes_no_datagrams_gets_none_and_a_stale_echo_puts_every_beat_on_the_pub() -> (
    None
):
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    # A peer never heard from: no target, no echo. The odd beat goes on the PUB too.
    assert plan.next(100.0, [peer("a"), peer(None, echoed=-math.inf)]) == BeatStep(
        1, 0, True, ("a",), 103.0
    )
    # Beat 3 (odd): an echo of a beat sent three intervals ago is still fresh; at beat 5, one
    # a hair older is not.
    assert plan.next(103.0, [peer("a", echoed=-math.inf)]).publish  # beat 2: even
    assert not plan.next(106.0, [peer("a", echoed=97.0)]).publish
    assert plan.next(109.0, [peer("a", echoed=97.0)]).publish  # beat 4: even
    assert plan.next(112.0, [peer("a", echoed=102.999)]).publish


def test_a_peer_asking_for_no_copy_gets_none() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    assert plan.next(100.0, [peer("a", wanted=0), peer("b")]).to == ("b",)


def test_no_peers_still_beats_on_the_pub_alone_every_other_beat() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    assert plan.next(100.0, []) == BeatStep(1, 0, False, (), 103.0)
    assert plan.next(103.0, []) == BeatStep(2, 0, True, (), 106.0)


def test_after_a_stall_the_next_beat_is_due_at_once_and_the_cadence_restarts_there() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    peers = [peer("a")]
    assert plan.next(100.0, peers).wake == 103.0
    # Stood still until 110.5: beat 2 (due at 103) goes now, beat 3 (due at 106) at once, and
    # no burst for the beat due at 109. Echoes from before the stall are stale by now, so the
    # odd beat goes on the PUB too.
    assert plan.next(110.5, peers) == BeatStep(2, 0, True, ("a",), 110.5)
    assert plan.next(110.5, peers) == BeatStep(3, 0, True, ("a",), 113.5)
    assert plan.next(113.5, peers).wake == 116.5


def test_after_a_stall_among_copies_the_rest_go_at_once_and_the_next_beat_keeps_its_time() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    peers = [peer("a", wanted=3)]
    assert plan.next(100.0, peers).wake == 101.0
    # Woke at 102.5 for the copy due at 101: the one due at 102 is already late, so at once.
    assert plan.next(102.5, never_read()) == BeatStep(1, 1, False, ("a",), 102.5)
    assert plan.next(102.5, never_read()) == BeatStep(1, 2, False, ("a",), 103.0)
    assert plan.next(103.0, peers) == BeatStep(2, 0, True, ("a",), 104.0)


def test_the_wake_is_never_before_the_time_it_was_planned_at() -> None:
    plan: BeatPlan[str] = BeatPlan(INTERVAL, START)
    now = 100.0
    # Woken at uneven times, some late by more than an interval.
    for late in [0.0, 0.5, 4.0, 0.0, 7.25, 0.1, 3.0, 0.0, 0.0, 12.0]:
        step = plan.next(now, [peer("a", wanted=3), peer("b")])
        assert step.wake >= now
        now = step.wake + late


def test_all_echo() -> None:
    assert all_echo([], 10.0)
    assert all_echo([peer("a", echoed=10.0), peer(None, echoed=12.0)], 10.0)
    assert not all_echo([peer("a", echoed=10.0), peer("b", echoed=9.5)], 10.0)


@pytest.mark.parametrize(
    ("interval", "copies", "publish_every"),
    [(0.0, 3, 2), (-1.0, 3, 2), (math.nan, 3, 2), (1.0, 0, 2), (1.0, 3, -1)],
)
def test_a_plan_that_cannot_work_is_a_value_error(
    interval: float, copies: int, publish_every: int
) -> None:
    with pytest.raises(ValueError, match="must be"):
        BeatPlan(interval, START, copies=copies, publish_every=publish_every)
