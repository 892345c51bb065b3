"""SWIM with Lifeguard, the pure pieces (mesh/_swim.py): whom to probe, how long a suspicion
lasts, this node's own health, what is piggybacked. Exact, with a seeded random generator."""

from __future__ import annotations

import math
import random

import pytest

from mesh._swim import (
    Awareness,
    Broadcasts,
    Claim,
    ProbeOrder,
    Roster,
    State,
    retransmits,
    suspicion_timeout,
)


def test_suspicion_lasts_from_six_times_the_least_down_to_it_with_confirmations() -> None:
    # memberlist's figures: at 64 members, one second probes, 7.2 s to 43.3 s.
    least = 4 * math.log10(64)
    assert suspicion_timeout(64, 1.0, 0) == pytest.approx(6 * least)
    assert suspicion_timeout(64, 1.0, 2) == pytest.approx(least)
    assert suspicion_timeout(64, 1.0, 5) == pytest.approx(least)
    one = suspicion_timeout(64, 1.0, 1)
    assert one == pytest.approx(6 * least - 5 * least * math.log(2) / math.log(3))
    assert least < one < 6 * least
    # Small meshes use log10 of at least 10: 4 periods.
    assert suspicion_timeout(3, 0.5, 2) == pytest.approx(2.0)
    assert suspicion_timeout(1000, 1.0, 2) == pytest.approx(12.0)


def test_retransmits_grow_with_the_log_of_the_mesh() -> None:
    assert [retransmits(n) for n in (1, 9, 10, 64, 99, 100, 1000)] == [4, 4, 8, 8, 8, 12, 16]


def test_every_member_is_probed_once_a_round_in_a_new_order_each_round() -> None:
    order: ProbeOrder[str] = ProbeOrder(random.Random(7))
    members = [f"m{i}" for i in range(10)]
    for member in members:
        order.add(member)
    rounds = [[order.next() for _ in range(10)] for _ in range(3)]
    for probed in rounds:
        assert sorted(probed) == members  # type: ignore[type-var]
    assert rounds[1] != rounds[2]


def test_probing_passes_over_the_skipped_and_gives_none_when_all_are() -> None:
    order: ProbeOrder[str] = ProbeOrder(random.Random(1))
    for member in "abc":
        order.add(member)
    dead = {"a", "b"}
    assert [order.next(lambda m: m in dead) for _ in range(3)] == ["c", "c", "c"]
    assert order.next(lambda m: True) is None
    assert ProbeOrder(random.Random(1)).next() is None


def test_a_member_added_or_removed_mid_round_keeps_the_round_whole() -> None:
    order: ProbeOrder[int] = ProbeOrder(random.Random(3))
    for member in range(6):
        order.add(member)
    first = [order.next() for _ in range(3)]
    order.remove(first[0])  # one already probed
    order.add(99)
    order.remove(12345)  # not known: nothing
    rest = [order.next() for _ in range(len(order) - 2)]
    assert sorted(first[1:] + rest) == sorted(set(range(6)) - {first[0]} | {99})  # type: ignore[type-var]
    assert len(order) == 6
    assert 99 in order


def test_awareness_stays_within_its_bounds_and_scales_timeouts() -> None:
    health = Awareness(most=8)
    health.apply(-1)
    assert health.score == 0
    assert health.scale(0.5) == 0.5
    health.apply(3)
    assert health.scale(0.5) == 2.0
    health.apply(100)
    assert health.score == 7
    assert health.scale(1.0) == 8.0
    with pytest.raises(ValueError, match="most"):
        Awareness(0)


def test_broadcasts_go_least_sent_first_within_the_budget_until_sent_enough() -> None:
    queue: Broadcasts[str, bytes] = Broadcasts()
    queue.add("a", b"A" * 10, 10)
    queue.add("b", b"B" * 10, 10)
    queue.add("c", b"C" * 30, 30)
    # Newest first among equals; "c" does not fit once "b" and "a" are in.
    assert queue.take(budget=40, members=5, overhead=2) == [b"C" * 30]
    assert queue.take(budget=40, members=5, overhead=2) == [b"B" * 10, b"A" * 10]
    # Four sends each at five members: then they are gone.
    for _ in range(3):
        queue.take(budget=1000, members=5)
    assert len(queue) == 0
    assert queue.take(budget=1000, members=5) == []


