"""Request/reply: the pure rules (a request's time to live, its attempts, a caller giving up),
then nodes on real sockets over 127.0.0.1: replies, errors, deadlines, failover to another
provider, and a reply accepted only from the provider the request went to."""

from __future__ import annotations

import contextlib
import math
import textwrap
from contextlib import AsyncExitStack
from typing import Any

import pytest
import trio
import trio.testing

import mesh
from mesh._requests import MAX_TTL_MS, Calls, ttl_ms
from mesh._routing import Dispatcher, InFlightTask, Returned, returned
from mesh._wire import Kind

from . import inside
from .conftest import peered_nodes, python_process, wait_until

A = b"\xaa" * 16


def request(task_id: int, attempt: int, deadline: float = math.inf) -> InFlightTask:
    return InFlightTask(task_id, "price", {"n": task_id}, A, attempt, 100.0, deadline)


# -- pure rules ---------------------------------------------------------------------------------


def test_time_to_live_is_whole_milliseconds_rounded_up() -> None:
    assert ttl_ms(math.inf, 100.0) == 0  # no deadline
    assert ttl_ms(102.5, 100.0) == 2500
    assert ttl_ms(100.0001, 100.0) == 1  # a provider never gives up before its caller
    assert ttl_ms(99.0, 100.0) == 1  # passed: the least there is, never "none"
    assert ttl_ms(100.0 + MAX_TTL_MS / 1000 + 1, 100.0) == 0  # too long to say: none


def test_requests_have_their_own_attempts() -> None:
    task = InFlightTask(1, "price", None, A, 2, 100.0)
    second = request(2, 2)
    first = request(3, 1)
    fate = returned([task, second, first], max_attempts=5, max_request_attempts=2)
    assert fate == Returned((task, first), (second,))
    # Without a limit of their own, requests count as tasks.
    assert returned([second], max_attempts=5) == Returned((second,), ())


def test_a_cancelled_request_leaves_flight_and_its_late_reply_settles_nothing() -> None:
    dispatcher = Dispatcher(max_in_flight=2)
    dispatcher.sent(request(1, 1))
    assert dispatcher.in_flight(A) == 1
    assert dispatcher.cancel(1) == request(1, 1)
    assert dispatcher.in_flight(A) == 0
    assert dispatcher.settle(A, 1) is None
    assert dispatcher.cancel(1) is None


