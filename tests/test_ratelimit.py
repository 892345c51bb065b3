"""RateLimitedLog (mesh/_ratelimit.py): at most one warning per key per interval."""

from __future__ import annotations

import logging

import pytest

from mesh._ratelimit import RateLimitedLog, TokenBucket

LOGGER = "mesh.test.ratelimit"


@pytest.fixture
def log(caplog: pytest.LogCaptureFixture) -> RateLimitedLog:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    return RateLimitedLog(logging.getLogger(LOGGER), interval=10.0)


def messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_first_warning_is_logged(log: RateLimitedLog, caplog: pytest.LogCaptureFixture) -> None:
    assert log.warning("bad:malformed", 100.0, "dropped a bad frame from %s: %s", "peer", "junk")
    assert messages(caplog) == ["dropped a bad frame from peer: junk"]
    (logged,) = caplog.records
    assert logged.levelno == logging.WARNING
    assert logged.name == LOGGER


def test_repeats_inside_the_interval_are_held_back_and_counted(
    log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    assert log.warning("k", 100.0, "problem %d", 1)
    assert not log.warning("k", 100.0, "problem %d", 2)
    assert not log.warning("k", 105.0, "problem %d", 3)
    assert not log.warning("k", 109.999, "problem %d", 4)
    assert messages(caplog) == ["problem 1"]
    assert log.warning("k", 110.0, "problem %d", 5)
    assert messages(caplog) == ["problem 1", "problem 5 (and 3 more like it held back)"]


def test_the_count_starts_again_after_it_is_reported(
    log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    log.warning("k", 0.0, "m")
    log.warning("k", 1.0, "m")
    log.warning("k", 10.0, "m")
    log.warning("k", 11.0, "m")
    log.warning("k", 12.0, "m")
    log.warning("k", 20.0, "m")
    log.warning("k", 30.0, "m")
    assert messages(caplog) == [
        "m",
        "m (and 1 more like it held back)",
        "m (and 2 more like it held back)",
        "m",
    ]


def test_the_interval_runs_from_the_last_logged_warning(
    log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    """Held-back calls do not push the next warning further out."""
    for now in (0.0, 3.0, 6.0, 9.0):
        log.warning("k", now, "m")
    assert log.warning("k", 10.0, "m")
    assert not log.warning("k", 19.5, "m")
    assert log.warning("k", 20.0, "m")
    assert messages(caplog) == [
        "m",
        "m (and 3 more like it held back)",
        "m (and 1 more like it held back)",
    ]


def test_after_a_quiet_interval_nothing_is_added(
    log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    assert log.warning("k", 0.0, "m %s", "a")
    assert log.warning("k", 50.0, "m %s", "b")
    assert log.warning("k", 60.0, "m %s", "c")
    assert messages(caplog) == ["m a", "m b", "m c"]


def test_keys_are_independent(log: RateLimitedLog, caplog: pytest.LogCaptureFixture) -> None:
    assert log.warning("a", 0.0, "from %s", "a")
    assert log.warning("b", 1.0, "from %s", "b")
    assert not log.warning("a", 2.0, "from %s", "a")
    assert not log.warning("a", 3.0, "from %s", "a")
    assert not log.warning("b", 4.0, "from %s", "b")
    assert log.warning("c", 5.0, "from %s", "c")
    assert log.warning("a", 10.0, "from %s", "a")
    assert not log.warning("b", 10.5, "from %s", "b")
    assert log.warning("b", 11.0, "from %s", "b")
    assert messages(caplog) == [
        "from a",
        "from b",
        "from c",
        "from a (and 2 more like it held back)",
        "from b (and 2 more like it held back)",
    ]


def test_default_interval_is_ten_seconds(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    log = RateLimitedLog(logging.getLogger(LOGGER))
    assert log.warning("k", 0.0, "m")
    assert not log.warning("k", 9.9, "m")
    assert log.warning("k", 10.0, "m")


def test_custom_interval(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    log = RateLimitedLog(logging.getLogger(LOGGER), interval=0.5)
    assert log.warning("k", 0.0, "m")
    assert not log.warning("k", 0.25, "m")
    assert log.warning("k", 0.5, "m")
    assert log.warning("k", 1.0, "m")
    assert messages(caplog) == ["m", "m (and 1 more like it held back)", "m"]


def test_message_args_are_formatted_lazily_with_the_count(
    log: RateLimitedLog, caplog: pytest.LogCaptureFixture
) -> None:
    log.warning("k", 0.0, "task %d for %r: %s", 7, "resize", "100% busy")
    log.warning("k", 1.0, "task %d for %r: %s", 8, "resize", "busy")
    log.warning("k", 10.0, "task %d for %r: %s", 9, "resize", "busy")
    assert messages(caplog) == [
        "task 7 for 'resize': 100% busy",
        "task 9 for 'resize': busy (and 1 more like it held back)",
    ]
    assert caplog.records[-1].args == (9, "resize", "busy", 1)


def test_a_token_bucket_takes_a_burst_then_its_rate() -> None:
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take(10.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.take(10.4)  # 0.8 of a token
    assert bucket.take(10.5)  # 1.0
    assert not bucket.take(10.5)
    assert [bucket.take(100.0) for _ in range(4)] == [True, True, True, False]  # full, no more
