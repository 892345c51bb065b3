"""Nodes among hostile or broken mDNS services, on 127.0.0.1 with real python-zeroconf.

The tests publish services of the node's own type (`discovery.SERVICE_TYPE`) with plain
python-zeroconf: bad ports, garbage TXT, wrong versions, missing keys, huge TXT, ids that are not
the instance name, addresses off the node's network, and nodes of this mesh that never answer.
Good nodes must refuse or outlive all of it, find each other, and stay apart from other meshes.

Network rule: every Zeroconf here is bound to 127.0.0.1, IPv4 only; the off-network addresses
(10.1.2.3, 192.0.2.1) are only A record values published on loopback, which the nodes must refuse:
the tests check that no link is ever made to them. Every test has a mesh name of its own.
"""

from __future__ import annotations

import logging
import os
import random
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest
import trio
from zeroconf import IPVersion, ServiceInfo, Zeroconf

import discovery._mdns
import mesh
from discovery import SERVICE_TYPE, instance_name
from mesh import Node, PeerJoined, PeerLeft

from . import inside
from .conftest import new_mesh_name, wait_until

OFF_NETWORK = ("10.1.2.3", "192.0.2.1")
REFUSED = "ignoring mDNS service "


@asynccontextmanager
async def open_zeroconf() -> AsyncIterator[Zeroconf]:
    """A plain python-zeroconf on 127.0.0.1 only; closed (goodbyes for all it still has) at exit."""
    zc = await trio.to_thread.run_sync(
        partial(Zeroconf, interfaces=["127.0.0.1"], ip_version=IPVersion.V4Only)
    )
    # As a node does: keep zeroconf's wildcard listening socket to the loopback device too, so
    # this publisher never hears (let alone answers) a query from another interface.
    discovery._mdns._confine(zc, ["127.0.0.1"])
    try:
        yield zc
    finally:
        with trio.CancelScope(shield=True), trio.move_on_after(5):
            await trio.to_thread.run_sync(zc.close, abandon_on_cancel=True)


async def register(zc: Zeroconf, *infos: ServiceInfo) -> None:
    """Register `infos` at once (no probing: their names are unique). Returns once zeroconf sent
    the announcements (about 0.45 s)."""
    async with trio.open_nursery() as nursery:
        for info in infos:
            nursery.start_soon(
                partial(
                    trio.to_thread.run_sync,
                    partial(zc.register_service, info, cooperating_responders=True),
                )
            )


async def unregister(zc: Zeroconf, *infos: ServiceInfo) -> None:
    with trio.move_on_after(3):
        for info in infos:
            await trio.to_thread.run_sync(zc.unregister_service, info, abandon_on_cancel=True)


