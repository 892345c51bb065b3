"""Shared fixtures and helpers. Every socket here binds or connects to 127.0.0.1 only, on
ephemeral ports; every wait is bounded.

Two checks run after every test: a socket made from the `context` fixture and left open fails
the test (it is closed first, so nothing hangs), and so does a ZeroMQ background thread that was
not there before the test (a node, or a context, that was never closed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from typing import Any

import pytest
import trio
import zmq

import mesh
from discovery import PeerRecord

pytest_plugins = ["pytester"]

WAIT: float = 10
"""Seconds: the default bound of the waits below (a test's own `trio.fail_after` may be shorter)."""

ZMQ_SETTLE: float = 2
"""Seconds a closing ZeroMQ context is given for its threads to end before the test fails."""


# -- leak checks --------------------------------------------------------------------------------


def zmq_thread_names() -> list[str]:
    """libzmq's own threads in this process (I/O and reaper threads of live contexts)."""
    names = []
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                name = comm.read().strip()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended while we looked
            continue
        if name.startswith("ZMQbg"):
            names.append(name)
    return sorted(names)


def zmq_threads() -> int:
    """How many of libzmq's threads this process has."""
    return len(zmq_thread_names())


@pytest.fixture(autouse=True)
def _no_zmq_threads_left() -> Iterator[None]:
    """Fail a test after which more ZeroMQ threads run than before it: a context (a node's, a
    test's) was never terminated, so a socket in it may be open too. A context's threads end
    while it terminates; they are given `ZMQ_SETTLE` seconds, polled."""
    before = zmq_thread_names()
    yield
    deadline = time.monotonic() + ZMQ_SETTLE
    while len(after := zmq_thread_names()) > len(before):
        if time.monotonic() > deadline:
            pytest.fail(
                f"ZeroMQ threads left running after the test: {after} (before it: {before});"
                " a node or a ZeroMQ context was not closed",
                pytrace=False,
            )
        time.sleep(0.01)  # a bounded poll of the threads a closing context stops


class TrackingContext(zmq.Context[zmq.Socket[Any]]):
    """A context that remembers each socket made from it, so that teardown can name the ones a
    test left open."""

    made: list[zmq.Socket[Any]]

    def __init__(self) -> None:
        super().__init__()
        self.made = []

    def socket(self, socket_type: int, socket_class: Any = None, **kwargs: Any) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = super().socket(socket_type, socket_class, **kwargs)
        self.made.append(sock)
        return sock


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    """A ZeroMQ context, terminated at the end of the test. A socket made from it and still open
    then fails the test, named by its type, after it is closed (linger 0), so that it cannot
    hang the test. (Sockets from `zsocket` are closed by `zsocket`.)"""
    ctx = TrackingContext()
    yield ctx
    left = [zmq.SocketType(sock.socket_type).name for sock in ctx.made if not sock.closed]
    ctx.destroy(linger=0)
    if left:
        pytest.fail(f"ZeroMQ sockets left open by the test: {', '.join(left)}", pytrace=False)


@pytest.fixture
def zsocket(context: zmq.Context[Any]) -> Iterator[Callable[[int], zmq.Socket[Any]]]:
    """Make sockets (linger 0) that are all closed when the test ends, as pyzmq's tests do."""
    made: list[zmq.Socket[Any]] = []

    def make(kind: int) -> zmq.Socket[Any]:
        sock: zmq.Socket[Any] = context.socket(kind)
        sock.linger = 0
        made.append(sock)
        return sock

    yield make
    for sock in made:
        sock.close(linger=0)


def bind_random(sock: zmq.Socket[Any]) -> str:
    """Bind `sock` to an ephemeral port on 127.0.0.1 and return the endpoint."""
    sock.bind("tcp://127.0.0.1:*")
    endpoint = sock.getsockopt(zmq.LAST_ENDPOINT)
    assert isinstance(endpoint, bytes)
    return endpoint.decode()


# -- meshes and nodes ---------------------------------------------------------------------------


def new_mesh_name(prefix: str = "t") -> str:
    """A mesh name no other test, and no other run on this machine, uses: nodes that find each
    other over mDNS find only this test's own."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def new_mesh_env() -> dict[str, str]:
    """This process's environment with `MESH_NAME` a fresh mesh name, for a node in a child
    process."""
    return {**os.environ, "MESH_NAME": new_mesh_name("test")}


@pytest.fixture
def mesh_name() -> str:
    """A fresh mesh name (`new_mesh_name`)."""
    return new_mesh_name()


@asynccontextmanager
async def peered_nodes(
    *names: str, timeout: float = WAIT, **options: Any
) -> AsyncIterator[list[mesh.Node]]:
    """Nodes named `names` ("a" and "b" when none are given), on 127.0.0.1, all seeded with the
    first one, with `options` for each (`discovery` is "static" unless given), and peered: every
    node knows every other by name, wired both ways, before the block runs. All are closed at
    its end, the last opened first. Raises `TimeoutError` if they are not peered in `timeout`."""
    names = names or ("a", "b")
    options.setdefault("discovery", "static")
    async with AsyncExitStack() as stack:
        first = await stack.enter_async_context(mesh.open_node(names[0], **options))
        nodes = [first]
        for name in names[1:]:
            nodes.append(
                await stack.enter_async_context(
                    mesh.open_node(name, seeds=[first.contact], **options)
                )
            )
        for node in nodes:
            await node.wait_for_peers(
                names=[name for name in names if name != node.name], timeout=timeout
            )
        yield nodes


@contextmanager
def python_process(script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Python running `script` with `args` in a process of its own, its stdout a text pipe;
    killed (by its pid) at the end."""
    process = subprocess.Popen(
        [sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True
    )
    try:
        yield process
    finally:
        process.kill()
        process.wait()
        assert process.stdout is not None
        process.stdout.close()


# -- waiting ------------------------------------------------------------------------------------


async def wait_until(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Wait until `predicate()` holds, checking it every 10 ms, for state that no event signals.
    Raises `AssertionError` naming `what` if it does not hold within `timeout` seconds."""
    with trio.move_on_after(timeout):
        while not predicate():  # noqa: ASYNC110 (polls state that no event signals)
            await trio.sleep(0.01)
        return
    raise AssertionError(f"not within {timeout} s: {what}")


def wait_until_blocking(predicate: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """`wait_until` for a plain thread, outside trio."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        threading.Event().wait(0.01)


async def ack_all(tasks: mesh.TaskStream, bodies: list[Any]) -> None:
    """Take and ack every task of `tasks`, adding its body to `bodies`, until the stream ends
    or the caller is cancelled."""
    async for task in tasks:
        async with task:
            bodies.append(task.body)


# -- records ------------------------------------------------------------------------------------


def record_fields(node_id: bytes, **changes: Any) -> dict[str, Any]:
    """The fields of a valid peer record (for the pure tests), with `changes` applied."""
    values: dict[str, Any] = {
        "id": node_id,
        "name": "node-a",
        "mesh": "default",
        "host": "127.0.0.1",
        "pub_port": 5000,
        "pull_port": 5001,
        "services": frozenset({"resize", "thumbnail"}),
    }
    values.update(changes)
    return values


def make_record(node_id: bytes, **changes: Any) -> PeerRecord:
    return PeerRecord(**record_fields(node_id, **changes))
