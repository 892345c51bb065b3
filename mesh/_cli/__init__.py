"""mesh-cli: inspect and drive a mesh from the shell.

Commands, one module each: ``peers``, ``wait``, ``run``, ``pub``/``sub``, ``push``/``work``,
``demo``, ``bench``, ``keygen`` and ``completion``. Every command that joins a mesh takes the
options of `_common.mesh_options` (``--mesh``, ``--interface``, ``--seed``, ``--key``, ``--allow``,
``--insecure``, each but the last also read from the environment). A mistake the user can fix
(`_common.UserError`, or a bad option) prints one line and exits non-zero; Ctrl-C exits with 130
after the node has left. A reader that goes away (``mesh-cli sub x | head -1``) ends the command
quietly, as it ends ``cat``: the node leaves, and the exit status is 141, what a shell shows for
``cat`` killed by SIGPIPE.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .. import __version__
from . import _bench, _completion, _demo, _keygen, _peers, _pubsub, _run, _tasks, _wait
from ._common import Parser, UserError, configure_logging

_COMMANDS = [_demo, _peers, _wait, _run, _pubsub, _tasks, _bench, _keygen, _completion]

#: The exit status of a command whose reader went away: 128 + SIGPIPE, as a shell reports
#: ``cat`` killed by it.
BROKEN_PIPE = 141


def build_parser() -> argparse.ArgumentParser:
    """The parser of every command (`_completion` reads it too)."""
    parser = Parser(
        prog="mesh-cli",
        description="Inspect and drive a brokerless mesh.",
        epilog="Run 'mesh-cli COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"mesh-cli {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in _COMMANDS:
        command.add_to(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mesh-cli`` console script; its exit status."""
    parser = build_parser()
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
    except BrokenPipeError:
        return _reader_gone()
    except BaseExceptionGroup as group:  # from trio's tasks: Ctrl-C, or the reader gone
        _, rest = group.split((KeyboardInterrupt, BrokenPipeError))
        if rest is not None:
            raise
        if group.subgroup(BrokenPipeError) is not None:
            return _reader_gone()
        return 130
    return status


def _reader_gone() -> int:
    """Point stdout at /dev/null, so that the interpreter's last flush of what is still
    buffered does not fail again (and print "Exception ignored ..."); the status to exit with."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
