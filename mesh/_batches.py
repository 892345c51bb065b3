"""Batches: several consecutive messages of one sender in one frame (docs/protocol.md §3,
"Batches"), made from the messages queued for a socket. Pure: no IO.

A batch is an envelope of kind `BATCH` whose body is the array of the envelopes it holds; on a
PUB it follows the channel of the one topic all its events share, so that every subscriber that
takes one of them takes all. Decoding is `mesh._wire`'s (`decode_inbox_many`,
`decode_published_many`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final

from ._wire import EVENT_CHANNEL, MAX_TOPIC_SIZE

#: What a sender puts in one batch at most (a message that alone is larger goes alone): large
#: enough that the cost of a ZeroMQ send is spread thin, small enough to keep a receiver's turn
#: short.
BATCH_MESSAGES: Final = 256
BATCH_BYTES: Final = 256 * 1024
#: The same for a batch of events on a PUB, smaller: ZeroMQ's high-water marks count frames,
#: so this bounds the bytes a subscriber connection holds (`mesh._binding.event_hwm`).
PUBLISHED_BATCH_BYTES: Final = 64 * 1024


def batch_envelope(envelopes: Sequence[bytes]) -> bytes:
    """The BATCH envelope holding `envelopes` (at least one, made by `pack` for one sender, in the
    order they were numbered): ``[1, 13, sender, seq of the first, nil, [envelope, ...]]``.

    Its head is cut from the first envelope's (`pack` writes version and kind as one byte each
    and the sender as bin 16), so nothing is packed twice. The caller keeps the result within
    `MAX_FRAME_SIZE` and `MAX_BATCH`."""
    first = envelopes[0]
    assert first[:2] == b"\x96\x01", "not an envelope from pack"
    assert first[3:5] == b"\xc4\x10", "not an envelope from pack"
    seq_end = 21 + _UINT_WIDTH[first[21]] if first[21] >= 0xCC else 22
    count = len(envelopes)
    items = bytes((0x90 | count,)) if count < 16 else b"\xdc" + count.to_bytes(2, "big")
    return b"\x96\x01\x0d" + first[3:seq_end] + b"\xc0" + items + b"".join(envelopes)


_UINT_WIDTH: Final = {0xCC: 2, 0xCD: 3, 0xCE: 5, 0xCF: 9}  # msgpack uint 8/16/32/64 with marker


def coalesce_direct(frames: Iterable[bytes]) -> tuple[bytes, int]:
    """The next frame to send on an inbox link whose peer takes batches, from the messages
    (envelopes) queued for it, oldest first: the first alone, or a BATCH of as many of them as
    `BATCH_MESSAGES` and `BATCH_BYTES` allow. Returns (frame, messages it carries)."""
    queued = iter(frames)
    first = next(queued)
    envelopes = [first]
    size = len(first)
    for envelope in queued:
        size += len(envelope)
        if size > BATCH_BYTES or len(envelopes) == BATCH_MESSAGES:
            break
        envelopes.append(envelope)
    if len(envelopes) == 1:
        return first, 1
    return batch_envelope(envelopes), len(envelopes)


def coalesce_published(frames: Iterable[bytes]) -> tuple[bytes, int]:
    """The next frame to publish, from the published frames queued, oldest first: the first
    alone, or, when it and the next ones are events of the same topic (the same channel up to
    and including the NUL, so that every subscriber that takes one takes all), one frame
    ``channel + NUL + BATCH`` holding their envelopes. Returns (frame, messages it carries)."""
    queued = iter(frames)
    first = next(queued)
    if first[:1] != EVENT_CHANNEL:
        return first, 1
    end = first.find(b"\x00", 1, MAX_TOPIC_SIZE + 2) + 1
    head = first[:end]
    envelopes = [first[end:]]
    size = len(first)
    for frame in queued:
        size += len(frame) - end
        if (
            size > PUBLISHED_BATCH_BYTES
            or len(envelopes) == BATCH_MESSAGES
            or not frame.startswith(head)
        ):
            break
        envelopes.append(frame[end:])
    if len(envelopes) == 1:
        return first, 1
    return head + batch_envelope(envelopes), len(envelopes)
