"""The blocking facade (`mesh.blocking`): nodes in threads of their own, driven from plain threads,
from trio and from asyncio, on 127.0.0.1 and peered by seeds. Every wait here is bounded."""

from __future__ import annotations

import asyncio
import functools
import json
import math
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

import mesh
import mesh.blocking
from mesh.blocking import BlockingNode

from . import inside
from .conftest import WAIT, new_mesh_env, wait_until_blocking, zmq_threads

# Peers come from seeds, not mDNS (tests/test_discovery.py covers that).
start = functools.partial(mesh.blocking.start, discovery="static", timeout=10)
open_node = functools.partial(mesh.open_node, discovery="static")
ROOT = Path(__file__).resolve().parent.parent


def mesh_threads() -> list[threading.Thread]:
    """The threads the facade made that are still running."""
    return [t for t in threading.enumerate() if t.name.startswith("mesh-")]


@contextmanager
def two_nodes(**options: Any) -> Iterator[tuple[BlockingNode, BlockingNode]]:
    """Two blocking nodes, "a" and "b", peered both ways, stopped at the end."""
    with start("a", **options) as a, start("b", seeds=[a.contact], **options) as b:
        a.wait_for_peers(names=["b"], timeout=WAIT)
        b.wait_for_peers(names=["a"], timeout=WAIT)
        yield a, b


# -- events -------------------------------------------------------------------------------------


def test_keyed_blocking_nodes_work_and_reload_their_allow_list(tmp_path: Path) -> None:
    pair = mesh.KeyPair.generate()  # shared by both: a node always allows its own key
    members = tmp_path / "members"
    members.write_text(pair.public + "\n")
    with two_nodes(key=pair, allow=members, discovery="static") as (a, b):
        assert a.contact == f"{pair.public}@{a.address}"
        with b.subscribe("t") as subscription:
            a.publish("t", "keyed")
            assert subscription.receive(timeout=WAIT).body == "keyed"
        a.reload_allow()  # the same list: nobody is dropped
        assert b.id in a.peers


def test_events_between_two_blocking_nodes_by_iterator() -> None:
    with two_nodes() as (a, b):
        with b.subscribe("t.") as subscription:
            assert subscription.prefix == "t."
            with pytest.raises(TimeoutError):
                subscription.receive(timeout=0.05)
            for i in range(1000):
                a.publish("other", i)  # filtered out by the prefix
                a.publish("t.count", i)
            first = subscription.receive(timeout=WAIT)
            assert (first.topic, first.body, first.sender) == ("t.count", 0, a.id)
            bodies = [first.body]
            for message in subscription:
                bodies.append(message.body)
                if len(bodies) == 1000:
                    break
            assert bodies == list(range(1000))
        # Closed (the block ended): reading ends, and iteration just stops.
        with pytest.raises(trio.ClosedResourceError):
            subscription.receive(timeout=WAIT)
        assert list(subscription) == []
        subscription.close()  # a second close does nothing


def test_events_between_two_blocking_nodes_by_callback(caplog: pytest.LogCaptureFixture) -> None:
    received: list[Any] = []
    threads: set[str] = set()
    done = threading.Event()

    def on_event(message: mesh.Message) -> None:
        threads.add(threading.current_thread().name)
        if message.body == "bad":
            raise ValueError("the callback failed")
        received.append(message.body)
        if len(received) == 100:
            done.set()

    with two_nodes() as (a, b):
        subscription = b.subscribe("t.", on_event)
        with pytest.raises(RuntimeError, match="callback"):
            subscription.receive(timeout=0.1)
        a.publish("t.x", "bad")  # logged; the events after it still come
        for i in range(100):
            a.publish("t.x", i)
        assert done.wait(WAIT)
        subscription.close(timeout=WAIT)
        assert received == list(range(100))
        # Neither the caller's thread nor the node's: the subscription's own.
        assert threads == {"mesh-subscription 't.'"}
        assert not [t for t in mesh_threads() if t.name.startswith("mesh-subscription")]
    assert "the callback of subscription 't.' failed" in caplog.text


