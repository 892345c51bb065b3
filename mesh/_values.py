"""Counting the msgpack values in a frame from their headers alone, before anything is decoded.
Pure: no IO.

A frame's bytes do not bound what decoding it allocates: each one-byte empty array becomes a
Python list of 56 bytes and more. `count_values` walks the headers (a type byte, then a length
or count for some types) without building anything, skipping strings and binaries by their
length, and stops as soon as the count passes a limit.
"""

from __future__ import annotations

from typing import Final

from ._errors import ProtocolError


def count_values(frame: bytes | memoryview, limit: int) -> int:
    """How many msgpack values the frame's first value holds, itself included, counted from
    the headers alone (nothing is decoded). Raises `ProtocolError` ("oversized") as soon as the
    count passes `limit`, ("truncated") if the frame ends first, ("type") for an extension type
    (the protocol has none) and ("malformed") for the one byte msgpack never uses. What follows
    the first value is not looked at (msgpack refuses it)."""
    size = len(frame)
    position = 0
    values = 0
    pending = 1  # values announced by the headers read so far and not reached yet
    sizes = _VALUE_SIZES
    while pending:
        if position >= size:
            raise ProtocolError("truncated", "a msgpack value is cut short")
        values += 1
        if values > limit:
            raise ProtocolError("oversized", f"more than {limit} msgpack values in a frame")
        pending -= 1
        lead = frame[position]
        fixed, length_bytes, per_item = sizes[lead]
        if fixed <= 0:
            if fixed == _EXTENSION:
                raise ProtocolError("type", "a msgpack extension type")
            raise ProtocolError("malformed", f"byte 0x{lead:02x} starts no msgpack value")
        position += fixed
        if length_bytes:
            length = int.from_bytes(frame[position - length_bytes : position], "big")
            if per_item:
                pending += per_item * length
            else:
                position += length
        elif per_item:  # fixarray, fixmap: the count is in the lead byte
            pending += per_item * (lead & 0x0F)
    return values


_UNUSED: Final = -1  # the lead byte msgpack never uses (0xc1)
_EXTENSION: Final = 0  # the lead bytes of extension types


def _value_sizes() -> tuple[tuple[int, int, int], ...]:
    """For each lead byte: (bytes before the payload, how many of them are a length or count
    at their end, values per counted item: 0 when the length is of bytes to skip)."""
    table = [(1, 0, 0)] * 256  # fixints, nil, booleans
    for lead in range(0x80, 0x90):
        table[lead] = (1, 0, 2)  # fixmap: 2 values an entry
    for lead in range(0x90, 0xA0):
        table[lead] = (1, 0, 1)  # fixarray
    for lead in range(0xA0, 0xC0):
        table[lead] = (1 + (lead & 0x1F), 0, 0)  # fixstr
    table[0xC1] = (_UNUSED, 0, 0)
    for lead, width in ((0xC4, 1), (0xC5, 2), (0xC6, 4), (0xD9, 1), (0xDA, 2), (0xDB, 4)):
        table[lead] = (1 + width, width, 0)  # bin, str
    for lead in (0xC7, 0xC8, 0xC9, 0xD4, 0xD5, 0xD6, 0xD7, 0xD8):
        table[lead] = (_EXTENSION, 0, 0)
    for lead, total in ((0xCA, 5), (0xCB, 9), (0xCC, 2), (0xCD, 3), (0xCE, 5), (0xCF, 9)):
        table[lead] = (total, 0, 0)  # float, uint
    for lead, total in ((0xD0, 2), (0xD1, 3), (0xD2, 5), (0xD3, 9)):
        table[lead] = (total, 0, 0)  # int
    for lead, width in ((0xDC, 2), (0xDD, 4)):
        table[lead] = (1 + width, width, 1)  # array
    for lead, width in ((0xDE, 2), (0xDF, 4)):
        table[lead] = (1 + width, width, 2)  # map
    return tuple(table)


_VALUE_SIZES: Final = _value_sizes()
