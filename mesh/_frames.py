"""Frames from the network, taken in: a batch of valid envelopes at a time from a socket, each
frame decoded whole by the wire codec. A frame that breaks the protocol is its sender's problem:
counted (by `ProtocolError.reason`), logged at a bounded rate, dropped, and never a failure of the
node. Bytes received are counted by socket, as they cross it.

Decoding a batch takes at most `TURN` seconds before the other tasks of the node get a turn (the
frames not yet decoded wait for the next call): a burst of costly frames (large, or many values
to count) must not keep the heartbeat loop from running, or the node's peers would declare it
dead for what a stranger sent it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Final

import trio

from ._errors import ProtocolError
from ._members import Members
from ._ratelimit import RateLimitedLog
from ._wire import Envelope
from ._zmq import AsyncSocket

#: Seconds of decoding one socket's frames before the node's other tasks get a turn.
TURN: Final = 0.005


class Frames:
    """What a node has taken in: `bytes_in` by socket ("inbox", "events", "control", "udp") and
    `bad_reasons`, the bad frames by reason (their total goes to `counts["bad_frames"]`)."""

    def __init__(self, receive_batch: int, counts: dict[str, int], log: RateLimitedLog) -> None:
        self._receive_batch = receive_batch
        self._counts = counts
        self._log = log
        self.bytes_in = dict.fromkeys(("inbox", "events", "control", "udp"), 0)
        self.bad_reasons: dict[str, int] = {}
        # By socket: frames left for the next turn (`bytes`, or `zmq.Frame` where keys matter).
        self._undecoded: dict[str, list[Any]] = {}

    async def receive(
        self,
        sock: AsyncSocket,
        decode: Callable[[bytes], list[Envelope]],
        where: str,
        members: Members | None = None,
    ) -> list[Envelope]:
        """The next batch of valid envelopes from `sock`, in order (a frame may carry several; bad
        frames are counted and dropped whole); an empty list once the socket is closed. With
        `members` (a keyed node's inbox), each frame is checked against the key that
        authenticated its connection (`Members.admits`)."""
        while True:
            frames: list[Any] | None = self._undecoded.pop(where, None)
            if frames is None:
                try:
                    if members is None:
                        frames = await sock.receive_batch(self._receive_batch)
                    else:
                        frames = await sock.receive_frame_batch(self._receive_batch)
                except trio.ClosedResourceError:
                    return []
                self.bytes_in[where] += sum(map(len, frames))
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()  # the other tasks' turn
            batch: list[Envelope] = []
            started = time.perf_counter()
            now = 0.0 if members is None else trio.current_time()  # (for the keys' offences)
            for index, frame in enumerate(frames):
                try:
                    if members is None:
                        batch += decode(frame)
                    else:
                        batch += members.admits(frame, decode, now)
                except ProtocolError as exc:
                    self.bad_frame(exc, where)
                if time.perf_counter() - started > TURN and index + 1 < len(frames):
                    self._undecoded[where] = frames[index + 1 :]
                    break
            if batch:
                return batch

    def bad_frame(self, exc: ProtocolError, where: str) -> None:
        """A frame or datagram read on `where` broke the protocol: count it, log it (bounded)."""
        self._counts["bad_frames"] += 1
        self.bad_reasons[exc.reason] = self.bad_reasons.get(exc.reason, 0) + 1
        self._log.warning(
            "bad:" + exc.reason,
            trio.current_time(),
            "dropped a bad frame on the %s: %s",
            where,
            exc,
        )
