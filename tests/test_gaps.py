"""A subscription's order per publisher (mesh/_gaps.py), and what a `Subscription` does with it:
events missed are asked for again, delivered in order, and what is gone comes as an exact `Gap`.
Pure logic: no sockets, no clock."""

from __future__ import annotations

from typing import Any

from mesh import Gap, Message
from mesh._gaps import FOLLOWS, REPEAT, Order
from mesh._streams import Subscription

A = "aa" * 16
B = "bb" * 16


# -- Order ---------------------------------------------------------------------------------------


def test_events_that_follow_on_their_topic_are_taken_in_turn() -> None:
    order = Order()
    order.start(A, 10)
    assert order.admit(A, "t", 11, 3) == FOLLOWS  # prev before the start: not owed
    assert order.admit(A, "u", 12, 0) == FOLLOWS
    assert order.admit(A, "t", 13, 11) == FOLLOWS
    assert order.admit(A, "u", 15, 12) == FOLLOWS  # 14 was on another topic
    assert order.last(A, "t") == 13
    assert order.last(A, "never") == 10  # the start
    assert order.last(B, "t") is None


def test_a_later_prev_shows_exactly_which_were_missed() -> None:
    order = Order()
    order.start(A, 0)
    assert order.admit(A, "t", 1, 0) == FOLLOWS
    # 2..7 on t are missing, 7 among them: after 1, up to 7. Nothing is recorded yet.
    assert order.admit(A, "t", 9, 7) == 1
    assert order.last(A, "t") == 1
    order.account(A, "t", 9)  # reported, then delivered
    assert order.admit(A, "t", 9, 7) == REPEAT
    assert order.admit(A, "t", 5, 1) == REPEAT
    # A new topic whose first event's prev is after the start: missed since the start.
    assert order.admit(A, "new", 12, 4) == 0


def test_an_unknown_start_begins_just_before_the_first_event_seen() -> None:
    order = Order()
    assert not order.follows(A)
    assert order.admit(A, "t", 50, 40) == FOLLOWS  # what came before is not owed
    assert order.follows(A)
    assert order.admit(A, "u", 51, 45) == FOLLOWS
    assert order.admit(A, "v", 49, 0) == REPEAT


def test_a_prev_not_below_seq_is_no_chain() -> None:
    order = Order()
    order.start(A, 0)
    assert order.admit(A, "t", 5, 5) == FOLLOWS
    assert order.admit(A, "t", 6, 99) == FOLLOWS


def test_accounting_for_an_event_never_moves_back() -> None:
    order = Order()
    order.start(A, 10)
    order.account(A, "t", 7)  # (a history event from before the start)
    assert order.last(A, "t") == 10
    order.account(A, "t", 12)
    assert order.last(A, "t") == 12


def test_the_start_never_moves_back() -> None:
    order = Order()
    order.start(A, 10)
    order.start(A, 4)
    assert order.last(A, "t") == 10


def test_a_full_table_is_emptied_without_delivering_anything_twice() -> None:
    order = Order(max_entries=4)
    order.start(A, 0)
    for seq, topic in enumerate(["a", "b", "c"], 1):
        assert order.admit(A, topic, seq, 0) == FOLLOWS
    assert len(order) == 4
    assert order.admit(A, "d", 4, 0) == FOLLOWS  # past the bound: emptied, start moved to 3
    assert len(order) <= 4
    assert order.admit(A, "a", 1, 0) == REPEAT
    assert order.admit(A, "b", 3, 0) == REPEAT


# -- Subscription: repairs -------------------------------------------------------------------------


class Asked:
    """A `repair` callback that records what it was asked (and says it asked, or not)."""

    def __init__(self, answer: bool = True) -> None:
        self.calls: list[tuple[str, int, int]] = []
        self.answer = answer

    def __call__(self, subscription: Subscription, sender: str, after: int, upto: int) -> bool:
        self.calls.append((sender, after, upto))
        return self.answer


def subscription(capacity: int = 100, answer: bool = True) -> tuple[Subscription, Asked, dict]:
    asked = Asked(answer)
    counts = {"events_repaired": 0, "event_gaps": 0}
    made = Subscription("t", capacity, asked, counts)
    made._started({A: 0})
    return made, asked, counts


def live(sub: Subscription, seq: int, prev: int, topic: str = "t", sender: str = A) -> bool:
    """As the node delivers a live event: dropped (False) if the buffer is full."""
    message = Message(topic, seq * 10, sender, seq)
    if sub._deliver(message, prev):
        return True
    sub._drop(message)
    return False


def buffered(sub: Subscription) -> list[Any]:
    return [item if isinstance(item, Gap) else (item.topic, item.seq) for item in list(sub._buffer)]


def test_a_gap_asks_the_publisher_and_holds_its_later_events() -> None:
    sub, asked, counts = subscription()
    live(sub, 1, 0)
    live(sub, 5, 3)  # 2..3 on t missing
    assert asked.calls == [(A, 1, 4)]
    live(sub, 6, 5)
    live(sub, 7, 0, sender=B)  # another publisher is not held back
    assert buffered(sub) == [("t", 1), ("t", 7)]
    # The history holds 3 (2 was on another topic of the prefix, and kept too).
    sub._repaired(A, 4, [(2, 0, "t.x", "two"), (3, 1, "t", "three")])
    assert buffered(sub)[2:] == [("t.x", 2), ("t", 3), ("t", 5), ("t", 6)]
    assert counts == {"events_repaired": 2, "event_gaps": 0}
    assert sub._held == 0


