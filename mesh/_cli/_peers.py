"""``mesh-cli peers``: who is in the mesh, as a table, JSON, or a live view."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections import deque
from typing import Any

import trio

from .._node import Node
from .._types import PeerHealth
from ._common import (
    UserError,
    add_command,
    command_node_name,
    find_peers,
    json_option,
    mesh_options,
    no_seed_answered,
    open_cli_node,
    positive_float,
    run_trio,
    seeds_of,
)

_LOG_LINES = 10  # membership changes kept under the live table
_RTT_WAIT = 0.6  # seconds `peers` waits for round trips to be measured


def add_to(commands: Any) -> None:
    parser = add_command(
        commands,
        "peers",
        help="list the peers of a mesh",
        description="Join the mesh as an observer (a node that offers no service), give "
        "discovery a moment, and list the peers found: name, id, address, services, state "
        "and why, when last heard, round-trip time and load.",
        example="mesh-cli peers --mesh orders --json",
        parents=[mesh_options()],
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="a live table, updated in place until Ctrl-C, with membership changes under it",
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=3.0,
        help="most seconds to spend finding peers (default 3; it stops sooner once no new "
        "peer has appeared for a moment)",
    )
    json_option(
        parser,
        "a JSON list of peers (with --watch: one JSON object per line, first each peer "
        "already there as change 'present', then one per change)",
    )
    parser.set_defaults(run=lambda args: run_trio(_peers, args))


async def _peers(args: argparse.Namespace) -> int:
    async with open_cli_node(args, command_node_name("peers")) as node:
        await find_peers(node, args.timeout, seeded=bool(seeds_of(args)))
        if (unanswered := no_seed_answered(node, args, args.timeout)) is not None:
            raise UserError(unanswered)
        if not args.watch:
            await _measure_round_trips(node)
            rows = _rows(node)
            if args.json:
                print(json.dumps(rows, indent=2))
            elif rows:
                print(_table(rows))
            else:
                print(f"no peers found in mesh {args.mesh!r} on {args.interface}", file=sys.stderr)
            return 0
        return await _watch(node, args)


async def _measure_round_trips(node: Node) -> None:
    """Wait (briefly: about two heartbeats at most) until the round trip to every live peer is
    known, so the table has it: the first is measured a beat or two after joining."""
    with trio.move_on_after(_RTT_WAIT):
        while any(  # noqa: ASYNC110 (a short bounded poll of a snapshot)
            health.rtt is None
            for peer_id, health in node.health().items()
            if node.peers[peer_id].state.value == "alive"
        ):
            await trio.sleep(0.05)


async def _watch(node: Node, args: argparse.Namespace) -> int:
    """Redraw the table every half second (when stdout is a terminal; otherwise print the
    table once and then one line per change) until SIGINT or SIGTERM."""
    live = sys.stdout.isatty() and not args.json
    log: deque[str] = deque(maxlen=_LOG_LINES)
    async with trio.open_nursery() as nursery:

        async def stop_on_signal(task_status: trio.TaskStatus[None]) -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                task_status.started()
                async for _ in signals:
                    nursery.cancel_scope.cancel()

        async def follow_changes(task_status: trio.TaskStatus[None]) -> None:
            async with node.watch_peers() as changes:
                if args.json:  # before any change: no checkpoint between watch and snapshot
                    for peer in sorted(node.peers.values(), key=lambda p: (p.name, p.id)):
                        line = _describe_peer(peer, "present", None)
                        print(json.dumps({"time": time.time(), **line}))
                    sys.stdout.flush()
                task_status.started()
                async for change in changes:
                    line = _describe(change)
                    if args.json:
                        print(json.dumps({"time": time.time(), **line}), flush=True)
                    elif live:
                        log.append(f"{time.strftime('%H:%M:%S')} {line['text']}")
                    else:
                        print(f"{time.strftime('%H:%M:%S')} {line['text']}", flush=True)

        # Both started before the table is shown: a peer that joins after it is logged, and
        # Ctrl-C from then on stops cleanly.
        await nursery.start(stop_on_signal)
        await nursery.start(follow_changes)
        if not live and not args.json:
            print(_table(_rows(node)) if node.peers else "no peers yet", flush=True)
        while live:
            title = f"mesh {args.mesh!r} seen from {node.name} - Ctrl-C to stop"
            screen = [title, "", _table(_rows(node)) if node.peers else "no peers yet", ""]
            screen += list(log)
            sys.stdout.write("\x1b[H\x1b[J" + "\n".join(screen) + "\n")
            sys.stdout.flush()
            await trio.sleep(0.5)
    return 0


def _describe(change: Any) -> dict[str, Any]:
    peer = change.peer
    kind = type(change).__name__.removeprefix("Peer").lower()  # joined, updated, ...
    reason = getattr(change, "reason", None)
    text = f"{peer.name} {kind}"
    if kind == "statechanged":
        kind = "state"
        text = f"{peer.name} is {peer.state.value} ({reason})"
    elif kind == "left":
        text = f"{peer.name} left ({reason})"
    return _describe_peer(peer, kind, reason, text)


def _describe_peer(
    peer: Any, kind: str, reason: str | None, text: str | None = None
) -> dict[str, Any]:
    return {
        "change": kind,
        "id": peer.id,
        "name": peer.name,
        "state": peer.state.value,
        "reason": reason,
        "text": text if text is not None else f"{peer.name} {kind}",
    }


def _rows(node: Node) -> list[dict[str, Any]]:
    health = node.health()
    rows = []
    for peer in sorted(node.peers.values(), key=lambda p: (p.name, p.id)):
        record = peer.record
        status: PeerHealth | None = health.get(peer.id)
        rows.append(
            {
                "id": peer.id,
                "name": peer.name,
                "mesh": record.mesh,
                "address": peer.address,
                "endpoints": {"pub": record.pub_endpoint, "pull": record.pull_endpoint},
                "services": sorted(peer.services),
                "state": peer.state.value,
                "reason": None if status is None else status.reason,
                "last_heard": None if status is None else status.last_heard,
                "rtt": None if status is None else status.rtt,
                "load": None if status is None else status.load,
            }
        )
    return rows


def _table(rows: list[dict[str, Any]]) -> str:
    header = ["NAME", "ID", "ADDRESS", "SERVICES", "STATE", "HEARD", "RTT", "LOAD"]
    lines = [header]
    for row in rows:
        state = row["state"] if not row["reason"] else f"{row['state']} ({row['reason']})"
        lines.append(
            [
                row["name"],
                row["id"][:8],
                row["address"],
                ",".join(row["services"]) or "-",
                state,
                _ago(row["last_heard"]),
                "-" if row["rtt"] is None else f"{row['rtt'] * 1000:.1f} ms",
                "-" if row["load"] is None else str(row["load"]),
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _ago(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms ago" if seconds < 10 else f"{seconds:.0f} s ago"