def test_a_newer_item_about_a_member_replaces_the_older_unsent() -> None:
    queue: Broadcasts[str, bytes] = Broadcasts()
    queue.add("m", b"suspect m")
    queue.take(budget=100, members=5)
    queue.add("m", b"alive m, incarnation 2")
    assert len(queue) == 1
    assert queue.take(budget=100, members=5) == [b"alive m, incarnation 2"]


def test_a_full_queue_drops_the_item_sent_most() -> None:
    queue: Broadcasts[int, bytes] = Broadcasts(most=2)
    queue.add(1, b"one")
    queue.take(budget=100, members=5)  # "one" sent once
    queue.add(2, b"two")
    queue.add(3, b"three")  # past two: "one", sent most, goes
    assert sorted(queue.take(budget=100, members=5)) == [b"three", b"two"]


# -- the roster: incarnations, suspicions, refutations ------------------------------------------


def test_alive_needs_a_higher_incarnation_and_a_first_one_is_a_join() -> None:
    roster: Roster[str] = Roster("me")
    assert roster.alive("a", 1, now=0.0) == Claim(State.ALIVE, 1, news=True)
    assert roster.alive("a", 1, now=1.0) is None  # old news
    assert roster.alive("a", 2, now=1.0) == Claim(State.ALIVE, 2, news=True)
    assert roster.state("a") is State.ALIVE
    assert roster.state("b") is None


def test_at_one_incarnation_dead_beats_suspect_beats_alive() -> None:
    roster: Roster[str] = Roster("me")
    roster.alive("a", 3, now=0.0)
    assert roster.suspect("a", 2, "b", now=1.0) is None  # older
    assert roster.suspect("a", 3, "b", now=1.0) == Claim(State.SUSPECT, 3, news=True)
    assert roster.alive("a", 3, now=2.0) is None  # only the member overturns it, higher
    assert roster.dead("a", 3, "b", now=2.0) == Claim(State.DEAD, 3, news=True)
    assert roster.suspect("a", 3, "c", now=3.0) is None
    assert roster.alive("a", 4, now=4.0) == Claim(State.ALIVE, 4, news=True)  # it came back


def test_a_suspicion_is_confirmed_once_by_each_other_accuser() -> None:
    roster: Roster[str] = Roster("me")
    roster.alive("a", 1, now=0.0)
    roster.suspect("a", 1, "me", now=0.0)
    assert roster.suspect("a", 1, "b", now=0.5) == Claim(State.SUSPECT, 1, news=True)
    assert roster.suspect("a", 1, "b", now=0.6) is None  # b again
    assert roster.suspect("a", 1, "me", now=0.6) is None


def test_claims_about_this_node_are_refuted_past_their_incarnation() -> None:
    roster: Roster[str] = Roster("me")
    assert roster.suspect("me", 1, "b", now=0.0) == Claim(State.ALIVE, 2, news=True, refute=True)
    assert roster.suspect("me", 1, "c", now=0.0) is None  # older than what it says now
    assert roster.dead("me", 7, "c", now=0.0) == Claim(State.ALIVE, 8, news=True, refute=True)
    assert roster.alive("me", 8, now=0.0) is None  # its own, as it says it
    assert roster.alive("me", 9, now=0.0) == Claim(State.ALIVE, 10, news=True, refute=True)
    assert roster.incarnation == 10


def test_dead_from_the_member_itself_is_a_goodbye() -> None:
    roster: Roster[str] = Roster("me")
    roster.alive("a", 1, now=0.0)
    assert roster.dead("a", 1, "a", now=1.0) == Claim(State.LEFT, 1, news=True)
    assert roster.dead("a", 1, "b", now=1.0) is None
    roster.forget("a")
    assert roster.state("a") is None
    assert roster.dead("a", 1, "b", now=2.0) is None  # not known


def test_a_suspicion_expires_sooner_with_confirmations() -> None:
    roster: Roster[str] = Roster("me")
    for member in "ab":
        roster.alive(member, 1, now=0.0)
        roster.suspect(member, 1, "me", now=0.0)
    roster.suspect("b", 1, "x", now=0.0)
    roster.suspect("b", 1, "y", now=0.0)
    # Three members known (and this node): the least is 4 periods, the most 24.
    assert roster.expired(now=3.9, period=1.0) == []
    assert roster.expired(now=4.0, period=1.0) == ["b"]  # confirmed twice: the least
    assert roster.expired(now=23.9, period=1.0) == []
    assert roster.expired(now=24.0, period=1.0) == ["a"]
    assert roster.state("a") is State.DEAD
    assert roster.expired(now=100.0, period=1.0) == []
