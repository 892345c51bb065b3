"""What every mesh-cli command shares: the mesh options (each also read from the environment),
one-line user errors, and opening a node from the options."""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import select
import signal
import socket
import sys
import textwrap
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from discovery import parse_contact

from .._binding import ALL_INTERFACES
from .._keys import KeyPair, load_allowed
from .._names import check_service as _check_service_name
from .._names import topic_channel
from .._node import Node
from .._open import open_node
from .._types import Settings

#: The environment variables that give the mesh options their defaults.
ENVIRONMENT = {
    "mesh": "MESH_NAME",
    "interface": "MESH_INTERFACE",
    "seeds": "MESH_SEEDS",
    "key": "MESH_KEY",
    "allow": "MESH_ALLOW",
}


class UserError(Exception):
    """Something the user can fix: printed as one line, no traceback; `status` is the exit
    status (1: the command could not do its job; 2: it was called wrongly)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line, like every other mistake: the usage is
    one ``--help`` away, and a screen of it buries the line that matters."""

    def error(self, message: str) -> Any:  # argparse's own signature says NoReturn
        self.exit(2, f"{self.prog}: {message} (see '{self.prog} --help')\n")


def mesh_options() -> argparse.ArgumentParser:
    """The options of every command that joins a mesh (a parent parser)."""
    parser = Parser(add_help=False)
    group = parser.add_argument_group("mesh options (each also read from the environment)")
    group.add_argument(
        "--mesh",
        default=os.environ.get(ENVIRONMENT["mesh"]) or "default",
        help="the mesh to join (MESH_NAME; default: default)",
    )
    group.add_argument(
        "--interface",
        default=os.environ.get(ENVIRONMENT["interface"]) or "127.0.0.1",
        help="the IP address to bind to and discover on (MESH_INTERFACE; default: 127.0.0.1; "
        "a LAN needs its address, or 'all' for every interface)",
    )
    group.add_argument(
        "--seed",
        dest="seeds",
        action="append",
        metavar="[KEY@]IP:PORT",
        help="a node's inbox address to join through, for networks without multicast, with "
        "its public key in front for a keyed mesh; repeatable (MESH_SEEDS: comma-separated)",
    )
    group.add_argument(
        "--key",
        default=os.environ.get(ENVIRONMENT["key"]) or None,
        metavar="PATH",
        help="this node's key pair (from 'mesh-cli keygen'): the mesh is then members only, "
        "CurveZMQ on every connection (MESH_KEY)",
    )
    group.add_argument(
        "--allow",
        default=os.environ.get(ENVIRONMENT["allow"]) or None,
        metavar="PATH",
        help="the members' public keys: a file, one a line, or a directory of *.pub files "
        "(MESH_ALLOW; without it, only nodes with the same key pair)",
    )
    group.add_argument(
        "--insecure",
        action="store_true",
        help="run open (no key) on an interface other than loopback: anyone who can reach "
        "it can join",
    )
    return parser


def json_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def seeds_of(args: argparse.Namespace) -> list[str]:
    if args.seeds is not None:
        return list(args.seeds)
    from_environment = os.environ.get(ENVIRONMENT["seeds"], "")
    return [seed.strip() for seed in from_environment.split(",") if seed.strip()]


@asynccontextmanager
async def open_cli_node(
    args: argparse.Namespace,
    name: str | None = None,
    settings: Settings | None = None,
    **options: Any,
) -> AsyncIterator[Node]:
    """`open_node` from the mesh options; a bad interface, seed or busy port is a `UserError`."""
    interface = ALL_INTERFACES if args.interface in ("all", ALL_INTERFACES) else args.interface
    seeds = seeds_of(args)
    for seed in seeds:  # checked here, so that the message names the seed, not the interface
        try:
            parse_contact(seed)
        except ValueError as exc:
            source = "--seed" if args.seeds is not None else ENVIRONMENT["seeds"]
            raise UserError(f"bad {source}: {exc}", status=2) from None
    opened = False
    try:
        async with open_node(
            name,
            mesh=args.mesh,
            interface=interface,
            seeds=seeds,
            settings=settings,
            **key_options(args),
            **options,
        ) as node:
            opened = True
            yield node
    except (ValueError, OSError) as exc:
        if opened:
            raise
        # A ValueError is a bad option (status 2; it names what is wrong: the interface, the
        # name, a port); an OSError, a machine that cannot do it on this interface.
        if isinstance(exc, ValueError):
            raise UserError(f"cannot open a node: {exc}", status=2) from None
        detail = exc.strerror or str(exc)
        raise UserError(f"cannot open a node on {args.interface}: {detail}") from None


