"""The SYNC probes' schedule (mesh/_probes.py): resend times, tokens still waiting, the timeout.
Pure: literal times, with a first gap of 1 s and a last of 4 s so that they add up exactly."""

from __future__ import annotations

import pytest

from mesh._probes import FIRST_RESEND, LAST_RESEND, Probes, ProbeSchedule


def schedule(tokens: list[int], timeout: float = 100.0) -> ProbeSchedule:
    return ProbeSchedule(tokens, 10.0, timeout, first=1.0, last=4.0)


def test_probes_go_at_once_then_after_gaps_doubling_up_to_the_last() -> None:
    probes = schedule([1, 2])
    sent = []
    now = 10.0
    while now < 40.0:
        step = probes.next(now)
        assert step is not None
        if step.send:
            sent.append(now)
        now = step.wake
    # Gaps of 1, 2, 4, then 4 (not 8).
    assert sent == [10.0, 11.0, 13.0, 17.0, 21.0, 25.0, 29.0, 33.0, 37.0]


def test_an_early_wake_sends_nothing_and_keeps_the_resend_time() -> None:
    probes = schedule([1, 2])
    assert probes.next(10.0) == Probes((1, 2), 11.0)
    assert probes.next(10.25) == Probes((), 11.0)  # an answer woke the caller
    assert probes.next(11.0) == Probes((1, 2), 13.0)


def test_an_answered_token_is_not_resent_and_the_others_keep_their_times() -> None:
    probes = schedule([1, 2, 3])
    assert probes.next(10.0) == Probes((1, 2, 3), 11.0)
    probes.stop(2)
    assert set(probes.waiting) == {1, 3}
    assert probes.next(10.5) == Probes((), 11.0)
    assert probes.next(11.0) == Probes((1, 3), 13.0)
    probes.stop(2)  # again, and an unknown token: nothing happens
    probes.stop(99)
    assert set(probes.waiting) == {1, 3}


def test_the_schedule_is_over_once_every_token_is_answered() -> None:
    probes = schedule([1, 2])
    assert probes.next(10.0) is not None
    probes.stop(1)
    probes.stop(2)
    assert not probes.waiting
    assert probes.next(10.5) is None


def test_nothing_to_probe_is_over_at_once() -> None:
    assert schedule([]).next(10.0) is None


def test_the_wait_ends_at_the_timeout_and_what_still_waits_was_not_answered() -> None:
    probes = schedule([1, 2], timeout=5.0)
    assert probes.next(10.0) == Probes((1, 2), 11.0)
    assert probes.next(11.0) == Probes((1, 2), 13.0)
    probes.stop(1)
    assert probes.next(13.0) == Probes((2,), 15.0)  # the next resend (17) is past the timeout
    assert probes.next(15.0) is None
    assert set(probes.waiting) == {2}


def test_a_caller_woken_late_resends_once_and_counts_the_next_gap_from_then() -> None:
    probes = schedule([1])
    assert probes.next(10.0) == Probes((1,), 11.0)
    assert probes.next(12.5) == Probes((1,), 14.5)  # late for 11: not again for 13
    assert probes.next(14.5) == Probes((1,), 18.5)


def test_the_first_probes_go_even_with_no_time_to_wait_for_an_answer() -> None:
    probes = schedule([1, 2], timeout=0.0)
    assert probes.next(10.0) == Probes((1, 2), 10.0)
    assert probes.next(10.0) is None


def test_the_defaults_resend_after_5_ms_doubling_to_every_50_ms() -> None:
    assert (FIRST_RESEND, LAST_RESEND) == (0.005, 0.05)
    probes = ProbeSchedule([7], 0.0, 2.0)
    wakes = []
    now = 0.0
    for _ in range(6):
        step = probes.next(now)
        assert step is not None
        now = step.wake
        wakes.append(now)
    assert wakes == pytest.approx([0.005, 0.015, 0.035, 0.075, 0.125, 0.175])


@pytest.mark.parametrize(("first", "last"), [(0.0, 1.0), (-1.0, 1.0), (2.0, 1.0)])
def test_gaps_that_cannot_work_are_a_value_error(first: float, last: float) -> None:
    with pytest.raises(ValueError, match="first <= last"):
        ProbeSchedule([1], 0.0, 1.0, first=first, last=last)