def test_a_slow_callback_does_not_stall_the_node() -> None:
    release = threading.Event()
    stuck = threading.Event()

    def slow(message: mesh.Message) -> None:
        stuck.set()
        release.wait(WAIT)

    with two_nodes() as (a, b):
        b.subscribe("slow", slow)
        fast = b.subscribe("fast")
        done: list[Any] = []
        b.work("w", done.append)
        a.wait_for_peers(service="w", timeout=WAIT)
        a.publish("slow", 0)
        assert stuck.wait(WAIT)
        # While that callback is stuck, b still receives events and does work.
        a.publish("fast", 1)
        assert fast.receive(timeout=WAIT).body == 1
        a.push("w", 2, timeout=WAIT)
        a.wait_settled(timeout=WAIT)
        assert done == [2]
        assert b.statistics().events_received >= 2
        release.set()


async def test_events_between_a_trio_node_and_a_blocking_node() -> None:
    async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    with trio.fail_after(3 * WAIT):
        async with open_node("trio") as node:
            blocking = await in_thread(start, "blocking", seeds=[node.address])
            try:
                await node.wait_for_peers(names=["blocking"], timeout=WAIT)
                await in_thread(blocking.wait_for_peers, names=["trio"], timeout=WAIT)

                # blocking -> trio
                async with node.subscribe("b.") as events:

                    def publish_all() -> None:
                        for i in range(100):
                            blocking.publish("b.x", i)

                    await in_thread(publish_all)
                    assert [(await events.receive()).body for _ in range(100)] == list(range(100))

                # trio -> blocking, read by iterator
                subscription = await in_thread(blocking.subscribe, "t.")
                for i in range(100):
                    await node.publish("t.x", i)
                bodies = await in_thread(
                    lambda: [subscription.receive(timeout=WAIT).body for _ in range(100)]
                )
                assert bodies == list(range(100))

                # trio -> blocking, by callback handing each event back into trio
                token = trio.lowlevel.current_trio_token()
                send, receive = trio.open_memory_channel[mesh.Message](math.inf)

                def hand_over(message: mesh.Message) -> None:
                    trio.from_thread.run_sync(send.send_nowait, message, trio_token=token)

                await in_thread(blocking.subscribe, "c.", hand_over)
                for i in range(100):
                    await node.publish("c.x", i)
                assert [(await receive.receive()).body for _ in range(100)] == list(range(100))
            finally:
                await in_thread(blocking.stop)


# -- work ---------------------------------------------------------------------------------------


def test_push_and_work_ack_every_task() -> None:
    done: list[int] = []
    threads: set[str] = set()
    lock = threading.Lock()

    def handle(body: int) -> None:
        with lock:
            done.append(body)
            threads.add(threading.current_thread().name)

    with two_nodes() as (a, b):
        worker = b.work("resize", handle, threads=3)
        assert worker.service == "resize"
        with pytest.raises(ValueError, match="already works"):
            b.work("resize", handle)
        with pytest.raises(ValueError, match="threads"):
            b.work("other", handle, threads=0)
        a.wait_for_peers(service="resize", timeout=WAIT)
        for i in range(300):
            a.push("resize", i, timeout=WAIT)
        a.wait_settled(timeout=WAIT)
        stats = a.statistics()
        assert (stats.tasks_pushed, stats.tasks_acked, stats.tasks_nacked) == (300, 300, 0)
        # At least once: a task is done twice only if it was sent twice (a false death under
        # a loaded machine can do that).
        assert set(done) == set(range(300))
        assert len(done) - 300 <= stats.tasks_redelivered
        assert threads <= {f"mesh-worker resize {i}" for i in range(3)}
        worker.close(timeout=WAIT)
        assert not [t for t in mesh_threads() if t.name.startswith("mesh-worker")]


def test_a_failing_handler_nacks_and_the_task_comes_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: set[int] = set()
    done: list[int] = []

    def flaky(body: int) -> None:
        if body not in seen:  # fails the first time it sees each task
            seen.add(body)
            raise RuntimeError(f"first try of {body}")
        done.append(body)

    with two_nodes() as (a, b), b.work("w", flaky):
        a.wait_for_peers(service="w", timeout=WAIT)
        for i in range(20):
            a.push("w", i, timeout=WAIT)
        a.wait_settled(timeout=WAIT)
        stats = a.statistics()
        assert stats.tasks_acked == 20
        assert stats.tasks_nacked >= 20  # (more only if a redelivery raced a false death)
        assert stats.tasks_redelivered >= 20
        assert set(done) == set(range(20))
    assert "first try of" in caplog.text


