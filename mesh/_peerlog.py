"""What a node tells its operator about its peers: one log line per membership or liveness
change, with the evidence, and the same facts as structured fields. Pure: no IO, no clock.

Rules:

* Joined, left, suspect, dead and alive again are each one INFO line, named by the peer's name,
  saying why ("worker-2 dead: no heartbeat for 0.69 s (phi 36.2)"). `mesh-cli -v` shows them.
* Every line carries the same facts as `LogRecord` attributes (passed as ``extra=``), so a JSON
  log formatter can use them without parsing the text: `peer_id` (32 hex digits), `peer_name`,
  `peer_address`, `peer_state` (what the peer is now: joined peers are "alive", left ones
  "left"), `reason` (the detector's or the goodbye's word: "joined", "heartbeat", "phi",
  "disconnect", "refused", "goodbye", "dead", "replaced", "crowded out", "key no longer
  allowed"), and where known the evidence:
  `silence` (seconds since its last heartbeat) and `phi`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from discovery import PeerRecord

from ._detector import Liveness, Transition


@dataclass(frozen=True, slots=True)
class PeerLogLine:
    """One line for the log: `message` (already formatted: no %-arguments) and `fields`, the
    `extra=` of the record."""

    message: str
    fields: dict[str, Any]


def joined(record: PeerRecord) -> PeerLogLine:
    """`record`'s node joined this node's mesh view."""
    services = ", ".join(sorted(record.services))
    offers = f", offers {services}" if services else ""
    message = f"{record.name} joined: at {record.address}, id {record.id_hex[:8]}{offers}"
    return PeerLogLine(message, _fields(record, "alive", "joined"))


def left(record: PeerRecord, reason: str) -> PeerLogLine:
    """`record`'s node is no longer a peer, for `reason` ("goodbye", "dead": forgotten after
    being dead for `DetectorSettings.forget_after`, "replaced": a new node at its address,
    "crowded out": it had not said READY when a full node needed its place)."""
    why = _LEFT_BECAUSE.get(reason, reason)
    return PeerLogLine(f"{record.name} left: {why}", _fields(record, "left", reason))


def state_changed(record: PeerRecord, transition: Transition, now: float) -> PeerLogLine | None:
    """The line for a liveness change of a known peer at `now`, or None for changes that are
    not news (a peer's first sign of life, which `joined` reports; a goodbye or its being
    forgotten, which `left` reports)."""
    if transition.old is None or transition.new in (Liveness.LEFT, Liveness.FORGOTTEN):
        return None
    silence = None if transition.last_heard is None else max(0.0, now - transition.last_heard)
    phi = transition.phi
    quiet = "no heartbeat" if silence is None else f"no heartbeat for {silence:.2f} s"
    evidence = "" if phi is None else f" (phi {phi:.1f})"
    state = transition.new.value
    if transition.new is Liveness.ALIVE:
        gap = "" if silence is None else f" after {silence:.2f} s of silence"
        message = f"{record.name} alive again: a heartbeat{gap} (was {transition.old.value})"
    elif transition.reason == "disconnect":
        message = f"{record.name} {state}: its connection dropped, {quiet}{evidence}"
    elif transition.reason == "refused":
        message = (
            f"{record.name} {state}: its connection dropped and nothing listens at its "
            f"heartbeat port any more, {quiet}"
        )
    else:
        message = f"{record.name} {state}: {quiet}{evidence}"
    fields = _fields(record, state, transition.reason)
    fields["silence"] = silence
    fields["phi"] = phi
    return PeerLogLine(message, fields)


_LEFT_BECAUSE = {
    "goodbye": "said goodbye",
    "dead": "dead too long, forgotten",
    "replaced": "a new node took its address",
    "crowded out": "it had not said READY, and a new node needed its place",
}


def _fields(record: PeerRecord, state: str, reason: str) -> dict[str, Any]:
    return {
        "peer_id": record.id_hex,
        "peer_name": record.name,
        "peer_address": record.address,
        "peer_state": state,
        "reason": reason,
    }
