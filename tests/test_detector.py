"""The failure detector (mesh/_detector.py): phi accrual, states, hints, own pauses. Pure."""

from __future__ import annotations

import math
import random

import pytest

from mesh._detector import DetectorSettings, FailureDetector, Liveness, Transition

A = b"\xaa" * 16
B = b"\xbb" * 16
C = b"\xcc" * 16

ALIVE, SUSPECT, DEAD = Liveness.ALIVE, Liveness.SUSPECT, Liveness.DEAD
LEFT, FORGOTTEN = Liveness.LEFT, Liveness.FORGOTTEN

# With the defaults, a peer beating every 0.2 s is SUSPECT this long after its last heartbeat,
# and DEAD this long after it: 0.2 + y * 0.05, where Akka's formula reaches phi 8 at y = 5.226
# and phi 36 at y = 9.837 deviations.
SUSPECT_AFTER = 0.46129933
DEAD_AFTER = 0.69186406
HAIR = 1e-9


def beat(detector: FailureDetector, peer: bytes, start: float, count: int) -> float:
    """`count` heartbeats from `peer` every 0.2 s from `start`; returns the last one's time."""
    for i in range(count):
        detector.heartbeat(peer, start + i * 0.2)
    return start + (count - 1) * 0.2


def tick_until(detector: FailureDetector, until: float) -> list[Transition]:
    """Tick at every deadline up to `until`, as the node's loop does; each tick must change
    something, or the loop would spin."""
    moved: list[Transition] = []
    while (deadline := detector.next_deadline()) is not None and deadline <= until:
        changed = detector.tick(deadline)
        assert changed, f"a tick at next_deadline() = {deadline!r} changed nothing"
        moved.extend(changed)
    return moved


def run(detector: FailureDetector, arrivals: list[tuple[float, bytes]]) -> list[Transition]:
    """Take in heartbeats in time order, ticking at the deadlines in between."""
    moved: list[Transition] = []
    for now, peer in sorted(arrivals):
        moved.extend(tick_until(detector, now))
        moved.extend(detector.heartbeat(peer, now))
    return moved


def due(detector: FailureDetector) -> float:
    deadline = detector.next_deadline()
    assert deadline is not None
    return deadline


def changes(moved: list[Transition]) -> list[tuple[bytes, Liveness | None, Liveness, str]]:
    return [(t.peer, t.old, t.new, t.reason) for t in moved]


# Settings


