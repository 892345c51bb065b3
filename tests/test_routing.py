"""The dispatcher (mesh/_routing.py): task ids, choice of worker, in-flight table. Pure."""

from __future__ import annotations

from collections import Counter

import pytest

from mesh._routing import Dispatcher, InFlightTask, RecentTasks

A = b"\xaa" * 16
B = b"\xbb" * 16
C = b"\xcc" * 16
D = b"\xdd" * 16


def task(task_id: int, worker: bytes, service: str = "resize", attempt: int = 1) -> InFlightTask:
    return InFlightTask(task_id, service, {"n": task_id}, worker, attempt, sent_at=100.0 + task_id)


def load(dispatcher: Dispatcher, worker: bytes, count: int, first_id: int) -> None:
    for task_id in range(first_id, first_id + count):
        dispatcher.sent(task(task_id, worker))


@pytest.mark.parametrize("max_in_flight", [0, -1])
def test_max_in_flight_must_be_at_least_one(max_in_flight: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        Dispatcher(max_in_flight)


def test_new_task_id_counts_from_one() -> None:
    dispatcher = Dispatcher(4)
    assert [dispatcher.new_task_id() for _ in range(5)] == [1, 2, 3, 4, 5]


def test_task_ids_are_per_dispatcher() -> None:
    first, second = Dispatcher(1), Dispatcher(1)
    first.new_task_id()
    assert second.new_task_id() == 1
    assert first.new_task_id() == 2


def test_pick_with_no_candidates() -> None:
    assert Dispatcher(4).pick([]) is None


def test_pick_the_only_candidate() -> None:
    dispatcher = Dispatcher(4)
    assert dispatcher.pick([A]) == A
    assert dispatcher.pick([A]) == A


def test_pick_spreads_round_robin_among_idle_workers() -> None:
    dispatcher = Dispatcher(4)
    picks = []
    for _ in range(6):
        worker = dispatcher.new_task_id()
        chosen = dispatcher.pick([A, B, C])
        assert chosen is not None
        picks.append(chosen)
        dispatcher.sent(task(worker, chosen))
        assert dispatcher.settle(chosen, worker) is not None  # acked before the next pick
    assert picks == [A, B, C, A, B, C]
    assert Counter(picks) == {A: 2, B: 2, C: 2}


def test_pick_round_robin_without_sending() -> None:
    dispatcher = Dispatcher(4)
    assert [dispatcher.pick([A, B, C]) for _ in range(7)] == [A, B, C, A, B, C, A]


def test_ties_between_busy_workers_go_round_robin() -> None:
    dispatcher = Dispatcher(5)
    load(dispatcher, A, 2, first_id=1)
    load(dispatcher, B, 2, first_id=10)
    load(dispatcher, C, 2, first_id=20)
    assert [dispatcher.pick([A, B, C]) for _ in range(6)] == [A, B, C, A, B, C]


def test_pick_prefers_the_least_loaded() -> None:
    dispatcher = Dispatcher(5)
    load(dispatcher, A, 3, first_id=1)
    load(dispatcher, B, 1, first_id=10)
    load(dispatcher, C, 2, first_id=20)
    assert [dispatcher.pick([A, B, C]) for _ in range(4)] == [B, B, B, B]


def test_pick_prefers_an_idle_worker_whatever_its_place() -> None:
    dispatcher = Dispatcher(5)
    load(dispatcher, A, 1, first_id=1)
    load(dispatcher, B, 1, first_id=10)
    for _ in range(4):
        assert dispatcher.pick([A, B, C]) == C
        assert dispatcher.pick([C, A, B]) == C


def test_pick_fills_workers_evenly() -> None:
    dispatcher = Dispatcher(3)
    for _ in range(9):
        task_id = dispatcher.new_task_id()
        chosen = dispatcher.pick([A, B, C])
        assert chosen is not None
        dispatcher.sent(task(task_id, chosen))
        loads = [dispatcher.in_flight(w) for w in (A, B, C)]
        assert max(loads) - min(loads) <= 1
    assert dispatcher.pick([A, B, C]) is None
    assert dispatcher.in_flight() == 9


def test_candidates_unknown_to_the_dispatcher_count_as_idle() -> None:
    dispatcher = Dispatcher(2)
    load(dispatcher, A, 1, first_id=1)
    assert dispatcher.pick([A, D]) == D


def test_pick_returns_none_when_all_are_full() -> None:
    dispatcher = Dispatcher(2)
    load(dispatcher, A, 2, first_id=1)
    load(dispatcher, B, 2, first_id=10)
    assert dispatcher.pick([A, B]) is None
    assert dispatcher.pick([A]) is None


def test_a_full_worker_is_skipped() -> None:
    dispatcher = Dispatcher(2)
    load(dispatcher, A, 2, first_id=1)
    load(dispatcher, B, 1, first_id=10)
    assert [dispatcher.pick([A, B]) for _ in range(3)] == [B, B, B]


def test_pick_returns_a_worker_again_once_it_has_room() -> None:
    dispatcher = Dispatcher(1)
    dispatcher.sent(task(1, A))
    assert dispatcher.pick([A]) is None
    dispatcher.settle(A, 1)
    assert dispatcher.pick([A]) == A


def test_max_in_flight_one() -> None:
    dispatcher = Dispatcher(1)
    dispatcher.sent(task(1, A))
    assert dispatcher.pick([A, B]) == B
    dispatcher.sent(task(2, B))
    assert dispatcher.pick([A, B]) is None


def test_settle_by_the_worker_it_was_sent_to() -> None:
    dispatcher = Dispatcher(4)
    sent = task(7, A)
    dispatcher.sent(sent)
    assert dispatcher.in_flight() == 1
    assert dispatcher.in_flight(A) == 1
    assert dispatcher.settle(A, 7) is sent
    assert dispatcher.in_flight() == 0
    assert dispatcher.in_flight(A) == 0


def test_settle_by_another_worker_is_ignored() -> None:
    dispatcher = Dispatcher(4)
    sent = task(7, A)
    dispatcher.sent(sent)
    assert dispatcher.settle(B, 7) is None
    assert dispatcher.in_flight() == 1
    assert dispatcher.in_flight(A) == 1
    assert dispatcher.in_flight(B) == 0
    assert dispatcher.settle(A, 7) is sent


def test_settle_unknown_or_twice() -> None:
    dispatcher = Dispatcher(4)
    assert dispatcher.settle(A, 1) is None
    dispatcher.sent(task(1, A))
    assert dispatcher.settle(A, 2) is None
    assert dispatcher.settle(A, 1) is not None
    assert dispatcher.settle(A, 1) is None
    assert dispatcher.in_flight() == 0


def test_settle_frees_one_slot_at_a_time() -> None:
    dispatcher = Dispatcher(4)
    load(dispatcher, A, 3, first_id=1)
    assert dispatcher.in_flight(A) == 3
    dispatcher.settle(A, 2)
    assert dispatcher.in_flight(A) == 2
    dispatcher.settle(A, 1)
    dispatcher.settle(A, 3)
    assert dispatcher.in_flight(A) == 0
    assert dispatcher.in_flight() == 0


def test_forget_worker_returns_its_tasks_and_frees_its_load() -> None:
    dispatcher = Dispatcher(3)
    a1, b1, a2, c1, a3 = task(1, A), task(2, B), task(3, A), task(4, C), task(5, A)
    for sent in (a1, b1, a2, c1, a3):
        dispatcher.sent(sent)
    assert dispatcher.pick([A]) is None
    assert dispatcher.forget_worker(A) == [a1, a2, a3]
    assert dispatcher.in_flight(A) == 0
    assert dispatcher.in_flight() == 2
    assert dispatcher.settle(A, 1) is None
    assert dispatcher.pick([A]) == A
    assert dispatcher.forget_worker(A) == []
    assert dispatcher.forget_worker(D) == []
    assert dispatcher.settle(B, 2) is b1
    assert dispatcher.settle(C, 4) is c1
    assert dispatcher.in_flight() == 0


def test_in_flight_totals() -> None:
    dispatcher = Dispatcher(10)
    assert dispatcher.in_flight() == 0
    assert dispatcher.in_flight(A) == 0
    load(dispatcher, A, 3, first_id=1)
    load(dispatcher, B, 2, first_id=10)
    assert dispatcher.in_flight() == 5
    assert dispatcher.in_flight(A) == 3
    assert dispatcher.in_flight(B) == 2
    assert dispatcher.in_flight(C) == 0


def test_sent_twice_with_the_same_id() -> None:
    dispatcher = Dispatcher(4)
    dispatcher.sent(task(1, A))
    with pytest.raises(ValueError, match="already in flight"):
        dispatcher.sent(task(1, B))
    with pytest.raises(ValueError, match="already in flight"):
        dispatcher.sent(task(1, A))
    assert dispatcher.in_flight() == 1
    assert dispatcher.in_flight(A) == 1
    assert dispatcher.in_flight(B) == 0


def test_an_id_can_be_sent_again_once_settled() -> None:
    dispatcher = Dispatcher(4)
    dispatcher.sent(task(1, A))
    dispatcher.settle(A, 1)
    retry = task(1, B, attempt=2)
    dispatcher.sent(retry)
    assert dispatcher.settle(B, 1) is retry


# -- ack deadlines, credit, and the worker's memory of finished tasks ---------------------------


def sent_at(task_id: int, worker: bytes, when: float) -> InFlightTask:
    return InFlightTask(task_id, "resize", task_id, worker, 1, sent_at=when)


@pytest.mark.parametrize("ack_timeout", [0.0, -1.0, float("nan")])
def test_ack_timeout_must_be_positive(ack_timeout: float) -> None:
    with pytest.raises(ValueError, match="ack_timeout"):
        Dispatcher(10, ack_timeout=ack_timeout)


def test_without_an_ack_timeout_nothing_expires() -> None:
    dispatcher = Dispatcher(10)
    dispatcher.sent(sent_at(1, A, 0.0))
    assert dispatcher.next_deadline() is None
    assert dispatcher.expired(1e9) == []
    assert dispatcher.in_flight() == 1


def test_tasks_expire_at_their_deadline_in_order() -> None:
    dispatcher = Dispatcher(10, ack_timeout=5.0)
    dispatcher.sent(sent_at(1, A, 10.0))
    dispatcher.sent(sent_at(2, B, 11.0))
    dispatcher.sent(sent_at(3, A, 12.0))
    assert dispatcher.next_deadline() == 15.0
    assert dispatcher.expired(14.999) == []
    assert [t.task_id for t in dispatcher.expired(15.0)] == [1]
    assert dispatcher.in_flight(A) == 1
    assert dispatcher.next_deadline() == 16.0
    assert [t.task_id for t in dispatcher.expired(100.0)] == [2, 3]
    assert dispatcher.in_flight() == 0
    assert dispatcher.next_deadline() is None


def test_a_settled_task_never_expires() -> None:
    dispatcher = Dispatcher(10, ack_timeout=5.0)
    dispatcher.sent(sent_at(1, A, 10.0))
    dispatcher.sent(sent_at(2, A, 11.0))
    assert dispatcher.settle(A, 1) is not None
    assert dispatcher.next_deadline() == 16.0  # the stale deadline of task 1 is skipped
    assert [t.task_id for t in dispatcher.expired(20.0)] == [2]


def test_a_task_sent_again_gets_a_new_deadline() -> None:
    dispatcher = Dispatcher(10, ack_timeout=5.0)
    dispatcher.sent(sent_at(1, A, 10.0))
    (expired,) = dispatcher.expired(15.0)
    assert (expired.worker, expired.attempt) == (A, 1)
    dispatcher.sent(InFlightTask(1, "resize", 1, B, 2, sent_at=15.0))  # redelivered elsewhere
    assert dispatcher.next_deadline() == 20.0
    assert dispatcher.expired(19.0) == []
    (again,) = dispatcher.expired(20.0)
    assert (again.worker, again.attempt) == (B, 2)


def test_a_worker_that_left_takes_its_deadlines_with_it() -> None:
    dispatcher = Dispatcher(10, ack_timeout=5.0)
    dispatcher.sent(sent_at(1, A, 10.0))
    dispatcher.sent(sent_at(2, B, 10.0))
    assert [t.task_id for t in dispatcher.forget_worker(A)] == [1]
    assert [t.task_id for t in dispatcher.expired(15.0)] == [2]


def test_credit_caps_a_worker_below_max_in_flight() -> None:
    dispatcher = Dispatcher(10)
    dispatcher.set_credit(A, 2)
    assert dispatcher.capacity(A) == 2
    assert dispatcher.capacity(B) == 10
    load(dispatcher, A, 2, first_id=1)
    assert dispatcher.pick([A]) is None  # A used its credit
    assert dispatcher.pick([A, B]) == B
    dispatcher.set_credit(A, 50)  # more than max_in_flight: max_in_flight still holds
    assert dispatcher.capacity(A) == 10
    dispatcher.set_credit(A, 0)  # a credit below one counts as one
    assert dispatcher.capacity(A) == 1


def test_the_worker_with_the_most_room_gets_the_task() -> None:
    dispatcher = Dispatcher(10)
    dispatcher.set_credit(A, 3)
    load(dispatcher, A, 1, first_id=1)  # room 2
    load(dispatcher, B, 5, first_id=10)  # room 5
    assert dispatcher.pick([A, B]) == B


def test_recent_tasks_remember_a_bounded_window() -> None:
    recent = RecentTasks(3)
    for key in [(A, 1), (A, 2), (B, 1)]:
        recent.add(key)
    assert (A, 1) in recent
    recent.add((A, 1))  # seen again: now the newest
    recent.add((B, 2))  # the window is full: the oldest, (A, 2), goes
    assert (A, 2) not in recent
    assert (A, 1) in recent
    assert (B, 1) in recent
    assert (B, 2) in recent
    assert len(recent) == 3
    with pytest.raises(ValueError, match="window"):
        RecentTasks(0)
