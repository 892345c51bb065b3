"""What a node knows of each peer beyond its record, and how peers leave and are forgotten. Pure:
no IO, no clock; times are the caller's `now` (seconds).

A peer's session opens when it joins and closes when it goes, whatever the way, so nothing known
of a peer outlives it. The rules for going:

* A goodbye on a peer's PUB may overtake its last acks, which travel on its inbox connection: the
  peer then gets no new work (`leaving`), and goes when its inbox goodbye arrives, or at the
  deadline `said_goodbye` returns (`overdue` names it then), whichever is first.
* A goodbye in the inbox alone proves nothing: anyone can send an inbox message under any id,
  while the PUB is the peer's own. So it is remembered (`goodbye_in_inbox`), and the peer goes
  when its PUB goodbye confirms it, or when its connection drops.
* A peer the failure detector forgets goes, and its inbox address is remembered (the newest
  `kept` of them) so that it can be greeted again if one of its heartbeats arrives (a node that
  was frozen, not dead): `returned` gives the address once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

#: How many forgotten peers' addresses a node remembers, by default.
FORGOTTEN_KEPT: Final = 1024


@dataclass(slots=True)
class Session:
    """What is known of one peer beyond its record."""

    reason: str = "joined"  # why it is in its state, as the failure detector said
    ready: bool = False  # it said READY: this node's subscriptions are live there
    greeting: bool = False  # this node is making its subscriptions live there
    batching: bool = False  # its inbox takes BATCH frames (its HELLO said so)
    tickets: bool = False  # it answers TICKET probes (its HELLO said so)
    leaving_at: float | None = None  # said goodbye on its PUB only: goes at this time
    bye_in_inbox: bool = False  # said goodbye in the inbox, not (yet) on its PUB


class Sessions:
    """The sessions of the known peers, and the addresses of forgotten ones."""

    __slots__ = ("_forgotten", "_goodbye_wait", "_kept", "_sessions", "leaving_peers")

    def __init__(self, goodbye_wait: float, *, kept: int = FORGOTTEN_KEPT) -> None:
        self._goodbye_wait = goodbye_wait
        self._kept = kept
        self._sessions: dict[bytes, Session] = {}
        self._forgotten: dict[bytes, str] = {}  # id -> inbox address, oldest first
        #: The ids of the peers that said goodbye on their PUB and have not gone yet (read it,
        #: never change it: a set, for the check on every task sent).
        self.leaving_peers: set[bytes] = set()

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._sessions)

    def open(self, peer_id: bytes) -> Session:
        """The peer joined: a fresh session (it is not a forgotten one any more)."""
        self._forgotten.pop(peer_id, None)
        session = self._sessions[peer_id] = Session()
        return session

    def get(self, peer_id: bytes) -> Session | None:
        return self._sessions.get(peer_id)

    def close(self, peer_id: bytes) -> None:
        """The peer is gone."""
        self._sessions.pop(peer_id, None)
        self.leaving_peers.discard(peer_id)

    def reason(self, peer_id: bytes) -> str:
        """Why the peer is in its state ("joined" until the detector says otherwise)."""
        session = self._sessions.get(peer_id)
        return "joined" if session is None else session.reason

    def is_ready(self, peer_id: bytes) -> bool:
        session = self._sessions.get(peer_id)
        return session is not None and session.ready

    def oldest_unready(self) -> bytes | None:
        """The peer that joined longest ago of those that have not said READY (a join still
        pending, or a node that said HELLO and nothing since), or None."""
        for peer_id, session in self._sessions.items():
            if not session.ready:
                return peer_id
        return None

    def leaving(self, peer_id: bytes) -> bool:
        """Whether the peer said goodbye on its PUB and has not gone yet."""
        return peer_id in self.leaving_peers

    def said_goodbye(self, peer_id: bytes, now: float) -> float | None:
        """A goodbye came on the peer's PUB at `now`: the time it goes unless its inbox goodbye
        comes first (`now` if that came already); None if it is not a peer or was already
        leaving."""
        session = self._sessions.get(peer_id)
        if session is None or session.leaving_at is not None:
            return None
        session.leaving_at = now if session.bye_in_inbox else now + self._goodbye_wait
        self.leaving_peers.add(peer_id)
        return session.leaving_at

    def goodbye_in_inbox(self, peer_id: bytes) -> bool:
        """A goodbye came in the peer's inbox: True if it goes now (its PUB goodbye came
        already); else False, and it goes when that comes (see the module's rules)."""
        session = self._sessions.get(peer_id)
        if session is None:
            return False
        if session.leaving_at is not None:
            return True
        session.bye_in_inbox = True
        return False

    def overdue(self, now: float) -> list[bytes]:
        """The leaving peers whose time to go has come."""
        return [
            peer_id
            for peer_id, session in self._sessions.items()
            if session.leaving_at is not None and session.leaving_at <= now
        ]

    def forgot(self, peer_id: bytes, address: str) -> None:
        """The detector forgot the peer, last reached at `address` (its session closes)."""
        self.close(peer_id)
        self._forgotten.pop(peer_id, None)
        self._forgotten[peer_id] = address
        while len(self._forgotten) > self._kept:
            del self._forgotten[next(iter(self._forgotten))]

    def returned(self, peer_id: bytes) -> str | None:
        """A heartbeat came from a node that is not a peer: the address to greet it at if it is
        a forgotten one (once), else None."""
        return self._forgotten.pop(peer_id, None)
