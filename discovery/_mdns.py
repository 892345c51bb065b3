"""mDNS/DNS-SD discovery with python-zeroconf, bridged into trio.

How the two worlds meet:

* python-zeroconf runs its own asyncio loop on a thread of its own, and each `ServiceBrowser` has a
  thread too. Its handlers run there and must never touch trio or ZeroMQ: they only hand the
  change to trio with `TrioToken.run_sync_soon` into an unbounded memory channel, which never
  blocks them and never loses a change.
* Blocking calls (`Zeroconf()`, resolving a service, `close()`) run in `trio.to_thread`;
  coroutines that must run on zeroconf's loop (register, update, unregister) are scheduled there
  with `asyncio.run_coroutine_threadsafe`.
* Registration uses `cooperating_responders=True`: no probing (names are node ids, unique by
  construction), so a browser sees a new node within milliseconds instead of 1.2 to 1.7 s.
* Everything binds to the interfaces the node uses (127.0.0.1 by default). Announcements with no
  address on one of those interfaces' networks are refused.
* mDNS is a hint, never proof of life: a crashed node's records stay cached for 18 minutes or more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import AsyncIterator, Coroutine, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any, Final

import trio
from zeroconf import IPVersion, ServiceBrowser, ServiceInfo, ServiceStateChange, Zeroconf

from ._groups import ungrouped
from ._interfaces import device_of, interface_network, network_of
from ._record import PeerRecord, RecordError
from ._txt import SERVICE_TYPE, Announcement, decode_txt, encode_txt, instance_name

logger = logging.getLogger("discovery.mdns")

_RESOLVE_TIMEOUT_MS: Final = 3000
_CLOSE_TIMEOUT: Final = 2.0


@dataclass(frozen=True, slots=True)
class Announced:
    """A node announced itself (or changed its announcement)."""

    announcement: Announcement


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """A node withdrew its announcement (its mDNS goodbye). `node_id` is None when the service
    name was not one of ours."""

    node_id: bytes | None


@dataclass(frozen=True, slots=True)
class Refused:
    """A service of our type was heard but refused (a bad or foreign announcement): `reason`
    says why. Reported so the node can warn, at a bounded rate."""

    name: str
    reason: str


DiscoveryEvent = Announced | Withdrawn | Refused


class Mdns:
    """One node's presence on mDNS: its own advertisement, and what it hears of others.

    Made by `open_mdns`. Read `events` for what is heard; call `update` when the record changes.
    """

    def __init__(self, zc: Zeroconf, hosts: Sequence[str], events: trio.MemoryReceiveChannel[Any]):
        self._zc = zc
        self._networks = [interface_network(host) for host in hosts]
        self.events: trio.MemoryReceiveChannel[DiscoveryEvent] = events
        self._info: ServiceInfo | None = None
        self.refused = 0

    async def advertise(self, record: PeerRecord) -> None:
        """Advertise `record` (again, if it changed). Returns once the records are registered;
        zeroconf sends the announcements in the background."""
        info = ServiceInfo(
            SERVICE_TYPE,
            instance_name(record.id),
            port=record.pull_port,
            properties=encode_txt(record),
            server=f"{record.id_hex}.local.",
            parsed_addresses=list(record.hosts),
        )
        if self._info is None:
            coroutine = self._zc.async_register_service(info, cooperating_responders=True)
        else:
            coroutine = self._zc.async_update_service(info)
        self._info = info
        await self._on_loop(_started(coroutine))

    async def _on_loop(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        """Run `coroutine` on zeroconf's asyncio loop and wait for it from trio."""
        loop = self._zc.loop
        assert loop is not None, "zeroconf runs its loop from the start"
        future = asyncio.run_coroutine_threadsafe(coroutine, loop)
        try:
            return await trio.to_thread.run_sync(
                future.result, _CLOSE_TIMEOUT, abandon_on_cancel=True
            )
        except trio.Cancelled:
            future.cancel()  # thread-safe: cancels the task on zeroconf's loop
            raise

    async def _resolve(self, name: str, send: trio.MemorySendChannel[DiscoveryEvent]) -> None:
        # An announcement carries SRV, TXT and A records, so the cache usually holds them all:
        # read it here, as zeroconf's own get_service_info does from its caller's thread.
        info = ServiceInfo(SERVICE_TYPE, name)
        if not info.load_from_cache(self._zc):
            # Ask the network. Abandoned if cancelled (the node closing): the thread gives up on
            # its own within _RESOLVE_TIMEOUT_MS, and closing must not wait for it.
            asked = await trio.to_thread.run_sync(
                partial(self._zc.get_service_info, SERVICE_TYPE, name, _RESOLVE_TIMEOUT_MS),
                abandon_on_cancel=True,
            )
            if asked is None:
                return
            info = asked
        addresses = [
            a for a in info.parsed_addresses() if network_of(a, self._networks) is not None
        ]
        try:
            announcement = decode_txt(info.properties, addresses, info.port or 0)
        except RecordError as exc:
            reason = str(exc)
        else:
            if instance_name(announcement.id) == name:
                await send.send(Announced(announcement))
                return
            reason = "its name is not its id"
        self.refused += 1
        logger.debug("ignoring mDNS service %s: %s", name[:80], reason)
        await send.send(Refused(name[:80], reason))


