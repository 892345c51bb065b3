"""mesh-cli: inspect and drive a mesh from the shell.

Commands, one module each: ``peers``, ``run``, ``pub``/``sub``, ``push``/``work``, ``demo``
and ``bench``. Every command that joins a mesh takes the options of `_common.mesh_options`
(``--mesh``, ``--interface``, ``--seed``, each also read from the environment). A mistake the
user can fix (`_common.UserError`, or a bad option) prints one line and exits non-zero; Ctrl-C
exits with 130 after the node has left.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .. import __version__
from . import _bench, _demo, _peers, _pubsub, _run, _tasks
from ._common import UserError, configure_logging

_COMMANDS = [_demo, _peers, _run, _pubsub, _tasks, _bench]


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mesh-cli`` console script; its exit status."""
    parser = argparse.ArgumentParser(
        prog="mesh-cli",
        description="Inspect and drive a brokerless mesh.",
        epilog="Run 'mesh-cli COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"mesh-cli {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.add_to(commands)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    configure_logging(args.command, args.verbose)
    try:
        status: int = args.run(args)
    except UserError as exc:
        print(f"mesh-cli {args.command}: {exc}", file=sys.stderr)
        return exc.status
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:  # Ctrl-C that reached trio's tasks
        if group.split(KeyboardInterrupt)[1] is None:
            return 130
        raise
    return status


if __name__ == "__main__":
    sys.exit(main())