@contextmanager
def dead_ports(count: int) -> Iterator[list[int]]:
    """Ports on 127.0.0.1 where nothing listens (bound, never listening: connections are refused,
    and no other program can take the port meanwhile)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.bind(("127.0.0.1", 0))
        yield [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def valid_txt(node_id: bytes, mesh_name: str, **changes: Any) -> dict[str, Any]:
    """A TXT a real node would publish, with keys changed (a value of ``...`` removes the key)."""
    txt: dict[str, Any] = {
        "v": "1",
        "id": node_id.hex(),
        "mesh": mesh_name,
        "name": "hostile",
        "pub": "5000",
    }
    for key, value in changes.items():
        if value is ...:
            del txt[key]
        else:
            txt[key] = value
    return txt


@dataclass
class Hostile:
    """One published service: `refusal` is what the node's log gives as the reason for ignoring
    it ("" for any reason), or None when the announcement is valid (only its target is not)."""

    label: str
    info: ServiceInfo
    refusal: str | None

    @property
    def name(self) -> str:
        return self.info.name


def hostile(
    label: str,
    refusal: str | None,
    *,
    mesh_name: str,
    txt: bytes | None = None,
    port: int = 5001,
    addresses: tuple[str, ...] = ("127.0.0.1",),
    instance: str | None = None,
    extra: dict[bytes, bytes] | None = None,
    **changes: Any,
) -> Hostile:
    node_id = os.urandom(16)
    properties: dict[str, Any] | dict[bytes, Any] | bytes
    properties = valid_txt(node_id, mesh_name, **changes) if txt is None else txt
    if extra is not None:
        assert isinstance(properties, dict)
        properties = {
            **{
                key.encode(): value if value is None else str(value).encode()
                for key, value in properties.items()
            },
            **extra,
        }
    info = ServiceInfo(
        SERVICE_TYPE,
        f"{instance or node_id.hex()}.{SERVICE_TYPE}",
        port=port,
        properties=properties,
        server=f"hostile-{node_id.hex()[:12]}.local.",  # its own host: A records never mix
        parsed_addresses=list(addresses),
    )
    return Hostile(label, info, refusal)


def hostile_services(mesh_name: str, dead: int, dead_huge: int, dead_foreign: int) -> list[Hostile]:
    garbage = random.Random(1234).randbytes(400)
    huge = {f"junk{i:02d}": "x" * 248 for i in range(32)}  # 32 strings of 255 bytes: 8 KiB of TXT
    cases = [
        ("srv-port-0", "SRV port is not a port number", {"port": 0}),
        ("pub-0", "pub port is not a port number", {"pub": "0"}),
        ("pub-70000", "pub port is not a port number", {"pub": "70000"}),
        ("pub-letters", "pub is not a port number", {"pub": "80a"}),
        ("pub-many-digits", "pub is not a port number", {"pub": "9" * 250}),
        ("pub-arabic-digits", "pub is not a port number", {"pub": "\u0665\u0660\u0660\u0660"}),
        ("pub-no-value", "pub is not a port number", {"pub": None}),
        ("garbage-txt", "TXT is not UTF-8", {"txt": garbage}),
        ("empty-txt", "unsupported protocol version", {"txt": b""}),
        ("non-utf8-value", "TXT is not UTF-8", {"name": b"\xff\xfe"}),
        ("non-utf8-key", "TXT is not UTF-8", {"extra": {b"\xc3\x28": b"x"}}),
        ("version-2", "unsupported protocol version", {"v": "2"}),
        ("version-missing", "unsupported protocol version", {"v": ...}),
        ("id-missing", "TXT has no 'id'", {"id": ...}),
        ("mesh-missing", "TXT has no 'mesh'", {"mesh": ...}),
        ("name-missing", "TXT has no 'name'", {"name": ...}),
        ("pub-missing", "TXT has no 'pub'", {"pub": ...}),
        ("id-not-hex", "id is not 32 hex digits", {"id": "zz" * 16}),
        ("id-short", "id is not 32 hex digits", {"id": "ab" * 15}),
        ("id-spaced", "id is not 32 hex digits", {"id": " ".join(["ab"] * 16)}),
        ("id-not-the-name", "its name is not its id", {"id": os.urandom(16).hex()}),
        ("name-not-an-id", "its name is not its id", {"instance": "not-a-node-id"}),
        ("mesh-empty", "mesh must be 1 to 250 bytes", {"mesh": ""}),
        ("name-empty", "name must be 1 to 255 bytes", {"name": ""}),
        ("huge-txt-bad", "unsupported protocol version", {**huge, "v": "9"}),
        ("off-network-10", "no usable address", {"addresses": ("10.1.2.3",)}),
        ("off-network-192", "no usable address", {"addresses": ("192.0.2.1",)}),
        ("off-network-both", "no usable address", {"addresses": OFF_NETWORK}),
        ("unspecified", "no usable address", {"addresses": ("0.0.0.0",)}),
        ("multicast", "no usable address", {"addresses": ("224.0.0.251",)}),
        # Valid announcements: this mesh at a port where nothing listens (HELLO goes unanswered),
        # the same with 8 KiB of TXT, and another mesh (never said HELLO to).
        ("dead-port", None, {"port": dead}),
        ("dead-port-huge-txt", None, {"port": dead_huge, **huge}),
        ("other-mesh", None, {"port": dead_foreign, "mesh": mesh_name + "-other"}),
    ]
    return [
        hostile(label, refusal, mesh_name=mesh_name, **options) for label, refusal, options in cases
    ]


def refused_names(caplog: pytest.LogCaptureFixture) -> dict[str, set[str]]:
    """Service name -> the reasons the nodes' mDNS gave for ignoring it (from their debug log)."""
    refusals: dict[str, set[str]] = {}
    for record in caplog.records:
        message = record.getMessage()
        if record.name == "discovery.mdns" and message.startswith(REFUSED):
            name, _, reason = message.removeprefix(REFUSED).partition(": ")
            refusals.setdefault(name, set()).add(reason)
    return refusals


