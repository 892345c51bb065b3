"""``mesh-cli push``, ``mesh-cli work`` and ``mesh-cli request``: tasks and requests from and to
the shell."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

import trio

from .._errors import NoWorkerError, RemoteError
from .._types import DeadLetter, NodeStatistics
from ._common import (
    BODY_HELP,
    READER_GONE,
    PeerNames,
    UserError,
    add_command,
    check_service,
    command_node_name,
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
    show_body,
    write_line,
)


def add_to(commands: Any) -> None:
    push = add_command(
        commands,
        "push",
        help="send tasks to a service and wait for their acks",
        description="Join the mesh, send BODY to a worker of SERVICE --count times (the "
        "worker with the most room takes each), and wait until every task is acked. BODY is "
        "JSON unless --raw; '-' reads it from stdin, @PATH from a file. Exits 1 if some task "
        "was not done: given up after the last attempt (each nacked, or its worker lost), or "
        "not acked before --timeout.",
        example='mesh-cli push resize \'{"image": "cat.png"}\' --count 100 --timeout 30',
        parents=[mesh_options()],
    )
    push.add_argument("service", metavar="SERVICE")
    push.add_argument("body", metavar="BODY", help=BODY_HELP)
    push.add_argument("--raw", action="store_true", help="send BODY as text, not JSON")
    push.add_argument("--count", type=positive_int, default=1, help="tasks to send")
    push.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="most seconds for all of it: finding a worker, sending, acks (default 10)",
    )
    push.add_argument(
        "--state-dir",
        metavar="PATH",
        help="keep the tasks in PATH until acked: they are taken at once, worker or not, and a "
        "later push (or run) with the same PATH sends those not done (and its own)",
    )
    json_option(push, "the outcome")
    push.set_defaults(run=lambda args: run_trio(_push, args))

    work = add_command(
        commands,
        "work",
        help="do a service's tasks: print and ack each",
        description="Offer SERVICE to the mesh, print each task it is given (attempt and body) "
        "and ack it. Runs until Ctrl-C or --count tasks; on Ctrl-C it hands back what it "
        "holds and leaves.",
        example="mesh-cli work resize --count 100",
        parents=[mesh_options()],
    )
    work.add_argument("service", metavar="SERVICE")
    work.add_argument("--count", type=positive_int, help="exit after this many tasks")
    json_option(work, "one JSON object per task (service, id, sender, attempt, body)")
    work.set_defaults(run=lambda args: run_trio(_work, args))

    request = add_command(
        commands,
        "request",
        help="send requests to a service and print each reply",
        description="Join the mesh, send BODY to a provider of SERVICE (one that serves it: "
        "`mesh-cli run --service S --exec CMD --reply`, or `Node.serve`) --count times, one "
        "after the other, and print each reply on a line of its own. If the provider is lost "
        "before it replies, the request goes to another. BODY is JSON unless --raw; '-' reads "
        "it from stdin, @PATH from a file. Exits 1 at the first request that gets an error "
        "(printed on stderr) or no reply within --timeout.",
        example='mesh-cli request price \'{"sku": "A1"}\' --timeout 5',
        parents=[mesh_options()],
    )
    request.add_argument("service", metavar="SERVICE")
    request.add_argument("body", metavar="BODY", help=BODY_HELP)
    request.add_argument("--raw", action="store_true", help="send BODY as text, not JSON")
    request.add_argument("--count", type=positive_int, default=1, help="requests to send")
    request.add_argument(
        "--timeout",
        type=positive_float,
        default=10.0,
        metavar="S",
        help="most seconds for each request: finding a provider, its reply (default 10)",
    )
    json_option(request, "one JSON object per reply (service, reply, ms)")
    request.set_defaults(run=lambda args: run_trio(_request, args))


async def _push(args: argparse.Namespace) -> int:
    check_service(args.service)
    body = parse_body(args.body, args.raw)
    deadline = trio.current_time() + args.timeout
    given_up: list[DeadLetter] = []
    durable = args.state_dir is not None
    async with open_cli_node(
        args, command_node_name("push"), dead_letter=given_up.append, state_dir=args.state_dir
    ) as node:
        try:
            for _ in range(args.count):
                left = deadline - trio.current_time()
                await node.push(args.service, body, timeout=left, wait=not durable)
        except NoWorkerError:
            pass  # reported below, with what was done
        with trio.move_on_at(deadline):
            await node.wait_settled()
        stats = node.statistics()
        unanswered = no_seed_answered(node, args, args.timeout)
    if durable:
        return _durable_outcome(args, stats)
    outcome = {
        "service": args.service,
        "tasks": args.count,
        "sent": stats.tasks_pushed,
        "acked": stats.tasks_acked,
        "nacked": stats.tasks_nacked,
        "redelivered": stats.tasks_redelivered,
        "given_up": stats.tasks_given_up,
        "not_done": args.count - stats.tasks_acked,
    }
    if args.json:
        print(json.dumps(outcome))
    else:
        print(
            f"{stats.tasks_acked} of {args.count} tasks for {args.service!r} acked"
            f" ({stats.tasks_nacked} nacked, {stats.tasks_redelivered} redelivered,"
            f" {stats.tasks_given_up} given up)"
        )
    if stats.tasks_pushed == 0:
        if unanswered is not None:
            raise UserError(unanswered)
        raise UserError(f"no worker offers {args.service!r} (waited {args.timeout:g} s)")
    if outcome["not_done"]:
        what = _not_done(args, stats.tasks_pushed, stats.tasks_acked, given_up)
        print(f"mesh-cli push: {what}", file=sys.stderr)
        return 1
    return 0


async def _request(args: argparse.Namespace) -> int:
    check_service(args.service)
    body = parse_body(args.body, args.raw)
    async with open_cli_node(args, command_node_name("request")) as node:
        for _ in range(args.count):
            started = trio.current_time()
            try:
                reply = await node.request(args.service, body, timeout=args.timeout)
            except NoWorkerError:
                unanswered = no_seed_answered(node, args, args.timeout)
                if unanswered is not None:
                    raise UserError(unanswered) from None
                raise UserError(
                    f"no provider serves {args.service!r} (waited {args.timeout:g} s)"
                ) from None
            except RemoteError as exc:
                raise UserError(f"error from {args.service!r}: {exc.message}") from None
            except TimeoutError:
                raise UserError(
                    f"no reply from {args.service!r} within {args.timeout:g} s"
                ) from None
            elapsed = trio.current_time() - started
            if args.json:
                fields = {"service": args.service, "reply": jsonable(reply), "ms": elapsed * 1e3}
                line = json.dumps(fields)
            else:
                # (A text reply is printed as it is, less the line end a command ends it with.)
                line = reply.removesuffix("\n") if isinstance(reply, str) else show_body(reply)
            if not write_line(line):
                raise BrokenPipeError
    return 0


def _durable_outcome(args: argparse.Namespace, stats: NodeStatistics) -> int:
    """push --state-dir: every task was taken; say how many were acked and how many stay in
    the state directory for the next run (exit 1 if some do)."""
    kept = stats.tasks_in_flight + stats.redelivery_queued
    # (What this run settled or kept, less what it pushed: the tasks a run before left.)
    recovered = stats.tasks_acked + stats.tasks_given_up + kept - args.count
    outcome = {
        "service": args.service,
        "tasks": args.count,
        "recovered": recovered,
        "acked": stats.tasks_acked,
        "given_up": stats.tasks_given_up,
        "kept": kept,
    }
    if args.json:
        print(json.dumps(outcome))
    else:
        before = f", {recovered} left by a run before" if recovered else ""
        print(
            f"{stats.tasks_acked} tasks acked ({args.count} pushed now{before}),"
            f" {stats.tasks_given_up} given up, {kept} kept in {args.state_dir}"
        )
    if kept:
        print(
            f"mesh-cli push: {kept} task{'s' * (kept != 1)} not acked within --timeout"
            f" {args.timeout:g} s; kept in {args.state_dir} for the next run",
            file=sys.stderr,
        )
        return 1
    return 0


def _not_done(args: argparse.Namespace, sent: int, acked: int, given_up: list[DeadLetter]) -> str:
    """What became of the tasks that were not acked, in one line: given up after the last
    attempt (with what happened the last time), not acked before --timeout, not sent at all."""
    parts = []
    if given_up:
        last = given_up[-1]
        parts.append(
            f"{_tasks(len(given_up))} given up after {last.attempts} attempts"
            f" (last attempt: {last.reason})"
        )
    waiting = sent - acked - len(given_up)  # a task given up is settled: never waiting
    if waiting > 0:
        parts.append(f"{_tasks(waiting)} not acked before --timeout {args.timeout:g} s")
    if sent < args.count:
        parts.append(
            f"{_tasks(args.count - sent)} not sent: no worker had room before --timeout"
            f" {args.timeout:g} s"
        )
    return "; ".join(parts)


def _tasks(count: int) -> str:
    return f"{count} task{'s' * (count != 1)}"


async def _work(args: argparse.Namespace) -> int:
    check_service(args.service)
    count = args.count if args.count is not None else math.inf
    done = 0
    async with (
        open_cli_node(args, command_node_name("work")) as node,
        node.work(args.service) as tasks,
        open_signal_nursery() as nursery,
    ):
        names = PeerNames(node)
        await nursery.start(names.follow)
        # Said once Ctrl-C is handled: from here on it leaves cleanly (status 0).
        print(
            f"working for {args.service!r} in mesh {node.mesh!r} as {node.name}",
            file=sys.stderr,
            flush=True,
        )
        async for task in tasks:
            async with task:
                sender = names(task.sender)
                if args.json:
                    fields = {
                        "service": task.service,
                        "id": task.id,
                        "sender": task.sender,
                        "sender_name": sender,
                        "attempt": task.attempt,
                        "body": jsonable(task.body),
                    }
                    line = json.dumps(fields)
                else:
                    again = f" (attempt {task.attempt})" if task.redelivered else ""
                    line = f"{task.service} {sender}{again} {show_body(task.body)}"
                if not (printed := write_line(line)):
                    await task.nack(READER_GONE)
            if not printed:
                raise BrokenPipeError
            done += 1
            if done >= count:
                break
    return 0
