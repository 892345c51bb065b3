"""The body of HELLO and WELCOME (docs/protocol.md §8): the sender's record, the peers it lists,
and what it takes. Pure: no IO."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from discovery import PeerRecord, RecordError, format_contact, parse_contact

from ._errors import ProtocolError

MAX_PEERS_LISTED: Final = 4096


@dataclass(frozen=True, slots=True)
class Hello:
    """The body of HELLO and WELCOME: the sender's record and the inbox addresses of the peers it
    knows (peer exchange), each ``host:port`` or, for a keyed peer, ``KEY@host:port``."""

    record: PeerRecord
    peers: tuple[str, ...]
    #: The sender accepts BATCH frames in its inbox (the HELLO body's ``"batch": true``).
    batch: bool = False
    #: A HELLO's ``"ask"``: whether the WELCOME is to list the answerer's peers (None: the key
    #: is absent, as from nodes before 0.3, which always want them).
    ask: bool | None = None
    #: The sender answers TICKET (the HELLO body's ``"tickets": true``).
    tickets: bool = False

    def to_wire(self) -> dict[str, Any]:
        body: dict[str, Any] = {"record": self.record.to_wire(), "peers": list(self.peers)}
        if self.batch:
            body["batch"] = True
        if self.ask is not None:
            body["ask"] = self.ask
        if self.tickets:
            body["tickets"] = True
        return body


def parse_record(data: Any) -> PeerRecord:
    try:
        return PeerRecord.from_wire(data)
    except RecordError as exc:
        raise ProtocolError("record", str(exc)) from None


def parse_hello(data: Any) -> Hello:
    if type(data) is not dict or "record" not in data or type(data.get("peers")) is not list:
        raise ProtocolError("malformed", "HELLO body is not {record, peers}")
    peers = data["peers"]
    if len(peers) > MAX_PEERS_LISTED:
        raise ProtocolError("oversized", f"more than {MAX_PEERS_LISTED} peers listed")
    contacts = []
    for contact in peers:
        if type(contact) is not str:
            raise ProtocolError("malformed", "a listed peer address is not a string")
        try:
            contacts.append(format_contact(*parse_contact(contact)))
        except ValueError as exc:
            raise ProtocolError("malformed", str(exc)) from None
    ask = data.get("ask")
    return Hello(
        parse_record(data["record"]),
        tuple(contacts),
        data.get("batch") is True,
        ask if type(ask) is bool else None,
        data.get("tickets") is True,
    )