def key_options(args: argparse.Namespace) -> dict[str, Any]:
    """`open_node`'s key, allow and insecure from the mesh options; a key or allow list that
    cannot be read is a `UserError`."""
    options: dict[str, Any] = {"insecure": args.insecure}
    try:
        if args.key is not None:
            options["key"] = KeyPair.load(args.key)
        if args.allow is not None:
            options["allow"] = args.allow
            load_allowed(args.allow)  # read here, so a bad list is one line
    except (ValueError, OSError) as exc:
        raise UserError(f"{exc}", status=2) from None
    return options


def check_service(service: str) -> str:
    """`service` if the mesh accepts it as a service name (the node's own rule), else a
    `UserError`."""
    try:
        _check_service_name(service)
    except ValueError as exc:  # UnicodeEncodeError too: a name that is not UTF-8
        raise UserError(f"bad service name {service!r}: {_reason(exc)}", status=2) from None
    return service


def check_topic(topic: str, what: str = "topic") -> str:
    """`topic` if the wire can carry it as a topic or prefix (the wire's own rule), else a
    `UserError`; `what` names it in the message."""
    try:
        topic_channel(topic)
    except ValueError as exc:
        shown = topic if len(topic) <= 40 else f"{topic[:37]}..."
        raise UserError(f"bad {what} {shown!r}: {_reason(exc)}", status=2) from None
    return topic


def _reason(exc: ValueError) -> str:
    if isinstance(exc, UnicodeError):
        return "not valid UTF-8"
    return str(exc)


BODY_HELP = (
    "JSON, or text with --raw; '-' reads it from stdin and @PATH from a file (as they are, a "
    "last newline included; with --raw, bytes that are not UTF-8 are sent as bytes)"
)


def parse_body(text: str, raw: bool) -> Any:
    """A task or event body from the command line: JSON, or the text itself with `raw`.

    ``-`` reads it from stdin and ``@PATH`` from a file, as curl and redis-cli do: JSON, or with
    `raw` the text (bytes if it is not UTF-8). A file that cannot be read is a `UserError`."""
    if text == "-" or text.startswith("@"):
        data = _read_body(text)
        if raw:
            try:
                return data.decode()
            except UnicodeDecodeError:
                return data
        text_or_data: str | bytes = data
        where = "on stdin" if text == "-" else f"in {text[1:]!r}"
    else:
        if raw:
            return text
        text_or_data = text
        where = ""
    try:
        return json.loads(text_or_data)
    except ValueError as exc:  # UnicodeDecodeError too
        raise UserError(
            f"the body{' ' * bool(where)}{where} is not valid JSON ({exc}); pass --raw to send"
            " it as text",
            status=2,
        ) from None