def assert_all_refused(caplog: pytest.LogCaptureFixture, services: list[Hostile]) -> None:
    refusals = refused_names(caplog)
    for service in services:
        if service.refusal is None:
            assert service.name not in refusals, service.label
        else:
            reasons = refusals[service.name]
            assert all(service.refusal in reason for reason in reasons), (service.label, reasons)


def assert_only_peer(node: Node, peer: Node) -> None:
    assert set(node.peers) == {peer.id}
    assert node.peers[peer.id].address == peer.address
    assert node.id not in node.peers


def assert_no_link_off_network(node: Node) -> None:
    for address in inside.links(node):
        assert not address.startswith(OFF_NETWORK), address
        assert address.startswith("127.0.0.1:"), address


# -- hostile services ---------------------------------------------------------------------------


async def test_hostile_services_are_refused_and_good_nodes_still_peer(
    caplog: pytest.LogCaptureFixture,
    mesh_name: str,
) -> None:
    caplog.set_level(logging.DEBUG, logger="discovery.mdns")
    with trio.fail_after(14), dead_ports(3) as (dead, dead_huge, dead_foreign):
        services = hostile_services(mesh_name, dead, dead_huge, dead_foreign)
        to_refuse = {s.name for s in services if s.refusal is not None}
        async with open_zeroconf() as zc:
            await register(zc, *(s.info for s in services))
            async with mesh.open_node("a", mesh=mesh_name) as a:
                # a browses (the services were there first) and hears, then refuses, each one.
                await wait_until(
                    lambda: to_refuse <= set(refused_names(caplog)), "a refused every service"
                )
                await wait_until(
                    lambda: {f"127.0.0.1:{dead}", f"127.0.0.1:{dead_huge}"} <= set(inside.links(a)),
                    "a said HELLO at the dead ports",
                )
                assert_all_refused(caplog, services)
                # The node itself warns, at a bounded rate: one warning for the whole flood.
                warnings = [
                    r
                    for r in caplog.records
                    if r.name == "mesh" and "ignoring an mDNS announcement" in r.getMessage()
                ]
                assert len(warnings) == 1
                assert warnings[0].levelno == logging.WARNING
                assert f"127.0.0.1:{dead_foreign}" not in inside.links(a)  # another mesh: no HELLO
                assert_no_link_off_network(a)
                assert a.peers == {}
                caplog.clear()

                async with mesh.open_node("b", mesh=mesh_name) as b:
                    async with a.subscribe("hostile") as events:
                        await a.wait_for_peers(names=["b"], timeout=5)
                        await b.wait_for_peers(names=["a"], timeout=5)
                        await wait_until(
                            lambda: to_refuse <= set(refused_names(caplog)),
                            "b refused every service",
                        )
                        await wait_until(
                            lambda: (
                                {f"127.0.0.1:{dead}", f"127.0.0.1:{dead_huge}"}
                                <= set(inside.links(b))
                            ),
                            "b said HELLO at the dead ports",
                        )
                        assert_all_refused(caplog, services)

                        # Spoofs aimed at the live nodes, announced while they run: this mesh
                        # at a's own inbox under a new id; b's id under another name; a's inbox
                        # behind an off-network address.
                        spoofs = [
                            hostile(
                                "at-a-inbox", None, mesh_name=mesh_name, port=a.record.pull_port
                            ),
                            hostile(
                                "b-id-not-the-name",
                                "its name is not its id",
                                mesh_name=mesh_name,
                                id=b.id,
                                port=b.record.pull_port,
                            ),
                            hostile(
                                "a-inbox-off-network",
                                "no usable address",
                                mesh_name=mesh_name,
                                port=a.record.pull_port,
                                addresses=OFF_NETWORK,
                            ),
                        ]
                        await register(zc, *(s.info for s in spoofs))
                        await wait_until(
                            lambda: {s.name for s in spoofs[1:]} <= set(refused_names(caplog)),
                            "the spoofs were refused",
                        )
                        assert_all_refused(caplog, spoofs)

                        for node, peer in ((a, b), (b, a)):
                            assert_only_peer(node, peer)
                            assert_no_link_off_network(node)
                            assert f"127.0.0.1:{dead_foreign}" not in inside.links(node)
                            assert node.peers[peer.id].name == peer.name

                        # Every hostile service says goodbye: nothing a node knows changes.
                        await unregister(zc, *(s.info for s in services + spoofs))
                        await trio.sleep(0.3)
                        assert_only_peer(a, b)
                        assert_only_peer(b, a)

                        # Both nodes still work.
                        await b.publish("hostile", "still here")
                        message = await events.receive()
                        assert (message.topic, message.body, message.sender) == (
                            "hostile",
                            "still here",
                            b.id,
                        )


