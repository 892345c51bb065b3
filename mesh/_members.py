"""Members: who may be a peer of a keyed node, and how that is enforced.

Rules:

* A keyed node speaks CurveZMQ on every ZeroMQ socket. Its bound sockets (PUB, inbox) are CURVE
  servers: a connection is accepted only if the ZAP handler here says its client key is allowed
  (this node's own key always is: nodes sharing a key pair hold the same secret). Its connecting
  sockets (each link's PUSH, the SUBs) are CURVE clients that connect only to a server whose
  key is allowed and known beforehand: from a record, an mDNS announcement, a seed or peer list
  written ``KEY@host:port``. A node that cannot be reached keyed is not reached at all.
* ZeroMQ stamps each message of an accepted connection with the key that authenticated it
  (``User-Id``). A peer's id is bound to the key its record carries, and its record to the key
  of the connection that brought it: an inbox message whose sender id is not bound to that key
  is an impostor's, dropped and counted (`bound`).
* The ZAP handler is a trio task on the node's own context (no thread): handshakes wait for the
  node's scheduler, like everything else it does.
* A reloaded allow list that no longer holds a peer's key drops that peer; its connections are
  cut by binding the listening sockets anew (`Node.reload_allow`).
* A key whose connections keep sending bad frames (more than `OFFENCE_BURST` at once, or
  `OFFENCE_RATE` a second for long) is banned for `BAN_SECONDS`: its frames are dropped unread
  and its new connections refused, counted (`senders_banned`) and logged at a bounded rate. A
  member whose frames are only refused stays a peer; its acks do not count meanwhile, so its
  tasks go to other workers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Final

import trio
import zmq
from zmq.utils import z85

from discovery import PeerRecord

from ._errors import ProtocolError
from ._hello import Hello
from ._keys import KeyPair, load_allowed
from ._ratelimit import RateLimitedLog, TokenBucket
from ._wire import Envelope
from ._zmq import AsyncSocket, ZmqSocket

#: Where libzmq asks its ZAP handler (RFC 27), in the node's own context.
ZAP_ENDPOINT: Final = "inproc://zeromq.zap.01"
#: The ZAP domain of a node's bound sockets.
ZAP_DOMAIN: Final = b"mesh"
#: How many addresses heard of with a key are remembered (oldest forgotten first).
CONTACTS_KEPT: Final = 8192
#: Bad frames a key may send at once, and a second for long, before it is banned.
OFFENCE_BURST: Final = 100
OFFENCE_RATE: Final = 10.0
#: Seconds a key that kept breaking the protocol is banned for.
BAN_SECONDS: Final = 30.0

AllowSource = str | os.PathLike[str] | Iterable[str]


def zap_reply(request: list[bytes], allowed: Callable[[str], bool]) -> tuple[list[bytes], str]:
    """The reply to a ZAP request (RFC 27 frames: version, request id, domain, address, identity,
    mechanism, credentials), and the client's key as text ('' if it had none). Only CURVE with an
    allowed key is accepted; the accepted key is the connection's User-Id."""
    if len(request) < 6 or request[0] != b"1.0":
        return [
            b"1.0",
            request[1] if len(request) > 1 else b"",
            b"500",
            b"bad request",
            b"",
            b"",
        ], ""
    request_id, mechanism = request[1], request[5]
    if mechanism != b"CURVE" or len(request) != 7 or len(request[6]) != 32:
        return [b"1.0", request_id, b"400", b"CURVE only", b"", b""], ""
    key = z85.encode(request[6]).decode()
    if not allowed(key):
        return [b"1.0", request_id, b"400", b"key not allowed", b"", b""], key
    return [b"1.0", request_id, b"200", b"OK", key.encode(), b""], key


