"""Shared fixtures. Every socket here binds or connects to 127.0.0.1 only, on ephemeral ports."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import zmq

from discovery import PeerRecord


def zmq_threads() -> int:
    """libzmq's own threads in this process (I/O and reaper threads of live contexts)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{task}/comm") as comm:
                if comm.read().startswith("ZMQbg"):
                    count += 1
        except (FileNotFoundError, ProcessLookupError):  # the thread ended while we looked
            pass
    return count


@pytest.fixture
def context() -> Iterator[zmq.Context[Any]]:
    """A ZeroMQ context whose sockets are all closed (linger 0) at the end of the test, so a
    forgotten socket fails the test instead of hanging it."""
    ctx: zmq.Context[Any] = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


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
