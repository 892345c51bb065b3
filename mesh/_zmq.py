"""ZeroMQ sockets driven from trio, through libzmq's edge-triggered FD.

Rules (the same as pyzmq's own `zmq/_future.py`, and each exercised by tests/test_zmq_adapter.py):

* The FD (`zmq.FD`) is not a socket. "Readable" means only "`zmq.EVENTS` may have changed", for
  sends and receives alike, and *any* call into the socket (send, recv, reading `EVENTS`, setting
  SUBSCRIBE) can consume that signal while messages are still waiting. So: try the operation with
  NOBLOCK first; wait on the FD only after `EVENTS` says the operation cannot proceed; re-read
  `EVENTS` after every wake-up.
* Hence one *owner* task per socket: only it waits on the FD, and only it touches the socket while
  it waits. Other tasks hand it work: `call_soon` for socket options, `Outbox` for sends.
* Receives drain up to a batch of ready messages and hand them over as a list (one scheduling point
  per batch, not per message: this is what makes trio+zmq fast). Sends try NOBLOCK immediately
  and queue only when ZeroMQ pushes back, or, for an `Outbox` that coalesces, when they come in a
  burst: those leave together, in fewer frames, once the producing task yields.
* Close order: mark closed, `notify_closing(fd)` (wakes any waiter with `ClosedResourceError`
  instead of leaving it hanging), then `close(linger)`.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, TypeVar

import trio
import zmq

ZmqSocket = zmq.Socket[Any]
SocketOp = Callable[[ZmqSocket], None]
Message = bytes | Sequence[bytes]
T = TypeVar("T")

# As plain ints: pyzmq's enum members cost an enum operation at each use.
_EVENTS: Final = int(zmq.EVENTS)
_POLLIN: Final = int(zmq.POLLIN)
_POLLOUT: Final = int(zmq.POLLOUT)
_NOBLOCK: Final = int(zmq.NOBLOCK)


class AsyncSocket:
    """A pyzmq socket with awaitable, batched receive and send. One task owns it.

    The socket is put in non-blocking use at once; its options should be set before it is wrapped
    or, once an owner task is running, through `call_soon`. `close()` closes the socket.
    With `interruptible=False`, `call_soon` is refused, and the owner's waits on the FD save
    the cancel scope that lets an op interrupt them (one per wait, a measurable part of a
    round trip).
    """

    def __init__(self, socket: ZmqSocket, *, interruptible: bool = True) -> None:
        self._socket = socket
        self._fd = socket.FD
        self._closed = False
        self._interruptible = interruptible
        self._ops: list[tuple[SocketOp, trio.Event]] = []
        self._wait_scope: trio.CancelScope | None = None
        # `EVENTS` was last read by a receive and showed no message, and nothing has touched
        # the socket since: the next receive may wait on the FD without reading it again.
        self._drained = False

    @property
    def closed(self) -> bool:
        return self._closed

    def try_send(self, message: Message) -> bool:
        """Send a message (one frame as `bytes`, or a sequence of frames) if ZeroMQ takes it now;
        False if it pushes back (HWM reached or, with IMMEDIATE, no peer connected yet)."""
        if self._closed:
            raise trio.ClosedResourceError("socket was closed")
        self._drained = False
        try:
            if isinstance(message, bytes):
                self._socket.send(message, _NOBLOCK)
            else:
                self._socket.send_multipart(message, _NOBLOCK)
        except zmq.Again:
            return False
        return True

    async def send(self, message: Message) -> None:
        """Send a message, waiting while ZeroMQ pushes back. Owner task only."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.try_send(message):
            await self.wait_writable()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def receive_nowait(self) -> bytes:
        """Receive one frame if one is ready; raises `zmq.Again` if not."""
        if self._closed:
            raise trio.ClosedResourceError("socket was closed")
        self._drained = False
        frame: bytes = self._socket.recv(_NOBLOCK)
        return frame

    async def receive_batch(self, max_messages: int) -> list[bytes]:
        """Return between 1 and `max_messages` single-frame messages, waiting for the first.

        Owner task only. A cancelled call has received nothing: messages are never lost to
        cancellation. (A part of a multipart message counts as a message here.)
        """
        return await self._receive(self._socket.recv, max_messages)

    async def receive_frame_batch(self, max_messages: int) -> list[zmq.Frame]:
        """Like `receive_batch`, each message as a `zmq.Frame`, which also says who sent it
        (``frame.get("User-Id")``: the key a CURVE server's ZAP handler accepted)."""
        socket = self._socket

        def receive(flags: int) -> zmq.Frame:
            return socket.recv(flags, copy=False)

        return await self._receive(receive, max_messages)

    async def receive_multipart_batch(self, max_messages: int) -> list[list[bytes]]:
        """Like `receive_batch`, for multipart messages: each is a list of frames."""
        return await self._receive(self._socket.recv_multipart, max_messages)

    async def _receive(self, receive: Callable[[int], T], max_messages: int) -> list[T]:
        await trio.lowlevel.checkpoint_if_cancelled()
        socket = self._socket
        waited = False
        if self._drained and not self._ops:
            # (One read of `EVENTS` fewer per wake-up: each may cost a system call.)
            self._drained = False
            waited = True
            await self._wait_fd()
        while True:
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            self._run_ops()
            batch: list[T] = []
            # `EVENTS` is read before each message rather than receiving until `zmq.Again`: an
            # exception per batch costs more than the reads (most batches hold one message).
            drained = False
            try:
                while True:
                    if not socket.getsockopt(_EVENTS) & _POLLIN:  # type: ignore[operator]
                        drained = True
                        break
                    batch.append(receive(_NOBLOCK))
                    if len(batch) >= max_messages:
                        break
            except zmq.Again:
                pass
            if batch:
                self._drained = drained
                if not waited:
                    # Yield once per batch, shielded so that a cancellation arriving now cannot
                    # drop the messages already taken from ZeroMQ; it is delivered at the next
                    # checkpoint. After a wait on the FD this task has just yielded: another
                    # pass of the run loop would only add to the latency (docs/decisions.md).
                    await trio.lowlevel.cancel_shielded_checkpoint()
                return batch
            waited = True
            if drained:
                # `EVENTS` was just read and showed no message: wait for the FD's next signal.
                await self._wait_fd()
            else:  # (`Again` despite POLLIN: re-read `EVENTS` before any wait)
                await self._wait(_POLLIN)

    async def wait_writable(self) -> None:
        """Wait until ZeroMQ would take a message. Owner task only."""
        await self._wait(_POLLOUT)

    async def wait_for(self, ready: Callable[[], bool], lot: trio.lowlevel.ParkingLot) -> None:
        """Owner only: wait, parked in `lot`, until `ready()` is true, meanwhile still running
        the socket operations other tasks hand over with `call_soon` (an owner blocked on
        something else must not block them: they may be what unblocks it)."""
        while True:
            self._run_ops()
            if ready():
                return
            with trio.CancelScope() as scope:
                self._wait_scope = scope
                try:
                    await lot.park()
                finally:
                    self._wait_scope = None

    def call_soon(self, op: SocketOp) -> trio.Event:
        """Have the owner task run `op(socket)` at its next turn (socket options such as
        SUBSCRIBE, connect and disconnect must not be called from other tasks: they consume the
        FD's edge). Returns an event set once `op` has run."""
        if self._closed:
            raise trio.ClosedResourceError("socket was closed")
        if not self._interruptible:
            raise RuntimeError("this socket takes no ops (interruptible=False)")
        done = trio.Event()
        self._ops.append((op, done))
        if self._wait_scope is not None:
            self._wait_scope.cancel()
        return done

    def disable_monitor(self) -> None:
        """Stop the socket's monitor (from `get_monitor_socket`), if the socket is open."""
        if not self._closed:
            self._socket.disable_monitor()

    def close(self, linger: int = 0) -> None:
        """Close the socket; `linger` is in milliseconds. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        trio.lowlevel.notify_closing(self._fd)
        self._socket.close(linger=linger)
        for _, done in self._ops:
            done.set()
        self._ops.clear()

    def _run_ops(self) -> None:
        if self._ops:
            self._drained = False
        while self._ops:
            op, done = self._ops.pop(0)
            try:
                op(self._socket)
            finally:
                done.set()

    async def _wait(self, flag: int) -> None:
        while True:
            # Checked on every round: the socket may have been closed while this task was
            # already scheduled to wake up, too late for `notify_closing` to reach it.
            if self._closed:
                raise trio.ClosedResourceError("socket was closed")
            self._run_ops()
            self._drained = False
            events: int = self._socket.getsockopt(_EVENTS)  # type: ignore[assignment]
            if events & flag:
                return
            await self._wait_fd()
            # Either the FD fired or `call_soon` interrupted the wait; `EVENTS` is re-read either
            # way, after the pending ops have run (they too may have consumed the edge).

    async def _wait_fd(self) -> None:
        """Wait once on the FD, or until `call_soon` hands over an op. Call only right after
        `EVENTS` was read (and showed the operation cannot proceed)."""
        if self._closed:
            raise trio.ClosedResourceError("socket was closed")
        if not self._interruptible:
            await trio.lowlevel.wait_readable(self._fd)
            return
        with trio.CancelScope() as scope:
            self._wait_scope = scope
            try:
                await trio.lowlevel.wait_readable(self._fd)
            finally:
                self._wait_scope = None


#: Messages an `Outbox` with coalescing gets closer together than this (seconds) are a burst: they
#: are queued and leave together. Under load a node produces a message every 5 to 30 us; a round
#: trip between two nodes takes 200 us or more (docs/performance.md), so request/reply traffic
#: still goes straight out.
BURST_GAP: Final = 0.0002

#: Turns the messages queued in an `Outbox`, oldest first, into the next frame to send:
#: (frame, how many of them it carries, at least 1).
Coalesce = Callable[[Iterable[bytes]], tuple[bytes, int]]


class Outbox:
    """A bounded queue of outgoing messages in front of one send-only socket.

    Any task may call `send_nowait`: when nothing is queued, the message goes straight to ZeroMQ
    without a task switch; when ZeroMQ pushes back, messages queue here (up to `capacity`) and
    the `run` task, the socket's owner, feeds them in as ZeroMQ takes them. So a slow or absent
    peer fills only its own outbox, and never blocks the node.

    With `coalesce` set, messages produced in a burst leave in fewer, larger frames. A message
    that finds the outbox quiet (nothing handed to ZeroMQ for `BURST_GAP` seconds) goes straight
    out, as without coalescing: no added latency, and no task switch, when idle. One that
    follows closer than that is queued, and the owner task, woken for it, hands everything
    queued to ZeroMQ once it runs (that is, once the producing task yields to trio), in frames
    made by `coalesce`. So a producer that keeps producing sends batches only. Order is kept.
    """

    def __init__(
        self,
        socket: AsyncSocket,
        capacity: int,
        on_room: Callable[[], None] | None = None,
        *,
        retry_interval: float | None = None,
        coalesce: Coalesce | None = None,
        patience: float = math.inf,
        send_past: Callable[[bytes, int], bool] | None = None,
    ) -> None:
        """`on_room` is called whenever a full outbox gets room again. `retry_interval` is for
        sockets whose POLLOUT says nothing (an XPUB with XPUB_NODROP reports POLLOUT even while
        it refuses messages): the owner then retries that often instead of waiting on the FD,
        and only while ZeroMQ refuses. Once ZeroMQ has refused for `patience` seconds in a row
        (or since `stop_waiting`), each frame it refuses goes to `send_past(frame, messages)`
        instead, which sends it some other way (True) or not (False); `retry_interval` only.
        `coalesce` may also be set later (`self.coalesce`)."""
        if capacity < 1:
            raise ValueError("capacity must be at least 1")
        self.socket = socket
        self.coalesce = coalesce
        self._capacity = capacity
        self._retry_interval = retry_interval
        self._queue: deque[bytes] = deque()
        self._quiet_at = -math.inf  # (coalescing) from then on, a message goes straight out
        self._next: tuple[bytes, int] | None = None  # a frame ZeroMQ refused, and its messages
        self._wake_owner = trio.lowlevel.ParkingLot()
        self._room = trio.lowlevel.ParkingLot()
        self._on_room = on_room
        self._patience = patience
        self._send_past = send_past
        self._refused_since: float | None = None  # ZeroMQ refuses (retry_interval) since then
        self.frames_sent = 0  # frames handed to ZeroMQ (each holds one message or more)
        self.bytes_sent = 0  # their bytes

    def __len__(self) -> int:
        return len(self._queue)

    def has_room(self) -> bool:
        return len(self._queue) < self._capacity

    def send_nowait(self, message: bytes) -> bool:
        """Send or queue one message; False (and nothing done) when the outbox is full."""
        if not self._queue:
            if self.coalesce is None:
                if self.socket.try_send(message):
                    self.frames_sent += 1
                    self.bytes_sent += len(message)
                    return True
            else:
                # The clock is read only here, when nothing is queued: once per burst.
                now = trio.current_time()
                if now >= self._quiet_at and self.socket.try_send(message):
                    self.frames_sent += 1
                    self.bytes_sent += len(message)
                    self._quiet_at = now + BURST_GAP
                    return True
            if self.socket.closed:
                raise trio.ClosedResourceError("socket was closed")
            self._queue.append(message)
            self._wake_owner.unpark_all()
            return True
        if self.socket.closed:
            raise trio.ClosedResourceError("socket was closed")
        if len(self._queue) >= self._capacity:
            return False
        self._queue.append(message)
        return True

    async def send(self, message: bytes) -> None:
        """Send or queue one message, waiting while the outbox is full."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.send_nowait(message):
            await self._room.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def wait_room(self) -> None:
        """Wait until `send_nowait` would take a message."""
        await trio.lowlevel.checkpoint_if_cancelled()
        while not self.has_room():
            await self._room.park()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def stop_waiting(self) -> None:
        """If ZeroMQ refuses now, hand what it refuses to `send_past` at once, until it takes a
        frame again (a subscriber it waits for is known to be dead)."""
        if self._refused_since is not None:
            self._refused_since = -math.inf

    async def wait_empty(self) -> None:
        """Wait until every queued message has been handed to ZeroMQ."""
        while self._queue:
            await self._room.park()

    def discard(self, which: Callable[[bytes], bool] | None = None) -> list[bytes]:
        """Take out of the outbox the queued messages `which` picks (all, by default), and
        return them (for the caller to reroute or count); the others stay, in order."""
        dropped: list[bytes] = []
        kept: list[bytes] = []
        for message in self._queue:
            (dropped if which is None or which(message) else kept).append(message)
        self._queue.clear()
        self._queue.extend(kept)
        self._next = None  # (a frame made of the queue as it was)
        self._room.unpark_all()
        return dropped

    def _sent(self, frame: bytes, count: int) -> None:
        """`frame`, made of the first `count` messages queued, has gone."""
        queue = self._queue
        self._next = None
        self.frames_sent += 1
        self.bytes_sent += len(frame)
        was_full = len(queue) >= self._capacity
        for _ in range(count):
            queue.popleft()
        if was_full or not queue:
            self._room.unpark_all()
            if self._on_room is not None:
                self._on_room()
        if not queue and self.coalesce is not None:
            # What the producer sends next, if soon, is part of the same burst.
            self._quiet_at = trio.current_time() + BURST_GAP

    def _past_patience(self) -> bool:
        """ZeroMQ has just refused: whether it has refused for `patience` seconds."""
        now = trio.current_time()
        if self._refused_since is None:
            self._refused_since = now
        return now - self._refused_since >= self._patience

    async def run(self) -> None:
        """Feed queued messages into the socket until cancelled. Owns the socket."""
        queue = self._queue
        while True:
            while not queue:
                await self._wake_owner.park()
            try:
                while queue:
                    if self._next is None:
                        coalesce = self.coalesce
                        self._next = (queue[0], 1) if coalesce is None else coalesce(queue)
                    frame, count = self._next
                    if self.socket.try_send(frame):
                        self._refused_since = None
                        self._sent(frame, count)
                    elif self._retry_interval is None:
                        await self.socket.wait_writable()
                    elif self._past_patience() and self._send_past is not None:
                        if self._send_past(frame, count):
                            self._sent(frame, count)
                        else:
                            await trio.sleep(self._retry_interval)
                    else:
                        await trio.sleep(self._retry_interval)
            except trio.ClosedResourceError:
                return
