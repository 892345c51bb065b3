"""A node whose own code fails closes whole and says so: the error comes out of `open_node`
promptly, the node's peers see it leave, nothing of it keeps running, and `mesh-cli run`
exits non-zero instead of hanging half alive. Everything on 127.0.0.1."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import time

import pytest
import trio
import zmq

import mesh
from mesh import PeerLeft

from . import inside
from .conftest import new_mesh_env

FINISH = 15.0  # seconds: a process that should end on its own ends


class Injected(Exception):
    """The failure a test injects into a node's own code."""


async def run_until_it_fails(stays: mesh.Node) -> mesh.Node:
    """Open a node that joins `stays`, then fails in its heartbeat loop; return it, closed."""

    def fail() -> None:
        raise Injected("in the heartbeat loop")

    async with mesh.open_node("fails", seeds=[stays.address], discovery="static") as fails:
        await fails.wait_for_peers(names=["stays"])
        inside.after_next_beat(fails, fail)
        await trio.sleep_forever()  # cancelled: the node is closing
    raise AssertionError("unreachable")


async def test_a_failure_in_a_task_of_the_node_comes_out_of_open_node() -> None:
    with trio.fail_after(10):
        async with (
            mesh.open_node("stays", discovery="static") as stays,
            stays.watch_peers() as changes,
        ):
            with pytest.raises(Injected, match="heartbeat loop"):
                await run_until_it_fails(stays)
            async for change in changes:  # it said goodbye on its way out
                if isinstance(change, PeerLeft) and change.peer.name == "fails":
                    assert change.reason == "goodbye"
                    break


async def test_a_node_that_fails_halfway_through_opening_a_socket_still_closes() -> None:
    # The PUSH socket of the link was made but never handed to the links, so nothing of the node
    # would close it, and a ZeroMQ context with a socket open waits for ever to terminate.
    out_of_files = zmq.ZMQError(errno.EMFILE)

    async def connect_and_fail() -> None:
        async with mesh.open_node("a", discovery="static") as a:
            inside.fail_next_link(a, out_of_files)
            await a.connect("127.0.0.1:9", timeout=1)

    with trio.fail_after(10):
        with pytest.raises(zmq.ZMQError) as caught:
            await connect_and_fail()
        assert caught.value is out_of_files


# Runs `mesh-cli run` with its heartbeat loop made to fail on its fifth wake-up.
FAILING_RUN = textwrap.dedent(
    """
    import sys
    from mesh import _beatplan
    from mesh._cli import main

    wakes = 0
    plan = _beatplan.BeatPlan.next

    def failing(self, *args):
        global wakes
        wakes += 1
        if wakes == 5:
            raise RuntimeError("injected into the heartbeat loop")
        return plan(self, *args)

    _beatplan.BeatPlan.next = failing
    sys.exit(main(sys.argv[1:]))
    """
)


def test_mesh_cli_run_exits_non_zero_when_the_node_fails() -> None:
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", FAILING_RUN, "run", "--name", "fails", "--service", "s"],
        capture_output=True,
        text=True,
        timeout=FINISH,
        env=new_mesh_env(),
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode not in (0, 130, 141), done.stderr
    assert "injected into the heartbeat loop" in done.stderr
    assert time.monotonic() - started < FINISH