# -- meshes side by side ------------------------------------------------------------------------


async def test_two_meshes_side_by_side_stay_apart() -> None:
    ours, theirs = new_mesh_name(), new_mesh_name()
    with trio.fail_after(10):
        async with mesh.open_node("a", mesh=ours) as a:
            async with a.watch_peers() as changes:
                async with (
                    mesh.open_node("foreign", mesh=theirs) as foreign,
                    mesh.open_node("b", mesh=ours) as b,
                    mesh.open_node("foreign-2", mesh=theirs) as foreign_2,
                ):
                    await a.wait_for_peers(names=["b"], timeout=5)
                    await foreign.wait_for_peers(names=["foreign-2"], timeout=5)
                    joined = []
                    with trio.move_on_after(1):
                        async for change in changes:
                            if isinstance(change, PeerJoined):
                                joined.append(change.peer.id)
                    assert joined == [b.id]
                    for node, peer in ((a, b), (b, a), (foreign, foreign_2), (foreign_2, foreign)):
                        assert_only_peer(node, peer)
                    for node in (a, b):
                        for other in (foreign, foreign_2):
                            assert other.address not in inside.links(node)
                            assert node.address not in inside.links(other)


# -- bugs ---------------------------------------------------------------------------------------


async def test_a_node_closes_promptly_while_a_service_cannot_be_resolved(mesh_name: str) -> None:
    with trio.fail_after(10):
        async with open_zeroconf() as zc:
            unresolvable = hostile("no-address", None, mesh_name=mesh_name, addresses=())
            async with mesh.open_node("a", mesh=mesh_name):
                # Announced while a runs: a hears it at once and starts resolving it (no A
                # record ever comes), while `register` waits for the announcements.
                await register(zc, unresolvable.info)
                closing = trio.current_time()
            took = trio.current_time() - closing
            await unregister(zc, unresolvable.info)
    assert took < 1.5, f"closing took {took:.2f} s"


async def test_a_goodbye_for_a_refused_service_does_not_evict_a_live_peer(mesh_name: str) -> None:
    with trio.fail_after(10):
        async with open_zeroconf() as zc:
            async with (
                mesh.open_node("a", mesh=mesh_name) as a,
                mesh.open_node("b", mesh=mesh_name) as b,
            ):
                await a.wait_for_peers(names=["b"], timeout=5)
                spoof = ServiceInfo(
                    SERVICE_TYPE,
                    instance_name(bytes.fromhex(b.id)),
                    port=1,
                    properties={"junk": "not a node"},  # refused: no version
                    server="spoof.local.",
                    parsed_addresses=["127.0.0.1"],
                )
                async with a.watch_peers() as changes:
                    await register(zc, spoof)
                    await unregister(zc, spoof)
                    left = []
                    with trio.move_on_after(0.5):
                        async for change in changes:
                            if isinstance(change, PeerLeft):
                                left.append((change.peer.name, change.reason))
                assert left == []
                assert b.id in a.peers


async def test_a_withdrawn_announcement_that_never_answered_leaves_no_link(mesh_name: str) -> None:
    with trio.fail_after(10), dead_ports(1) as (dead,):
        async with open_zeroconf() as zc:
            async with mesh.open_node("a", mesh=mesh_name) as a:
                silent = hostile("silent", None, mesh_name=mesh_name, port=dead)
                await register(zc, silent.info)
                await wait_until(lambda: f"127.0.0.1:{dead}" in inside.links(a), "a said HELLO")
                await unregister(zc, silent.info)
                with trio.move_on_after(0.5):
                    while f"127.0.0.1:{dead}" in inside.links(a):  # noqa: ASYNC110
                        await trio.sleep(0.02)
                assert f"127.0.0.1:{dead}" not in inside.links(a)
                assert a.peers == {}