def _read_body(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    path = source[1:]
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read the body from {path!r}: {exc.strerror or exc}", 2) from None


def show_body(body: Any) -> str:
    """A received body as one line: JSON where it can be, else its repr."""
    if isinstance(body, bytes):
        try:
            body = body.decode()
        except UnicodeDecodeError:
            return repr(body)
    try:
        return json.dumps(body, ensure_ascii=False)
    except (TypeError, ValueError):
        return repr(body)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def run_trio(main: Callable[..., Any], *args: Any) -> int:
    """Run an async command; its exit status (an int it returns, else 0)."""
    status = trio.run(main, *args)
    return status if isinstance(status, int) else 0


def add_command(
    commands: Any,
    name: str,
    *,
    help: str,
    description: str,
    example: str,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    """A subcommand's parser, with its example shown under ``--help`` and the ``-v`` option."""
    parser: argparse.ArgumentParser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog=f"example: {example}",
        parents=list(parents),
        formatter_class=_HelpFormat,
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log more of what the node does: -v peers joining and leaving, -vv debugging "
        "detail (warnings are always shown)",
    )
    return parser


class _HelpFormat(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples wrapped paragraph by paragraph; a line that starts with a
    space (a table, say) is kept as it is."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        lines: list[str] = []
        for paragraph in text.split("\n\n"):
            if lines:
                lines.append("")
            if paragraph.startswith(" ") or "\n " in paragraph:
                head, _, table = paragraph.partition("\n ")
                lines += textwrap.wrap(head, width, initial_indent=indent, subsequent_indent=indent)
                if table:
                    lines += [indent + line for line in (" " + table).splitlines()]
            else:
                lines += textwrap.wrap(
                    paragraph, width, initial_indent=indent, subsequent_indent=indent
                )
        return "\n".join(lines)


class _CommandLogFormat(logging.Formatter):
    """``mesh-cli COMMAND: warning: message``: the library's log lines look like the command's
    own (one line each, named), not like bare text from nowhere."""

    def __init__(self, command: str) -> None:
        super().__init__()
        self._command = command

    def format(self, record: logging.LogRecord) -> str:
        message = super().format(record)
        return f"mesh-cli {self._command}: {record.levelname.lower()}: {message}"


def configure_logging(command: str, verbosity: int) -> None:
    """Send log records to stderr, one named line each: every library's warnings, and with
    ``-v`` the mesh's INFO (peers joining and leaving), with ``-vv`` its DEBUG. Calling it again
    replaces the earlier set-up."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        if isinstance(handler.formatter, _CommandLogFormat):
            root.removeHandler(handler)
    handler = logging.StreamHandler()
    handler.setFormatter(_CommandLogFormat(command))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    level = logging.WARNING if verbosity <= 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    for name in _OWN_LOGGERS:
        logging.getLogger(name).setLevel(level)


_OWN_LOGGERS = ("mesh", "discovery")


async def find_peers(
    node: Node, timeout: float, quiet: float = 0.3, first: float = 1.0, seeded: bool = False
) -> None:
    """Give discovery time to find the mesh: return once no peer has joined for `quiet`
    seconds (`first` seconds before the first one: on a busy machine the first answer can take
    longer than 0.3 s, and a ``pub`` that gives up then publishes to nobody), or after `timeout`
    seconds in all; then wait (in what is left of `timeout`) until the peers found are wired
    both ways, so that nothing published from here on is lost. A node given seeds waits up to
    `timeout` for its first peer (`seeded`): a seed is the user saying a node is there."""
    if seeded:
        first = timeout
    deadline = trio.current_time() + timeout
    with trio.move_on_at(deadline):
        async with node.watch_peers() as changes:
            while True:
                with trio.move_on_after(quiet if node.peers else max(quiet, first)):
                    await changes.receive()
                    continue
                break
    if node.peers:
        with trio.move_on_at(deadline):
            await node.wait_for_peers(len(node.peers))


def unanswered_seeds(node: Node, args: argparse.Namespace) -> list[str]:
    """The seeds given (already checked by `open_cli_node`) that no peer of `node` answers at."""
    answered = {address for peer in node.peers.values() for address in peer.record.addresses}
    return [seed for seed in seeds_of(args) if parse_contact(seed)[0] not in answered]


def no_seed_answered(node: Node, args: argparse.Namespace, waited: float | None) -> str | None:
    """What to say when seeds were given and `node` found no peer at all in `waited` seconds
    (a seed nobody answers at is a mistake to name, not an empty mesh); else None."""
    seeds = unanswered_seeds(node, args)
    if node.peers or not seeds:
        return None
    source = "--seed" if args.seeds is not None else ENVIRONMENT["seeds"]
    within = "" if waited is None else f" within {waited:g} s"
    return f"no node answered at {source} {', '.join(seeds)}{within}"


class PeerNames:
    """The names of a node's peers by id, kept after they leave: an event or task is often
    read after its sender has said goodbye (``mesh-cli pub`` leaves at once), and is still
    shown with its sender's name. Run `follow` in a task for as long as names are asked for."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._known: dict[str, str] = {}

    async def follow(
        self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        async with self._node.watch_peers() as changes:
            self._known.update((peer.id, peer.name) for peer in self._node.peers.values())
            task_status.started()
            async for change in changes:
                self._known[change.peer.id] = change.peer.name

    def __call__(self, sender: str) -> str:
        """The sender's name, or the first digits of its id if it was never a peer."""
        peer = self._node.peers.get(sender)
        if peer is not None:
            self._known[sender] = peer.name
        return self._known.get(sender, sender[:8])


@asynccontextmanager
async def open_signal_nursery() -> AsyncIterator[trio.Nursery]:
    """A nursery whose scope SIGINT or SIGTERM cancels, so that Ctrl-C ends a command that runs
    until told to stop normally (its node still leaves gracefully, and it exits 0); it is
    cancelled too when the block ends."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    nursery.cancel_scope.cancel()

            nursery.start_soon(stop_on_signal)
            yield nursery
            nursery.cancel_scope.cancel()


def write_line(line: str) -> bool:
    """Print `line` to stdout at once; False if stdout's reader has gone away (a task printed
    that way is not done: the caller nacks it, then raises `BrokenPipeError` outside the task's
    block, which ends the command quietly)."""
    try:
        print(line, flush=True)
    except BrokenPipeError:
        return False
    return True


READER_GONE = "the worker's output was closed"


def stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone away (asked without writing to it)."""
    poll = select.poll()
    poll.register(sys.stdout.fileno(), 0)  # POLLERR is reported whatever is asked for
    return any(events & select.POLLERR for _, events in poll.poll(0))


def jsonable(body: Any) -> Any:
    """`body` if JSON can carry it, else its text (bytes decoded) or repr."""
    try:
        json.dumps(body)
    except (TypeError, ValueError):
        if isinstance(body, bytes):
            return body.decode(errors="replace")
        return repr(body)
    return body


def command_node_name(command: str) -> str:
    """The name of the node a command joins with: the command, the host and the process."""
    return f"mesh-cli-{command}-{socket.gethostname()}-{os.getpid()}"


def metrics_address(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` of ``--metrics`` (HOST an IP address, ``[...]`` around IPv6, 127.0.0.1 by
    default; PORT 0 to 65535, 0 for an ephemeral one) as (host, port); an
    `argparse.ArgumentTypeError` if bad. (Not `parse_address`: 0.0.0.0 is fine to bind to.)"""
    host, colon, port_text = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    host = host[1:-1] if bracketed else host if colon else "127.0.0.1"
    try:
        if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
            raise ValueError("the port must be 0 to 65535")
        if ipaddress.ip_address(host).version == 6 and not bracketed:
            raise ValueError("an IPv6 host goes in brackets")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give [HOST:]PORT, HOST an IP address ({exc})"
        ) from None
    return host, int(port_text)


def add_metrics_option(parser: argparse.ArgumentParser, who: str = "the node") -> None:
    """``--metrics [HOST:]PORT``: where `who` serves ``GET /metrics`` for Prometheus."""
    parser.add_argument(
        "--metrics",
        type=metrics_address,
        metavar="[HOST:]PORT",
        help=f"serve {who}'s statistics for Prometheus at http://HOST:PORT/metrics "
        "(HOST default 127.0.0.1)",
    )


def metrics_options(args: argparse.Namespace) -> dict[str, Any]:
    """`open_node`'s metrics arguments from ``--metrics`` (none if it was not given)."""
    if args.metrics is None:
        return {}
    host, port = args.metrics
    return {"metrics_host": host, "metrics_port": port}