def _withdrawn(name: str) -> Withdrawn:
    label = name.removesuffix("." + SERVICE_TYPE)
    try:
        node_id = bytes.fromhex(label)
    except ValueError:
        return Withdrawn(None)
    return Withdrawn(node_id if len(node_id) == 16 else None)


async def _started(awaitable: Any) -> None:
    # zeroconf's async_register/update_service return a task that sends the announcements; the
    # records are registered once it exists, so do not wait for the announcements.
    await awaitable


@asynccontextmanager
async def open_mdns(record: PeerRecord) -> AsyncIterator[Mdns]:
    """Advertise `record` on mDNS on the record's own host addresses and browse for other nodes.

    Yields an `Mdns` whose `events` channel reports `Announced` and `Withdrawn` nodes (of every
    mesh: filtering is the caller's). On exit the advertisement is withdrawn (an mDNS goodbye) and
    zeroconf is closed, bounded in time. Raises `OSError` when the interface cannot do multicast.
    """
    hosts = list(record.hosts)
    families = {":" in host for host in hosts}
    version = (
        IPVersion.All
        if len(families) > 1
        else IPVersion.V6Only
        if True in families
        else IPVersion.V4Only
    )
    zc = await trio.to_thread.run_sync(partial(Zeroconf, interfaces=hosts, ip_version=version))
    _confine(zc, hosts)
    send, receive = trio.open_memory_channel[DiscoveryEvent](math.inf)
    changes_send, changes = trio.open_memory_channel[tuple[str, ServiceStateChange]](math.inf)
    token = trio.lowlevel.current_trio_token()
    mdns = Mdns(zc, hosts, receive)

    def on_change(
        zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        # Runs on the browser's thread: hand over, never block, never raise.
        with contextlib.suppress(trio.RunFinishedError, trio.ClosedResourceError):
            token.run_sync_soon(changes_send.send_nowait, (name, state_change))

    browser: ServiceBrowser | None = None
    try:
        with ungrouped():
            async with trio.open_nursery() as nursery:
                await mdns.advertise(record)
                browser = await trio.to_thread.run_sync(
                    partial(ServiceBrowser, zc, SERVICE_TYPE, handlers=[on_change])
                )
                nursery.start_soon(_resolve_changes, mdns, changes, send, instance_name(record.id))
                try:
                    yield mdns
                finally:
                    nursery.cancel_scope.cancel()
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(_CLOSE_TIMEOUT):
            # Abandoned (not waited for) if it takes longer: zeroconf's thread then finishes
            # closing on its own.
            await trio.to_thread.run_sync(partial(_close, zc, browser), abandon_on_cancel=True)
        send.close()


async def _resolve_changes(
    mdns: Mdns,
    changes: trio.MemoryReceiveChannel[tuple[str, ServiceStateChange]],
    send: trio.MemorySendChannel[DiscoveryEvent],
    own_name: str,
) -> None:
    async with trio.open_nursery() as nursery:
        async for name, change in changes:
            if name == own_name:
                continue
            if change is ServiceStateChange.Removed:
                await send.send(_withdrawn(name))
            else:  # Added or Updated: resolve concurrently, a slow one must not hold up others
                nursery.start_soon(mdns._resolve, name, send)


def _close(zc: Zeroconf, browser: ServiceBrowser | None) -> None:
    if browser is not None:
        browser.cancel()
    zc.close()  # unregisters (sends the goodbyes) and stops zeroconf's thread


def _confine(zc: Zeroconf, hosts: Sequence[str]) -> None:
    """Keep zeroconf's shared listening socket to the node's own interfaces.

    python-zeroconf binds the socket it receives queries on to the wildcard address (port 5353)
    whatever interfaces it is given; only its sending sockets are bound to them. So a node on
    127.0.0.1 could hear, and answer, a query that arrives on another interface. Binding that
    socket to the interface's device (and not receiving multicast groups joined elsewhere) stops
    both. A socket binds to one device only: a node on interfaces of several devices is confined
    to none (it asked for several networks). Reaches a private attribute of zeroconf's engine,
    checked for, hence the care.
    """
    engine = zc.engine
    listen: socket.socket | None = getattr(engine, "_listen_socket", None)
    if listen is None:  # the engine's setup already wrapped it in a transport
        transport = getattr(engine, "_listen_transport", None)
        listen = getattr(transport, "sock", None)
    if listen is None:
        logger.warning("cannot find zeroconf's listening socket: mDNS may hear other interfaces")
        return
    with contextlib.suppress(OSError, AttributeError):  # IPv4 only, and absent on some builds
        listen.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_ALL, 0)  # type: ignore[attr-defined]
    devices = {device_of(host) for host in hosts}
    if len(devices) != 1 or None in devices:
        if len(hosts) == 1:
            logger.warning(
                "no single network device holds %s: mDNS may hear other interfaces", hosts[0]
            )
        return
    (device,) = devices
    assert device is not None
    try:
        listen.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, device.encode())
    except OSError as exc:  # needs CAP_NET_RAW on older kernels
        logger.warning("cannot confine mDNS to %s (%s): it may hear other interfaces", device, exc)
