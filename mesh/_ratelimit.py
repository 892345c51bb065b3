"""What peers make a node do, at a bounded rate: warnings about what they send (a hostile or
broken peer must not be able to flood the log), and costly work they ask for (`TokenBucket`).
Pure apart from the logger: time is passed in."""

from __future__ import annotations

import logging


class TokenBucket:
    """At most `burst` at once, and `rate` a second on average: `take` spends one token if
    there is one. Starts full."""

    __slots__ = ("_burst", "_rate", "_since", "_tokens")

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._since: float | None = None

    def take(self, now: float) -> bool:
        """Spend a token at `now`; False if none is left."""
        if self._since is not None:
            self._tokens = min(self._burst, self._tokens + (now - self._since) * self._rate)
        self._since = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True


class RateLimitedLog:
    """At most one warning per `key` every `interval` seconds; the ones held back are counted and
    reported with the next warning for that key. Keys name kinds of warning, never what a peer
    sent (an address, an id): the table of keys must stay small."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0) -> None:
        self._logger = logger
        self._interval = interval
        self._last: dict[str, float] = {}
        self._held_back: dict[str, int] = {}

    def warning(self, key: str, now: float, message: str, *args: object) -> bool:
        """Log `message % args` unless `key` was logged less than `interval` ago. Returns whether
        it was logged."""
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            self._held_back[key] = self._held_back.get(key, 0) + 1
            return False
        self._last[key] = now
        held_back = self._held_back.pop(key, 0)
        if held_back:
            message += " (and %d more like it held back)"
            args = (*args, held_back)
        self._logger.warning(message, *args)
        return True
