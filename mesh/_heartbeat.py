"""Heartbeat bodies, and what a node learns from them besides liveness: each peer's load and the
round trip to it (`PeerBeats` keeps one peer's; `BeatDatagrams` packs a beat's datagrams). Pure:
no IO, no clock; times are the caller's `now` (seconds).

Rules (docs/protocol.md §11):

* A heartbeat body is a map. `n`, the beat's number (an int from 1), is the only key required;
  a body without it is ignored. Every other key is optional, read only when it has the right
  type and range, and otherwise ignored as if absent: a peer that omits or garbles one (an
  older node, a third-party tool) loses only what that key tells.
* `t` (float): the sender's clock when this copy left, in seconds from any origin. It is only
  ever echoed back to the sender, who compares it with its own clock: clocks are never compared
  across nodes.
* `load` (int >= 0): the tasks the sender holds unfinished. `credit` (int >= 1): how many unacked
  tasks it takes from each sender.
* `echo` ([float, float], datagrams only, as they are the only copies sent to one peer): the `t`
  of the last heartbeat datagram the sender took from the addressee (any copy: each has its own
  `t`), and how long the sender had held it when this copy left. The addressee's round trip
  sample is then `now - t - held`: its own clock at both ends, and the time the echo waited at
  the peer taken out.
* `d` (int >= 1, datagrams only): the datagram's number on the path from its sender to its
  addressee, one more for every copy sent there. A gap in these numbers is datagrams lost.
* `want` (int 1 to `COPIES`, datagrams only): how many copies of each beat the sender asks of
  the addressee. A node asks for `COPIES` while it has lost any of that peer's datagrams in the
  last `LOSSY_FOR` seconds, else for one. A peer that has never asked (or asked out of range)
  gets `COPIES`. On a clean network that is one datagram a beat instead of three, the largest
  part of the idle cost; under loss the copies come back within a beat or two of the first
  datagram lost (docs/decisions.md has the trade-off).
* `watch` (0, datagrams only): the sender does not watch the addressee (`mesh/_gossip.py`): it
  heartbeats to it only because the addressee watches it, and does not judge it. Absent (or
  anything else): it does, as every node before SWIM did.
* `rec` (8 bytes): the digest of the sender's current record (`record_digest`). A node that
  holds a record of the sender with another digest for `RECORD_DIFFERS_FOR` seconds asks for
  the record again (`PeerBeats.record_differs`): an UPDATE that went missing is repaired.
* Round trips are smoothed as TCP smooths them (RFC 6298): the first sample as it is, then
  `rtt += (sample - rtt) / 8`. An echo of a time that is in this node's future, older than
  `ECHO_MAX_AGE`, or held longer than it has been out, is no sample (a forged or garbled one
  can then skew the figure by no more than that age).
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgpack

from discovery import PeerRecord

from ._errors import ProtocolError

#: Echoes of beats sent longer ago than this are not round trip samples (seconds).
ECHO_MAX_AGE: Final = 10.0
#: Weight of a new round trip sample (RFC 6298's alpha).
RTT_GAIN: Final = 1 / 8
#: Most copies of a beat sent by datagram, and what a peer that does not ask gets.
COPIES: Final = 3
#: A node asks a peer for all the copies while it has lost one of its datagrams this recently.
LOSSY_FOR: Final = 60.0
#: Bytes of a record's digest (`rec`).
RECORD_DIGEST_SIZE: Final = 8
#: A peer's beats may tell of a record this node does not hold yet for this long (its UPDATE is
#: on its way: datagrams overtake it) before this node asks for the record again; and no more
#: often than that while they still differ.
RECORD_DIFFERS_FOR: Final = 1.0
#: How much further ahead of the highest number taken a beat's number may be than the time
#: since then allows (a peer beats at most once an interval: twice that many, to spare).
#: Further ahead is a forgery, which would make every real beat after it look like an old copy;
#: a restarted node has a new id, so its numbers start afresh in a new `PeerBeats`.
BEAT_STEP_SLACK: Final = 16


class Beat(NamedTuple):
    """What one heartbeat body says: its number, and each optional field if present and valid
    (else None). A named tuple: one is made for every heartbeat taken in, about 150 a second
    from 31 peers."""

    number: int
    sent: float | None = None
    load: int | None = None
    credit: int | None = None
    echo: tuple[float, float] | None = None  # (the addressee's `t`, seconds held)
    datagram: int | None = None  # `d`
    want: int | None = None
    record: bytes | None = None  # `rec`: the digest of the sender's record
    watching: bool = True  # not `watch: 0`


# Beat(*fields) goes through the named tuple's Python-level __new__; this does not.
_new_beat: Callable[[tuple[Any, ...]], Beat] = functools.partial(tuple.__new__, Beat)


def read_beat(body: Any) -> Beat | None:
    """The beat a heartbeat body describes, or None if it has no valid `n`."""
    if type(body) is not dict:
        return None
    number = body.get("n")
    if type(number) is not int or number < 1:
        return None
    sent = body.get("t")
    load = body.get("load")
    credit = body.get("credit")
    echo = body.get("echo")
    datagram = body.get("d")
    want = body.get("want")
    record = body.get("rec")
    watch = body.get("watch", 1)
    if (
        type(echo) is list
        and len(echo) == 2
        and type(echo[0]) is float
        and type(echo[1]) is float
        and math.isfinite(echo[0])
        and math.isfinite(echo[1])
    ):
        echoed: tuple[float, float] | None = (echo[0], echo[1])
    else:
        echoed = None
    return _new_beat(
        (
            number,
            sent if type(sent) is float and math.isfinite(sent) else None,
            load if type(load) is int and load >= 0 else None,
            credit if type(credit) is int and credit > 0 else None,
            echoed,
            datagram if type(datagram) is int and datagram > 0 else None,
            want if type(want) is int and 1 <= want <= COPIES else None,
            record if type(record) is bytes and len(record) == RECORD_DIGEST_SIZE else None,
            not (type(watch) is int and watch == 0),
        )
    )


def beat_body(
    number: int,
    *,
    sent: float,
    load: int,
    credit: int | None = None,
    echo: tuple[float, float] | None = None,
    datagram: int | None = None,
    want: int | None = None,
    record: bytes | None = None,
    watching: bool = True,
) -> dict[str, Any]:
    """The body of a heartbeat (the map `read_beat` reads)."""
    body: dict[str, Any] = {"n": number, "t": sent, "load": load}
    if credit is not None:
        body["credit"] = credit
    if record is not None:
        body["rec"] = record
    if echo is not None:
        body["echo"] = list(echo)
    if datagram is not None:
        body["d"] = datagram
    if want is not None:
        body["want"] = want
    if not watching:
        body["watch"] = 0
    return body


class BeatDatagrams:
    """The datagrams of one copy of one beat, packed as `pack(Kind.HEARTBEAT, sender, number,
    None, beat_body(...))` packs them, byte for byte, but with the part every peer gets (the
    envelope's head, `n`, `t`, `load`, `credit`, `rec`) packed once: `for_peer` adds only the fields
    each peer gets its own of (`echo`, `d`, `want`). A node sends one datagram to each of its
    peers every beat; packing each whole was most of the cost of sending them."""

    __slots__ = ("_common", "_fields", "_head")

    def __init__(
        self,
        envelope_head: bytes,
        number: int,
        *,
        sent: float,
        load: int,
        credit: int | None,
        record: bytes | None = None,
    ) -> None:
        common: list[Any] = ["n", number, "t", sent, "load", load]
        if credit is not None:
            common += ["credit", credit]
        if record is not None:
            common += ["rec", record]
        self._head = envelope_head  # the envelope up to its body (`_wire.envelope_head`)
        self._fields = len(common) // 2
        self._common = _in_a_row(common)

    def for_peer(
        self, echo: tuple[float, float] | None, datagram: int, want: int, watching: bool = True
    ) -> bytes:
        """The datagram for a peer: this beat, with its `echo`, `d` and `want` (and `watch: 0`
        if this node does not watch that peer)."""
        own: list[Any] = [] if echo is None else ["echo", list(echo)]
        own += ["d", datagram, "want", want]
        if not watching:
            own += ["watch", 0]
        return self._head + _FIXMAP[self._fields + len(own) // 2] + self._common + _in_a_row(own)


# msgpack heads of maps of up to 15 entries (a heartbeat body has at most 8).
_FIXMAP: Final = [bytes((0x80 | count,)) for count in range(16)]


def _in_a_row(items: list[Any]) -> bytes:
    """`items` msgpack-packed one after the other (a map's entries are its keys and values so):
    an array of them, less its one-byte head (fewer than 16 items)."""
    packed: bytes = msgpack.packb(items, use_bin_type=True)
    return packed[1:]


class DatagramLoss:
    """The datagrams of one peer lost on their way here, from the gaps in their numbers (`d`),
    and so how many copies of each beat to ask of it."""

    __slots__ = ("last", "lost", "lost_at")

    def __init__(self) -> None:
        self.last = 0  # the last number taken, 0 before the first
        self.lost = 0  # datagrams lost since tracking began
        self.lost_at = -math.inf  # when a loss was last seen

    def datagram(self, number: int, now: float) -> None:
        """Datagram `number` came in at `now`."""
        if self.last and number > self.last + 1:
            self.lost += number - self.last - 1
            self.lost_at = now
        # A number at or below the last is a reordered datagram, or a peer that counts afresh
        # (it forgot this node and met it again): either way, count on from it.
        self.last = number

    def want(self, now: float) -> int:
        """The copies a beat to ask of the peer at `now`."""
        return COPIES if now - self.lost_at < LOSSY_FOR else 1


def record_digest(record: PeerRecord) -> bytes:
    """The digest of `record` that heartbeats carry (`rec`, docs/protocol.md §11): BLAKE2b of
    its wire map (keys in a fixed order, services sorted), cut to `RECORD_DIGEST_SIZE` bytes.
    Equal records have equal digests, whichever node computes them."""
    packed = msgpack.packb(record.to_wire(), use_bin_type=True)
    return hashlib.blake2b(packed, digest_size=RECORD_DIGEST_SIZE).digest()


def echo_of(taken: tuple[float, float] | None, now: float) -> tuple[float, float] | None:
    """The `echo` to send to a peer at `now`, from (its `t`, when that beat was taken here)."""
    if taken is None:
        return None
    sent, at = taken
    return sent, max(0.0, now - at)


def round_trip_sample(echo: tuple[float, float], now: float) -> float | None:
    """The round trip an echo measures at `now`, or None if it cannot be a real one."""
    sent, held = echo
    out = now - sent
    if not 0.0 <= out <= ECHO_MAX_AGE or not 0.0 <= held <= out:
        return None
    return out - held


def smoothed(rtt: float | None, sample: float) -> float:
    """The smoothed round trip after `sample`."""
    return sample if rtt is None else rtt + (sample - rtt) * RTT_GAIN


class PeerBeats:
    """One peer's heartbeats as this node takes them, and what this node owes it in its own
    datagrams (an echo, a number, the copies to ask for). Pure: times are the caller's."""

    __slots__ = (
        "differs_since",
        "echoed",
        "heard",
        "heard_at",
        "held",
        "interval",
        "load",
        "loss",
        "rtt",
        "sent",
        "taken",
        "wanted",
    )

    def __init__(self, interval: float) -> None:
        self.interval = interval  # the peer's heartbeat interval (the mesh's)
        self.heard = 0  # the highest beat number taken, by any path
        self.heard_at = 0.0  # when it came
        self.load: int | None = None  # the tasks it holds, as its latest beat said
        self.rtt: float | None = None  # the smoothed round trip to it, from its echoes
        self.taken: tuple[float, float] | None = None  # its last datagram's `t`, and when
        self.echoed = -math.inf  # the latest `t` of this node's that its datagrams echo
        self.loss = DatagramLoss()  # its datagrams lost on their way here
        self.wanted = COPIES  # the copies of each beat it asks of this node
        self.sent = 0  # the datagrams sent to it
        self.held: tuple[PeerRecord, bytes] | None = None  # its record held here, and digest
        self.differs_since: float | None = None  # since when its beats' `rec` differs

    def record_differs(self, record: PeerRecord, digest: bytes, now: float) -> bool:
        """A beat at `now` says the peer's record has `digest`; this node holds `record`.
        True when this node should ask for the record again: the two have differed for
        `RECORD_DIFFERS_FOR` seconds, and not more often than that while they differ."""
        held = self.held
        if held is None or held[0] is not record:
            held = self.held = (record, record_digest(record))
        if held[1] == digest:
            self.differs_since = None
            return False
        if self.differs_since is None:
            self.differs_since = now
        if now - self.differs_since < RECORD_DIFFERS_FOR:
            return False
        self.differs_since = now  # ask again a while later if that does not mend it
        return True

    def datagram(self, beat: Beat, arrival: float) -> None:
        """Take what only datagrams tell (any copy, not only the first): the `t` to echo, the
        echo of this node's, the datagram's number, the copies asked for."""
        if beat.sent is not None:
            self.taken = (beat.sent, arrival)
        if beat.echo is not None and beat.echo[0] > self.echoed:
            self.echoed = beat.echo[0]
        if beat.datagram is not None:
            self.loss.datagram(beat.datagram, arrival)
        self.wanted = COPIES if beat.want is None else beat.want

    def take(self, beat: Beat, arrival: float) -> bool:
        """A heartbeat by any path, at `arrival`: True if it is the first of its number to come
        (then its load and the round trip its echo measures are taken), False for a copy.
        Raises `ProtocolError` ("jump") for a number further ahead than the time since the last
        one allows (`BEAT_STEP_SLACK`); the first number taken may be any."""
        number, heard = beat.number, self.heard
        if number <= heard:
            return False
        if (
            heard
            and number - heard > BEAT_STEP_SLACK + 2 * (arrival - self.heard_at) / self.interval
        ):
            raise ProtocolError("jump", f"beat {number} after {heard}")
        self.heard, self.heard_at = number, arrival
        if beat.load is not None:
            self.load = beat.load
        if beat.echo is not None:
            sample = round_trip_sample(beat.echo, arrival)
            if sample is not None:
                self.rtt = smoothed(self.rtt, sample)
        return True

    def next_datagram(self, now: float) -> tuple[tuple[float, float] | None, int, int]:
        """The `echo`, `d` and `want` of the next datagram to the peer, sent at `now`."""
        self.sent += 1
        return echo_of(self.taken, now), self.sent, self.loss.want(now)
