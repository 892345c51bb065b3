"""A members-only mesh: keyed nodes on 127.0.0.1, real CurveZMQ and a real ZAP handler, and
strangers and impostors made of plain pyzmq, msgpack and `socket`.

Members exchange events, tasks and authenticated heartbeat datagrams; a node whose key is not
allowed, and a program with no key at all, get no peer, no event and no task (checked at the
socket level); a member cannot speak under another member's id, nor forge another's
heartbeats; a key taken off the allow list drops that peer and cuts its subscription."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import zmq
from zmq.utils.monitor import recv_monitor_message

import mesh
from discovery import PeerRecord
from mesh._beatkeys import MAC_SIZE
from mesh._hello import MAX_PEERS_LISTED, Hello
from mesh._members import OFFENCE_BURST
from mesh._wire import Kind, pack

from . import inside
from .conftest import new_mesh_env, wait_until
from .test_hostile_inbox import forge_beats_until_dead, node_process, plain_sockets

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def keyed_nodes(
    *names: str, also: Sequence[str] = (), **options: Any
) -> AsyncIterator[tuple[list[mesh.Node], dict[str, mesh.KeyPair]]]:
    """Nodes named `names`, each with a key pair of its own, all allowing each other and the
    keys `also`, seeded with the first and peered by name; and their key pairs."""
    pairs = {name: mesh.KeyPair.generate() for name in names}
    allowed = [*(pair.public for pair in pairs.values()), *also]
    options.setdefault("discovery", "static")
    async with AsyncExitStack() as stack:
        nodes: list[mesh.Node] = []
        for name in names:
            seeds = [nodes[0].contact] if nodes else []
            node = mesh.open_node(name, key=pairs[name], allow=allowed, seeds=seeds, **options)
            nodes.append(await stack.enter_async_context(node))
        for node in nodes:
            await node.wait_for_peers(names=[name for name in names if name != node.name])
        yield nodes, pairs


def curve_client(sock: zmq.Socket[Any], pair: mesh.KeyPair, server: str) -> None:
    sock.curve_publickey = pair.public.encode()
    sock.curve_secretkey = pair.secret.encode()
    sock.curve_serverkey = server.encode()


async def test_members_exchange_events_tasks_and_authenticated_heartbeats() -> None:
    with trio.fail_after(30):
        async with (
            keyed_nodes("a", "b") as ((a, b), pairs),
            b.subscribe("t") as events,
            b.work("s") as tasks,
        ):
            assert a.record.public_key == pairs["a"].public
            assert a.contact == f"{pairs['a'].public}@{a.address}"
            assert b.peers[a.id].record.public_key == pairs["a"].public
            await a.wait_for_peers(1, service="s")
            await a.publish("t.x", "event")
            assert (await events.receive()).body == "event"
            await a.push("s", "task")
            async with await tasks.receive() as task:
                assert task.body == "task"
            await a.wait_settled()
            # Heartbeat datagrams flow both ways, and every one passed its MAC.
            await wait_until(
                lambda: (
                    a.statistics().heartbeat_datagrams > 3
                    and b.statistics().heartbeat_datagrams > 3
                ),
                "datagrams both ways",
            )
            for node in (a, b):
                assert node.statistics().bad_frames == 0
                assert node.statistics().handshakes_refused == 0


async def test_members_get_requests_answered_and_history() -> None:
    with trio.fail_after(30):
        async with keyed_nodes("a", "b") as ((a, b), _):
            for n in range(5):
                await a.publish("t.x", n)
            async with b.subscribe("t", history=3) as events:
                assert [(await events.receive()).body for _ in range(3)] == [2, 3, 4]
            async with b.serve("q") as requests, trio.open_nursery() as nursery:

                async def answer() -> None:
                    async for request in requests:
                        await request.reply(request.body * 2)

                nursery.start_soon(answer)
                await a.wait_for_peers(1, service="q")
                assert await a.request("q", 21, timeout=5) == 42
                nursery.cancel_scope.cancel()
            for node in (a, b):
                assert node.statistics().bad_frames == 0


async def test_a_node_whose_key_is_not_allowed_gets_no_peer_event_or_task() -> None:
    stranger = mesh.KeyPair.generate()
    with trio.fail_after(30):
        async with keyed_nodes("a", "b") as ((a, b), pairs), b.subscribe("t") as events:
            # The stranger allows a, but a does not allow it: a refuses its connections.
            allow = [stranger.public, pairs["a"].public]
            async with (
                mesh.open_node(
                    "stranger", key=stranger, allow=allow, seeds=[a.contact], discovery="static"
                ) as intruder,
                intruder.subscribe(""),
                intruder.work("s"),
            ):
                await wait_until(
                    lambda: a.statistics().handshakes_refused >= 1, "a refuses the stranger"
                )
                await a.publish("t.x", "for members")
                assert (await events.receive()).body == "for members"
                async with b.work("s") as tasks:
                    await a.wait_for_peers(1, service="s")
                    for n in range(20):
                        await a.push("s", n)
                    for _ in range(20):
                        async with await tasks.receive():
                            pass
                await a.wait_settled()
                assert [peer.name for peer in a.peers.values()] == ["b"]
                assert not intruder.peers
                assert intruder.statistics().events_received == 0
                assert intruder.statistics().tasks_received == 0


async def test_a_program_without_a_key_gets_nothing_at_the_socket_level() -> None:
    with trio.fail_after(30):
        async with keyed_nodes("a", "b") as ((a, b), pairs), b.subscribe("t") as events:
            with (
                plain_sockets(zmq.SUB, zmq.SUB, zmq.PUSH) as (plain, keyed, push),
                ExitStack() as stack,
            ):
                wrong = mesh.KeyPair.generate()
                curve_client(keyed, wrong, pairs["a"].public)  # CURVE, a key a does not allow
                plain_monitor = plain.get_monitor_socket()
                stack.callback(plain_monitor.close)
                stack.callback(plain.disable_monitor)
                for sub in (plain, keyed):
                    sub.setsockopt(zmq.SUBSCRIBE, b"")
                    sub.connect(a.endpoints.pub)
                push.connect(a.endpoints.pull)
                push.send(pack(Kind.HELLO, os.urandom(16), 1, None, {}), zmq.NOBLOCK)
                await wait_until(
                    lambda: a.statistics().handshakes_refused >= 1, "a refuses the wrong key"
                )
                # The plain SUB's handshake fails (CURVE against none): its monitor says so.
                failed = {
                    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL,
                    zmq.EVENT_DISCONNECTED,
                }

                def plain_refused() -> bool:
                    while plain_monitor.poll(0):
                        event = recv_monitor_message(plain_monitor)
                        if event["event"] in failed:
                            return True
                    return False

                await wait_until(plain_refused, "the plain SUB's handshake fails")
                for n in range(5):
                    await a.publish("t.x", n)
                assert [(await events.receive()).body for _ in range(5)] == list(range(5))
                for sub in (plain, keyed):
                    with pytest.raises(zmq.Again):
                        sub.recv(zmq.NOBLOCK)
                assert [peer.name for peer in a.peers.values()] == ["b"]
                assert a.statistics().bad_frames == 0  # nothing of theirs was even read


async def test_a_member_cannot_speak_under_another_members_id() -> None:
    # m is allowed (a member's key) but speaks for b: a goodbye, an update, an ack, a nack and a
    # HELLO whose record carries b's key, each under b's id or key, on m's own connection.
    m = mesh.KeyPair.generate()
    with trio.fail_after(30):
        async with keyed_nodes("a", "b", also=[m.public]) as ((a, b), pairs):
            b_id = bytes.fromhex(b.id)
            with plain_sockets(zmq.PUSH) as (push,):
                curve_client(push, m, pairs["a"].public)
                push.connect(a.endpoints.pull)
                stolen = PeerRecord(
                    os.urandom(16), "thief", a.mesh, "127.0.0.1", 9, 9, public_key=pairs["b"].public
                )
                for frame in (
                    pack(Kind.BYE, b_id, 1, None, None),
                    pack(Kind.UPDATE, b_id, 2, None, b.record.to_wire()),
                    pack(Kind.HELLO, stolen.id, 3, None, Hello(stolen, ()).to_wire()),
                    pack(Kind.ACK, b_id, 4, [1], None),
                    pack(Kind.NACK, b_id, 5, [1, "forged"], None),
                ):
                    push.send(frame)
                await wait_until(
                    lambda: a.statistics().bad_frame_reasons.get("impostor", 0) >= 5,
                    "a drops the five impostor frames",
                )
            assert [peer.name for peer in a.peers.values()] == ["b"]
            assert a.peers[b.id].state is mesh.PeerState.ALIVE


async def test_a_member_that_keeps_sending_bad_frames_is_banned_for_a_while() -> None:
    m = mesh.KeyPair.generate()
    with trio.fail_after(30):
        async with keyed_nodes("a", "b", also=[m.public]) as ((a, b), pairs), b.work("s") as tasks:
            await a.wait_for_peers(1, service="s")
            with plain_sockets(zmq.PUSH, zmq.PUSH) as (push, again):
                curve_client(push, m, pairs["a"].public)
                push.connect(a.endpoints.pull)
                sent = OFFENCE_BURST + 50
                for _ in range(sent):
                    push.send(b"\xc1 not msgpack")
                await wait_until(
                    lambda: sum(a.statistics().bad_frame_reasons.values()) == sent,
                    "every bad frame counted",
                )
                statistics = a.statistics()
                assert statistics.senders_banned == 1
                assert statistics.bad_frame_reasons["banned"] > 0
                # A new connection with the banned key is refused at the handshake.
                refused = statistics.handshakes_refused
                curve_client(again, m, pairs["a"].public)
                again.connect(a.endpoints.pull)
                await wait_until(
                    lambda: a.statistics().handshakes_refused > refused, "m's new connection"
                )
            # Members are not affected.
            await a.push("s", "still working")
            async with await tasks.receive() as task:
                assert task.body == "still working"
            await a.wait_settled()


async def test_forged_heartbeat_datagrams_fail_their_mac() -> None:
    # a falls silent. A forger on a's own host sends b datagrams under a's id, numbered on:
    # the source check passes (same host), the MAC does not, and b declares a dead.
    with trio.fail_after(30):
        async with keyed_nodes("a", "b") as ((a, b), _), b.watch_peers() as changes:
            await forge_beats_until_dead(
                a, b, changes, "127.0.0.1", suffix=lambda: os.urandom(MAC_SIZE)
            )
            assert b.statistics().bad_frame_reasons.get("mac", 0) > 10


async def test_a_key_taken_off_the_allow_list_drops_its_peer_and_subscription(
    tmp_path: Path,
) -> None:
    pairs = {name: mesh.KeyPair.generate() for name in ("a", "b", "c")}
    members = tmp_path / "members"
    members.write_text("".join(f"{pair.public}\n" for pair in pairs.values()))
    with trio.fail_after(30):
        async with AsyncExitStack() as stack:
            a = await stack.enter_async_context(
                mesh.open_node("a", key=pairs["a"], allow=members, discovery="static")
            )
            b, c = [
                await stack.enter_async_context(
                    mesh.open_node(
                        name,
                        key=pairs[name],
                        allow=[pair.public for pair in pairs.values()],
                        seeds=[a.contact],
                        discovery="static",
                    )
                )
                for name in ("b", "c")
            ]
            b_events = await stack.enter_async_context(b.subscribe("t"))
            c_events = await stack.enter_async_context(c.subscribe("t"))
            changes = await stack.enter_async_context(a.watch_peers())
            await a.wait_for_peers(names=["b", "c"])
            await b.wait_for_peers(names=["a", "c"])
            await c.wait_for_peers(names=["a", "b"])
            await a.publish("t.1", "before")
            assert (await b_events.receive()).body == "before"
            assert (await c_events.receive()).body == "before"

            members.write_text(f"# b is out\n{pairs['a'].public}\n{pairs['c'].public}\n")
            refused = a.statistics().handshakes_refused
            a.reload_allow()
            async for change in changes:
                if isinstance(change, mesh.PeerLeft) and change.peer.name == "b":
                    assert change.reason == "key no longer allowed"
                    break
            # b's SUB was cut with the rest, and its reconnection is refused.
            await wait_until(
                lambda: a.statistics().handshakes_refused > refused, "a refuses b's reconnection"
            )
            await c.wait_for_peers(names=["a"])
            # c's SUB reconnects and subscribes again: until then a's events reach nobody.
            async with trio.open_nursery() as nursery:

                async def publish_until_c_has_one() -> None:
                    while True:
                        await a.publish("t.2", "after")
                        await trio.sleep(0.05)

                nursery.start_soon(publish_until_c_has_one)
                assert (await c_events.receive()).body == "after"
                nursery.cancel_scope.cancel()
            with trio.move_on_after(1.0):  # a bounded look for what must not come
                message = await b_events.receive()
                pytest.fail(f"b, no longer a member, got {message}")
            assert "b" not in [peer.name for peer in a.peers.values()]
            # A list that cannot be read leaves the one in force.
            members.write_text("not a key\n")
            with pytest.raises(ValueError, match="line 1"):
                a.reload_allow()
            assert sorted(peer.name for peer in a.peers.values()) == ["c"]


async def test_a_keyed_node_needs_a_key_to_reach_a_seed_or_connect() -> None:
    pair = mesh.KeyPair.generate()
    with trio.fail_after(20):
        async with mesh.open_node("a", key=pair, discovery="static") as a:
            with pytest.raises(ValueError, match=r"KEY@127\.0\.0\.1:9"):
                await a.connect("127.0.0.1:9")
            with pytest.raises(ValueError, match=r"not on this node's allow list"):
                await a.connect(f"{mesh.KeyPair.generate().public}@127.0.0.1:9")
            with pytest.raises(ValueError, match="not keyed"):
                async with mesh.open_node("open", discovery="static") as plain:
                    plain.reload_allow()


async def test_a_non_member_cannot_reach_a_keyed_exec_node(tmp_path: Path) -> None:
    # `mesh-cli run --exec` runs a command for each task: keyed, only members get to.
    pairs = {name: mesh.KeyPair.generate() for name in ("exec", "member", "intruder")}
    pairs["exec"].save(tmp_path / "exec")
    members = tmp_path / "members"
    members.write_text(f"{pairs['exec'].public}\n{pairs['member'].public}\n")
    env = new_mesh_env()
    with trio.fail_after(40):
        async with mesh.open_node(
            "member", mesh=env["MESH_NAME"], key=pairs["member"], allow=members, discovery="static"
        ) as member:
            command = ["-m", "mesh._cli", "run", "--name", "exec", "--service", "convert"]
            command += ["--exec", "cat", "--key", str(tmp_path / "exec"), "--allow", str(members)]
            command += ["--seed", member.contact]
            async with node_process(command, env):
                (worker,) = await member.wait_for_peers(
                    names=["exec"], service="convert", timeout=15
                )
                await member.push("convert", "from a member")
                await member.wait_settled()
                assert member.statistics().tasks_acked == 1
                contact = f"{worker.record.public_key}@{worker.record.address}"
                allow = [pairs["exec"].public, pairs["intruder"].public]
                async with mesh.open_node(
                    "intruder",
                    mesh=env["MESH_NAME"],
                    key=pairs["intruder"],
                    allow=allow,
                    seeds=[contact],
                    discovery="static",
                ) as intruder:
                    with pytest.raises(mesh.NoWorkerError):
                        await intruder.push("convert", "from a stranger", timeout=3)
                    assert not intruder.peers
                    assert intruder.statistics().tasks_acked == 0


async def test_keyed_nodes_find_each_other_over_mdns(mesh_name: str) -> None:
    # The key travels in the TXT record: no seed, no contact needed.
    pairs = [mesh.KeyPair.generate() for _ in range(2)]
    allow = [pair.public for pair in pairs]
    with trio.fail_after(30):
        async with (
            mesh.open_node("a", mesh=mesh_name, key=pairs[0], allow=allow) as a,
            mesh.open_node("b", mesh=mesh_name, key=pairs[1], allow=allow) as b,
        ):
            await a.wait_for_peers(names=["b"])
            await b.wait_for_peers(names=["a"])
            assert b.peers[a.id].record.public_key == pairs[0].public


async def test_a_keyed_node_tries_only_listed_addresses_whose_key_it_allows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A member's HELLO lists 4,096 addresses without keys and 8 with a key a allows (on
    # 127.0.0.0/8 at port 9, where nothing listens): only those 8 are tried, and the ones
    # without a key cost one warning line, not thousands.
    m = mesh.KeyPair.generate()
    pairs = {"a": mesh.KeyPair.generate()}
    allowed = [m.public, pairs["a"].public]
    keyless = [f"127.78.{i // 256}.{i % 256}:9" for i in range(MAX_PEERS_LISTED - 8)]
    keyed = [f"{m.public}@127.79.0.{i}:9" for i in range(1, 9)]
    with trio.fail_after(30):
        async with mesh.open_node("a", key=pairs["a"], allow=allowed, discovery="static") as a:
            with plain_sockets(zmq.PUSH) as (push,):
                curve_client(push, m, pairs["a"].public)
                push.connect(a.endpoints.pull)
                record = PeerRecord(
                    os.urandom(16), "lister", a.mesh, "127.0.0.1", 9, 9, public_key=m.public
                )
                push.send(
                    pack(
                        Kind.HELLO, record.id, 1, None, Hello(record, (*keyless, *keyed)).to_wire()
                    )
                )
                tried = {f"127.79.0.{i}:9" for i in range(1, 9)}
                await wait_until(lambda: tried <= set(inside.links(a)), "a tries the keyed eight")
            assert not any(address in inside.links(a) for address in keyless)
            assert caplog.text.count("it gave no key") == 1


async def test_a_node_back_at_its_address_with_a_new_key_is_read_again() -> None:
    # b leaves and a new b, with another key pair, binds the same ports at once: a's SUB must not
    # keep the lingering connection made with the old key (its handshake would fail for good).
    pairs = [mesh.KeyPair.generate() for _ in range(3)]
    allow = [pair.public for pair in pairs]
    options: dict[str, Any] = {"allow": allow, "discovery": "static"}
    with trio.fail_after(30):
        async with (
            mesh.open_node("a", key=pairs[0], **options) as a,
            a.subscribe("t") as events,
        ):
            async with mesh.open_node("b", key=pairs[1], seeds=[a.contact], **options) as b:
                await a.wait_for_peers(names=["b"])
                await b.wait_for_peers(names=["a"])
                ports = {"pub_port": b.record.pub_port, "pull_port": b.record.pull_port}
            async with mesh.open_node(
                "b2", key=pairs[2], seeds=[a.contact], **ports, **options
            ) as b2:
                await a.wait_for_peers(names=["b2"])
                await b2.wait_for_peers(names=["a"])
                await b2.publish("t", "from the new key")
                assert (await events.receive()).body == "from the new key"
