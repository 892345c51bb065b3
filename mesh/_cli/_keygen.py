"""``mesh-cli keygen PATH``: a new CurveZMQ key pair for a node of a keyed mesh, in ``PATH``
(mode 0600) and its public key in ``PATH.pub``."""

from __future__ import annotations

import argparse
from typing import Any

from .._keys import KeyPair
from ._common import UserError, add_command


def add_to(commands: Any) -> None:
    parser = add_command(
        commands,
        "keygen",
        help="make a key pair for a node of a keyed (members only) mesh",
        description="Write a new CurveZMQ key pair: PATH holds both keys (mode 0600: whoever "
        "reads it can join as this node) and PATH.pub the public key, one line, to put in the "
        "other members' allow lists (a file of keys, or a directory of .pub files). Never "
        "overwrites a file. Then run nodes with --key PATH --allow LIST (or MESH_KEY, "
        "MESH_ALLOW).",
        example="mesh-cli keygen keys/worker-1 && cp keys/worker-1.pub /etc/mesh/members/",
    )
    parser.add_argument("path", metavar="PATH", help="where to write the key pair")
    parser.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    pair = KeyPair.generate()
    try:
        pair.save(args.path)
    except OSError as exc:
        raise UserError(f"cannot write {args.path}: {exc.strerror or exc}") from None
    print(pair.public)
    return 0
