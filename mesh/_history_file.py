"""A publisher's history kept in its state directory, so that a node restarted on the same
directory still has the last events it published for subscribers that join late.

Rules:

* The file is ``PATH/history.log``, a log of records framed as the outbox's are (length, CRC-32,
  payload; `mesh._journal`); a record's payload is the time the event was published (a
  big-endian double, Unix seconds) followed by the event's frame as it was published.
* Records are buffered and written once `FLUSH_BYTES` are buffered or at `flush` (the node
  calls it every second) or `close`: a crash loses the last second of history at most, never
  an event (history is a convenience for late subscribers, not a delivery guarantee).
* Opening reads the records back, up to a torn or corrupt tail, keeps those the `History`'s
  bounds keep (the newest), and renumbers them 1 … k in order, their `prev` made anew: a
  restarted node is a new node, whose PUB stream then goes on from k + 1. The file is then
  rewritten with those, and again whenever it has grown past four times what the history
  holds (at least `COMPACT_BYTES`).
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from typing import Any, Final

from ._errors import ProtocolError
from ._history import History
from ._journal import framed, payloads, read_whole, rewrite_and_reopen, write_all
from ._wire import Kind, decode_published

_AT: Final = struct.Struct(">d")
FILE_NAME: Final = "history.log"
#: Bytes of records buffered before they are written.
FLUSH_BYTES: Final = 64 * 1024
#: The file is not compacted below this size.
COMPACT_BYTES: Final = 16 * 1024 * 1024


def record(frame: bytes, at: float) -> bytes:
    """The record of an event published at `at` in `frame`."""
    return framed(_AT.pack(at) + frame)


def read_events(data: bytes) -> list[tuple[bytes, Any, int, float]]:
    """The events a history file's `data` holds, oldest first: (channel, body, size, at)."""
    events = []
    for payload in payloads(data):
        if len(payload) <= _AT.size:
            break
        (at,) = _AT.unpack_from(payload)
        frame = payload[_AT.size :]
        try:
            envelope = decode_published(frame)
        except ProtocolError:
            break  # (not a frame this node wrote: the log ends there)
        if envelope.kind is not Kind.EVENT or envelope.topic is None:
            break
        events.append((b"E" + envelope.topic.encode(), envelope.body, len(frame), at))
    return events


class HistoryFile:
    """``PATH/history.log``, open for appending (see the module's rules)."""

    def __init__(
        self, path: str, history: History, repack: Callable[[int, int, bytes, Any], bytes]
    ):
        """`repack(seq, prev, channel, body)` makes an event's frame again, to compact."""
        self._path = path
        self._history = history
        self._repack = repack
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._size = 0
        self._fd = -1
        self.closed = False

    def load(self) -> list[tuple[bytes, int]]:
        """Read the file into the history (renumbered from 1) and rewrite it with what the
        history keeps; returns, for each channel, the number of its last event kept. Raises
        `OSError`."""
        events = read_events(read_whole(self._path))
        history = self._history
        last_on: dict[bytes, int] = {}
        for seq, (channel, body, size, at) in enumerate(events, 1):
            history.add(seq, last_on.get(channel, 0), channel, body, size, at)
            last_on[channel] = seq
        self._compact()
        return [(channel, seq) for channel, seq in last_on.items()]

    def add(self, frame: bytes, at: float) -> None:
        """An event was published in `frame` at `at`: keep it (buffered)."""
        kept = record(frame, at)
        self._buffer.append(kept)
        self._buffered += len(kept)
        if self._buffered >= FLUSH_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write what is buffered, and compact the file if it is due."""
        if self._buffer and not self.closed:
            data = b"".join(self._buffer)
            self._buffer.clear()
            self._buffered = 0
            self._size += len(data)
            write_all(self._fd, data)
        if self._size > max(COMPACT_BYTES, 4 * self._history.size):
            self._compact()

    def close(self) -> None:
        """Flush and close. A second call does nothing."""
        if self.closed:
            return
        try:
            self.flush()
        finally:
            self.closed = True
            if self._fd >= 0:
                os.close(self._fd)

    def _compact(self) -> None:
        records = [
            record(self._repack(seq, prev, channel, body), at)
            for seq, prev, channel, body, _, at in self._history.entries()
        ]
        self._fd, self._size = rewrite_and_reopen(self._path, records, self._fd)
