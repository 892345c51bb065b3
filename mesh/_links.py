"""Links: one PUSH socket per peer inbox this node sends to, each with its bounded `Outbox` and
its owner task.

Rules:

* A link is opened for an inbox address on first use (a HELLO to a seed, a peer joining) and
  closed when the node stops needing it (a peer gone, an announced node that never answered). Its
  PUSH has `IMMEDIATE` (messages wait in this node's outbox, never in a pipe to a peer that is not
  there) and reconnects with back-off up to 2 s.
* Each link's owner task runs its outbox (the only task that touches the PUSH socket). A link
  has no monitor of its own: a peer's crash drops every connection to it at once, and the
  events SUB's monitor reports the one to its PUB (mesh/_events.py), which saves two ZeroMQ
  sockets (the monitor and its pair) and two descriptors a peer.
* Messages to one link leave in the order they were sent, each numbered by the link (`next_seq`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final

import trio
import zmq

from discovery import parse_address, tcp_endpoint

from ._ratelimit import RateLimitedLog
from ._wire import Kind, pack
from ._zmq import AsyncSocket, Outbox, ZmqSocket

#: Most seconds a PUSH waits between reconnection attempts (milliseconds for ZeroMQ).
_RECONNECT_IVL_MAX_MS: Final = 2000


class Link:
    """The PUSH socket, outbox and owner task for one peer inbox."""

    __slots__ = ("address", "outbox", "scope", "seq")

    def __init__(self, address: str, outbox: Outbox) -> None:
        self.address = address
        self.outbox = outbox
        self.scope = trio.CancelScope()
        self.seq = 0

    def close(self, linger: int) -> None:
        self.outbox.socket.close(linger=linger)

    def next_seq(self) -> int:
        self.seq += 1
        return self.seq


class Links(Mapping[str, Link]):
    """The open links, by inbox address (``host:port``); a read-only mapping."""

    def __init__(
        self,
        make_socket: Callable[[int, bool], ZmqSocket],
        node_id: bytes,
        *,
        queue: int,
        on_room: Callable[[], None],
        max_links: int,
        log: RateLimitedLog,
        server_key: Callable[[str], str | None] | None = None,
    ) -> None:
        self._make_socket = make_socket
        self._server_key = server_key
        self._id = node_id
        self._max_links = max_links
        self._log = log
        self._queue = queue
        self._on_room = on_room
        self._links: dict[str, Link] = {}
        #: The link at an inbox address, or None: the dict's own `get`, a call of C rather than
        #: of Python on every task sent and every ack.
        self.find: Callable[[str], Link | None] = self._links.get
        self._nursery: trio.Nursery | None = None
        self._closed_bytes_sent = 0

    def __getitem__(self, address: str) -> Link:
        return self._links[address]

    # `in` straight from the dict: `Mapping`'s calls `__getitem__`.
    def __contains__(self, address: object) -> bool:
        return address in self._links

    def __iter__(self) -> Iterator[str]:
        return iter(self._links)

    def __len__(self) -> int:
        return len(self._links)

    @property
    def bytes_sent(self) -> int:
        """Bytes sent on every link, closed ones included."""
        return self._closed_bytes_sent + sum(
            link.outbox.bytes_sent for link in self._links.values()
        )

    def start(self, nursery: trio.Nursery) -> None:
        """Links opened from now on run their tasks in `nursery`."""
        self._nursery = nursery

    def open(self, address: str, key: str | None = None) -> Link | None:
        """The link to the inbox at `address`, opened if it is not yet. A keyed node's links
        are CURVE clients: the server's `key`, or the one `server_key` knows for `address`;
        without one the link is not opened (None; logged where the key was missing)."""
        link = self._links.get(address)
        if link is not None:
            return link
        if self._server_key is not None:
            key = key or self._server_key(address)
            if key is None:
                return None
        host, port = parse_address(address)
        push = self._make_socket(zmq.PUSH, ":" in host)
        if key is not None:
            push.setsockopt(zmq.CURVE_SERVERKEY, key.encode())
        push.setsockopt(zmq.IMMEDIATE, 1)  # queue here, not in a pipe to a peer that is not there
        push.setsockopt(zmq.RECONNECT_IVL_MAX, _RECONNECT_IVL_MAX_MS)
        link = Link(address, Outbox(AsyncSocket(push), self._queue, self._on_room))
        self._links[address] = link  # (before connecting: closed with the rest if that fails)
        push.connect(tcp_endpoint(host, port))
        assert self._nursery is not None, "links are opened only once the node runs"
        self._nursery.start_soon(self._run, link)
        return link

    def close(self, address: str) -> None:
        """Close the link to `address`, if open, dropping what its outbox still holds."""
        link = self._links.pop(address, None)
        if link is not None:
            self._closed_bytes_sent += link.outbox.bytes_sent
            link.scope.cancel()
            link.outbox.discard()
            link.close(linger=0)

    def close_all(self, linger: int) -> None:
        """Close every link's sockets, giving each `linger` milliseconds to send what it holds."""
        for link in self._links.values():
            self._closed_bytes_sent += link.outbox.bytes_sent
            link.close(linger)
        self._links.clear()

    def send(self, address: str, kind: Kind, meta: list[Any] | None, body: Any) -> bool:
        """Queue a message from this node on the link to `address` (opened if need be) if its
        outbox has room; else drop it, log that (at a bounded rate) and return False. A link is
        opened here only while fewer than `max_links` are open: links to peers are opened by
        `open`, whatever the number (the peers are counted apart), and this is how every other
        address is reached first."""
        link = self._links.get(address)
        if link is None:
            if len(self._links) >= self._max_links:
                self._log.warning(
                    "link-limit",
                    trio.current_time(),
                    "%d links open, all this node may have: dropped a %s message to %s",
                    len(self._links),
                    kind.name,
                    address,
                )
                return False
            link = self.open(address)
            if link is None:
                return False
        if not link.outbox.has_room():
            self._log.warning(
                "outbox-full",
                trio.current_time(),
                "outbox to %s is full; dropped a %s message",
                address,
                kind.name,
            )
            return False
        sent = link.outbox.send_nowait(pack(kind, self._id, link.next_seq(), meta, body))
        assert sent
        return True

    async def _run(self, link: Link) -> None:
        with link.scope:
            await link.outbox.run()