async def test_each_caller_times_out_at_its_own_deadline_and_answers_win_before(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = Calls()
    outcomes: dict[int, tuple[str, float]] = {}
    aborted: list[int] = []

    async def call(request_id: int, deadline: float) -> None:
        try:
            value = await calls.wait(
                request_id,
                deadline,
                lambda: TimeoutError(request_id),
                lambda: aborted.append(request_id),
            )
            outcomes[request_id] = (f"reply {value}", trio.current_time())
        except TimeoutError:
            outcomes[request_id] = ("timeout", trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(calls.expire_calls)
        start = trio.current_time()
        # Deadlines out of order, one answered in time, one with none at all.
        for request_id, after in [(1, 5.0), (2, 2.0), (3, 9.0), (4, 3.0), (5, math.inf)]:
            nursery.start_soon(call, request_id, start + after)
        await trio.sleep(1)
        assert calls.answer(3, "early")
        await trio.sleep(20)
        assert calls.answer(5, "late")
        assert not calls.answer(1, "too late")  # it timed out: nobody waits
        await trio.sleep(1)
        nursery.cancel_scope.cancel()
    assert outcomes == {
        1: ("timeout", start + 5.0),
        2: ("timeout", start + 2.0),
        3: ("reply early", start + 1.0),
        4: ("timeout", start + 3.0),
        5: ("reply late", start + 21.0),
    }
    assert sorted(aborted) == [1, 2, 4]  # each timed-out request left flight


async def test_the_deadline_heap_stays_the_size_of_the_calls_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls = Calls()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(calls.expire_calls)
        for request_id in range(10_000):  # each answered at once, its deadline far off
            nursery.start_soon(calls.wait, request_id, 1e9, TimeoutError, lambda: None)
            await trio.testing.wait_all_tasks_blocked()
            assert calls.answer(request_id, None)
            assert len(calls._deadlines) <= 2 * len(calls) + 1025
        nursery.cancel_scope.cancel()


# -- on real sockets ----------------------------------------------------------------------------


async def echo(requests: mesh.TaskStream, name: str = "") -> None:
    async for item in requests:
        await item.reply({"body": item.body, "by": name})


async def test_a_request_gets_its_reply_and_every_kind_of_body_arrives_intact() -> None:
    bodies: list[Any] = [None, 0, -1, 2**63, 1.5, "", "é", b"\x00\xff", [1, [2]], {"k": {"v": 1}}]
    with trio.fail_after(10):
        async with peered_nodes() as (caller, provider):
            async with provider.serve("echo") as requests, trio.open_nursery() as nursery:
                nursery.start_soon(echo, requests, "b")
                await caller.wait_for_peers(service="echo", timeout=5)
                for body in bodies:
                    assert await caller.request("echo", body) == {"body": body, "by": "b"}
                with pytest.raises(TypeError):
                    await caller.request("echo", {1, 2})  # nothing sent, nothing counted
                nursery.cancel_scope.cancel()
            stats, served = caller.statistics(), provider.statistics()
    assert (stats.requests_sent, stats.replies_received) == (len(bodies), len(bodies))
    assert (stats.requests_failed, stats.requests_timed_out) == (0, 0)
    assert stats.tasks_in_flight == 0
    assert stats.services["echo"].pushed == len(bodies)
    assert served.replies_sent == len(bodies)


async def test_errors_reach_the_caller_as_remote_errors() -> None:
    with trio.fail_after(10):
        async with peered_nodes() as (caller, provider):

            async def serve() -> None:
                async with provider.serve("calc") as requests:
                    async for item in requests:
                        assert isinstance(item, mesh.Request)
                        async with item:
                            if item.body == "raise":
                                raise ValueError("no such thing")
                            if item.body == "fail":
                                await item.fail("out of stock")
                            if item.body == "unpackable":
                                with pytest.raises(TypeError):
                                    await item.reply({1, 2})
                            # "silent": leaves the block without a reply, as a task: None

            async with trio.open_nursery() as nursery:
                nursery.start_soon(serve)
                await caller.wait_for_peers(service="calc", timeout=5)
                for body, message in [
                    ("raise", "ValueError: no such thing"),
                    ("fail", "out of stock"),
                    ("unpackable", "the reply could not be sent: "),
                ]:
                    with pytest.raises(mesh.RemoteError) as caught:
                        await caller.request("calc", body)
                    assert caught.value.service == "calc"
                    assert caught.value.message.startswith(message)
                assert await caller.request("calc", "silent") is None
                nursery.cancel_scope.cancel()
            assert caller.statistics().requests_failed == 3


async def test_answering_twice_is_an_error_of_the_provider() -> None:
    with trio.fail_after(10):
        async with peered_nodes() as (caller, provider):
            async with provider.serve("once") as requests, trio.open_nursery() as nursery:

                async def serve() -> None:
                    item = await requests.receive()
                    await item.reply(1)
                    with pytest.raises(RuntimeError, match="answered already"):
                        await item.reply(2)
                    await item.fail("ignored")  # does nothing, as ack/nack of a settled task

                nursery.start_soon(serve)
                await caller.wait_for_peers(service="once", timeout=5)
                assert await caller.request("once", None) == 1


async def test_leaving_the_serve_block_fails_what_was_taken_and_hands_on_the_rest() -> None:
    with trio.fail_after(15):
        async with peered_nodes("caller", "first", "second") as (caller, first, second):
            taken = trio.Event()
            results: dict[int, Any] = {}

            async def ask(n: int) -> None:
                try:
                    results[n] = await caller.request("job", n, timeout=10)
                except mesh.RemoteError as exc:
                    results[n] = exc.message

            async def crashing_provider() -> None:
                async with first.serve("job") as requests:
                    await requests.receive()  # taken, never answered
                    taken.set()
                    await wait_until(lambda: len(requests._buffer) == 2, "two more queued")
                    raise KeyError("lost it")

            async def crash() -> None:
                with contextlib.suppress(KeyError):
                    await crashing_provider()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(crash)
                await caller.wait_for_peers(service="job", timeout=5)
                nursery.start_soon(ask, 0)
                await taken.wait()
                nursery.start_soon(ask, 1)
                nursery.start_soon(ask, 2)
                await wait_until(lambda: 0 in results, "the error reply")
                # The two not taken were handed back; they wait for a provider, and get one.
                async with second.serve("job") as requests:
                    nursery.start_soon(echo, requests, "second")
                    await wait_until(lambda: len(results) == 3, "every answer")
                    nursery.cancel_scope.cancel()
    assert results[0] == "KeyError: 'lost it'"
    assert results[1] == {"body": 1, "by": "second"}
    assert results[2] == {"body": 2, "by": "second"}


async def test_a_request_nobody_answers_in_time_times_out_and_its_provider_drops_it() -> None:
    with trio.fail_after(10):
        async with peered_nodes() as (caller, provider):
            async with provider.serve("slow") as requests:
                await caller.wait_for_peers(service="slow", timeout=5)
                with pytest.raises(TimeoutError, match=r"no reply from 'slow' within 0\.1 s"):
                    await caller.request("slow", 1, timeout=0.1)
                assert caller.statistics().requests_timed_out == 1
                assert caller.statistics().tasks_in_flight == 0  # a late reply settles nothing
                await wait_until(lambda: len(requests._buffer) == 1, "the request arrived")
                await trio.sleep(0.15)  # past its deadline: the point of the test
                # The deadline travelled with the request: nobody reads it now.
                with trio.move_on_after(0.1):
                    await requests.receive()
                    raise AssertionError("an expired request was handed out")
                assert provider.statistics().requests_expired == 1
                # The next one is read and answered.
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(echo, requests)
                    assert await caller.request("slow", 2, timeout=5) == {"body": 2, "by": ""}
                    nursery.cancel_scope.cancel()


async def test_with_no_provider_the_caller_is_told_at_its_deadline() -> None:
    with trio.fail_after(10):
        async with peered_nodes() as (caller, _):
            with pytest.raises(mesh.NoWorkerError):
                await caller.request("nobody", 1, timeout=0.1)
            with pytest.raises(ValueError, match="service"):
                await caller.request("", 1)


async def test_a_provider_that_drains_before_replying_hands_the_request_on() -> None:
    with trio.fail_after(15):
        async with peered_nodes("caller", "leaves", "stays") as (caller, leaves, stays):
            replies: list[Any] = []

            async def ask() -> None:
                replies.append(await caller.request("job", "x", timeout=10))

            async with leaves.serve("job") as at_leaves, trio.open_nursery() as nursery:
                await caller.wait_for_peers(names=["leaves"], service="job", timeout=5)
                nursery.start_soon(ask)
                await at_leaves.receive()  # taken, not answered within the grace
                await leaves.drain(grace=0.1)
                async with stays.serve("job") as at_stays:
                    nursery.start_soon(echo, at_stays, "stays")
                    await wait_until(lambda: bool(replies), "the reply")
                    nursery.cancel_scope.cancel()
    assert replies == [{"body": "x", "by": "stays"}]
    assert caller.statistics().tasks_redelivered == 1


async def test_after_its_last_attempt_a_request_fails_with_the_reason() -> None:
    settings = mesh.Settings(request_attempts=2)
    with trio.fail_after(10):
        async with peered_nodes("caller", "p1", "p2", settings=settings) as (caller, *providers):
            async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
                for provider in providers:
                    requests = await stack.enter_async_context(provider.serve("busy"))

                    async def refuse(requests: mesh.TaskStream = requests) -> None:
                        async for item in requests:
                            await item.nack("too busy")

                    nursery.start_soon(refuse)
                await caller.wait_for_peers(2, service="busy", timeout=5)
                with pytest.raises(mesh.RemoteError, match="no reply after 2 attempt") as caught:
                    await caller.request("busy", 1)
                assert "too busy" in caught.value.message
                nursery.cancel_scope.cancel()
    stats = caller.statistics()
    assert (stats.requests_failed, stats.tasks_nacked, stats.tasks_given_up) == (1, 2, 1)


async def test_a_serve_loop_takes_pushed_tasks_too_and_a_work_loop_requests() -> None:
    with trio.fail_after(10):
        async with peered_nodes() as (caller, provider):
            async with provider.serve("mixed") as requests, trio.open_nursery() as nursery:
                nursery.start_soon(echo, requests)
                await caller.wait_for_peers(service="mixed", timeout=5)
                await caller.push("mixed", "pushed")  # reply() acks it
                await caller.wait_settled()
                assert caller.statistics().tasks_acked == 1
                nursery.cancel_scope.cancel()
            async with provider.work("plain") as tasks, trio.open_nursery() as nursery:

                async def work() -> None:
                    async for task in tasks:
                        async with task:  # an ack is a reply of None
                            pass

                nursery.start_soon(work)
                await caller.wait_for_peers(service="plain", timeout=5)
                assert await caller.request("plain", 1) is None
                nursery.cancel_scope.cancel()


async def test_a_reply_counts_only_from_the_provider_the_request_went_to() -> None:
    with trio.fail_after(10):
        async with peered_nodes("caller", "provider", "other") as (caller, provider, other):
            async with (
                provider.serve("quote") as requests,
                caller.serve("probe") as probes,
                trio.open_nursery() as nursery,
            ):
                nursery.start_soon(echo, probes)
                await caller.wait_for_peers(service="quote", timeout=5)
                await other.wait_for_peers(service="probe", timeout=5)
                replies: list[Any] = []

                async def ask() -> None:
                    replies.append(await caller.request("quote", 1, timeout=10))

                nursery.start_soon(ask)
                item = await requests.receive()
                # Another member answers in the provider's stead: ignored.
                assert inside.links(other).send(caller.address, Kind.REPLY, [item.id, True], "x")
                # A request on the same link, behind the forgery: once it is answered, the
                # forgery was read.
                assert await other.request("probe", 1) == {"body": 1, "by": ""}
                assert replies == []
                await item.reply("real")
                await wait_until(lambda: bool(replies), "the reply")
                nursery.cancel_scope.cancel()
    assert replies == ["real"]


async def test_a_caller_cancelled_mid_request_leaves_nothing_in_flight() -> None:
    with trio.fail_after(10):
        async with peered_nodes() as (caller, provider):
            async with provider.serve("hold") as requests:
                await caller.wait_for_peers(service="hold", timeout=5)
                with trio.move_on_after(0.05):
                    await caller.request("hold", 1, timeout=math.inf)
                assert caller.statistics().tasks_in_flight == 0
                await wait_until(lambda: len(requests._buffer) == 1, "the request arrived")
                item = await requests.receive()  # no deadline: handed out
                await item.reply("late")  # to nobody: dropped
                await caller.wait_settled()


def test_settings_of_requests_are_validated() -> None:
    with pytest.raises(ValueError, match="request_attempts"):
        mesh.Settings(request_attempts=0)
    with pytest.raises(ValueError, match="request_timeout"):
        mesh.Settings(request_timeout=0)


# -- failover across processes ------------------------------------------------------------------

PROVIDER = textwrap.dedent(
    """
    import sys, trio, mesh

    async def main(seed, name):
        async with mesh.open_node(name, discovery="static", seeds=[seed]) as node:
            async with node.serve("square") as requests:
                await node.wait_for_peers(names=["c0", "c1"], timeout=10)
                print("ready", flush=True)
                async for request in requests:
                    await request.reply({"n": request.body, "square": request.body**2})

    trio.run(main, sys.argv[1], sys.argv[2])
    """
)


async def test_a_provider_killed_mid_stream_costs_no_request_its_reply() -> None:
    total, concurrency = 5000, 16  # from 2 callers, to 3 providers
    sent: dict[int, float] = {}
    answered: dict[int, float] = {}
    with trio.fail_after(60):
        with contextlib.ExitStack() as processes:
            async with peered_nodes("c0", "c1") as callers:
                providers = [
                    processes.enter_context(python_process(PROVIDER, callers[0].contact, f"p{i}"))
                    for i in range(3)
                ]
                for process in providers:
                    assert process.stdout is not None
                    line = await trio.to_thread.run_sync(process.stdout.readline)
                    assert line.strip() == "ready"
                for caller in callers:
                    await caller.wait_for_peers(3, service="square", timeout=10)
                numbers = iter(range(total))

                async def ask(caller: mesh.Node) -> None:
                    for n in numbers:  # shared: each number is asked once, by whoever is free
                        sent[n] = trio.current_time()
                        reply = await caller.request("square", n, timeout=20)
                        answered[n] = trio.current_time()
                        assert reply == {"n": n, "square": n * n}, (n, reply)

                async with trio.open_nursery() as nursery:
                    for caller in callers:
                        for _ in range(concurrency // 2):
                            nursery.start_soon(ask, caller)
                    await wait_until(lambda: len(answered) >= total // 3, "a third answered")
                    providers[1].kill()  # SIGKILL
                    killed_at = trio.current_time()
                    in_flight = [n for n in sent if n not in answered]
    assert sorted(answered) == list(range(total))
    assert in_flight
    latencies = sorted(answered[n] - sent[n] for n in range(total))
    worst_at_kill = max(answered[n] - sent[n] for n in in_flight)
    redelivered = sum(caller.statistics().tasks_redelivered for caller in callers)
    print(
        f"{total} requests, p50 {latencies[total // 2] * 1e3:.2f} ms,"
        f" p99 {latencies[total * 99 // 100] * 1e3:.2f} ms; {len(in_flight)} in flight at the"
        f" kill, the worst answered {worst_at_kill * 1e3:.1f} ms after it was sent"
        f" ({(max(answered[n] for n in in_flight) - killed_at) * 1e3:.1f} ms after the kill);"
        f" {redelivered} sent again"
    )
    assert redelivered > 0  # the killed provider's requests went to the others
    assert all(caller.statistics().requests_failed == 0 for caller in callers)


async def test_a_caller_still_waiting_when_its_node_closes_is_told_not_left_hanging() -> None:
    outcome: list[BaseException] = []
    with trio.fail_after(10):
        async with trio.open_nursery() as outer:
            async with peered_nodes() as (caller, provider), provider.serve("never"):
                await caller.wait_for_peers(service="never", timeout=5)

                async def ask() -> None:
                    try:
                        await caller.request("never", 1, timeout=math.inf)
                    except trio.ClosedResourceError as exc:
                        outcome.append(exc)

                outer.start_soon(ask)  # outside the nodes' blocks: they close under it
                await wait_until(lambda: caller.statistics().requests_sent == 1, "the request")
    assert len(outcome) == 1
