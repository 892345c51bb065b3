"""SWIM at scale in the simulation (mesh._sim._swim_world): a run is deterministic, a crash is
known everywhere within the bound SWIM's rules give, a short pause is refuted and kills no one,
and the messages a node sends do not grow with the mesh."""

from __future__ import annotations

import pytest

from mesh._sim.__main__ import main
from mesh._sim._schedule import Fault
from mesh._sim._swim_world import (
    SwimSchedule,
    SwimSettings,
    SwimWorld,
    distribution,
    generate_swim,
    run_swim,
)
from mesh._swim import State, suspicion_timeout


def test_same_seed_same_run() -> None:
    settings = SwimSettings(
        nodes=24, seconds=40, loss=0.1, crashes=2, pauses=2, partitions=1, faults_from=2
    )
    first, second = run_swim(generate_swim(7, settings)), run_swim(generate_swim(7, settings))
    assert first.trace == second.trace
    assert (first.events, first.sent, first.read, first.suspicions, first.detections) == (
        second.events,
        second.sent,
        second.read,
        second.suspicions,
        second.detections,
    )
    assert first.suspicions > 0
    assert len(first.detections) == 2
    assert run_swim(generate_swim(8, settings)).trace != first.trace


def test_schedules_draw_what_they_are_told() -> None:
    settings = SwimSettings(nodes=40, crashes=5, pauses=6, partitions=2)
    schedule = generate_swim(3, settings)
    kinds = [f.kind for f in schedule.faults]
    assert (kinds.count("crash"), kinds.count("pause"), kinds.count("partition")) == (5, 6, 2)
    crashed = {f.node for f in schedule.faults if f.kind == "crash"}
    assert len(crashed) == 5  # each node crashes once at most
    assert not crashed & {f.node for f in schedule.faults if f.kind == "pause"}
    assert all(5.0 <= f.at <= 60.0 for f in schedule.faults)  # the first half of the run
    assert all(1 <= len(f.group) <= 10 for f in schedule.faults if f.kind == "partition")
    assert schedule == generate_swim(3, settings)
    with pytest.raises(ValueError, match="does not fit"):
        SwimSchedule(1, SwimSettings(nodes=4), (Fault("crash", 1.0, 4),))
    with pytest.raises(ValueError, match="two nodes"):
        SwimSettings(nodes=4, crashes=3)


def test_a_crash_is_known_everywhere_within_the_bound() -> None:
    n, crashed, at = 32, 11, 5.0
    settings = SwimSettings(nodes=n, seconds=120)
    probe = settings.probe
    world = SwimWorld(SwimSchedule(3, settings, (Fault("crash", at, crashed),)))
    result = world.run()
    # The bound from the rules alone, with no loss. Each live node probes its members in a
    # shuffled round robin: the crashed one comes up within two rounds of the others (the rest
    # of the round under way, then a whole new one: 2 * (n - 1) probes). Every probe of a live
    # member is answered within the probe timeout (a read on each side waits up to
    # `read_every`, 0.4 s in all), so it takes one probe interval, and no probe fails that
    # would stretch the interval (awareness): the one of the crashed member gets all its
    # NACKs, as a relay's NACK comes back within the indirect window. That probe fails
    # `probe_timeout + probe_interval` after it started, and the node's suspicion becomes a
    # death by the longest suspicion timeout (none confirming it), if gossip has not told it
    # sooner. So each node knows by itself, whatever gossip does.
    bound = (
        2 * (n - 1) * probe.probe_interval
        + probe.probe_timeout
        + probe.probe_interval
        + suspicion_timeout(n, probe.probe_interval, 0)
    )
    assert 99 < bound < 100
    (detection,) = result.detections
    assert detection.node == crashed
    assert detection.at == at
    assert detection.first is not None
    assert detection.everyone is not None
    assert detection.first <= detection.everyone <= bound
    for node in world.nodes:
        if node.index != crashed:
            assert node.prober.state(crashed) in (State.DEAD, None)  # (None: since forgotten)
    assert result.false_suspicions == result.live_deaths == 0


def test_a_short_pause_is_refuted_and_kills_no_one() -> None:
    n, paused = 32, 9
    settings = SwimSettings(nodes=n, seconds=40)
    pause = Fault("pause", 5.0, paused, 3.0)
    # A suspicion of the paused node starts no sooner than its pause (with no loss every probe
    # that started before it was answered), and becomes a death no sooner than the least
    # suspicion timeout later: the node resumes well before, and refutes.
    assert pause.length < suspicion_timeout(n, settings.probe.probe_interval, 2)
    world = SwimWorld(SwimSchedule(1, settings, (pause,)))
    result = world.run()
    assert result.suspicions > 0  # it was suspected while it stood still
    assert world.nodes[paused].prober.roster.incarnation > 0  # and refuted it
    assert result.refutations > 0
    assert result.live_deaths == 0
    assert result.false_suspicions == 0  # every suspicion was of the pause
    for node in world.nodes:
        if node.index != paused:
            assert node.prober.state(paused) is State.ALIVE


def test_no_false_death_under_loss() -> None:
    # (A suspicion heard of and not refuted by half its time is checked by a probe, which the
    # member answers with its incarnation: a refutation's rumour missed costs no death.)
    result = run_swim(generate_swim(0, SwimSettings(nodes=32, seconds=120, loss=0.2)))
    assert result.false_suspicions > 0  # loss alone suspects members that are up...
    assert result.refutations > 0  # ...which refute
    assert result.false_deaths == 0


def test_messages_per_node_do_not_grow_with_the_mesh() -> None:
    small, large = (
        run_swim(generate_swim(1, SwimSettings(nodes=n, seconds=30))).msgs_per_node_second
        for n in (16, 128)
    )
    # A probe and its answer each period: about two messages a node a second, at any size.
    assert 1.5 < small < 2.5
    assert abs(large - small) <= 0.2 * small


def test_reads_when_messages_arrive() -> None:
    # Reading at arrival answers every probe at once: no probe waits on its node's loop.
    settings = SwimSettings(nodes=16, seconds=30, read_every=0.0, crashes=1, faults_from=2)
    result = run_swim(generate_swim(2, settings))
    assert result.false_suspicions == 0
    assert result.failed_probes > 0
    assert result.known_everywhere() is not None


def test_distribution() -> None:
    assert distribution([]) is None
    assert distribution([3.0]) == (3.0, 3.0, 3.0)
    assert distribution([4.0, 1.0, 2.0, 3.0]) == (2.5, 4.0, 4.0)
    median, p99, most = distribution([float(x) for x in range(1, 201)]) or (0, 0, 0)
    assert (median, p99, most) == (100.5, 198.0, 200.0)


def test_cli_prints_a_row_per_size(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["swim", "--nodes", "8,12", "--seconds", "20", "--crashes", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("seed 0, 20 s, loss 0, crashes 1, pauses 4")
    rows = [line.split() for line in lines[-2:]]
    assert [row[0] for row in rows] == ["8", "12"]
    with pytest.raises(SystemExit):
        main(["swim", "--nodes", "1"])