def test_request_and_serve_from_threads(caplog: pytest.LogCaptureFixture) -> None:
    def price(body: dict[str, Any]) -> Any:
        if body["sku"] == "none":
            raise LookupError("no such product")
        if body["sku"] == "odd":
            return {1, 2}  # msgpack cannot carry a set
        return {"sku": body["sku"], "price": 12}

    with two_nodes() as (a, b), b.serve("price", price, threads=2) as server:
        assert server.service == "price"
        a.wait_for_peers(service="price", timeout=WAIT)
        with ThreadPoolExecutor(4) as pool:
            replies = list(pool.map(lambda n: a.request("price", {"sku": f"s{n}"}), range(40)))
        assert replies == [{"sku": f"s{n}", "price": 12} for n in range(40)]
        with pytest.raises(mesh.RemoteError, match="LookupError: no such product"):
            a.request("price", {"sku": "none"}, timeout=WAIT)
        with pytest.raises(mesh.RemoteError, match="the reply could not be sent"):
            a.request("price", {"sku": "odd"}, timeout=WAIT)
        with pytest.raises(TimeoutError):
            a.request("nobody", 1, timeout=0.05)
        stats = a.statistics()
        assert (stats.requests_sent, stats.replies_received, stats.requests_failed) == (42, 40, 2)
    assert "no such product" in caplog.text


