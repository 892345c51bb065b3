"""What a node knows of each peer, and how peers leave and are forgotten (mesh/_sessions.py).
Pure: literal times, a goodbye wait of 2 s."""

from __future__ import annotations

from mesh._sessions import Sessions

A, B, C = b"a" * 16, b"b" * 16, b"c" * 16


def test_a_session_opens_fresh_and_is_gone_when_the_peer_goes() -> None:
    sessions = Sessions(2.0)
    session = sessions.open(A)
    assert (session.reason, session.ready, session.greeting, session.batching) == (
        "joined",
        False,
        False,
        False,
    )
    session.ready, session.reason = True, "silent 0.8 s"
    assert sessions.is_ready(A)
    assert sessions.reason(A) == "silent 0.8 s"
    sessions.close(A)
    assert sessions.get(A) is None
    assert not sessions.is_ready(A)
    assert sessions.reason(A) == "joined"
    assert not sessions.open(A).ready  # back: nothing of before
    assert list(sessions) == [A]


def test_a_goodbye_on_the_pub_sets_a_deadline_once() -> None:
    sessions = Sessions(2.0)
    sessions.open(A)
    sessions.open(B)
    assert not sessions.leaving(A)
    assert sessions.said_goodbye(A, 10.0) == 12.0
    assert sessions.leaving(A)
    assert sessions.said_goodbye(A, 11.0) is None  # already leaving: the first deadline holds
    assert sessions.said_goodbye(C, 11.0) is None  # not a peer
    assert sessions.said_goodbye(B, 11.5) == 13.5
    assert sessions.overdue(11.9) == []
    assert sessions.overdue(12.0) == [A]
    assert sessions.overdue(14.0) == [A, B]
    assert sessions.leaving_peers == {A, B}
    sessions.close(A)  # its inbox goodbye came first, or it was removed
    assert sessions.overdue(14.0) == [B]
    assert not sessions.leaving(A)
    assert sessions.leaving_peers == {B}
    sessions.forgot(B, "b:1")
    assert sessions.leaving_peers == set()


def test_a_forgotten_peer_is_greeted_again_once_when_it_is_heard() -> None:
    sessions = Sessions(2.0)
    sessions.open(A)
    sessions.forgot(A, "127.0.0.1:6001")
    assert sessions.get(A) is None
    assert sessions.returned(B) is None
    assert sessions.returned(A) == "127.0.0.1:6001"
    assert sessions.returned(A) is None


def test_a_peer_that_joins_again_is_not_a_forgotten_one() -> None:
    sessions = Sessions(2.0)
    sessions.forgot(A, "127.0.0.1:6001")
    sessions.open(A)  # it came back by HELLO
    assert sessions.returned(A) is None


def test_only_the_newest_forgotten_addresses_are_kept() -> None:
    sessions = Sessions(2.0, kept=2)
    sessions.forgot(A, "a:1")
    sessions.forgot(B, "b:1")
    sessions.forgot(A, "a:2")  # forgotten again: now the newest
    sessions.forgot(C, "c:1")
    assert sessions.returned(B) is None
    assert sessions.returned(A) == "a:2"
    assert sessions.returned(C) == "c:1"


def test_the_oldest_peer_not_ready_is_the_one_to_crowd_out() -> None:
    sessions = Sessions(2.0)
    assert sessions.oldest_unready() is None
    sessions.open(A).ready = True
    sessions.open(B)
    sessions.open(C)
    assert sessions.oldest_unready() == B
    sessions.get(B).ready = True  # type: ignore[union-attr]
    assert sessions.oldest_unready() == C
    sessions.close(C)
    assert sessions.oldest_unready() is None
