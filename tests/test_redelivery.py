"""What becomes of a task that came back (mesh/_routing.py's `returned`): sent again, or given up
after `max_attempts` sends; and with the dispatcher's expiry, a task's whole life without an ack.
Pure: literal times."""

from __future__ import annotations

from mesh._routing import Dispatcher, InFlightTask, Returned, returned

A = b"\xaa" * 16
B = b"\xbb" * 16


def task(task_id: int, attempt: int, worker: bytes = A, sent_at: float = 100.0) -> InFlightTask:
    return InFlightTask(task_id, "resize", {"n": task_id}, worker, attempt, sent_at)


def test_a_task_is_sent_again_until_its_last_attempt_then_given_up() -> None:
    first, second, third = task(1, 1), task(2, 2), task(3, 3)
    assert returned([first, second, third], max_attempts=3) == Returned((first, second), (third,))
    assert returned([first, second, third], max_attempts=2) == Returned((first,), (second, third))


def test_one_attempt_means_never_sent_again() -> None:
    only = task(1, 1)
    assert returned([only], max_attempts=1) == Returned((), (only,))


def test_an_attempt_beyond_the_last_is_given_up_too() -> None:
    # A node whose max_attempts is lowered meanwhile (or a confused count) never loops.
    late = task(1, 7)
    assert returned([late], max_attempts=3) == Returned((), (late,))


def test_each_kind_keeps_the_order_the_tasks_came_in() -> None:
    tasks = [task(4, 1), task(2, 3), task(9, 2), task(1, 3), task(5, 1)]
    fate = returned(iter(tasks), max_attempts=3)  # any iterable, read once
    assert [t.task_id for t in fate.again] == [4, 9, 5]
    assert [t.task_id for t in fate.given_up] == [2, 1]


def test_nothing_came_back() -> None:
    assert returned([], max_attempts=3) == Returned((), ())


def test_a_task_never_acked_expires_at_each_deadline_and_is_given_up_after_its_last_send() -> None:
    # ack_timeout 5 s, max_attempts 2: sent at 100 to A, expires at 105, sent again at 106 to B
    # (its second attempt), expires at 111, given up.
    dispatcher = Dispatcher(max_in_flight=4, ack_timeout=5.0)
    dispatcher.sent(task(1, 1, A, sent_at=100.0))
    assert dispatcher.next_deadline() == 105.0
    assert dispatcher.expired(104.999) == []
    expired = dispatcher.expired(105.0)
    assert [t.task_id for t in expired] == [1]
    fate = returned(expired, max_attempts=2)
    assert fate.given_up == ()
    (again,) = fate.again
    dispatcher.sent(again._replace(worker=B, attempt=again.attempt + 1, sent_at=106.0))
    assert dispatcher.next_deadline() == 111.0
    fate = returned(dispatcher.expired(111.0), max_attempts=2)
    assert fate.again == ()
    assert [(t.task_id, t.worker, t.attempt) for t in fate.given_up] == [(1, B, 2)]
    assert dispatcher.next_deadline() is None
    assert dispatcher.in_flight() == 0


def test_the_deadlines_kept_stay_about_as_many_as_the_tasks_in_flight() -> None:
    # Tasks acked long before their deadline leave entries behind; under load (tens of
    # thousands a second, a minute's timeout) they would be millions.
    dispatcher = Dispatcher(max_in_flight=10, ack_timeout=60.0)
    for task_id in range(1, 100_001):
        dispatcher.sent(task(task_id, 1, A, sent_at=100.0 + task_id / 1000))
        assert dispatcher.settle(A, task_id) is not None
        assert len(dispatcher._deadlines) <= 2 * (dispatcher.in_flight() + 1) + 1025
    # The compaction keeps what is still due, and the order of expiry.
    for task_id in (200_001, 200_002):
        dispatcher.sent(task(task_id, 1, B, sent_at=1000.0 + task_id - 200_000))
    assert dispatcher.next_deadline() == 1061.0
    assert [t.task_id for t in dispatcher.expired(1062.0)] == [200_001, 200_002]
