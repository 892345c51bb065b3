"""SWIM's protocol machine (mesh/_probing.py): probes, relays, suspicions, rumours, and the PROBE
codec. Exact: literal times, seeded randomness, messages handed between machines by hand."""

from __future__ import annotations

import random

import pytest

from mesh._beatkeys import MAC_SIZE
from mesh._errors import ProtocolError
from mesh._probing import (
    MOST_RUMOURS,
    Change,
    Message,
    Op,
    Prober,
    ProbeSettings,
    Rumour,
    Send,
    probe_body,
    probe_meta,
    read_probe,
)
from mesh._swim import State
from mesh._wire import MAX_DATAGRAM_SIZE, MAX_UINT64, Kind, pack

SETTINGS = ProbeSettings(probe_interval=1.0, probe_timeout=0.5, indirect_probes=2)


def prober(me: str, members: str, seed: int = 1) -> Prober[str]:
    machine: Prober[str] = Prober(me, random.Random(seed), SETTINGS, now=0.0)
    for member in members:
        machine.add(member, 0.0)
    return machine


def first_probe(machine: Prober[str]) -> Send[str]:
    """Tick at the first probe's time: the PING it sends."""
    (ping,) = machine.tick(machine.next_deadline())
    assert ping.message.op is Op.PING
    assert ping.message.target == ping.to
    return ping


def test_a_ping_is_answered_and_the_probe_ends_well() -> None:
    a, b = prober("a", "b"), prober("b", "a")
    ping = first_probe(a)
    start = a.next_deadline() - SETTINGS.probe_timeout
    (ack,) = b.receive("a", ping.message, start + 0.01)
    assert ack == Send("a", Message(Op.ACK, ping.message.seq, "b"))
    assert a.receive("b", ack.message, start + 0.02) == []
    # No probe open: the next deadline is the next probe, a period after this one began.
    assert a.next_deadline() == pytest.approx(start + SETTINGS.probe_interval)
    assert a.changes() == []
    assert a.awareness.score == 0


def test_an_unanswered_probe_asks_relays_then_suspects_and_counts_missing_nacks() -> None:
    a = prober("a", "bcd")
    ping = first_probe(a)
    target = ping.to
    start = a.next_deadline() - SETTINGS.probe_timeout
    *requests, again = a.tick(start + SETTINGS.probe_timeout)
    assert sorted(r.to for r in requests) == sorted(set("bcd") - {target})
    assert {(r.message.op, r.message.seq, r.message.target) for r in requests} == {
        (Op.PING_REQ, ping.message.seq, target)
    }
    assert again == ping  # and once more directly
    # One relay says NACK (it reached us; the target did not answer it), the other is silent;
    # a NACK from a member that was not asked counts for nothing.
    a.receive(requests[0].to, Message(Op.NACK, ping.message.seq, target), start + 0.9)
    a.receive("zz", Message(Op.NACK, ping.message.seq, target), start + 0.9)
    end = start + SETTINGS.probe_timeout + SETTINGS.probe_interval
    assert a.next_deadline() == pytest.approx(end)
    assert a.tick(end - 0.001) == []
    out = a.tick(end)
    assert a.changes() == [Change(target, State.ALIVE, State.SUSPECT, "probe")]
    assert a.awareness.score == 1  # one NACK missing
    assert a.state(target) is State.SUSPECT
    # The suspicion rides the next message a sends.
    rumours = [r for send in out for r in send.message.rumours]
    later = a.tick(a.next_deadline())
    rumours += [r for send in later for r in send.message.rumours]
    assert Rumour(State.SUSPECT, target, 0, "a") in rumours


def test_a_relay_pings_the_target_and_passes_its_answer_back() -> None:
    relay, target = prober("r", "at"), prober("t", "ar")
    (ping,) = relay.receive("a", Message(Op.PING_REQ, 41, "t"), 10.0)
    assert ping.to == "t"
    assert ping.message.op is Op.PING
    (ack,) = target.receive("r", ping.message, 10.1)
    assert relay.receive("t", ack.message, 10.2) == [Send("a", Message(Op.ACK, 41, "t"))]
    # Asked again and not answered: NACK after probe_timeout.
    (ping,) = relay.receive("a", Message(Op.PING_REQ, 42, "t"), 20.0)
    assert nacks(relay.tick(20.49)) == []
    assert nacks(relay.tick(20.5)) == [Send("a", Message(Op.NACK, 42, "t"))]


