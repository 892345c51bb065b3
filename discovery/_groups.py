"""One helper for context managers that run a nursery around their caller's block."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


@contextlib.contextmanager
def ungrouped() -> Iterator[None]:
    """Let an exception from the caller's block out of the nurseries inside as it was: a trio
    nursery wraps it in an exception group, which the caller of an ``async with`` API should not
    have to unpack. Groups of several exceptions pass unchanged."""
    try:
        yield
    except BaseExceptionGroup as group:
        single: BaseException = group
        while isinstance(single, BaseExceptionGroup) and len(single.exceptions) == 1:
            single = single.exceptions[0]
        if single is group:
            raise
        raise single from None
