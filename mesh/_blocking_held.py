"""What `mesh.blocking` hands out besides the node: subscriptions, peer watches and workers,
each held open by a task in the node's thread and read or served from threads of their own
(`mesh.blocking` re-exports them; its module docstring has the rules)."""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Self, TypeVar

import trio

from discovery import PeerEvent

from ._streams import PeerWatch, Subscription, TaskStream, _Stream
from ._types import Gap, Message

if TYPE_CHECKING:
    from .blocking import BlockingNode

logger = logging.getLogger("mesh")
T = TypeVar("T")

#: How long `stop` and the `close` methods wait by default for the threads to end.
STOP_TIMEOUT: Final = 5.0
# Most events one cross-thread call takes from a subscription: enough to make reading cheap
# (one trip into the node per batch, not per event), few enough to keep backpressure working.
_BATCH: Final = 256


class _Held:
    """What the blocking subscriptions, peer watches and workers share: the node task that holds
    the stream open, and the threads of their own."""

    def __init__(self, node: BlockingNode, scope: trio.CancelScope) -> None:
        self._node = node
        self._scope = scope  # the holding task's: cancelling it closes the stream
        self._closed = False
        self._threads: list[threading.Thread] = []

    def close(self, timeout: float = STOP_TIMEOUT) -> None:
        """End it, and wait for its threads to end (each once its current callback or handler
        returns). Raises `TimeoutError` if one is still running after `timeout` seconds. A second
        call only waits again; it may be called from its own callback or handler."""
        self._closed = True
        self._node._cancel(self._scope)
        _join(self._threads, time.monotonic() + timeout, f"{timeout:g} s after close")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Reader(_Held, Generic[T]):
    """What `BlockingSubscription` and `BlockingPeerWatch` share: the items of a node stream, in
    order, read by `receive` or iteration from any thread, or handed to a callback in a thread of
    the reader's own (`_deliver`). Items are fetched from the node in batches."""

    _kind: ClassVar[str]  # what it is, and what it hands over, for messages
    _items: ClassVar[str]

    def __init__(
        self,
        node: BlockingNode,
        scope: trio.CancelScope,
        stream: _Stream[T],
        callback: Callable[[T], object] | None,
    ) -> None:
        super().__init__(node, scope)
        self._source = stream
        self._callback = callback
        self._ready: deque[T] = deque()  # taken from the node, not yet read
        self._reading = threading.Lock()  # one reader at a time fetches from the node
        self._label = f"the {self._kind}"  # who failed, in the log

    def receive(self, timeout: float | None = None) -> T:
        """The next item; waits at most `timeout` seconds (None: until one comes), then raises
        `TimeoutError`. Raises `trio.ClosedResourceError` once it or the node is closed, and
        `RuntimeError` if it has a callback (which gets the items)."""
        if self._callback is not None:
            raise RuntimeError(f"this {self._kind} hands its {self._items}s to its callback")
        return self._receive(timeout)

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return self.receive()
        except trio.ClosedResourceError:
            raise StopIteration from None

    def _receive(self, timeout: float | None) -> T:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._reading.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            raise TimeoutError(f"no {self._items} within {timeout:g} s")
        try:
            if self._closed:
                raise trio.ClosedResourceError(f"the {self._kind} is closed")
            if not self._ready:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                self._ready.extend(self._node._call(_take, self._source, left))
                if not self._ready:
                    raise TimeoutError(f"no {self._items} within {timeout:g} s")
            return self._ready.popleft()
        finally:
            self._reading.release()

    def _deliver(self) -> None:
        """The callback's thread."""
        assert self._callback is not None
        while True:
            try:
                item = self._receive(None)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            try:
                self._callback(item)
            except Exception:
                logger.exception("the callback of %s failed on %r", self._label, item)


_ReaderT = TypeVar("_ReaderT", bound=_Reader[Any])


