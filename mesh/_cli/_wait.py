"""``mesh-cli wait``: block a script until the peers it needs are in the mesh and wired."""

from __future__ import annotations

import argparse
from typing import Any

from .._errors import MissingPeersError
from ._common import (
    UserError,
    add_command,
    check_service,
    command_node_name,
    mesh_options,
    no_seed_answered,
    open_cli_node,
    positive_float,
    positive_int,
    run_trio,
)


def add_to(commands: Any) -> None:
    parser = add_command(
        commands,
        "wait",
        help="wait until peers (offering a service) are in the mesh",
        description="Join the mesh as an observer and wait until --count peers (offering "
        "--service, if given) are there and wired both ways, so that what the script does next "
        "reaches them. Prints one line and exits 0 then; exits 1 with one line saying how many "
        "it found if --timeout passes first.",
        example="mesh-cli wait --service thumbnail --count 2 --timeout 30 && "
        "mesh-cli push thumbnail @job.json",
        parents=[mesh_options()],
    )
    parser.add_argument("--service", metavar="SERVICE", help="count only peers offering it")
    parser.add_argument(
        "--count", type=positive_int, default=1, metavar="N", help="peers to wait for (default 1)"
    )
    parser.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="most seconds to wait (default 10)",
    )
    parser.set_defaults(run=lambda args: run_trio(_wait, args))


async def _wait(args: argparse.Namespace) -> int:
    if args.service is not None:
        check_service(args.service)
    offering = f" offering {args.service!r}" if args.service is not None else ""
    async with open_cli_node(args, command_node_name("wait")) as node:
        try:
            peers = await node.wait_for_peers(
                args.count, service=args.service, timeout=args.timeout
            )
        except MissingPeersError:
            found = sum(
                1
                for peer in node.peers.values()
                if args.service is None or args.service in peer.services
            )
            unanswered = no_seed_answered(node, args, None)
            raise UserError(
                f"found {found} of {args.count} peer{'s' * (args.count != 1)}{offering}"
                f" in mesh {args.mesh!r} within {args.timeout:g} s"
                + (f": {unanswered}" if unanswered else "")
            ) from None
        names = ", ".join(sorted(peer.name for peer in peers))
        print(f"{len(peers)} peer{'s' * (len(peers) != 1)}{offering} ready: {names}")
    return 0