def nacks(sends: list[Send[str]]) -> list[Send[str]]:
    return [send for send in sends if send.message.op is Op.NACK]


def test_a_relay_refuses_to_probe_itself_the_asker_or_a_stranger() -> None:
    relay = prober("r", "ab")
    assert relay.receive("a", Message(Op.PING_REQ, 1, "r"), 0.0) == []
    assert relay.receive("a", Message(Op.PING_REQ, 1, "a"), 0.0) == []
    assert relay.receive("a", Message(Op.PING_REQ, 1, "zz"), 0.0) == []


def test_a_relayed_ack_counts_only_from_the_target_for_the_right_number() -> None:
    relay = prober("r", "at")
    relay.receive("a", Message(Op.PING_REQ, 7, "t"), 0.0)
    assert relay.receive("a", Message(Op.ACK, 1, "t"), 0.1) == []  # not from the target
    assert relay.receive("t", Message(Op.ACK, 99, "t"), 0.1) == []  # not its number


def test_a_ping_for_another_member_is_not_answered() -> None:
    b = prober("b", "a")
    assert b.receive("a", Message(Op.PING, 1, "c"), 0.0) == []


def test_a_suspicion_of_this_node_is_refuted_with_a_higher_incarnation() -> None:
    b = prober("b", "ac")
    # A probe of a suspect carries the suspicion (buddy system): b refutes at once.
    ping = Message(Op.PING, 3, "b", (Rumour(State.SUSPECT, "b", 1, "a"),))
    (ack,) = b.receive("a", ping, 5.0)
    assert Rumour(State.ALIVE, "b", 2, "b") in ack.message.rumours
    assert b.awareness.score == 1
    # Whoever hears it takes b back.
    a = prober("a", "bc")
    a.receive("c", Message(Op.PING, 1, "a", (Rumour(State.SUSPECT, "b", 1, "c"),)), 5.0)
    assert a.state("b") is State.SUSPECT
    a.receive("b", ack.message, 5.1)
    assert a.state("b") is State.ALIVE
    assert a.changes() == [
        Change("b", State.ALIVE, State.SUSPECT, "rumour"),
        Change("b", State.SUSPECT, State.ALIVE, "rumour"),
    ]


def test_a_suspicion_expires_into_a_death_then_the_member_is_forgotten() -> None:
    a = prober("a", "bcd")
    a.receive("c", Message(Op.PING, 1, "a", (Rumour(State.SUSPECT, "b", 0, "c"),)), 0.0)
    # Four members (a included): the least timeout is 4 periods, the most 24; c's accusation is
    # the first, not a confirmation.
    assert a.next_deadline() <= 24.0
    assert a.tick(23.9) is not None
    assert a.state("b") is State.SUSPECT
    a.tick(24.0)
    assert a.state("b") is State.DEAD
    assert Change("b", State.SUSPECT, State.DEAD, "timeout") in a.changes()
    a.tick(24.0 + SETTINGS.forget_after)
    assert a.state("b") is None
    assert a.changes()[-1] == Change("b", State.DEAD, None, "forgotten")


def test_confirmations_shorten_a_suspicion() -> None:
    a = prober("a", "bcde")
    expiries: list[float] = []
    for accuser in "cde":
        a.receive(
            accuser, Message(Op.ACK, 0, accuser, (Rumour(State.SUSPECT, "b", 0, accuser),)), 0
        )
        expiries.append(a.roster.next_expiry(SETTINGS.probe_interval))
    # c accused first; d confirms once (between the least, 4 periods, and the most, 24), and e
    # a second time: the least.
    assert expiries[0] == pytest.approx(24.0)
    assert 4.0 < expiries[1] < 24.0
    assert expiries[2] == pytest.approx(4.0)


def test_an_accusation_spreads_a_death_without_reporting_it_back() -> None:
    a = prober("a", "bc")
    a.accuse("b", 1.0)
    assert a.state("b") is State.DEAD
    assert a.changes() == []
    sends = a.tick(a.next_deadline())
    assert any(Rumour(State.DEAD, "b", 0, "a") in s.message.rumours for s in sends)


