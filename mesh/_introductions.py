"""Introductions: where a node says HELLO besides to the peers its peers tell it of.

Rules:

* Each seed is said HELLO once at the start, delivered whenever that node is up, and again every
  `SEED_REGREET_INTERVAL` while no peer is known at its address (unless the last HELLO has not
  even left, as when nothing listens there yet). A partition longer than the time to forget a
  peer leaves both sides without the other, and neither sends the other anything after that;
  the seeds the user vouched for are what a node can always try again. A HELLO costs one message.
* Every node of this mesh that mDNS announces, and that is not a peer, is said HELLO. mDNS alone
  never makes a peer (the HELLO exchange does), nor unmakes one: an mDNS goodbye is
  unauthenticated multicast that anyone on the link could send, so for a known peer it means
  nothing, and for an announced node that never answered it closes the link. So does
  `Settings.connect_timeout` without an answer; a seed's link is kept.
* The addresses a peer lists in its HELLO or WELCOME are a hint, not a to-do list: they are
  said HELLO `TRIED_AT_ONCE` at a time, oldest first, each given `Settings.connect_timeout` to
  answer before its link is closed and the next is tried; at most `HEARD_KEPT` wait their
  turn, and more are ignored (they are heard of again from other peers). A HELLO listing
  thousands of addresses costs a few links at a time, not a link (a socket and a connection) each.
* Only a first contact (a seed, and `Node.connect`) exchanges peer lists; HELLOs to nodes
  announced or heard of list none and ask for none, so a node joining a mesh of N costs each
  member a small HELLO, not a list of N. Two nodes that joined through different seeds at once
  may be on neither's list: so every `PEER_EXCHANGE_INTERVAL` or so (at random, from half to
  one and a half times it) a node exchanges lists with one peer at random (memberlist's
  push-pull, at its 30 s), which does not greet it again.
* A keyed node says HELLO only where it knows the node's key (a seed or peer list entry
  ``KEY@host:port``, an announcement's TXT) and that key is allowed (`learn`).
* This node's own record is advertised on mDNS, again whenever it changes.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from typing import Final

import trio

from discovery import Announced, Mdns, PeerMap, PeerRecord, Refused, parse_contact

from ._links import Links
from ._ratelimit import RateLimitedLog

#: Seconds between HELLOs to a seed at whose address no peer is known.
SEED_REGREET_INTERVAL: Final = 5.0

#: Mean seconds between two exchanges of peer lists with a peer at random.
PEER_EXCHANGE_INTERVAL: Final = 30.0
#: How many addresses heard of from peers are said HELLO at once, at most.
TRIED_AT_ONCE: Final = 16
#: How many addresses heard of from peers wait their turn, at most.
HEARD_KEPT: Final = 4096

#: Says HELLO to the inbox at an address (`again`: even if a link there is open already; `ask`:
#: exchanging peer lists).
Introduce = Callable[[str, bool, bool], None]
#: Takes in the key given for an address; False if it cannot be reached so (`Members.learn`).
Learn = Callable[[str, "str | None"], bool]


class Introductions:
    """Seeds and mDNS for one node (see the module's rules)."""

    def __init__(
        self,
        record: Callable[[], PeerRecord],
        peers: PeerMap,
        peers_changed: trio.lowlevel.ParkingLot,
        links: Links,
        introduce: Introduce,
        reach: Callable[[PeerRecord], str],
        *,
        connect_timeout: float,
        log: RateLimitedLog,
        learn: Learn | None = None,
    ) -> None:
        self._record = record
        self._peers = peers
        self._changed = peers_changed  # unparked at every change of the peers, and here
        self._links = links
        self._introduce = introduce
        self._reach = reach  # a peer's inbox address
        self._rng = random.Random()
        self._connect_timeout = connect_timeout
        self._log = log
        self._learn: Learn = learn or (lambda address, key: True)
        self._seeds: set[str] = set()
        self._announced: dict[bytes, str] = {}  # node id -> inbox address, as mDNS announced
        self._heard: dict[str, None] = {}  # addresses heard of, not tried yet, oldest first
        self._trying: dict[str, float] = {}  # addresses said HELLO -> when to give up on them
        self._mdns: Mdns | None = None
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery, seeds: Iterable[str]) -> None:
        """Say HELLO to each seed, and again now and then while it is not a peer."""
        self._nursery = nursery
        for seed in seeds:
            address, key = parse_contact(seed)
            if address not in self._record().addresses and self._learn(address, key):
                self._seeds.add(address)
                self._introduce(address, False, True)
        if self._seeds:
            nursery.start_soon(self._greet_absent_seeds)
        nursery.start_soon(self._try_heard)
        nursery.start_soon(self._exchange_peers)

    def discover(self, mdns: Mdns) -> None:
        """Greet the nodes `mdns` announces, and keep this node's advertisement up to date."""
        assert self._nursery is not None, "introductions start before discovery"
        self._mdns = mdns
        self._nursery.start_soon(self._serve_discovery, mdns)

    def advertise(self, record: PeerRecord) -> None:
        """This node's record changed: advertise it again (if on mDNS)."""
        if self._mdns is not None and self._nursery is not None:
            self._nursery.start_soon(self._mdns.advertise, record)

    def heard_of(self, contacts: Iterable[str]) -> None:
        """A peer listed these inbox addresses (its peers, ``[KEY@]host:port``, checked): say
        HELLO to those that are not peers yet, a few at a time (see the module's rules)."""
        own = self._record().addresses
        added = False
        for contact in contacts:
            if len(self._heard) >= HEARD_KEPT:
                break
            address, key = parse_contact(contact)
            if (
                address not in own
                and address not in self._trying
                and address not in self._heard
                and self._peers.by_address(address) is None
                and self._learn(address, key)
            ):
                self._heard[address] = None
                added = True
        if added:
            self._changed.unpark_all()

    async def _try_heard(self) -> None:
        """Say HELLO to the addresses heard of, `TRIED_AT_ONCE` at a time: one whose node
        joins, or that has not answered in `connect_timeout`, makes room for the next."""
        heard, trying = self._heard, self._trying
        while True:
            now = trio.current_time()
            for address, give_up_at in list(trying.items()):
                if self._peers.by_address(address) is not None:
                    del trying[address]
                elif give_up_at <= now:
                    del trying[address]
                    self._forget_link_without_peer(address)
            while heard and len(trying) < TRIED_AT_ONCE:
                address = next(iter(heard))
                del heard[address]
                if self._peers.by_address(address) is None:
                    self._introduce(address, False, False)
                    trying[address] = now + self._connect_timeout
            with trio.move_on_at(min(trying.values(), default=math.inf)):
                await self._changed.park()

    async def _greet_absent_seeds(self) -> None:
        while True:
            await trio.sleep(SEED_REGREET_INTERVAL)
            for address in sorted(self._seeds):
                if self._peers.by_address(address) is not None:
                    continue
                link = self._links.find(address)
                if link is not None and len(link.outbox):
                    continue  # the last HELLO has not left: nothing listens there yet
                self._introduce(address, True, True)

    async def _exchange_peers(self) -> None:
        """Now and then, exchange peer lists with one peer at random: a node that joined at the
        same time as another, through another seed, learns of it so (greetings list no peers
        but a first contact's: protocol.md §8)."""
        while True:
            await trio.sleep(self._rng.uniform(0.5, 1.5) * PEER_EXCHANGE_INTERVAL)
            peers = list(self._peers)
            if peers:
                self._introduce(self._reach(self._rng.choice(peers).record), True, True)

    async def _serve_discovery(self, mdns: Mdns) -> None:
        async with trio.open_nursery() as nursery:
            async for event in mdns.events:
                if isinstance(event, Announced):
                    announcement = event.announcement
                    record = self._record()
                    if (
                        announcement.mesh == record.mesh
                        and announcement.id != record.id
                        and announcement.address not in record.addresses
                        and announcement.id not in self._peers
                        and self._learn(announcement.address, announcement.public_key)
                    ):
                        self._announced[announcement.id] = announcement.address
                        self._introduce(announcement.address, True, False)
                        nursery.start_soon(self._forget_if_unanswered, announcement.address)
                elif isinstance(event, Refused):
                    self._log.warning(
                        "mdns-refused",
                        trio.current_time(),
                        "ignoring an mDNS announcement (%s): %s",
                        event.name,
                        event.reason,
                    )
                elif event.node_id is not None:
                    address = self._announced.pop(event.node_id, None)
                    if address is not None:
                        self._forget_link_without_peer(address)

    async def _forget_if_unanswered(self, address: str) -> None:
        await trio.sleep(self._connect_timeout)
        self._forget_link_without_peer(address)

    def _forget_link_without_peer(self, address: str) -> None:
        if address not in self._seeds and self._peers.by_address(address) is None:
            self._links.close(address)
