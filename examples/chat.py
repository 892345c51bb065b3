"""A chat room on publish/subscribe: what you type goes to everyone in the room.

    python examples/chat.py alice        # in one terminal
    python examples/chat.py bob          # in another

Each line you type is published on the room's topic; the others' lines are printed as
``name: text``, and people coming and going as ``* name joined`` and ``* name left``. Ctrl-D (the
end of the input) leaves the room, as does Ctrl-C. Input may be piped too: the lines are sent, and
the end of the input leaves. One who joins a room where people talk already sees the last lines
each of them said (up to 20), then the new ones.

The nodes find each other over mDNS, on 127.0.0.1 only: both terminals must be on this machine and
use the same mesh name (--mesh, or the MESH_NAME environment variable; "default" otherwise).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import trio

import mesh

TOPIC = "chat.room"
HISTORY = 20  # lines of each member shown to one who joins later


def show(line: str) -> None:
    print(line, flush=True)  # flushed: the output may be a pipe


async def chat(name: str, mesh_name: str) -> None:
    async with mesh.open_node(name, mesh=mesh_name) as node:
        with trio.move_on_after(1):  # whoever is in the room already (none: we start it)
            await node.wait_for_peers()
        # Each member keeps what it said last (Settings.history_events): a late joiner sees the
        # last lines of the members there, then the new ones.
        async with node.subscribe(TOPIC, history=HISTORY) as room:
            await talk(node, name, mesh_name, room)


async def talk(node: mesh.Node, name: str, mesh_name: str, room: mesh.Subscription) -> None:
    show(f"* you are {name} in mesh {mesh_name!r}; type a line to send it, Ctrl-D to leave")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(show_members, node)
        nursery.start_soon(show_lines, room)
        await send_lines(node, name)
        nursery.cancel_scope.cancel()
    # Leaving the node's block then says goodbye: the others print "* <name> left" at once.


async def send_lines(node: mesh.Node, name: str) -> None:
    """Publish each line of stdin, until its end."""
    # Read in a thread (abandoned if we are cancelled): a plain blocking read suits a terminal
    # and a pipe alike.
    while line := await trio.to_thread.run_sync(sys.stdin.readline, abandon_on_cancel=True):
        if text := line.rstrip("\n"):
            # A member that stopped reading (a suspended process) holds publishing back rather
            # than losing lines; don't wait for it forever.
            with trio.fail_after(10):
                await node.publish(TOPIC, {"name": name, "text": text})


async def show_lines(room: mesh.Subscription) -> None:
    async for message in room:  # our own lines do not come back to us
        if isinstance(message, mesh.Gap):  # lines we missed and the sender no longer keeps
            show(f"* {message.last_seq - message.first_seq + 1} message numbers lost")
            continue
        body = message.body
        if isinstance(body, dict):  # from another chat.py
            show(f"{body.get('name')}: {body.get('text')}")
        else:  # from anything else that publishes on the topic: shown as it came
            show(f"{message.sender[:8]}: {body!r}")


async def show_members(node: mesh.Node) -> None:
    async with node.watch_peers() as changes:
        for peer in node.peers.values():  # found before we started watching
            await welcome(node, peer)
        async for change in changes:
            if isinstance(change, mesh.PeerJoined):
                await welcome(node, change.peer)
            elif isinstance(change, mesh.PeerLeft):
                show(f"* {change.peer.name} left ({change.reason})")
            elif isinstance(change, mesh.PeerStateChanged):
                show(f"* {change.peer.name} is {change.peer.state.value} ({change.reason})")


async def welcome(node: mesh.Node, peer: mesh.Peer) -> None:
    # A peer is announced once the subscriptions are wired both ways, so that the lines sent
    # from now on reach it, and its lines reach us.
    try:
        await node.wait_for_peers(names=[peer.name], timeout=10)
    except mesh.MissingPeersError:
        return  # gone again already
    show(f"* {peer.name} joined")


def main() -> None:
    parser = argparse.ArgumentParser(description="A chat room over a mesh on 127.0.0.1.")
    parser.add_argument("name", help="your name in the room")
    parser.add_argument("--mesh", default=os.environ.get("MESH_NAME", "default"))
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C: the node has said goodbye already
        trio.run(chat, args.name, args.mesh)


if __name__ == "__main__":
    main()
