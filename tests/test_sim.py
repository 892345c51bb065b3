"""The deterministic simulation (mesh._sim): its invariants hold over many seeded fault
schedules, it is deterministic, every kind of fault occurs, and a driver that breaks a node rule
is caught."""

from __future__ import annotations

import pytest

from discovery._peers import PeerState
from mesh._heartbeat import Beat
from mesh._sim import (
    FAULT_KINDS,
    Fault,
    Schedule,
    SimSettings,
    _driver,
    _world,
    count_faults,
    generate,
    run,
)
from mesh._sim.__main__ import main

SEEDS = range(200)


def test_invariants_hold_over_seeds() -> None:
    settings = SimSettings(nodes=6, duration=3.0)
    faults = dict.fromkeys(FAULT_KINDS, 0)
    pushed = 0
    for seed in SEEDS:
        result = run(generate(seed, settings))
        assert result.ok, result.report()
        pushed += result.pushed
        for kind, n in count_faults(result.schedule.faults).items():
            faults[kind] += n
    # Every kind of fault was injected, many times, and work flowed.
    assert min(faults.values()) >= 50, faults
    assert pushed >= len(SEEDS) * 20


def test_same_seed_same_trace() -> None:
    for seed in (3, 8, 41):
        first, second = run(generate(seed, SimSettings())), run(generate(seed, SimSettings()))
        assert first.trace == second.trace
        assert first.events == second.events
    assert run(generate(3, SimSettings())).trace != run(generate(4, SimSettings())).trace


def test_schedule_round_trips_through_json() -> None:
    settings = SimSettings.for_nodes(300, drop=0.05)
    schedule = generate(17, settings)
    assert schedule.faults
    again = Schedule.from_json(schedule.to_json())
    assert again == schedule
    with pytest.raises(ValueError, match="does not fit"):
        Schedule.from_json(
            '{"seed":1,"settings":{"nodes":4},"faults":[{"kind":"crash","at":1,"node":4}]}'
        )
    assert (
        run(generate(5, SimSettings())).trace
        == run(Schedule.from_json(generate(5, SimSettings()).to_json())).trace
    )


def test_each_fault_has_its_effect() -> None:
    """A crash is declared DEAD everywhere; a goodbye removes the node; a partition makes its
    two sides declare each other DEAD and then revive; a long pause likewise."""
    settings = SimSettings(nodes=4, max_faults=0)
    crash = Schedule(1, settings, (Fault("crash", 1.0, 1),))
    world = _world.World(crash)
    assert world.run().ok
    crashed = world.nodes[1].id
    for node in world.nodes:
        if node.index != 1:
            assert node.detector.state(crashed) is _world.Liveness.DEAD
    leave = Schedule(1, settings, (Fault("leave", 1.0, 0),))
    world = _world.World(leave)
    assert world.run().ok
    assert all(world.nodes[0].id not in node.peers for node in world.nodes[1:])
    for fault in (Fault("partition", 1.0, length=1.5, group=(0,)), Fault("pause", 1.0, 2, 1.5)):
        world = _world.World(Schedule(1, settings, (fault,)))
        assert world.run().ok
        spells = {(a, b) for a, b, _, _ in world.dead_spells}
        assert spells, fault  # declared dead while cut off, then revived
        assert not world.dead_since  # and alive again at the end


def test_broken_reclaim_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that forgets a dead worker's tasks without sending them again loses them."""

    def reclaim(self: _driver.SimNode, worker: bytes) -> None:
        self.forget_worker(worker)

    monkeypatch.setattr(_driver.SimNode, "reclaim", reclaim)
    results = [run(generate(seed, SimSettings())) for seed in range(60)]
    caught = [r for r in results if not r.ok]
    assert caught
    assert all(v.kind == "lost" for r in caught for v in r.violations)
    assert f"seed {caught[0].schedule.seed}" in caught[0].report()
    assert '"faults":[' in caught[0].report()


def test_broken_judge_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that never ticks its detector never declares a crashed node DEAD unless a
    disconnect hint does; with the hints held by a partition, the crash goes unnoticed."""
    monkeypatch.setattr(_driver.SimNode, "judge", lambda self, now, planned: None)
    settings = SimSettings(nodes=4, max_faults=0)
    cut = Fault("partition", 0.9, length=0.2, group=(1,))  # holds the crash's hints
    result = run(Schedule(2, settings, (cut, Fault("crash", 1.0, 1))))
    assert {v.kind for v in result.violations} == {"crash-undetected"}


def test_no_revival_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that stops listening to a peer once it is no longer ALIVE keeps a node that
    came back from a partition DEAD: the stall bound catches it."""
    on_heartbeat = _driver.SimNode.on_heartbeat

    def deaf(self: _driver.SimNode, sender: bytes, beat: Beat, arrival: float) -> None:
        peer = self.peers.get(sender)
        if peer is None or peer.state is PeerState.ALIVE:
            on_heartbeat(self, sender, beat, arrival)

    settings = SimSettings(nodes=4, max_faults=0)
    schedule = Schedule(3, settings, (Fault("partition", 1.0, length=1.0, group=(0,)),))
    assert run(schedule).ok
    monkeypatch.setattr(_driver.SimNode, "on_heartbeat", deaf)
    result = run(schedule)
    assert result.violations
    assert {v.kind for v in result.violations} == {"false-dead"}


def test_hint_before_earlier_heartbeats_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that applies a disconnect hint before reading the heartbeats that arrived
    before it lets a stale heartbeat revive the peer and wipe out the hint: the crash is then
    declared later than the detector's evidence allows (fast heartbeats make it show)."""
    schedule = Schedule.from_json(
        '{"seed":5,"settings":{"nodes":8,"jitter":0.002,"detector":'
        '{"heartbeat_interval":0.05,"min_std":0.01}},'
        '"faults":[{"kind":"crash","at":0.797,"node":0}]}'
    )
    assert run(schedule).ok

    def disconnected(self: _driver.SimNode, peer: bytes, now: float) -> None:
        if peer in self.peers:
            self.apply_liveness(self.detector.disconnected(peer, now), now)
            self.reschedule_judge(now)

    monkeypatch.setattr(_driver.SimNode, "disconnected", disconnected)
    assert {v.kind for v in run(schedule).violations} == {"crash-late"}


def test_cli_runs_seeds_and_replays(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--seeds", "5", "--nodes", "5"]) == 0
    out = capsys.readouterr().out
    assert "5 seeds from 0, 5 nodes" in out
    assert "violations: 0 in 0 seeds" in out
    schedule = generate(2, SimSettings(nodes=5))
    assert main(["--replay", schedule.to_json()]) == 0
    replayed = capsys.readouterr().out
    assert main(["--seed", "2", "--nodes", "5"]) == 0
    again = capsys.readouterr().out
    assert _trace(again) == _trace(replayed) == run(schedule).trace


def _trace(out: str) -> str:
    return out.split(" trace ")[1].split()[0]


@pytest.mark.slow
def test_256_nodes_short_schedule() -> None:
    settings = SimSettings.for_nodes(256, duration=1.0, heal=3.0, settle=4.0, tasks_per_pusher=1)
    faults = (
        Fault("partition", 0.3, length=1.2, group=tuple(range(0, 256, 9))),
        Fault("pause", 0.4, 200, 0.8),
        Fault("crash", 0.5, 3),
    )
    result = run(Schedule(7, settings, faults))
    assert result.ok, result.report()
    assert result.pushed > 0
    assert result.heartbeats > 256 * 255  # every node heard every other, more than once
