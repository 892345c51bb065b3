"""``mesh-cli run``: a node that runs until it is told to stop, optionally a worker whose tasks
are done by any program (``--exec``)."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import sys
from typing import Any

import trio

from .._node import Node
from .._streams import Request, Task, TaskStream
from ._common import (
    READER_GONE,
    UserError,
    add_command,
    add_metrics_option,
    check_service,
    mesh_options,
    metrics_options,
    non_negative_float,
    open_cli_node,
    positive_float,
    positive_int,
    run_trio,
    show_body,
    stdout_closed,
    write_line,
)

_STDERR_KEPT = 300  # characters of a failed command's stderr put in its nack


def add_to(commands: Any) -> None:
    parser = add_command(
        commands,
        "run",
        help="run a node until Ctrl-C or SIGTERM, optionally working for services",
        description="Run a node until SIGINT or SIGTERM, then leave gracefully: stop taking "
        "tasks, let those in hand finish (--grace), hand back the rest, say goodbye. A keyed "
        "node reads its --allow list again on SIGHUP (peers no longer on it are dropped).\n\n"
        "With --service and --exec, each task's body goes to CMD on its stdin (a string as "
        "it is, anything else as JSON) and CMD's exit status acks (0) or nacks it, so any "
        "program becomes a worker. With --service alone, tasks are printed and acked.\n\n"
        "CMD also gets the task in its environment, to make its work idempotent (a task is "
        "sent again when its worker nacks it or is lost, so it can run more than once):\n"
        "  MESH_TASK_ID           the task's number, unique per sender\n"
        "  MESH_TASK_SENDER       the sender's node id (32 hex digits); with MESH_TASK_ID,\n"
        "                         the task's name in the mesh\n"
        "  MESH_TASK_ATTEMPT      1 the first time, then 2, 3, ...\n"
        "  MESH_TASK_REDELIVERED  1 if an earlier attempt was made (attempt > 1), else 0\n"
        "  MESH_SERVICE           the service the task is for\n\n"
        "With --reply, the services are served: CMD's stdout is the reply to a request (a "
        "string; bytes if it is not UTF-8), and its exit status and the tail of its stderr the "
        "error the caller gets (`mesh-cli request`, `Node.request`). Tasks pushed to them are "
        "acked as before.",
        example="mesh-cli run --name thumbs --service thumbnail --exec ./make-thumbnail.sh",
        parents=[mesh_options()],
    )
    parser.add_argument("--name", help="the node's name (default: host name and process id)")
    parser.add_argument(
        "--service",
        dest="services",
        action="append",
        default=[],
        metavar="SERVICE",
        help="a service to work for; repeatable",
    )
    # Not dest="command": that is where the top-level parser puts the subcommand's name.
    parser.add_argument(
        "--exec", dest="exec_command", metavar="CMD", help="the program to run per task"
    )
    parser.add_argument(
        "--reply",
        action="store_true",
        help="serve requests: CMD's stdout is the reply (needs --exec)",
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=1,
        help="tasks run at once per service (default 1)",
    )
    parser.add_argument(
        "--task-timeout",
        type=positive_float,
        metavar="S",
        help="kill CMD and nack the task after S seconds (default: no limit)",
    )
    parser.add_argument(
        "--grace",
        type=non_negative_float,
        default=10.0,
        metavar="S",
        help="on SIGINT/SIGTERM, seconds for the tasks in hand to finish (default 10)",
    )
    parser.add_argument("--pub-port", type=int, default=0, help="fixed port for events")
    parser.add_argument("--pull-port", type=int, default=0, help="fixed port for the inbox")
    add_metrics_option(parser)
    parser.set_defaults(run=_check_and_run)


def _check_and_run(args: argparse.Namespace) -> int:
    for service in args.services:
        check_service(service)
    if args.exec_command is not None:
        if not args.services:
            raise UserError("--exec needs a --service to work for", status=2)
        try:
            argv = shlex.split(args.exec_command)
        except ValueError as exc:
            raise UserError(f"cannot parse --exec: {exc}", status=2) from None
        if not argv or shutil.which(argv[0]) is None:
            raise UserError(f"--exec: no such program: {args.exec_command!r}", status=2)
        args.argv = argv
    elif args.reply:
        raise UserError("--reply needs an --exec whose output is the reply", status=2)
    return run_trio(_run, args)


async def _run(args: argparse.Namespace) -> int:
    async with (
        open_cli_node(
            args,
            args.name,
            pub_port=args.pub_port,
            pull_port=args.pull_port,
            **metrics_options(args),
        ) as node,
        trio.open_nursery() as nursery,
    ):
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as signals:
            for service in args.services:
                await nursery.start(_work, node, service, args)
            doing = "serving" if args.reply else "working for"
            services = f" {doing} {', '.join(args.services)}" if args.services else ""
            metrics = (
                f"; metrics at http://{node.metrics_address}/metrics"
                if node.metrics_address is not None
                else ""
            )
            _say(
                f"node {node.name} ({node.id[:8]}) at {node.contact} in mesh {node.mesh!r}"
                f"{services}{metrics}; Ctrl-C to leave"
            )
            async for signum in signals:
                if signum == signal.SIGHUP:
                    _reload_allow(node)
                    continue
                _say(f"{signal.Signals(signum).name}: leaving (up to {args.grace:g} s to finish)")
                break
        await node.drain(args.grace)  # the work loops end once their tasks are done
        nursery.cancel_scope.cancel()
    _say("left")
    return 0


def _reload_allow(node: Node) -> None:
    """SIGHUP: read the allow list again (a keyed node's); a list that cannot be read leaves
    the old one in force."""
    if node.record.public_key is None:
        _say("SIGHUP: this node is not keyed, it has no allow list to reload")
        return
    try:
        node.reload_allow()
    except (ValueError, OSError) as exc:
        _say(f"SIGHUP: allow list not reloaded, the old one stays: {exc}")
        return
    _say(f"SIGHUP: allow list reloaded; {len(node.peers)} peers")


async def _work(
    node: Node, service: str, args: argparse.Namespace, task_status: trio.TaskStatus[None]
) -> None:
    offer = node.serve if args.reply else node.work
    async with offer(service) as stream, trio.open_nursery() as workers:
        for _ in range(args.concurrency):
            workers.start_soon(_do_tasks, stream, args)
        task_status.started()


async def _do_tasks(stream: TaskStream, args: argparse.Namespace) -> None:
    async for task in stream:
        reader_gone = False
        # Acks at the end (a request: replies None); nacks (fails) if cancelled or broken.
        async with task:
            if args.exec_command is None:
                reader_gone = not write_line(f"{task.service} {show_body(task.body)}")
                if reader_gone:
                    await task.nack(READER_GONE)
            else:
                try:
                    output = await _execute(task, args)
                    if args.reply:
                        await _reply(task, output)
                except CommandFailed as exc:
                    # CMD killed by SIGPIPE as our stdout's reader left: not the task's fault.
                    reader_gone = exc.signal == signal.SIGPIPE and stdout_closed()
                    if not reader_gone:
                        what = "request" if isinstance(task, Request) else "task"
                        _say(
                            f"{what} {task.id} ({task.service}, attempt {task.attempt}) failed:"
                            f" {exc}"
                        )
                    # (A task: nacked, to go elsewhere; a request: its caller gets the error.)
                    await task.fail(READER_GONE if reader_gone else str(exc))
        if reader_gone:
            raise BrokenPipeError


async def _reply(task: Task, output: bytes) -> None:
    """Reply with the command's output: text if it is UTF-8, else bytes."""
    try:
        reply: str | bytes = output.decode()
    except UnicodeDecodeError:
        reply = output
    try:
        await task.reply(reply)
    except ValueError as exc:  # too large for a frame: the caller got an error saying so
        _say(f"request {task.id} ({task.service}): {exc}")


async def _execute(task: Task, args: argparse.Namespace) -> bytes:
    """Run the command with the task's body on stdin; its output (with --reply: else it goes
    to this process's stdout, and this returns b""). Raises `CommandFailed` if it fails."""
    body = task.body
    if isinstance(body, str):
        data = body.encode()
    elif isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()
    with trio.move_on_after(args.task_timeout or float("inf")) as timer:
        done = await trio.run_process(
            args.argv,
            env=_task_environment(task),
            stdin=data,
            capture_stderr=True,
            check=False,
            **({"capture_stdout": True} if args.reply else {"stdout": sys.stdout.fileno()}),
        )
    if timer.cancelled_caught:
        raise CommandFailed(f"killed after {args.task_timeout:g} s (--task-timeout)")
    if done.returncode != 0:
        error = done.stderr.decode(errors="replace").strip()[-_STDERR_KEPT:]
        raise CommandFailed(
            f"exit status {done.returncode}" + (f": {error}" if error else ""),
            signal=-done.returncode if done.returncode < 0 else None,
        )
    return done.stdout or b""


def _task_environment(task: Task) -> dict[str, str]:
    """This process's environment and the task's details (documented under ``run --help``)."""
    return {
        **os.environ,
        "MESH_TASK_ID": str(task.id),
        "MESH_TASK_SENDER": task.sender,
        "MESH_TASK_ATTEMPT": str(task.attempt),
        "MESH_TASK_REDELIVERED": "1" if task.redelivered else "0",
        "MESH_SERVICE": task.service,
    }


class CommandFailed(Exception):
    """The --exec command failed on a task (its message goes in the nack); `signal` is the
    signal that killed it, if one did."""

    def __init__(self, message: str, signal: int | None = None) -> None:
        super().__init__(message)
        self.signal = signal


def _say(line: str) -> None:
    print(f"mesh-cli run: {line}", file=sys.stderr, flush=True)