async def test_work_between_a_trio_node_and_a_blocking_node() -> None:
    async def in_thread(fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await trio.to_thread.run_sync(functools.partial(fn, *args, **kwargs))

    with trio.fail_after(3 * WAIT):
        async with open_node("trio") as node:
            blocking = await in_thread(start, "blocking", seeds=[node.address])
            try:
                # trio pushes, a blocking handler works
                done: list[int] = []
                await in_thread(blocking.work, "to-blocking", done.append)
                await node.wait_for_peers(service="to-blocking", timeout=WAIT)
                for i in range(50):
                    await node.push("to-blocking", i)
                with trio.fail_after(WAIT):
                    await node.wait_settled()
                assert set(done) == set(range(50))

                # the blocking node pushes, trio works
                async with node.work("to-trio") as tasks:

                    def push_all() -> None:
                        blocking.wait_for_peers(service="to-trio", timeout=WAIT)
                        for i in range(50):
                            blocking.push("to-trio", i, timeout=WAIT)

                    await in_thread(push_all)
                    got = set()
                    async for task in tasks:
                        async with task:
                            got.add(task.body)
                        if len(got) == 50:
                            break
                    assert got == set(range(50))
                    await in_thread(blocking.wait_settled, timeout=WAIT)
                assert (await in_thread(blocking.statistics)).tasks_acked == 50
                # (Sets: delivery is at least once, and a loaded machine may repeat a task.)
            finally:
                await in_thread(blocking.stop)


def test_drain_lets_the_task_in_hand_finish_and_hands_back_the_rest() -> None:
    started, release = threading.Event(), threading.Event()
    done_b: list[int] = []
    done_c: list[int] = []
    lock = threading.Lock()

    def slow(body: int) -> None:  # b's one handler thread: stuck on its first task
        started.set()
        assert release.wait(WAIT)
        done_b.append(body)

    def quick(body: int) -> None:
        with lock:
            done_c.append(body)

    with (
        two_nodes() as (a, b),
        start("c", seeds=[a.address]) as c,
        ThreadPoolExecutor(1) as pool,
    ):
        b.work("w", slow)
        a.wait_for_peers(service="w", timeout=WAIT)
        for i in range(4):
            a.push("w", i, timeout=WAIT)
        assert started.wait(WAIT)
        # One task in the handler's hands, three received and waiting behind it.
        wait_until_blocking(lambda: b.statistics().tasks_received == 4, "b received the 4 tasks")
        c.work("w", quick)
        a.wait_for_peers(2, service="w", timeout=WAIT)

        draining = pool.submit(b.drain, WAIT)
        # The three not started go back to a (nacked), and a sends them to c ...
        wait_until_blocking(lambda: a.statistics().tasks_nacked >= 3, "b handed back 3 tasks")
        assert b.statistics().nacks_sent == 3
        # ... while drain still waits for the handler that holds the fourth.
        assert not draining.done()
        release.set()
        draining.result(timeout=WAIT)  # returns once that handler's task is acked
        assert len(done_b) == 1
        assert b.statistics().acks_sent == 1
        a.wait_settled(timeout=WAIT)
        stats = a.statistics()
        assert stats.tasks_acked == 4
        assert stats.tasks_given_up == 0
        assert set(done_b) | set(done_c) == set(range(4))  # none lost
        assert set(done_c) >= set(range(4)) - set(done_b)
        # b takes no more work, but is still a node.
        with pytest.raises(trio.ClosedResourceError, match="draining"):
            b.work("other", quick)
        assert b.health().keys() == {a.id, c.id}
        b.drain(0)  # a second drain has nothing left to wait for


def test_drain_hands_back_a_task_still_running_after_grace() -> None:
    started, release = threading.Event(), threading.Event()
    done_c: list[int] = []

    def stuck(body: int) -> None:
        started.set()
        assert release.wait(WAIT)

    with two_nodes() as (a, b), start("c", seeds=[a.address]) as c:
        worker = b.work("w", stuck)
        a.wait_for_peers(service="w", timeout=WAIT)
        a.push("w", 1, timeout=WAIT)
        assert started.wait(WAIT)
        c.work("w", done_c.append)
        a.wait_for_peers(2, service="w", timeout=WAIT)
        b.drain(0.1)  # the handler is still at it: its task is nacked, and goes to c
        a.wait_settled(timeout=WAIT)
        assert done_c == [1]
        release.set()  # the handler returns late: its ack is not sent, its thread ends
        worker.close(timeout=WAIT)
        stats = b.statistics()
        assert (stats.acks_sent, stats.nacks_sent) == (0, 1)
        assert a.statistics().tasks_acked == 1


# -- health and peers ---------------------------------------------------------------------------


def test_health_shows_each_peer() -> None:
    with two_nodes() as (a, b):
        health = a.health()
        assert set(health) == {b.id}
        peer = health[b.id]
        assert isinstance(peer, mesh.PeerHealth)
        assert peer.reason in {"joined", "heartbeat"}
        assert peer.last_heard >= 0
        assert set(b.health()) == {a.id}


def test_watch_peers_by_iterator_and_by_callback(caplog: pytest.LogCaptureFixture) -> None:
    by_callback: list[mesh.PeerEvent] = []
    threads: set[str] = set()
    left = threading.Event()

    def on_change(change: mesh.PeerEvent) -> None:
        threads.add(threading.current_thread().name)
        by_callback.append(change)
        if isinstance(change, mesh.PeerLeft):
            left.set()
        else:
            raise ValueError("the callback failed")  # logged; the next change still comes

    with start("a") as a:
        with a.watch_peers() as changes:
            watch = a.watch_peers(on_change)
            with pytest.raises(TimeoutError, match="no change"):
                changes.receive(timeout=0.05)  # nothing happens: nothing comes
            with pytest.raises(RuntimeError, match="callback"):
                watch.receive(timeout=0.05)
            with start("b", seeds=[a.address]) as b:
                b.wait_for_peers(names=["a"], timeout=WAIT)
                joined = changes.receive(timeout=WAIT)
                assert isinstance(joined, mesh.PeerJoined)
                assert joined.peer.id == b.id
            assert left.wait(WAIT)
            # Each watcher got every change, the same ones: the rest are in hand already.
            by_iterator: list[mesh.PeerEvent] = [joined]
            for change in changes:
                by_iterator.append(change)
                if isinstance(change, mesh.PeerLeft):
                    break
            assert by_iterator == by_callback
            assert isinstance(by_iterator[-1], mesh.PeerLeft)
            assert by_iterator[-1].peer.id == b.id
            assert by_iterator[-1].reason == "goodbye"
            assert threads == {"mesh-peer-watch"}
            assert watch.dropped == 0
            watch.close(timeout=WAIT)
            assert not [t for t in mesh_threads() if t.name == "mesh-peer-watch"]
        # Closed (the block ended): reading ends, and iteration just stops.
        with pytest.raises(trio.ClosedResourceError, match="peer watch is closed"):
            changes.receive(timeout=WAIT)
        assert list(changes) == []
    assert "the callback of the peer watch failed" in caplog.text


def test_stop_ends_peer_watches() -> None:
    changes: list[mesh.PeerEvent] = []
    with ThreadPoolExecutor(2) as pool:
        node = start("a")
        watch = node.watch_peers()
        node.watch_peers(changes.append)
        reading = pool.submit(watch.receive)  # waits with no limit
        iterating = pool.submit(list, watch)
        assert len(mesh_threads()) == 2  # the node's, the callback's
        node.stop(timeout=WAIT)
        with pytest.raises(trio.ClosedResourceError):
            reading.result(timeout=WAIT)
        assert iterating.result(timeout=WAIT) == []
        assert not mesh_threads()
    assert changes == []


# -- many threads -------------------------------------------------------------------------------


def test_calls_from_many_threads_at_once() -> None:
    senders, events_each, tasks_each = 8, 100, 25
    done: list[int] = []
    with two_nodes() as (a, b):
        subscription = b.subscribe("t.")
        b.work("w", done.append, threads=2)
        a.wait_for_peers(service="w", timeout=WAIT)

        def send(k: int) -> None:
            for i in range(events_each):
                a.publish("t.x", [k, i])
                if i % 4 == 0:
                    a.push("w", k * 1000 + i, timeout=WAIT)
                    assert b.id in a.peers
                    a.statistics()

        def read(count: int) -> list[Any]:
            return [subscription.receive(timeout=WAIT).body for _ in range(count)]

        readers = 4
        total = senders * events_each
        with ThreadPoolExecutor(senders + readers) as pool:
            sent = [pool.submit(send, k) for k in range(senders)]
            read_by = [pool.submit(read, total // readers) for _ in range(readers)]
            for sender in sent:
                sender.result(timeout=WAIT)
            bodies = [body for reader in read_by for body in reader.result(timeout=WAIT)]
        # Every event once; each reader's share is in each sender's order.
        assert sorted(map(tuple, bodies)) == [
            (k, i) for k in range(senders) for i in range(events_each)
        ]
        for reader in read_by:
            by_sender: dict[int, list[int]] = defaultdict(list)
            for k, i in reader.result():
                by_sender[k].append(i)
            for numbers in by_sender.values():
                assert numbers == sorted(numbers)
        a.wait_settled(timeout=WAIT)
        stats = a.statistics()
        assert stats.tasks_acked == senders * tasks_each
        assert len(set(done)) == senders * tasks_each
        assert len(done) - senders * tasks_each <= stats.tasks_redelivered


# -- stopping -----------------------------------------------------------------------------------


def test_stop_is_bounded_idempotent_and_leaves_nothing_running() -> None:
    zmq_before = zmq_threads()
    assert not mesh_threads()
    with ThreadPoolExecutor(2) as pool, two_nodes() as (a, b):
        b.subscribe("t.", lambda message: None)
        subscription = b.subscribe("u.")
        b.work("w", lambda body: None, threads=2)
        # Two calls left waiting with no limit: a read, and a push nobody takes.
        reading = pool.submit(subscription.receive)
        pushing = pool.submit(a.push, "nobody", 1)
        assert len(mesh_threads()) == 2 + 1 + 2  # two nodes, a callback, two handlers
        started = time.monotonic()
        b.stop(timeout=WAIT)
        a.stop(timeout=WAIT)
        assert time.monotonic() - started < 3  # goodbyes take 0.2 s at most, each
        with pytest.raises(trio.ClosedResourceError):
            reading.result(timeout=WAIT)
        with pytest.raises(trio.ClosedResourceError):
            pushing.result(timeout=WAIT)
        a.stop()
        b.stop()
        assert not mesh_threads()
        assert "stopped" in repr(a)
        assert not a.running
    assert zmq_threads() == zmq_before  # every ZeroMQ context terminated


def test_calls_after_stop_raise_closed() -> None:
    node = start("n")
    assert node.running
    node.stop()
    calls: list[Callable[[], object]] = [
        lambda: node.publish("t", 1),
        lambda: node.push("w", 1, timeout=1),
        lambda: node.subscribe("t"),
        lambda: node.work("w", print),
        lambda: node.peers,
        node.statistics,
        lambda: node.wait_for_peers(timeout=1),
        lambda: node.wait_settled(timeout=1),
        lambda: node.connect("127.0.0.1:9", timeout=1),
        node.health,
        lambda: node.drain(1),
        node.watch_peers,
        lambda: node.watch_peers(print),
    ]
    for call in calls:
        with pytest.raises(trio.ClosedResourceError, match="closed"):
            call()
    assert node.name == "n"  # what the node was stays readable
    assert len(node.id) == 32
    assert node.address.startswith("127.0.0.1:")


def test_stop_from_a_callback() -> None:
    stopped = threading.Event()
    errors: list[BaseException] = []
    with two_nodes() as (a, b):

        def stop_b(message: mesh.Message) -> None:
            try:
                b.stop(timeout=WAIT)  # cannot wait for its own thread: it does not
            except BaseException as exc:
                errors.append(exc)
            stopped.set()

        b.subscribe("t", stop_b)
        a.publish("t", 1)
        assert stopped.wait(WAIT)
        assert not errors
        b.stop(timeout=WAIT)  # from here, it waits for the callback's thread too
        assert [t.name for t in mesh_threads()] == ["mesh-node a"]
        with pytest.raises(trio.ClosedResourceError):
            b.publish("t", 2)


def test_a_failed_node_thread_is_reported_not_hung(caplog: pytest.LogCaptureFixture) -> None:
    with start("n") as node, ThreadPoolExecutor(1) as pool:
        subscription = node.subscribe("t")
        reading = pool.submit(subscription.receive)
        inside.fail_thread(node, RuntimeError("boom"), WAIT)
        assert not node.running
        assert "failed" in repr(node)
        with pytest.raises((trio.ClosedResourceError, trio.BrokenResourceError)):
            reading.result(timeout=WAIT)  # the wait in progress ended
        with pytest.raises(trio.BrokenResourceError, match="boom") as caught:
            node.publish("t", 1)
        assert caught.value.__cause__ is not None
        with pytest.raises(trio.BrokenResourceError):
            node.peers  # noqa: B018
    assert "the node's thread failed" in caplog.text
    assert not mesh_threads()


# -- errors and timeouts ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"interface": "eth0"}, ValueError, "not an IP"),
        ({"interface": "0.0.0.0"}, ValueError, "interface addresses"),
        ({"seeds": ["no-port"]}, ValueError, "host:port"),
        ({"discovery": "carrier pigeon"}, ValueError, "discovery"),
    ],
)
def test_open_errors_are_raised_in_the_caller(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        start("n", **options)
    assert not mesh_threads()


def test_a_port_in_use_is_raised_in_the_caller() -> None:
    zmq_before = zmq_threads()
    with start("a") as a:
        port = int(a.address.rsplit(":", 1)[1])
        with pytest.raises(OSError, match="cannot bind"):
            start("b", pull_port=port)
        assert [t.name for t in mesh_threads()] == ["mesh-node a"]
    assert zmq_threads() == zmq_before


def test_waits_end_at_their_timeout() -> None:
    release = threading.Event()
    with two_nodes() as (a, b):
        with pytest.raises(mesh.NoWorkerError):
            a.push("nobody", 1, timeout=0.1)
        with pytest.raises(mesh.MissingPeersError):
            a.wait_for_peers(names=["ghost"], timeout=0.1)
        with pytest.raises(mesh.PeerUnreachableError):
            a.connect("127.0.0.1:9", timeout=0.1)  # the discard port: nobody answers
        b.work("slow", lambda body: release.wait(WAIT))
        a.wait_for_peers(service="slow", timeout=WAIT)
        a.push("slow", 1, timeout=WAIT)
        with pytest.raises(TimeoutError, match="wait_settled"):
            a.wait_settled(timeout=0.1)
        release.set()
        a.wait_settled(timeout=WAIT)
        # Bad arguments raise what the async node raises.
        with pytest.raises(TypeError):
            a.publish("t", object())
        with pytest.raises(ValueError, match="NUL"):
            a.publish("t\0", 1)


def test_publish_times_out_while_a_subscriber_holds_it_back() -> None:
    # Small buffers and large events: a subscription nobody reads fills them fast.
    settings = mesh.Settings(subscription_buffer=1, event_hwm=1, peer_queue=16)
    with two_nodes(settings=settings) as (a, b):
        unread = b.subscribe("big")
        body = b"x" * 1_000_000
        timed_out: TimeoutError | None = None
        for _ in range(1000):
            try:
                a.publish("big", body, timeout=0.2)
            except TimeoutError as exc:
                timed_out = exc
                break
        assert timed_out is not None
        assert "publish did not finish within 0.2 s" in str(timed_out)
        assert unread.receive(timeout=WAIT).body == body  # the events wait; none is lost
        unread.close()  # the reader leaves: it holds nobody back any more
        a.publish("other", 1, timeout=WAIT)


# -- asyncio ------------------------------------------------------------------------------------


def test_an_asyncio_program_uses_it() -> None:
    async def main() -> tuple[list[Any], set[Any]]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[mesh.Message] = asyncio.Queue()
        tasks: asyncio.Queue[Any] = asyncio.Queue()
        # Calls that may wait go through asyncio.to_thread, so the event loop runs meanwhile.
        a = await asyncio.to_thread(start, "a")
        try:
            b = await asyncio.to_thread(start, "b", seeds=[a.address])
            try:
                await asyncio.to_thread(functools.partial(a.wait_for_peers, timeout=WAIT))
                await asyncio.to_thread(functools.partial(b.wait_for_peers, timeout=WAIT))
                # Callbacks run in a thread of their own: hand each event to the loop.
                await asyncio.to_thread(
                    b.subscribe, "x.", lambda m: loop.call_soon_threadsafe(events.put_nowait, m)
                )
                await asyncio.to_thread(
                    b.work, "w", lambda body: loop.call_soon_threadsafe(tasks.put_nowait, body)
                )
                await asyncio.to_thread(
                    functools.partial(a.wait_for_peers, service="w", timeout=WAIT)
                )
                for i in range(10):
                    a.publish("x.y", i)  # a short call, made directly
                    await asyncio.to_thread(functools.partial(a.push, "w", i, timeout=WAIT))
                got = [(await asyncio.wait_for(events.get(), WAIT)).body for _ in range(10)]
                done: set[Any] = set()
                while len(done) < 10:  # (a set: delivery is at least once)
                    done.add(await asyncio.wait_for(tasks.get(), WAIT))
                await asyncio.to_thread(a.wait_settled, WAIT)
                return got, done
            finally:
                await asyncio.to_thread(b.stop)
        finally:
            await asyncio.to_thread(a.stop)

    got, done = asyncio.run(main())
    assert got == list(range(10))
    assert done == set(range(10))
    assert not mesh_threads()


# -- the example --------------------------------------------------------------------------------


def test_the_threaded_service_example_runs() -> None:
    # A mesh of its own, so that no other run on this machine shares it over mDNS.
    env = new_mesh_env()
    result = subprocess.run(
        [sys.executable, "examples/threaded_service.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith("ok")
    assert "audit received 20 events" in result.stdout
    assert "healthz: 200 ok, peers ['audit']" in result.stdout
    assert "web did 5 of 5 tasks, then drained" in result.stdout


def test_the_threaded_service_answers_health_checks_and_drains_on_sigterm() -> None:
    env = new_mesh_env()
    process = subprocess.Popen(
        [sys.executable, "examples/threaded_service.py", "serve"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()  # None: the end of its output

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=WAIT)
        assert first is not None
        assert first.startswith("serving http://"), first
        url = first.split()[1]
        with urllib.request.urlopen(f"{url}/healthz", timeout=WAIT) as response:
            assert response.status == 200
            assert json.load(response) == {"status": "ok", "peers": {}}
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=WAIT) == 0
        rest = []
        while (line := lines.get(timeout=WAIT)) is not None:
            rest.append(line)
        assert rest[-2:] == ["shutting down: draining for up to 10 s", "stopped"], rest
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=WAIT)
        reader.join(timeout=WAIT)
        if process.stdout is not None:
            process.stdout.close()