def test_a_rumour_after_a_quiet_spell_is_gossiped_from_now_not_from_the_last_round() -> None:
    # A deadline already past when the node asks for it would look like a tick that ran late,
    # and a late tick is this node's own stall, which gives every peer more time.
    a, b = prober("a", "b"), prober("b", "a")
    while (due := a.next_deadline()) < 5.0:  # probing b, answered: nothing to gossip
        for ping in a.tick(due):
            for ack in b.receive("a", ping.message, due):
                a.receive("b", ack.message, due)
    a.accuse("b", 5.0)
    assert a.next_deadline() == 5.0  # gossip starts now (its last round was due at 0)


def test_rumours_about_strangers_are_dropped() -> None:
    a = prober("a", "b")
    a.receive("b", Message(Op.PING, 1, "a", (Rumour(State.DEAD, "x", 5, "b"),)), 0.0)
    assert a.state("x") is None
    assert a.changes() == []


def test_a_late_tick_fails_no_probe() -> None:
    a = prober("a", "b")
    first_probe(a)
    direct = a.next_deadline()
    assert a.tick(direct + 2.0, lateness=2.0) == []  # stood still: the answer may be queued
    assert a.next_deadline() == pytest.approx(direct + 2.0)


def test_probes_come_one_a_period_whatever_the_mesh() -> None:
    for members in (3, 30, 300):
        a: Prober[int] = Prober(0, random.Random(2), SETTINGS, now=0.0)
        b: dict[int, Prober[int]] = {}
        for member in range(1, members + 1):
            a.add(member, 0.0)
            b[member] = Prober(member, random.Random(member), SETTINGS, now=0.0)
            b[member].add(0, 0.0)
        sent = 0
        now = 0.0
        while now < 100.0:
            now = a.next_deadline()
            for send in a.tick(now):
                sent += 1
                for answer in b[send.to].receive(0, send.message, now + 0.001):
                    a.receive(send.to, answer.message, now + 0.002)
        assert 99 <= sent <= 101  # one PING a second, answered: nothing else


def test_settings_out_of_range_are_value_errors() -> None:
    with pytest.raises(ValueError, match="positive"):
        ProbeSettings(probe_interval=0.0)
    with pytest.raises(ValueError, match="rumours_per_message"):
        ProbeSettings(rumours_per_message=MOST_RUMOURS + 1)
    with pytest.raises(ValueError, match="negative"):
        ProbeSettings(indirect_probes=-1)


# -- the wire --------------------------------------------------------------------------------------

A, B = bytes(range(16)), bytes(range(1, 17))


def test_a_probe_round_trips_through_its_meta_and_body() -> None:
    message = Message(
        Op.PING_REQ, 9, B, (Rumour(State.SUSPECT, B, 3, A), Rumour(State.ALIVE, A, 1, A))
    )
    assert read_probe(tuple(probe_meta(message)), probe_body(message)) == message


def test_a_probe_with_the_most_rumours_fits_a_datagram_with_its_mac() -> None:
    # Every number at its widest, every rumour with an accuser: what a full PROBE can take.
    rumours = tuple(Rumour(State.SUSPECT, B, MAX_UINT64, A) for _ in range(MOST_RUMOURS))
    message = Message(Op.PING_REQ, MAX_UINT64, B, rumours)
    envelope = pack(Kind.PROBE, A, MAX_UINT64, probe_meta(message), probe_body(message))
    assert len(envelope) + MAC_SIZE <= MAX_DATAGRAM_SIZE
    assert ProbeSettings().rumours_per_message <= MOST_RUMOURS


@pytest.mark.parametrize(
    ("meta", "body"),
    [
        ((9, 1, A), []),  # no such op
        ((1, 1, b"short"), []),  # not an id
        ((1, 1, A), {}),  # rumours not an array
        ((1, 1, A), [[0, A, 1, A]] * (MOST_RUMOURS + 1)),  # too many
        ((1, 1, A), [[7, A, 1, A]]),  # no such state
        ((1, 1, A), [[0, A, -1, A]]),  # incarnation out of range
        ((1, 1, A), [[0, A, 1]]),  # not four
        ((1, 1, A), [[0, "id", 1, A]]),  # member not bytes
    ],
)
def test_a_malformed_probe_is_a_protocol_error(meta: tuple[object, ...], body: object) -> None:
    with pytest.raises(ProtocolError):
        read_probe(meta, body)