class Members:
    """A keyed node's key pair, allow list, ZAP handler and the keys of the addresses it knows
    (see the module's rules)."""

    def __init__(
        self,
        context: zmq.Context[Any],
        key: KeyPair,
        allow: AllowSource,
        counts: dict[str, int],
        log: RateLimitedLog,
    ) -> None:
        self.key = key
        self._allow = allow if isinstance(allow, str | os.PathLike) else frozenset(allow)
        self.allowed = load_allowed(self._allow) | {key.public}
        self._counts = counts
        self._log = log
        self._contacts: dict[str, str] = {}  # address -> the key to reach it with
        # Per key (allowed keys only: a key gets here through a handshake, so these are bounded
        # by the allow list): its offences, and until when it is banned.
        self._offences: dict[str, TokenBucket] = {}
        self._banned: dict[str, float] = {}
        #: The key a known peer's id is bound to (its record's), or None: set by the node.
        self.key_of: Callable[[bytes], str | None] = lambda node_id: None
        zap = context.socket(zmq.REP)
        zap.setsockopt(zmq.LINGER, 0)
        zap.bind(ZAP_ENDPOINT)
        self._zap = AsyncSocket(zap)

    def secure_server(self, sock: ZmqSocket) -> None:
        """Make `sock`, about to be bound, a CURVE server that asks this ZAP handler."""
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.key.secret.encode())

    def secure_client(self, sock: ZmqSocket) -> None:
        """Make `sock` a CURVE client (each connection is given its server's key)."""
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.key.public.encode())
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.key.secret.encode())

    def learn(self, address: str, key: str | None) -> bool:
        """Remember that the node at `address` has `key`; False (and logged) if it cannot be
        reached keyed: no key, or one not allowed."""
        if key is None or key not in self.allowed:
            why = "it gave no key" if key is None else f"its key {key} is not allowed"
            self._log.warning(
                "unkeyed",
                trio.current_time(),
                "not reaching %s: %s",
                address,
                why,
            )
            return False
        contacts = self._contacts
        contacts.pop(address, None)
        if len(contacts) >= CONTACTS_KEPT:
            del contacts[next(iter(contacts))]
        contacts[address] = key
        return True

    def key_at(self, address: str) -> str | None:
        """The key to reach `address` with, if one is known and still allowed."""
        key = self._contacts.get(address)
        return key if key is not None and key in self.allowed else None

    def refuses(self, record: PeerRecord) -> str | None:
        """Why a record cannot be a peer's here, or None if it can."""
        if record.public_key is None:
            return "it has no key, and this mesh is keyed"
        if record.public_key not in self.allowed:
            return f"its key {record.public_key} is not allowed"
        return None

    def admits(
        self, frame: zmq.Frame, decode: Callable[[bytes], list[Envelope]], now: float
    ) -> list[Envelope]:
        """The envelopes of an inbox `frame`, if its connection's key (``User-Id``) is not
        banned and every envelope's sender is bound to that key: a known peer's record's key
        (`key_of`, set by the node), or, for a node not known yet, the key in the HELLO or
        WELCOME that introduces it. A key taken off the allow list binds nothing. Raises
        `ProtocolError` (``banned``, ``impostor``, or the decoder's), which counts against the
        key."""
        key = str(frame.get("User-Id"))
        if self.banned(key, now):
            raise ProtocolError("banned", f"a frame from {key}, banned for breaking the protocol")
        try:
            envelopes = decode(frame.bytes)
            if key not in self.allowed:
                raise ProtocolError("revoked", f"a frame from {key}, no longer allowed")
            key_of = self.key_of
            for envelope in envelopes:
                bound_to = key_of(envelope.sender)
                # Not a peer: what it says is a stranger's (and ignored as such), but the record
                # that would make it a peer must carry the key of the connection that brought it.
                body = envelope.body
                if (bound_to is not None and bound_to != key) or (
                    bound_to is None and isinstance(body, Hello) and body.record.public_key != key
                ):
                    raise ProtocolError(
                        "impostor", f"a message under another node's id, from {key}"
                    )
        except ProtocolError:
            self.offended(key, now)
            raise
        return envelopes

    def banned(self, key: str, now: float) -> bool:
        """Whether frames and connections from `key` are refused for now."""
        until = self._banned.get(key)
        if until is None:
            return False
        if until <= now:
            del self._banned[key]
            return False
        return True

    def offended(self, key: str, now: float) -> None:
        """A connection authenticated by `key` sent a bad frame: ban the key if it keeps on."""
        bucket = self._offences.get(key)
        if bucket is None:
            bucket = self._offences[key] = TokenBucket(OFFENCE_RATE, OFFENCE_BURST)
        if not bucket.take(now):
            self._banned[key] = now + BAN_SECONDS
            del self._offences[key]  # a fresh start when the ban ends
            self._counts["senders_banned"] += 1
            self._log.warning(
                "banned",
                now,
                "key %s keeps sending bad frames: refused for %g s",
                key,
                BAN_SECONDS,
            )

    def _admitted(self, key: str) -> bool:
        """Whether a connection authenticated by `key` is accepted now."""
        return key in self.allowed and not self.banned(key, trio.current_time())

    def reload(self) -> frozenset[str]:
        """Read the allow list again; the keys it no longer holds."""
        allowed = load_allowed(self._allow) | {self.key.public}
        removed = self.allowed - allowed
        self.allowed = allowed
        return frozenset(removed)

    async def serve(self) -> None:
        """Answer libzmq's ZAP requests (one at a time: it is a REP socket) until closed."""
        while True:
            try:
                (request,) = await self._zap.receive_multipart_batch(1)
            except trio.ClosedResourceError:
                return
            reply, key = zap_reply(request, self._admitted)
            if reply[2] != b"200":
                self._counts["handshakes_refused"] += 1
                self._log.warning(
                    "zap-refused",
                    trio.current_time(),
                    "refused a connection from %s: %s%s",
                    request[3].decode(errors="replace") if len(request) > 3 else "?",
                    reply[3].decode(),
                    f" ({key})" if key else "",
                )
            await self._zap.send(reply)

    def close(self) -> None:
        self._zap.close()
