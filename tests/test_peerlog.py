"""The operator's log lines about peers, exactly: text and structured fields, from literal
transitions and times (the node's wiring of them is checked in test_liveness.py)."""

from __future__ import annotations

import pytest

from mesh._detector import Liveness, Transition
from mesh._peerlog import joined, left, state_changed

from .conftest import make_record

NODE_ID = bytes(range(16))
RECORD = make_record(NODE_ID, name="worker-2", services=frozenset({"resize", "thumbnail"}))
FIELDS = {
    "peer_id": NODE_ID.hex(),
    "peer_name": "worker-2",
    "peer_address": "127.0.0.1:5001",
}


def test_joined() -> None:
    line = joined(RECORD)
    assert line.message == (
        "worker-2 joined: at 127.0.0.1:5001, id 00010203, offers resize, thumbnail"
    )
    assert line.fields == {**FIELDS, "peer_state": "alive", "reason": "joined"}
    assert joined(make_record(NODE_ID, services=frozenset())).message == (
        "node-a joined: at 127.0.0.1:5001, id 00010203"
    )


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("goodbye", "worker-2 left: said goodbye"),
        ("dead", "worker-2 left: dead too long, forgotten"),
        ("replaced", "worker-2 left: a new node took its address"),
        ("something new", "worker-2 left: something new"),
    ],
)
def test_left(reason: str, message: str) -> None:
    line = left(RECORD, reason)
    assert line.message == message
    assert line.fields == {**FIELDS, "peer_state": "left", "reason": reason}


@pytest.mark.parametrize(
    ("transition", "message", "silence"),
    [
        (
            Transition(NODE_ID, Liveness.ALIVE, Liveness.SUSPECT, "phi", 8.04, 10.0),
            "worker-2 suspect: no heartbeat for 0.46 s (phi 8.0)",
            0.46,
        ),
        (
            Transition(NODE_ID, Liveness.SUSPECT, Liveness.DEAD, "phi", 36.21, 10.0),
            "worker-2 dead: no heartbeat for 0.46 s (phi 36.2)",
            0.46,
        ),
        (
            Transition(NODE_ID, Liveness.ALIVE, Liveness.SUSPECT, "disconnect", 0.04, 10.44),
            "worker-2 suspect: its connection dropped, no heartbeat for 0.02 s (phi 0.0)",
            0.02,
        ),
        (
            Transition(NODE_ID, Liveness.SUSPECT, Liveness.DEAD, "refused", 0.05, 10.44),
            "worker-2 dead: its connection dropped and nothing listens at its heartbeat port"
            " any more, no heartbeat for 0.02 s",
            0.02,
        ),
        (
            Transition(NODE_ID, Liveness.DEAD, Liveness.ALIVE, "heartbeat", 60.5, 9.16),
            "worker-2 alive again: a heartbeat after 1.30 s of silence (was dead)",
            1.3,
        ),
    ],
)
def test_state_changes_carry_their_evidence(
    transition: Transition, message: str, silence: float
) -> None:
    line = state_changed(RECORD, transition, now=10.46)
    assert line is not None
    assert line.message == message
    assert line.fields.pop("silence") == pytest.approx(silence)
    assert line.fields == {
        **FIELDS,
        "peer_state": transition.new.value,
        "reason": transition.reason,
        "phi": transition.phi,
    }


@pytest.mark.parametrize(
    "transition",
    [
        Transition(NODE_ID, None, Liveness.ALIVE, "joined", None, None),  # `joined` says it
        Transition(NODE_ID, None, Liveness.ALIVE, "heartbeat", None, None),
        Transition(NODE_ID, Liveness.ALIVE, Liveness.LEFT, "goodbye", 0.1, 1.0),  # `left` does
        Transition(NODE_ID, Liveness.DEAD, Liveness.FORGOTTEN, "forgotten", 99.0, 1.0),
    ],
)
def test_changes_reported_elsewhere_make_no_line(transition: Transition) -> None:
    assert state_changed(RECORD, transition, now=2.0) is None
