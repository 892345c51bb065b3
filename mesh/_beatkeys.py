"""Beat keys: the MACs on a keyed node's heartbeat datagrams. Pure: no IO, no clock.

UDP carries no CURVE, and anyone on the network can send a datagram under any node id from any
address it can spoof. So a keyed node authenticates each datagram with keyed BLAKE2b under a
key for that pair of nodes and that direction: the sender derives it from a secret of its own
and the receiver's id, and hands it to the receiver over their encrypted channel (in its
READY). A datagram whose MAC does not check, or from a node whose key has not arrived yet, is
dropped before it reaches the failure detector. A replayed datagram passes the MAC but carries
an old beat number, which the detector does not count as a sign of life.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Final

#: Bytes of the MAC at the end of a keyed datagram.
MAC_SIZE: Final = 16
#: Bytes of a per-pair key (BLAKE2b's largest).
KEY_SIZE: Final = 32


class BeatKeys:
    """The keys of one node's datagram MACs: those it gives its peers (derived from `secret`,
    32 random bytes chosen at every start) and those its peers gave it."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) != KEY_SIZE:
            raise ValueError(f"a beat secret is {KEY_SIZE} bytes")
        self._secret = secret
        self._given: dict[bytes, bytes] = {}  # peer id -> the key of this node's MACs to it
        self._taken: dict[bytes, bytes] = {}  # peer id -> the key of its MACs to this node

    def given(self, peer_id: bytes) -> bytes:
        """The key this node signs its datagrams to `peer_id` with (and gives it in READY)."""
        key = self._given.get(peer_id)
        if key is None:
            key = self._given[peer_id] = hashlib.blake2b(
                peer_id, key=self._secret, digest_size=KEY_SIZE
            ).digest()
        return key

    def take(self, peer_id: bytes, key: bytes) -> None:
        """`peer_id` signs its datagrams to this node with `key` (from its READY)."""
        self._taken[peer_id] = key

    def knows(self, peer_id: bytes) -> bool:
        """Whether `peer_id` has given this node its key."""
        return peer_id in self._taken

    def forget(self, peer_id: bytes) -> None:
        self._given.pop(peer_id, None)
        self._taken.pop(peer_id, None)

    def sign(self, datagram: bytes, peer_id: bytes) -> bytes:
        """`datagram` with its MAC for `peer_id` appended."""
        return datagram + _mac(self.given(peer_id), datagram)

    def verify(self, sender: bytes, body: bytes, mac: bytes) -> bool:
        """Whether `mac` is `sender`'s MAC of `body` (False if its key is not known yet)."""
        key = self._taken.get(sender)
        return key is not None and hmac.compare_digest(_mac(key, body), mac)


def _mac(key: bytes, data: bytes) -> bytes:
    return hashlib.blake2b(data, key=key, digest_size=MAC_SIZE).digest()