def test_default_settings() -> None:
    settings = DetectorSettings()
    assert (settings.heartbeat_interval, settings.phi_suspect, settings.phi_dead) == (0.2, 8, 36)
    assert (settings.min_std, settings.window, settings.acceptable_pause) == (0.05, 100, 0.0)
    assert (settings.forget_after, settings.pause_threshold) == (30.0, 0.1)
    assert (settings.first_heartbeat_grace, settings.stall_memory) == (2.0, 2.0)
    assert settings.stall_threshold == 0.02


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("heartbeat_interval", 0.0),
        ("heartbeat_interval", math.inf),
        ("phi_suspect", 0.0),
        ("phi_suspect", -1.0),
        ("phi_dead", 7.9),
        ("phi_dead", math.nan),
        ("min_std", 0.0),
        ("window", 1),
        ("acceptable_pause", -0.1),
        ("forget_after", -1.0),
        ("pause_threshold", 0.0),
        ("first_heartbeat_grace", -0.5),
        ("stall_threshold", -0.01),
        ("stall_memory", -0.1),
        ("stall_memory", math.inf),
    ],
)
def test_settings_out_of_range(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        DetectorSettings(**{field: value})  # type: ignore[arg-type]


def test_phi_dead_may_equal_phi_suspect() -> None:
    detector = FailureDetector(DetectorSettings(phi_suspect=8, phi_dead=8))
    detector.heartbeat(A, 0.0)
    assert due(detector) == pytest.approx(SUSPECT_AFTER)
    assert changes(detector.tick(due(detector))) == [
        (A, ALIVE, SUSPECT, "phi"),
        (A, SUSPECT, DEAD, "phi"),
    ]


# Phi


def test_first_heartbeat_starts_tracking() -> None:
    detector = FailureDetector()
    assert A not in detector
    assert detector.state(A) is None
    assert detector.next_deadline() is None
    assert detector.heartbeat(A, 5.0) == [Transition(A, None, ALIVE, "heartbeat", None, None)]
    assert detector.heartbeat(A, 5.2) == []
    assert A in detector
    assert len(detector) == 1
    assert detector.state(A) is ALIVE


def test_a_joined_peer_has_the_grace_for_its_first_heartbeat() -> None:
    detector = FailureDetector()
    assert detector.joined(A, 3.0) == [Transition(A, None, ALIVE, "joined", None, None)]
    assert detector.state(A) is ALIVE
    assert due(detector) == pytest.approx(3.0 + 2.0 + SUSPECT_AFTER, abs=1e-6)
    assert tick_until(detector, 4.9) == []
    assert detector.heartbeat(A, 4.9) == []  # no transition: it was never in doubt
    # From its first heartbeat on it is judged as any peer: the 1.9 s it took is no interval.
    assert due(detector) == pytest.approx(4.9 + SUSPECT_AFTER, abs=1e-6)
    last = beat(detector, A, 5.1, 10)
    assert due(detector) == pytest.approx(last + SUSPECT_AFTER, abs=1e-6)


def test_a_joined_peer_that_never_beats_is_declared_dead_after_the_grace() -> None:
    detector = FailureDetector()
    detector.joined(A, 0.0)
    suspect_at = due(detector)
    assert changes(detector.tick(suspect_at)) == [(A, ALIVE, SUSPECT, "phi")]
    dead_at = due(detector)
    assert changes(detector.tick(dead_at)) == [(A, SUSPECT, DEAD, "phi")]
    assert suspect_at == pytest.approx(2.0 + SUSPECT_AFTER, abs=1e-6)
    assert dead_at == pytest.approx(2.0 + DEAD_AFTER, abs=1e-6)
    assert changes(detector.heartbeat(A, 3.0)) == [(A, DEAD, ALIVE, "heartbeat")]


def test_a_peer_wired_ends_the_grace() -> None:
    detector = FailureDetector()
    detector.joined(A, 1.0)
    detector.wired(A, 1.3)  # it joined this node in turn: its heartbeats start now
    assert due(detector) == pytest.approx(1.3 + SUSPECT_AFTER, abs=1e-6)
    assert changes(detector.disconnected(A, 1.4)) == [(A, ALIVE, SUSPECT, "disconnect")]
    dead_at = due(detector)  # killed: dead when it would have become suspect
    assert dead_at == pytest.approx(1.3 + SUSPECT_AFTER, abs=1e-6)
    assert changes(detector.tick(dead_at)) == [(A, SUSPECT, DEAD, "disconnect")]
    # Once heartbeats come, `wired` changes nothing.
    last = beat(detector, B, 0.0, 3)
    detector.wired(B, last + 0.1)
    assert detector.deadline(B) == pytest.approx(last + SUSPECT_AFTER, abs=1e-6)


def test_joining_again_changes_nothing_for_a_tracked_peer() -> None:
    detector = FailureDetector(DetectorSettings(first_heartbeat_grace=0.0))
    last = beat(detector, A, 0.0, 3)
    assert detector.joined(A, last + 0.1) == []
    assert due(detector) == pytest.approx(last + SUSPECT_AFTER, abs=1e-6)
    detector.joined(B, 1.0)  # with no grace, judged as if it had sent a heartbeat on joining
    assert detector.deadline(B) == pytest.approx(1.0 + SUSPECT_AFTER, abs=1e-6)


def test_phi_of_a_regular_peer() -> None:
    detector = FailureDetector()
    beat(detector, A, 0.0, 6)  # last at 1.0; mean 0.2, deviation at its 0.05 floor
    assert detector.phi(A, 1.0) == pytest.approx(0.0, abs=1e-5)
    assert detector.phi(A, 1.2) == pytest.approx(math.log10(2))  # at the mean: even odds
    assert detector.phi(A, 1.0 + SUSPECT_AFTER) == pytest.approx(8.0, abs=1e-6)
    assert detector.phi(A, 1.0 + DEAD_AFTER) == pytest.approx(36.0, abs=1e-6)
    samples = [detector.phi(A, 1.0 + k * 0.01) for k in range(200)]
    assert samples == sorted(samples)


def test_phi_does_not_overflow() -> None:
    detector = FailureDetector()
    detector.heartbeat(A, 0.0)
    assert detector.phi(A, -1e6) == 0.0
    assert 1e3 < detector.phi(A, 10.0) < math.inf
    assert detector.phi(A, 1e300) == math.inf
    with pytest.raises(KeyError):
        detector.phi(B, 0.0)


# Detection times


def test_detection_times_at_the_defaults() -> None:
    """The figure to quote: a silent peer is SUSPECT 0.461 s and DEAD 0.692 s after its last
    heartbeat, under the 1 s target."""
    detector = FailureDetector()
    last = beat(detector, A, 0.0, 51)  # 10.0
    suspect_at = due(detector)
    assert changes(detector.tick(suspect_at)) == [(A, ALIVE, SUSPECT, "phi")]
    dead_at = due(detector)
    [died] = detector.tick(dead_at)
    assert (died.old, died.new, died.reason, died.last_heard) == (SUSPECT, DEAD, "phi", last)
    assert died.phi == pytest.approx(36.0)
    print(f"suspect {suspect_at - last:.4f} s, dead {dead_at - last:.4f} s after the last beat")
    assert suspect_at - last == pytest.approx(SUSPECT_AFTER, abs=1e-6)
    assert dead_at - last == pytest.approx(DEAD_AFTER, abs=1e-6)
    assert dead_at < 11.0


def test_a_new_peer_is_judged_by_the_heartbeat_interval() -> None:
    detector = FailureDetector()
    detector.heartbeat(A, 3.0)
    assert detector.next_deadline() == pytest.approx(3.0 + SUSPECT_AFTER, abs=1e-6)
    slow = FailureDetector(DetectorSettings(heartbeat_interval=1.0))
    slow.heartbeat(A, 3.0)
    # mean 1.0, deviation a quarter of it (0.25): 5.226 deviations past the mean
    assert slow.next_deadline() == pytest.approx(3.0 + 1.0 + 5.225987 * 0.25, abs=1e-5)


def test_acceptable_pause_lengthens_the_mean() -> None:
    detector = FailureDetector(DetectorSettings(acceptable_pause=0.3))
    detector.heartbeat(A, 0.0)
    assert detector.next_deadline() == pytest.approx(0.3 + SUSPECT_AFTER, abs=1e-6)


def test_regular_peer_with_20ms_jitter_stays_alive() -> None:
    rng = random.Random(4)
    detector = FailureDetector()
    arrivals = [(i * 0.2 + rng.uniform(-0.02, 0.02), A) for i in range(3000)]
    assert changes(run(detector, arrivals)) == [(A, None, ALIVE, "heartbeat")]
    last = arrivals[-1][0]
    # Such jitter stays under the deviation's floor: the figures are those of a metronome.
    assert detector.next_deadline() == pytest.approx(last + SUSPECT_AFTER, abs=2e-3)
    moved = tick_until(detector, last + 1.0)
    assert [t.new for t in moved] == [SUSPECT, DEAD]


def detection_times(jitter: float, seed: int) -> tuple[float, float]:
    """A peer beats every 0.2 s, each heartbeat delayed by an exponential random delay of mean
    `jitter` (so its deviation is `jitter` too), in order as TCP delivers them; then it stops.
    Returns how long after its last heartbeat it is SUSPECT and DEAD."""
    rng = random.Random(seed)
    detector = FailureDetector()
    last = 0.0
    for i in range(500):
        last = max(last, i * 0.2 + (rng.expovariate(1 / jitter) if jitter else 0.0))
        detector.heartbeat(A, last)
    suspect_at = due(detector)
    assert changes(detector.tick(suspect_at)) == [(A, ALIVE, SUSPECT, "phi")]
    return suspect_at - last, due(detector) - last


def test_detection_time_grows_with_jitter() -> None:
    none, ten, fifty = (detection_times(jitter, seed=1) for jitter in (0.0, 0.01, 0.05))
    print(f"jitter 0: {none}, 10 ms: {ten}, 50 ms: {fifty}")
    assert none == pytest.approx((SUSPECT_AFTER, DEAD_AFTER), abs=1e-6)
    assert ten == pytest.approx(none, abs=1e-3)  # 10 ms is under the floor
    assert fifty == pytest.approx((0.5412, 0.8424), abs=1e-3)  # intervals deviate by ~70 ms
    assert fifty[0] > none[0] + 0.05
    assert fifty[1] > none[1] + 0.1
    assert fifty[1] < 1.0


def test_no_false_suspicion_over_10000_heartbeats_per_peer() -> None:
    """5 peers, each heartbeat off by up to 30 ms either way and one in 50 a further 100 ms
    late (in order): not one suspicion at the defaults."""
    rng = random.Random(2024)
    arrivals = []
    for n, peer in enumerate([A, B, C, b"\xdd" * 16, b"\xee" * 16]):
        last = 0.0
        for i in range(10_000):
            delay = rng.uniform(-0.03, 0.03) + (0.1 if rng.random() < 0.02 else 0.0)
            last = max(last, n * 0.037 + i * 0.2 + delay)
            arrivals.append((last, peer))
    detector = FailureDetector()
    moved = run(detector, arrivals)
    assert [t for t in moved if t.old is not None] == []
    assert [t.new for t in moved] == [ALIVE] * 5


# next_deadline


@pytest.mark.parametrize("seed", range(20))
def test_next_deadline_is_exact(seed: int) -> None:
    """A tick at next_deadline() changes the state; a tick a hair before does not."""
    rng = random.Random(seed)
    detector = FailureDetector()
    now = rng.uniform(0.0, 1e5)
    for _ in range(rng.randrange(1, 150)):
        now += rng.uniform(0.0, 0.4)
        detector.heartbeat(A, now)
    for threshold, new in ((8.0, SUSPECT), (36.0, DEAD)):
        deadline = due(detector)
        assert detector.phi(A, deadline - HAIR) < threshold <= detector.phi(A, deadline)
        assert detector.tick(deadline - HAIR) == []
        assert [t.new for t in detector.tick(deadline)] == [new]
    dead_since = detector.snapshot(deadline)[A].since
    assert detector.next_deadline() == dead_since + 30.0


def test_next_deadline_is_the_earliest_peer() -> None:
    detector = FailureDetector()
    detector.heartbeat(A, 1.0)
    detector.heartbeat(B, 1.1)
    assert detector.next_deadline() == pytest.approx(1.0 + SUSPECT_AFTER, abs=1e-6)
    detector.heartbeat(A, 1.2)
    assert detector.next_deadline() == pytest.approx(1.1 + SUSPECT_AFTER, abs=1e-6)
    detector.left(B, 1.3)
    assert detector.next_deadline() == pytest.approx(1.2 + SUSPECT_AFTER, abs=1e-6)
    detector.left(A, 1.4)
    assert detector.next_deadline() is None


# Transitions


def test_suspect_peer_revived_by_a_heartbeat() -> None:
    detector = FailureDetector()
    beat(detector, A, 0.0, 6)  # last at 1.0
    assert changes(detector.tick(1.5)) == [(A, ALIVE, SUSPECT, "phi")]
    [revived] = detector.heartbeat(A, 1.52)
    assert (revived.old, revived.new, revived.reason, revived.last_heard) == (
        SUSPECT,
        ALIVE,
        "heartbeat",
        1.0,
    )
    assert 8.0 < (revived.phi or 0) < 36.0
    assert (
        1.52 + SUSPECT_AFTER + 0.1 < due(detector) < 1.52 + 1.0
    )  # the late beat widened the spread


def test_dead_peer_revived_by_a_heartbeat() -> None:
    detector = FailureDetector()
    beat(detector, A, 0.0, 6)
    assert [t.new for t in detector.tick(3.0)] == [SUSPECT, DEAD]
    [revived] = detector.heartbeat(A, 4.0)
    assert (revived.old, revived.new, revived.reason, revived.last_heard) == (
        DEAD,
        ALIVE,
        "heartbeat",
        1.0,
    )
    assert detector.state(A) is ALIVE


def test_a_long_gap_does_not_blunt_detection_afterwards() -> None:
    """A peer stopped for 3 s (SIGSTOP) and revived is still found dead fast next time: the
    3 s interval counts only as long as it took to die (0.692 s). In full it would have put the
    window's deviation at 0.28 s and suspicion 1.68 s after the last heartbeat."""
    detector = FailureDetector()
    beat(detector, A, 0.0, 51)  # to 10.0
    assert [t.new for t in tick_until(detector, 13.0)] == [SUSPECT, DEAD]
    last = beat(detector, A, 13.0, 51)  # to 23.0
    suspect_at = due(detector)
    detector.tick(suspect_at)
    dead_at = due(detector)
    # 99 intervals of 0.2 s and one of 0.692 s: mean 0.2049 s, deviation 0.049 s (floored to 0.05)
    assert suspect_at - last == pytest.approx(0.2049 + SUSPECT_AFTER - 0.2, abs=1e-4)
    assert dead_at - last == pytest.approx(0.2049 + DEAD_AFTER - 0.2, abs=1e-4)


def test_dead_peer_forgotten_after_forget_after() -> None:
    detector = FailureDetector()
    detector.heartbeat(A, 0.0)
    assert [t.new for t in detector.tick(1.0)] == [SUSPECT, DEAD]
    assert detector.next_deadline() == 31.0
    assert detector.tick(31.0 - HAIR) == []
    [forgotten] = detector.tick(31.0)
    assert (forgotten.old, forgotten.new, forgotten.reason) == (DEAD, FORGOTTEN, "forgotten")
    assert forgotten.last_heard == 0.0
    assert detector.next_deadline() is None


def test_forgotten_and_left_are_final_until_removed() -> None:
    detector = FailureDetector()
    detector.heartbeat(A, 0.0)
    detector.tick(1.0)
    detector.tick(31.0)
    detector.heartbeat(B, 0.0)
    assert changes(detector.left(B, 0.1)) == [(B, ALIVE, LEFT, "goodbye")]
    for peer, state in ((A, FORGOTTEN), (B, LEFT)):
        assert detector.heartbeat(peer, 40.0) == []
        assert detector.disconnected(peer, 40.0) == []
        assert detector.left(peer, 40.0) == []
        assert detector.tick(40.0) == []
        assert detector.state(peer) is state
        detector.remove(peer)
        assert peer not in detector
        assert changes(detector.heartbeat(peer, 41.0)) == [(peer, None, ALIVE, "heartbeat")]
    detector.remove(C)  # unknown: ignored


def test_goodbye_from_any_live_state() -> None:
    detector = FailureDetector()
    for peer in (A, B, C):
        detector.heartbeat(peer, 0.0)
    detector.disconnected(B, 0.1)
    detector.tick(1.0)  # A and C dead; B was disconnected, dead too
    detector.heartbeat(C, 1.1)
    assert [(t.old, t.new) for t in detector.left(A, 1.2)] == [(DEAD, LEFT)]
    assert [(t.old, t.new) for t in detector.left(C, 1.2)] == [(ALIVE, LEFT)]
    assert detector.left(b"unknown", 1.2) == []


def test_disconnect_makes_a_peer_suspect_at_once_and_a_heartbeat_revives_it() -> None:
    detector = FailureDetector()
    last = beat(detector, A, 0.0, 6)  # 1.0
    [hint] = detector.disconnected(A, 1.05)
    assert (hint.old, hint.new, hint.reason, hint.last_heard) == (
        ALIVE,
        SUSPECT,
        "disconnect",
        last,
    )
    assert detector.disconnected(A, 1.06) == []
    assert changes(detector.heartbeat(A, 1.2)) == [(A, SUSPECT, ALIVE, "heartbeat")]
    # revived, it is judged by phi alone again: suspect, not dead, when phi reaches 8
    assert due(detector) == pytest.approx(1.2 + SUSPECT_AFTER, abs=1e-6)
    assert changes(detector.tick(due(detector))) == [(A, ALIVE, SUSPECT, "phi")]


def test_a_heartbeat_read_late_counts_from_its_arrival_but_not_before_the_last_verdict() -> None:
    # The node reads datagrams once a beat and dates each by its kernel arrival time.
    detector = FailureDetector()
    beat(detector, A, 0.0, 6)  # last at 1.0
    detector.heartbeat(A, 1.19)  # arrived at 1.19, read at 1.2 or later: phi counts from 1.19
    assert due(detector) == pytest.approx(1.19 + SUSPECT_AFTER, abs=0.02)
    # A disconnect made it suspect at 1.3; a heartbeat that arrived at 1.25 is read after that.
    [hint] = detector.disconnected(A, 1.3)
    assert hint.new is SUSPECT
    [revived] = detector.heartbeat(A, 1.25)
    assert (revived.old, revived.new) == (SUSPECT, ALIVE)
    assert detector.snapshot(1.3)[A].since == 1.3  # not back in time, before the verdict


def test_a_refusal_kills_a_disconnected_peer_at_once_and_nothing_else() -> None:
    detector = FailureDetector()
    last = beat(detector, A, 0.0, 6)  # 1.0
    beat(detector, B, 0.0, 6)
    # Alone (it may be forged: unauthenticated ICMP), a refusal changes nothing.
    assert detector.refused(A, 1.02) == []
    assert detector.refused(b"unknown", 1.02) == []
    detector.disconnected(A, 1.05)
    [died] = detector.refused(A, 1.06)
    assert (died.old, died.new, died.reason, died.last_heard) == (SUSPECT, DEAD, "refused", last)
    assert detector.refused(A, 1.07) == []  # dead already
    # A heartbeat after the disconnect says the process is there: a refusal then means nothing.
    detector.disconnected(B, 1.05)
    detector.heartbeat(B, 1.1)
    assert detector.refused(B, 1.12) == []
    assert detector.state(B) is ALIVE
    # A peer that left stays left.
    detector.heartbeat(C, 1.0)
    detector.disconnected(C, 1.1)
    detector.left(C, 1.1)
    assert detector.refused(C, 1.11) == []


def test_disconnected_peer_dies_when_it_would_have_become_suspect() -> None:
    detector = FailureDetector()
    last = beat(detector, A, 0.0, 6)  # 1.0
    detector.disconnected(A, 1.05)
    dead_at = due(detector)
    assert dead_at == pytest.approx(last + SUSPECT_AFTER, abs=1e-6)
    assert detector.tick(dead_at - HAIR) == []
    [died] = detector.tick(dead_at)
    assert (died.old, died.new, died.reason) == (SUSPECT, DEAD, "disconnect")
    assert died.phi == pytest.approx(8.0)


def test_disconnect_of_a_late_suspect_kills_it_at_once() -> None:
    detector = FailureDetector()
    beat(detector, A, 0.0, 6)
    detector.tick(1.5)
    assert changes(detector.disconnected(A, 1.5)) == [(A, SUSPECT, DEAD, "disconnect")]
    assert detector.disconnected(B, 1.5) == []  # unknown peer: nothing


# Own pauses


def pause_scene(heartbeats_first: bool) -> tuple[FailureDetector, list[Transition]]:
    """A, B and C beat every 0.2 s; C stops after 9.8. This node's loop stalls from 10.0 to
    12.0: A's heartbeats of 10.2 .. 12.0 and B's of 10.2 .. 10.6 (B stops then) queue up and are
    all read at 12.0, before or after the tick that was due at 10.26 (C's suspicion) runs."""
    detector = FailureDetector()
    arrivals = [(i * 0.2, peer) for i in range(51) for peer in (A, B)]
    arrivals += [(i * 0.2, C) for i in range(50)]
    moved = run(detector, arrivals)
    planned = due(detector)
    assert planned == pytest.approx(9.8 + SUSPECT_AFTER, abs=1e-6)
    queued = [A] * 10 + [B] * 3
    if heartbeats_first:
        for peer in queued:
            moved += detector.heartbeat(peer, 12.0)
    moved += detector.tick(12.0, lateness=12.0 - planned)
    if not heartbeats_first:
        for peer in queued:
            moved += detector.heartbeat(peer, 12.0)
    return detector, moved


@pytest.mark.parametrize("heartbeats_first", [False, True])
def test_a_pause_of_our_own_accuses_nobody(heartbeats_first: bool) -> None:
    detector, moved = pause_scene(heartbeats_first)
    assert [t for t in moved if t.old is not None] == []
    # C, silent since before the pause, is suspected one heartbeat interval later, and dead
    # when its silence less the 1.74 s the stall gave every peer reaches 0.692 s ...
    assert detector.next_deadline() == pytest.approx(12.2)
    assert detector.tick(12.2 - HAIR) == []
    assert changes(detector.tick(12.2)) == [(C, ALIVE, SUSPECT, "phi")]
    assert due(detector) == pytest.approx(9.8 + DEAD_AFTER + (12.0 - (9.8 + SUSPECT_AFTER)))
    assert changes(detector.tick(due(detector))) == [(C, SUSPECT, DEAD, "phi")]
    # ... B, which stopped during the pause, is found dead within a second of its queued
    # heartbeats, and A, which beat on throughout, is never accused.
    moved = run(detector, [(12.0 + i * 0.2, A) for i in range(1, 50)])
    assert [(t.peer, t.new) for t in moved] == [(B, SUSPECT), (B, DEAD)]
    # B's queued beats gave it intervals of 0.692 s (its 2 s, as long as it takes to die), 0 and
    # 0: a wider spread, so it would die 0.96 s after them rather than 0.692 s. But the stall
    # is remembered for 2 s (`stall_memory`), and until then every peer has 1.74 s more: B dies
    # as the stall is forgotten.
    assert detector.snapshot(22.0)[B].since == 14.0


def test_lateness_up_to_the_threshold_is_no_pause() -> None:
    for lateness, judged in ((0.1, True), (0.1000001, False)):
        detector = FailureDetector()
        detector.heartbeat(A, 0.0)
        moved = detector.tick(1.0, lateness=lateness)
        assert bool(moved) is judged
        if not judged:
            assert detector.next_deadline() == 1.2
            assert detector.tick(1.1) == []  # on time now, but still within the grace
            assert [t.new for t in detector.tick(1.2)] == [SUSPECT, DEAD]


def test_a_disconnect_during_the_grace_suspects_but_does_not_kill() -> None:
    detector = FailureDetector()
    detector.heartbeat(A, 0.0)
    detector.tick(1.0, lateness=0.9)
    assert changes(detector.disconnected(A, 1.0)) == [(A, ALIVE, SUSPECT, "disconnect")]
    # Disconnected, it dies when phi reaches phi_suspect, with 0.9 s more for our stall: past
    # the grace (1.2).
    assert detector.next_deadline() == pytest.approx(SUSPECT_AFTER + 0.9)
    assert changes(detector.tick(due(detector))) == [(A, SUSPECT, DEAD, "disconnect")]


def test_a_stall_of_ours_gives_every_peer_as_much_more_for_a_while() -> None:
    detector = FailureDetector()
    last = beat(detector, A, 0.0, 6)  # 1.0
    detector.lagged(1.1, 0.3)  # not a tick: a timer of the node's, say its heartbeat loop's
    assert due(detector) == pytest.approx(last + SUSPECT_AFTER + 0.3)
    assert detector.tick(due(detector) - HAIR) == []
    assert changes(detector.tick(due(detector))) == [(A, ALIVE, SUSPECT, "phi")]
    assert due(detector) == pytest.approx(last + DEAD_AFTER + 0.3)
    assert changes(detector.tick(due(detector))) == [(A, SUSPECT, DEAD, "phi")]


def test_lateness_up_to_the_stall_threshold_gives_peers_nothing() -> None:
    for lateness, more in ((0.02, 0.0), (0.03, 0.03)):
        detector = FailureDetector()
        last = beat(detector, A, 0.0, 6)
        detector.lagged(1.1, lateness)
        assert due(detector) == pytest.approx(last + SUSPECT_AFTER + more)


def test_a_stall_remembered_for_no_time_changes_nothing() -> None:
    detector = FailureDetector(DetectorSettings(stall_memory=0.0))
    last = beat(detector, A, 0.0, 6)
    detector.lagged(1.1, 0.3)
    assert due(detector) == pytest.approx(last + SUSPECT_AFTER)


def test_a_stall_is_forgotten_after_stall_memory() -> None:
    detector = FailureDetector(DetectorSettings(stall_memory=1.0))
    last = beat(detector, A, 0.0, 6)  # 1.0: SUSPECT at 1.46, DEAD at 1.56 without a stall
    detector.lagged(1.0, 0.9)  # 0.9 s more until 2.0: later than the stall is remembered
    assert due(detector) == 2.0
    assert detector.tick(2.0 - HAIR) == []
    assert changes(detector.tick(2.0)) == [(A, ALIVE, SUSPECT, "phi"), (A, SUSPECT, DEAD, "phi")]
    assert detector.snapshot(2.0)[A].last_heard == last


def test_stalls_add_up_and_each_is_counted_once() -> None:
    detector = FailureDetector(DetectorSettings(stall_memory=1.0))
    last = beat(detector, A, 0.0, 9)  # 1.6: SUSPECT at 2.06 without a stall
    detector.lagged(1.0, 0.5)  # still from 0.5 to 1.0, remembered until 2.0
    detector.tick(1.0, lateness=0.4)  # the same stall, seen by another timer: adds nothing
    detector.lagged(1.5, 0.2)  # still from 1.3 to 1.5
    detector.lagged(1.6, 0.3)  # from 1.3 to 1.6: one stretch with the last, until 2.6
    # Not due before 2.0 (2.06 + 0.8 is past it), then 0.3 s more until 2.6.
    assert due(detector) == pytest.approx(last + SUSPECT_AFTER + 0.3)
    assert changes(detector.tick(due(detector))) == [(A, ALIVE, SUSPECT, "phi")]
    assert due(detector) == pytest.approx(last + DEAD_AFTER + 0.3)
    assert changes(detector.tick(due(detector))) == [(A, SUSPECT, DEAD, "phi")]


def test_a_stall_seen_late_by_one_timer_counts_whole_after_another_saw_its_end() -> None:
    # The judge ticks 30 ms late, then the heartbeat loop, overdue since before, wakes 0.3 s
    # late: one stretch of 0.3 s, not 0.03 s and what is left after it.
    detector = FailureDetector()
    last = beat(detector, A, 0.0, 6)
    detector.tick(1.1, lateness=0.03)
    detector.lagged(1.101, 0.3)
    assert due(detector) == pytest.approx(last + SUSPECT_AFTER + 0.3)


def test_a_deadline_waits_for_the_stall_that_covers_it_to_be_forgotten() -> None:
    detector = FailureDetector(DetectorSettings(stall_memory=1.0))
    beat(detector, A, 0.0, 9)  # 1.6: SUSPECT at 2.06 and DEAD at 2.16 without a stall
    detector.lagged(1.0, 0.5)  # 0.5 s more until 2.0
    detector.lagged(1.6, 0.6)  # 0.6 s more (1.0 to 1.6) until 2.6, so 1.1 s more until 2.0
    # SUSPECT at 2.06 + 0.6 while the second stall is remembered: past 2.6. So both verdicts
    # come as it is forgotten.
    assert due(detector) == 2.6
    assert detector.tick(2.6 - HAIR) == []
    assert changes(detector.tick(2.6)) == [(A, ALIVE, SUSPECT, "phi"), (A, SUSPECT, DEAD, "phi")]


def test_a_late_tick_is_remembered_as_a_stall() -> None:
    detector = FailureDetector()
    last = beat(detector, A, 0.0, 6)  # 1.0: SUSPECT at 1.46 without a stall
    assert detector.tick(1.2, lateness=0.3) == []  # planned at 0.9: the grace holds until 1.4
    assert due(detector) == pytest.approx(last + SUSPECT_AFTER + 0.3)  # past the grace


# Views


def test_snapshot_and_repr() -> None:
    detector = FailureDetector()
    assert repr(detector) == "<FailureDetector peers=0>"
    detector.heartbeat(A, 0.0)
    detector.heartbeat(B, 0.0)
    detector.heartbeat(C, 0.0)
    detector.tick(0.5)
    detector.heartbeat(B, 0.6)
    detector.left(C, 0.6)
    snapshot = detector.snapshot(0.7)
    assert {peer: status.state for peer, status in snapshot.items()} == {
        A: SUSPECT,
        B: ALIVE,
        C: LEFT,
    }
    assert (snapshot[A].since, snapshot[A].last_heard) == (0.5, 0.0)
    assert snapshot[A].phi == detector.phi(A, 0.7) > 8.0
    assert repr(detector) == "<FailureDetector peers=1 alive, 1 suspect, 1 left>"


def test_a_peers_own_deadline_is_the_one_next_deadline_waits_for() -> None:
    detector = FailureDetector()
    detector.heartbeat(b"a", now=0.0)
    detector.heartbeat(b"b", now=0.1)
    assert detector.next_deadline() == detector.deadline(b"a") < detector.deadline(b"b")
    detector.heartbeat(b"a", now=0.2)  # heard again: its deadline moves later
    assert detector.next_deadline() == detector.deadline(b"b") < detector.deadline(b"a")
    with pytest.raises(KeyError):
        detector.deadline(b"c")
