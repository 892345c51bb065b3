"""A node for code that is not trio: threads, WSGI apps, asyncio programs.

    import mesh.blocking

    with mesh.blocking.start("web", mesh="shop") as node:
        node.publish("page.viewed", {"path": "/"})

`start` runs a node (`mesh.open_node`, with the same arguments) in a thread of its own and
returns a `BlockingNode` once it is open. Its methods may be called from any thread, any number at
once; each call is carried into the node's thread (`trio.from_thread.run`) and blocks the calling
thread, never the node. A service that shuts down gracefully calls `BlockingNode.drain` and then
`BlockingNode.stop`; its health checks read `BlockingNode.health`.

Rules:

* Who runs what. The node's thread runs only the node. A subscription or peer watch with a
  callback and a worker's handler each get a thread of their own, so a slow callback holds back
  its own subscription (and, through backpressure, its publishers) but never the node.
* Waiting. Every call that can wait takes `timeout` (seconds, relative; None: no limit) and
  raises `TimeoutError` (or the mesh's own `NoWorkerError`, `MissingPeersError`,
  `PeerUnreachableError`, which are `TimeoutError`s) when it passes; `drain` is bounded by its
  `grace` instead. A wait with no limit still ends when the node stops: it raises
  `trio.ClosedResourceError`.
* Cost. Every call is a thread hop: the calling thread hands the call to the node's thread and
  sleeps until the answer comes back. Measured on a 2-core machine, in one run, against the same
  calls on `mesh.Node` from trio (about 3 us each): about 35 us for a call that cannot wait
  (`statistics`, `health`, `peers`: `trio.from_thread.run_sync`) and about 60 us for one that can
  (`publish`: `trio.from_thread.run`), 12 to 25 times as much: one thread publishing in a loop
  tops out near 15,000 events/s. That is nothing next to the cost of an HTTP request; for bulk
  traffic, publish from trio. Reading is cheaper per event: a subscription or peer watch fetches
  what is buffered, up to 256 at a time, in one hop.
* Closing. `stop()` (or leaving the ``with`` block) says goodbye to the peers, ends the node's
  thread, closes every socket and the ZeroMQ context, and waits for the callback and handler
  threads to finish what they are doing; it is bounded by its `timeout`, and a second call does
  nothing more. A node not stopped is stopped at interpreter exit.
* Errors. Arguments are checked as `mesh.Node` checks them (`ValueError`, `TypeError`); opening
  errors (a bad interface, a port in use) are raised by `start` in the caller's thread, with the
  types `open_node` raises. After `stop()` every call raises `trio.ClosedResourceError`, as the
  async `Node` does once closed. If the node's thread fails, every later call raises
  `trio.BrokenResourceError` whose ``__cause__`` is what failed.
* Never call a `BlockingNode` from inside the node's own thread (from a `dead_letter` handler):
  that raises `RuntimeError`; `dead_letter` must not block. asyncio code calls the blocking
  methods through `asyncio.to_thread` (short calls such as `publish` may also be made directly,
  at the cost of blocking the event loop for their duration), and hands callback events to its
  loop with `loop.call_soon_threadsafe`.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from types import TracebackType
from typing import Any, NoReturn, Self, TypeVar, TypeVarTuple, Unpack

import trio

from discovery import Peer, PeerEvent

from ._blocking_held import (
    STOP_TIMEOUT,
    BlockingPeerWatch,
    BlockingSubscription,
    BlockingWorker,
    _join,
    _ReaderT,
    _seconds,
)
from ._keys import KeyPair
from ._node import Node
from ._open import open_node
from ._streams import TaskStream
from ._types import DeadLetter, Gap, Message, NodeStatistics, PeerHealth, Settings

__all__ = ["BlockingNode", "BlockingPeerWatch", "BlockingSubscription", "BlockingWorker", "start"]

# Defined in a private module; shown (help, repr of the class) as this module's, as trio does.
for _public in (BlockingPeerWatch, BlockingSubscription, BlockingWorker):
    _public.__module__ = __name__

logger = logging.getLogger("mesh")
R = TypeVar("R")
T = TypeVar("T")
Ts = TypeVarTuple("Ts")


def start(
    name: str | None = None,
    *,
    mesh: str = "default",
    interface: str | Iterable[str] = "127.0.0.1",
    pub_port: int = 0,
    pull_port: int = 0,
    seeds: Iterable[str] = (),
    discovery: str | Iterable[str] = "mdns",
    settings: Settings | None = None,
    dead_letter: Callable[[DeadLetter], None] | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    key: KeyPair | str | os.PathLike[str] | None = None,
    allow: str | os.PathLike[str] | Iterable[str] = (),
    insecure: bool = False,
    state_dir: str | os.PathLike[str] | None = None,
    timeout: float = 30.0,
) -> BlockingNode:
    """Open a node in a thread of its own and return it once it is open.

    The arguments are `mesh.open_node`'s (binding to 127.0.0.1 unless told otherwise), and it
    raises what `open_node` raises (`ValueError` for a bad argument, `OSError` for a port that
    cannot be bound), here in the caller's thread; `dead_letter` is called in the node's thread
    and must not block. Raises `TimeoutError` if the node is not open within `timeout` seconds
    (it is told to stop then). The caller owns the node: `stop()` it, or use it as a
    context manager (``with mesh.blocking.start(...) as node:``).
    `metrics_port` and `metrics_host` serve ``GET /metrics`` as `open_node` does (a metrics
    port that cannot be bound is an `OSError` too); `key`, `allow` and `insecure` make it a
    members-only node, or an open one off loopback, as they do there; `state_dir` keeps its
    pushed tasks until acked, across restarts.
    """
    options: dict[str, Any] = {
        "name": name,
        "mesh": mesh,
        "interface": interface,
        "pub_port": pub_port,
        "pull_port": pull_port,
        "seeds": list(seeds),
        "discovery": discovery,
        "settings": settings,
        "dead_letter": dead_letter,
        "metrics_port": metrics_port,
        "metrics_host": metrics_host,
        "key": key,
        "allow": allow,
        "insecure": insecure,
        "state_dir": state_dir,
    }
    node = BlockingNode(options)
    node._thread.start()
    if not node._opened.wait(timeout):
        node._request_stop()
        node._thread.join(STOP_TIMEOUT)
        raise TimeoutError(f"the node did not open within {timeout:g} s")
    if node._node is None:  # opening failed: the thread has ended or is ending
        node._thread.join(STOP_TIMEOUT)
        if node._error is not None:
            raise node._error
        raise trio.ClosedResourceError("the node was stopped while opening")
    atexit.register(node.stop)
    return node


class BlockingNode:
    """A `mesh.Node` running in a thread of its own, for callers that are not trio. Made by
    `start`; every method is thread-safe. See the module's docstring for the rules."""

    def __init__(self, options: dict[str, Any]) -> None:
        """Use `start`: this only prepares the thread."""
        self._lock = threading.Lock()
        self._opened = threading.Event()  # set once open, or once opening failed
        self._stopping = False
        self._error: BaseException | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._scope = trio.CancelScope()  # the node's whole life, cancelled by `stop`
        self._node: Node | None = None
        self._nursery: trio.Nursery | None = None  # holds subscriptions and services open
        self._helpers: list[threading.Thread] = []  # callback and handler threads
        self._id = self._name = self._address = self._contact = ""
        self._metrics_address: str | None = None
        label = options["name"] or "node"
        self._thread = threading.Thread(
            target=self._run, args=(options,), name=f"mesh-node {label}", daemon=True
        )

    # -- what the node is ---------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The node's id, 32 hex digits."""
        return self._id

    @property
    def name(self) -> str:
        return self._name

    @property
    def address(self) -> str:
        """``host:port`` of the node's inbox: what other nodes pass to `connect` or `seeds`."""
        return self._address

    @property
    def contact(self) -> str:
        """`address`, with a keyed node's public key in front (``KEY@host:port``): what
        other nodes pass to `connect` or `seeds`."""
        return self._contact

    def reload_allow(self) -> None:
        """Read the allow list again, as `mesh.Node.reload_allow` does."""
        self._call_sync(Node.reload_allow)

    @property
    def metrics_address(self) -> str | None:
        """``host:port`` where the node serves ``GET /metrics`` (`start`'s `metrics_port`), or
        None if it does not."""
        return self._metrics_address

    @property
    def running(self) -> bool:
        """True from `start` until `stop` is called or the node's thread fails."""
        return not self._stopping and self._error is None and self._thread.is_alive()

    @property
    def peers(self) -> dict[str, Peer]:
        """A snapshot of the known peers, by id (hex)."""
        return self._call_sync(lambda node: node.peers)

    def statistics(self) -> NodeStatistics:
        """The node's counters (`mesh.NodeStatistics`)."""
        return self._call_sync(Node.statistics)

    def health(self) -> dict[str, PeerHealth]:
        """How each known peer is doing, by id (hex), as `mesh.Node.health` says: when it was last
        heard, the failure detector's verdict and why, its load and the round trip to it. A
        snapshot taken in the node's thread; what a health-check endpoint reports."""
        return self._call_sync(Node.health)

    def __repr__(self) -> str:
        if self._error is not None:
            state = "failed"
        elif self._stopping or not self._thread.is_alive():
            state = "stopped"
        else:
            state = "running"
        return f"<BlockingNode {self._name} {self._id[:8]} {state}>"

    # -- events -------------------------------------------------------------------------------

    def publish(self, topic: str, body: Any, *, timeout: float | None = None) -> None:
        """Publish an event (`mesh.Node.publish`). Returns once the node has it. Waits only while
        a subscriber's connection is full (backpressure); `TimeoutError` after `timeout` seconds
        of that, and then the event was not published."""
        node = self._open_node()
        self._call(_within, timeout, "publish", functools.partial(node.publish, topic, body))

    def subscribe(
        self,
        prefix: str,
        callback: Callable[[Message | Gap], object] | None = None,
        *,
        history: int = 0,
        since: float | None = None,
    ) -> BlockingSubscription:
        """Receive the events whose topic starts with `prefix` (``""`` for all).

        Returns once the peers known now have confirmed the subscription (`mesh.Node.subscribe`;
        with `history` or `since`, it starts with the last events they keep).
        Without `callback`, read the returned subscription: ``for message in subscription`` or
        `BlockingSubscription.receive`. With `callback`, a thread of the subscription's own
        calls ``callback(message)`` for each event, in order; an exception from it is logged and
        the next event comes. Each item is a `mesh.Message`, or a `mesh.Gap` where events were
        missed for good (`mesh.Subscription`). Either way `BlockingSubscription.close` (or
        `stop`) ends it: close it when done, since one that nobody reads holds the node's
        other subscriptions back for `Settings.slow_subscriber_timeout` once its buffer
        (`Settings.subscription_buffer`) is full.
        """
        node = self._open_node()
        subscribe = functools.partial(node.subscribe, prefix, history=history, since=since)
        scope, stream = self._call(self._hold, subscribe)
        subscription = BlockingSubscription(self, prefix, scope, stream, callback)
        return self._read(subscription, f"mesh-subscription {prefix!r}")

    # -- work ---------------------------------------------------------------------------------

    def push(
        self, service: str, body: Any, *, timeout: float | None = None, wait: bool = True
    ) -> None:
        """Send a task to a peer offering `service` (`mesh.Node.push`). Raises `NoWorkerError`
        when no worker has room for it within `timeout` seconds. With a state directory,
        ``wait=False`` takes it at once, worker or not."""
        node = self._open_node()
        push = functools.partial(node.push, service, body, timeout=_seconds(timeout), wait=wait)
        self._call(push)

    def work(
        self, service: str, handler: Callable[[Any], object], *, threads: int = 1
    ) -> BlockingWorker:
        """Offer `service` to the mesh and run ``handler(body)`` for each of its tasks.

        `threads` threads of the worker's own run the handler, each one task at a time. A
        handler that returns acks the task; one that raises an `Exception` nacks it (it is
        logged, and the sender may send the task again, to this node or another). Tasks can
        come more than once (at-least-once delivery): make the handler safe to repeat.
        `BlockingWorker.close` (or `stop`) withdraws the service. Raises `ValueError` if this
        node already works for `service`.
        """
        node = self._open_node()
        return self._offer(node.work, service, handler, threads)

    def request(self, service: str, body: Any, *, timeout: float | None = None) -> Any:
        """Send a request to a peer that serves `service` and return its reply
        (`mesh.Node.request`; `timeout` None: `Settings.request_timeout`). Raises
        `mesh.RemoteError` with the provider's error, `TimeoutError` when no reply came in
        time."""
        node = self._open_node()
        return self._call(functools.partial(node.request, service, body, timeout=timeout))

    def serve(
        self, service: str, handler: Callable[[Any], object], *, threads: int = 1
    ) -> BlockingWorker:
        """Serve `service`: run ``handler(body)`` for each request, and send what it returns
        to the caller as the reply (`mesh.Node.serve`). A handler that raises an `Exception`
        sends an error reply instead (the caller gets `mesh.RemoteError` with the exception's
        type and message); it is logged. As `work` otherwise (pushed tasks to `service` are
        handled too, and acked)."""
        node = self._open_node()
        return self._offer(node.serve, service, handler, threads)

    def _offer(
        self,
        offer: Callable[[str], AbstractAsyncContextManager[TaskStream]],
        service: str,
        handler: Callable[[Any], object],
        threads: int,
    ) -> BlockingWorker:
        if threads < 1:
            raise ValueError("threads must be at least 1")
        scope, stream = self._call(self._hold, functools.partial(offer, service))
        worker = BlockingWorker(self, service, scope, stream, handler)
        for i in range(threads):
            self._add_helper(
                threading.Thread(
                    target=worker._serve, name=f"mesh-worker {service} {i}", daemon=True
                ),
                worker._threads,
            )
        return worker

    def drain(self, grace: float = 10.0) -> None:
        """Stop taking work and let the handlers finish the tasks they hold, as before a graceful
        exit (`mesh.Node.drain`): every service is withdrawn at once, tasks received but not yet
        handed to a handler go back to their senders (which send them to other workers straight
        away), and this waits until each handler that holds a task has returned and the task is
        settled (acked, or nacked if the handler raised), for at most `grace` seconds. Tasks
        still running then are nacked, so they move too; their threads go on until the handler
        returns (`stop` waits for them). Each worker thread ends once its task is done.

        `grace` bounds it: it takes no other timeout. The node stays open (publish, subscribe,
        push, `health` all work) but `work` raises `trio.ClosedResourceError`; call `stop` after
        it. A second call waits again. Called from a handler, it waits the whole `grace` for that
        handler's own task, which it then hands back: call it from another thread.
        """
        node = self._open_node()
        self._call(node.drain, grace)

    def wait_settled(self, timeout: float | None = None) -> None:
        """Wait until every task pushed so far is acked or given up on; `TimeoutError` after
        `timeout` seconds."""
        node = self._open_node()
        self._call(_within, timeout, "wait_settled", node.wait_settled)

    # -- peers --------------------------------------------------------------------------------

    def connect(self, address: str, *, timeout: float | None = None) -> Peer:
        """Peer with the node at `address` (``host:port``), as `mesh.Node.connect` does
        (`timeout` None: `Settings.connect_timeout`). Raises `PeerUnreachableError`."""
        node = self._open_node()
        return self._call(functools.partial(node.connect, address, timeout=timeout))

    def wait_for_peers(
        self,
        count: int | None = None,
        *,
        names: Iterable[str] = (),
        service: str | None = None,
        timeout: float | None = None,
    ) -> list[Peer]:
        """Wait for peers as `mesh.Node.wait_for_peers` does; `MissingPeersError` after
        `timeout` seconds."""
        node = self._open_node()
        wait = functools.partial(
            node.wait_for_peers,
            count,
            names=list(names),
            service=service,
            timeout=_seconds(timeout),
        )
        return self._call(wait)

    def watch_peers(
        self, callback: Callable[[PeerEvent], object] | None = None
    ) -> BlockingPeerWatch:
        """Membership changes from now on, in order: `mesh.PeerJoined`, `mesh.PeerUpdated`,
        `mesh.PeerStateChanged`, `mesh.PeerLeft` (with its reason), as `mesh.Node.watch_peers`.

        Without `callback`, read the returned watch: ``with node.watch_peers() as changes: for
        change in changes`` or `BlockingPeerWatch.receive`. With `callback`, a thread of the
        watch's own calls ``callback(change)`` for each change, in order; an exception from it is
        logged and the next change comes. `BlockingPeerWatch.close` (or `stop`) ends it. A
        reader that falls `Settings.subscription_buffer` changes behind loses the oldest
        (counted in `BlockingPeerWatch.dropped`); nobody is held back by it.
        """
        node = self._open_node()
        scope, watch = self._call(self._hold, node.watch_peers)
        return self._read(BlockingPeerWatch(self, scope, watch, callback), "mesh-peer-watch")

    # -- closing ------------------------------------------------------------------------------

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """Stop the node: goodbye to its peers, its thread ended, its sockets and context closed,
        then the callback and handler threads ended (each once its current call returns).

        Calls waiting in other threads raise `trio.ClosedResourceError`. Raises `TimeoutError`
        if a thread is still running after `timeout` seconds (a handler that does not return);
        the node is stopped all the same. A second call only waits again. May be called from a
        callback or handler, whose own thread then ends when it returns.
        """
        deadline = time.monotonic() + timeout
        self._request_stop()
        atexit.unregister(self.stop)
        with self._lock:
            threads = [self._thread, *self._helpers]
        _join(threads, deadline, f"{timeout:g} s after stop")
        with self._lock:
            self._helpers = [t for t in self._helpers if t.is_alive()]

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- the node's thread --------------------------------------------------------------------

    def _run(self, options: dict[str, Any]) -> None:
        try:
            trio.run(self._main, options)
        except BaseException as exc:
            self._error = exc
            if self._node is not None:  # (an error while opening is raised by `start`)
                logger.error("the node's thread failed", exc_info=exc)
        finally:
            self._opened.set()

    async def _main(self, options: dict[str, Any]) -> None:
        with self._lock:
            self._token = trio.lowlevel.current_trio_token()
            if self._stopping:  # `stop` came before there was a token to reach this thread
                self._scope.cancel()
        with self._scope:
            async with open_node(**options) as node, trio.open_nursery() as nursery:
                self._id, self._name, self._address = node.id, node.name, node.address
                self._contact = node.contact
                self._metrics_address = node.metrics_address
                self._thread.name = f"mesh-node {node.name}"
                self._node = node
                self._nursery = nursery
                self._opened.set()
                await trio.sleep_forever()

    async def _hold(
        self, enter: Callable[[], AbstractAsyncContextManager[T]]
    ) -> tuple[trio.CancelScope, T]:
        """Enter `enter()` in a task of the node's nursery and keep it open until the returned
        scope is cancelled (or the node stops)."""

        async def hold(task_status: trio.TaskStatus[tuple[trio.CancelScope, T]]) -> None:
            with trio.CancelScope() as scope:
                async with enter() as stream:
                    task_status.started((scope, stream))
                    await trio.sleep_forever()

        assert self._nursery is not None
        if self._stopping:
            raise trio.ClosedResourceError("the node is closed")
        try:
            started: tuple[trio.CancelScope, T] = await self._nursery.start(hold)
        except RuntimeError:  # the nursery closed: the node is stopping or failed
            if self._nursery.cancel_scope.cancel_called or self._stopping:
                self._raise_closed()
            raise
        return started

    # -- helpers ------------------------------------------------------------------------------

    def _call(self, afn: Callable[[Unpack[Ts]], Awaitable[R]], *args: *Ts) -> R:
        """Run ``afn(*args)`` in the node's thread and return what it returns."""
        token = self._checked_token()
        try:
            return trio.from_thread.run(afn, *args, trio_token=token)
        except (trio.Cancelled, trio.RunFinishedError):  # the node's thread ended meanwhile
            self._raise_closed()

    def _call_sync(self, fn: Callable[[Node], R]) -> R:
        node = self._open_node()
        token = self._checked_token()
        try:
            return trio.from_thread.run_sync(fn, node, trio_token=token)
        except trio.RunFinishedError:
            self._raise_closed()

    def _open_node(self) -> Node:
        if self._node is None or self._stopping or self._error is not None:
            self._raise_closed()
        return self._node

    def _checked_token(self) -> trio.lowlevel.TrioToken:
        if self._token is None or self._stopping or self._error is not None:
            self._raise_closed()
        return self._token

    def _raise_closed(self) -> NoReturn:
        if self._error is not None:
            raise trio.BrokenResourceError(
                f"the node's thread failed: {self._error!r}"
            ) from self._error
        raise trio.ClosedResourceError("the node is closed")

    def _request_stop(self) -> None:
        with self._lock:
            self._stopping = True
            token = self._token
        if token is not None:
            self._cancel_soon(self._scope, token)

    def _cancel(self, scope: trio.CancelScope) -> None:
        """Cancel a scope of the node's thread, from any thread."""
        with self._lock:
            token = self._token
        if token is not None:
            self._cancel_soon(scope, token)

    @staticmethod
    def _cancel_soon(scope: trio.CancelScope, token: trio.lowlevel.TrioToken) -> None:
        # RunFinishedError: the node's thread has ended, nothing is left to cancel.
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(scope.cancel)

    def _read(self, reader: _ReaderT, thread_name: str) -> _ReaderT:
        """Start `reader`'s callback thread, if it has a callback."""
        if reader._callback is not None:
            self._add_helper(
                threading.Thread(target=reader._deliver, name=thread_name, daemon=True),
                reader._threads,
            )
        return reader

    def _add_helper(self, thread: threading.Thread, owner: list[threading.Thread]) -> None:
        with self._lock:
            self._helpers = [t for t in self._helpers if t.is_alive()]
            self._helpers.append(thread)
        owner.append(thread)
        thread.start()


async def _within(timeout: float | None, what: str, afn: Callable[[], Awaitable[None]]) -> None:
    if timeout is None:
        await afn()
        return
    with trio.move_on_after(timeout):
        await afn()
        return
    raise TimeoutError(f"{what} did not finish within {timeout:g} s")
