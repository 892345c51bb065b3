"""``mesh-cli pub`` and ``mesh-cli sub``: events from and to the shell."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import trio

from .._node import Node
from .._streams import Subscription
from .._types import Gap
from ._common import (
    BODY_HELP,
    PeerNames,
    UserError,
    add_command,
    check_topic,
    command_node_name,
    find_peers,
    json_option,
    jsonable,
    mesh_options,
    no_seed_answered,
    open_cli_node,
    open_signal_nursery,
    parse_body,
    positive_float,
    positive_int,
    run_trio,
    seeds_of,
    show_body,
)


def add_to(commands: Any) -> None:
    pub = add_command(
        commands,
        "pub",
        help="publish events",
        description="Join the mesh, wait until the peers found are wired (so none of them "
        "misses an event), publish BODY on TOPIC, and leave. BODY is JSON unless --raw; "
        "'-' reads it from stdin, @PATH from a file. Exits 1 if --seed was given and no node "
        "answered there.",
        example="mesh-cli pub order.created '{\"id\": 42}' --count 10 --rate 5",
        parents=[mesh_options()],
    )
    pub.add_argument("topic", metavar="TOPIC")
    pub.add_argument("body", metavar="BODY", help=BODY_HELP)
    pub.add_argument("--raw", action="store_true", help="send BODY as text, not JSON")
    pub.add_argument("--count", type=positive_int, default=1, help="events to publish")
    pub.add_argument("--rate", type=positive_float, help="events per second (default: at once)")
    pub.add_argument(
        "--wait",
        type=positive_float,
        default=3.0,
        metavar="S",
        help="most seconds to spend finding subscribers before publishing (default 3)",
    )
    pub.set_defaults(run=lambda args: run_trio(_pub, args))

    sub = add_command(
        commands,
        "sub",
        help="print events",
        description="Subscribe to every topic that starts with PREFIX ('' for all) and print "
        "one line per event: topic, sender, body. Runs until Ctrl-C or --count events. With "
        "--history N it first finds the mesh (up to 3 s) and prints the last N events each "
        "publisher keeps on PREFIX, then the live ones.",
        example="mesh-cli sub order. --count 10 --json",
        parents=[mesh_options()],
    )
    sub.add_argument("prefix", metavar="PREFIX")
    sub.add_argument("--count", type=positive_int, help="exit after this many events")
    sub.add_argument(
        "--timeout",
        type=positive_float,
        metavar="S",
        help="exit with status 1 if --count events have not arrived after S seconds",
    )
    sub.add_argument(
        "--history",
        type=positive_int,
        metavar="N",
        help="start with the last N events each publisher there keeps on PREFIX",
    )
    json_option(sub, "one JSON object per event (topic, sender, sender_name, seq, body)")
    sub.set_defaults(run=lambda args: run_trio(_sub, args))


async def _pub(args: argparse.Namespace) -> int:
    check_topic(args.topic)
    body = parse_body(args.body, args.raw)
    async with open_cli_node(args, command_node_name("pub")) as node:
        await find_peers(node, args.wait, seeded=bool(seeds_of(args)))
        if (unanswered := no_seed_answered(node, args, args.wait)) is not None:
            raise UserError(f"{unanswered}; nothing published")
        interval = 0.0 if args.rate is None else 1.0 / args.rate
        next_at = trio.current_time()
        for _ in range(args.count):
            await trio.sleep_until(next_at)
            await node.publish(args.topic, body)
            next_at += interval
        peers = len(node.peers)
    print(
        f"published {args.count} event{'s' * (args.count != 1)} on {args.topic!r}"
        f" with {peers} peer{'s' * (peers != 1)} in the mesh",
        file=sys.stderr,
    )
    return 0


async def _subscribe(
    node: Node, args: argparse.Namespace, task_status: trio.TaskStatus[Subscription]
) -> None:
    """Hold the subscription open (the signal nursery's cancellation ends it)."""
    async with node.subscribe(args.prefix, history=args.history or 0) as events:
        task_status.started(events)
        await trio.sleep_forever()


def _gap_line(gap: Gap, sender: str, as_json: bool) -> str:
    """How `mesh-cli sub` shows events it missed for good."""
    if as_json:
        return json.dumps(
            {
                "gap": True,
                "topic": gap.topic,
                "sender": gap.sender,
                "sender_name": sender,
                "first_seq": gap.first_seq,
                "last_seq": gap.last_seq,
                "reason": gap.reason,
            }
        )
    return f"# gap: {gap.topic} {sender} events {gap.first_seq}..{gap.last_seq} lost ({gap.reason})"


async def _sub(args: argparse.Namespace) -> int:
    check_topic(args.prefix, "prefix")
    count = args.count if args.count is not None else math.inf
    received = 0
    async with (
        open_cli_node(args, command_node_name("sub")) as node,
        open_signal_nursery() as nursery,
    ):
        if args.history:  # its peers first (at most 3 s), or there is nobody to ask
            await find_peers(node, 3.0, seeded=bool(seeds_of(args)))
        events = await nursery.start(_subscribe, node, args)
        names = PeerNames(node)
        await nursery.start(names.follow)
        # Said once Ctrl-C is handled: from here on it leaves cleanly (status 0).
        print(
            f"subscribed to {args.prefix!r} in mesh {node.mesh!r} as {node.name}",
            file=sys.stderr,
            flush=True,
        )
        with trio.move_on_after(args.timeout or math.inf):
            async for message in events:
                sender = names(message.sender)
                if isinstance(message, Gap):
                    print(_gap_line(message, sender, args.json), flush=True)
                    continue
                if args.json:
                    line = json.dumps(
                        {
                            "topic": message.topic,
                            "sender": message.sender,
                            "sender_name": sender,
                            "seq": message.seq,
                            "body": jsonable(message.body),
                        }
                    )
                else:
                    line = f"{message.topic} {sender} {show_body(message.body)}"
                print(line, flush=True)
                received += 1
                if received >= count:
                    break
    if received < count and args.timeout is not None:
        print(
            f"mesh-cli sub: {received} of {args.count} events in {args.timeout:g} s",
            file=sys.stderr,
        )
        return 1
    return 0