def test_what_the_history_no_longer_holds_comes_as_an_exact_gap() -> None:
    sub, _, counts = subscription()
    live(sub, 1, 0)
    live(sub, 9, 8)  # on t: 8 at least, after 1
    # The history kept 4 (prev 2: so 2 is gone too) and marks 8 as t's last, no longer kept.
    sub._repaired(A, 8, [(4, 2, "t", "four"), (8, "t")])
    assert buffered(sub) == [
        ("t", 1),
        Gap(A, 2, 2, "evicted", "t"),
        ("t", 4),
        Gap(A, 5, 8, "evicted", "t"),
        ("t", 9),
    ]
    assert counts == {"events_repaired": 1, "event_gaps": 2}


def test_a_held_event_shows_a_gap_inside_what_was_asked_for_as_gone() -> None:
    sub, _, _ = subscription()
    live(sub, 1, 0)
    live(sub, 9, 8)
    sub._repaired(A, 8, [])  # nothing kept and no mark (8 was not t's last): gone
    assert buffered(sub) == [("t", 1), Gap(A, 2, 8, "evicted", "t"), ("t", 9)]


def test_no_answer_reports_the_gap_as_unanswered() -> None:
    sub, asked, _ = subscription(answer=False)  # the publisher cannot be asked
    live(sub, 1, 0)
    live(sub, 4, 2)
    assert asked.calls == [(A, 1, 3)]
    assert buffered(sub) == [("t", 1), Gap(A, 2, 2, "unanswered", "t"), ("t", 4)]
    assert sub._held == 0


def test_repeats_from_the_answer_are_dropped() -> None:
    sub, _, counts = subscription()
    live(sub, 1, 0)
    live(sub, 2, 0, topic="t.b")
    live(sub, 5, 3)
    sub._repaired(A, 4, [(1, 0, "t", 1), (2, 0, "t.b", 2), (3, 1, "t", 3)])
    assert buffered(sub) == [("t", 1), ("t.b", 2), ("t", 3), ("t", 5)]
    assert counts["events_repaired"] == 1


def test_events_missed_after_what_was_asked_for_start_another_round() -> None:
    sub, asked, _ = subscription()
    live(sub, 1, 0)
    live(sub, 3, 2)  # ask after 1, up to 2
    live(sub, 10, 8)  # held; shows 8 missing, after the round's range
    sub._repaired(A, 2, [(2, 1, "t", 2)])
    assert asked.calls == [(A, 1, 2), (A, 3, 9)]
    assert buffered(sub) == [("t", 1), ("t", 2), ("t", 3)]
    sub._repaired(A, 9, [(8, 3, "t", 8)])
    assert buffered(sub)[3:] == [("t", 8), ("t", 10)]


def test_events_dropped_for_a_full_buffer_are_asked_for_once_the_reader_catches_up() -> None:
    sub, asked, counts = subscription(capacity=4)
    for seq in range(1, 5):
        assert live(sub, seq, seq - 1)
    assert not live(sub, 5, 4)  # full
    assert not live(sub, 6, 5)
    assert sub.dropped == 2
    assert asked.calls == []
    for _ in range(2):  # the reader takes two: down to half
        sub._buffer.popleft()
        sub._taken_one()
    assert asked.calls == [(A, 4, 6)]
    sub._repaired(A, 6, [(5, 4, "t", 5), (6, 5, "t", 6)])
    assert buffered(sub) == [("t", 3), ("t", 4), ("t", 5), ("t", 6)]
    assert counts["events_repaired"] == 2


def test_a_dropped_notice_asks_for_the_range_of_a_publisher_it_follows() -> None:
    sub, asked, _ = subscription()
    sub._dropped_upstream(B, 5, 9)  # never heard from B: nothing to ask
    assert asked.calls == []
    live(sub, 1, 0)
    sub._dropped_upstream(A, 5, 9)
    assert asked.calls == [(A, 4, 9)]
    live(sub, 12, 7)  # held meanwhile
    sub._repaired(A, 9, [(7, 1, "t", 7), (9, "t.z")])
    # t.z's last event, 9, is gone, and nothing of t.z came since the start: 1..9 on t.z.
    assert buffered(sub) == [("t", 1), ("t", 7), Gap(A, 1, 9, "evicted", "t.z"), ("t", 12)]


def test_held_events_count_against_the_buffer() -> None:
    sub, _, _ = subscription(capacity=3)
    live(sub, 1, 0)
    live(sub, 5, 4)  # held while asked for
    assert not sub._full()
    live(sub, 6, 5)
    assert sub._full()
    assert not live(sub, 7, 6)
    assert sub._lost == {A: (7, 7)}


def test_a_subscription_confirmed_again_asks_for_what_came_after_its_newest() -> None:
    sub, asked, _ = subscription()
    sub._resynced(B, 40)  # not followed: nothing to ask
    live(sub, 3, 0)
    live(sub, 7, 0, topic="t.b")
    sub._resynced(A, 7)  # nothing after the newest accounted for
    assert asked.calls == []
    sub._resynced(A, 20)
    assert asked.calls == [(A, 7, 20)]
    sub._repaired(A, 20, [(12, 7, "t.b", 12), (15, "t")])  # one kept, one mark
    assert buffered(sub)[2:] == [("t.b", 12), Gap(A, 4, 15, "evicted", "t")]
    sub._resynced(A, 20)  # asked once
    assert asked.calls == [(A, 7, 20)]