class BlockingSubscription(_Reader[Message | Gap]):
    """The events of one `BlockingNode.subscribe`, in arrival order.

    Without a callback, read it from any thread: ``for message in subscription`` (which ends when
    the subscription or the node is closed) or `receive`. It ends with `close` (or with the
    ``with`` block it is used in, or `BlockingNode.stop`). Each item is a `mesh.Message` or a
    `mesh.Gap`; a reader that falls behind holds the publishers back for a while, then
    catches up from their history, as `mesh.Subscription` does.
    """

    _kind = "subscription"
    _items = "event"

    def __init__(
        self,
        node: BlockingNode,
        prefix: str,
        scope: trio.CancelScope,
        stream: Subscription,
        callback: Callable[[Message | Gap], object] | None,
    ) -> None:
        super().__init__(node, scope, stream, callback)
        self.prefix = prefix
        self._label = f"subscription {prefix!r}"

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<BlockingSubscription {self.prefix!r}{state} ready={len(self._ready)}>"


class BlockingPeerWatch(_Reader[PeerEvent]):
    """The membership changes of one `BlockingNode.watch_peers`, in order.

    Without a callback, read it from any thread: ``for change in watch`` (which ends when the
    watch or the node is closed) or `receive`. It ends with `close` (or with the ``with`` block
    it is used in, or `BlockingNode.stop`).
    """

    _kind = "peer watch"
    _items = "change"

    def __init__(
        self,
        node: BlockingNode,
        scope: trio.CancelScope,
        stream: PeerWatch,
        callback: Callable[[PeerEvent], object] | None,
    ) -> None:
        super().__init__(node, scope, stream, callback)
        self._watch = stream

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<BlockingPeerWatch{state} ready={len(self._ready)} dropped={self.dropped}>"

    @property
    def dropped(self) -> int:
        """Changes lost because the reader fell `Settings.subscription_buffer` behind."""
        return self._watch.dropped


class BlockingWorker(_Held):
    """The worker of one `BlockingNode.work` or `BlockingNode.serve`: its threads run the
    handler for each task or request. `close` (or the ``with`` block it is used in, or
    `BlockingNode.stop`) withdraws the service; tasks not yet taken go back to their senders,
    tasks being handled are finished and acked (requests answered)."""

    def __init__(
        self,
        node: BlockingNode,
        service: str,
        scope: trio.CancelScope,
        stream: TaskStream,
        handler: Callable[[Any], object],
    ) -> None:
        super().__init__(node, scope)
        self.service = service
        self._tasks = stream
        self._handler = handler

    def __repr__(self) -> str:
        state = " closed" if self._closed else ""
        return f"<BlockingWorker {self.service!r}{state} threads={len(self._threads)}>"

    def _serve(self) -> None:
        """One of the handler's threads."""
        call = self._node._call
        while True:
            try:
                task = call(self._tasks.receive)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            # (A pushed task's `reply` acks it and its `fail` nacks it; a request's send the
            # handler's result or error to its caller.)
            settle: Callable[[], Awaitable[None]]
            try:
                settle = functools.partial(task.reply, self._handler(task.body))
            except Exception as exc:
                logger.warning("%r failed", task, exc_info=True)
                settle = functools.partial(task.fail, f"{type(exc).__name__}: {exc}")
            try:
                call(settle)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return  # unsettled: its sender sends it again when it sees this node leave
            except (TypeError, ValueError):
                # A reply msgpack cannot carry: its caller got an error saying so.
                logger.warning("the reply to %r could not be sent", task, exc_info=True)


async def _take(stream: _Stream[T], timeout: float | None) -> list[T]:
    """Wait up to `timeout` for an item, then take the others already buffered (up to a batch).
    The batch is taken outside the timeout's scope: a deadline passing halfway must not lose the
    items already taken."""
    with trio.move_on_after(_seconds(timeout)) as scope:
        first = await stream.receive()
    if scope.cancelled_caught:
        return []
    batch = [first]
    while stream._buffer and len(batch) < _BATCH:
        batch.append(await stream.receive())
    return batch


def _seconds(timeout: float | None) -> float:
    return math.inf if timeout is None else timeout


def _join(threads: Iterable[threading.Thread], deadline: float, when: str) -> None:
    """Wait until `deadline` (time.monotonic) for each thread but the calling one (which ends
    once it returns) to end; `TimeoutError` naming those still running `when`."""
    current = threading.current_thread()
    waited = [t for t in threads if t is not current and t.ident is not None]
    for thread in waited:
        thread.join(max(0.0, deadline - time.monotonic()))
    left = [t.name for t in waited if t.is_alive()]
    if left:
        raise TimeoutError(f"still running {when}: {', '.join(left)}")
