"""Scale: N node processes in one mesh (mDNS on 127.0.0.1, a mesh name of their own), for each N:
time to full mesh, idle CPU and memory per node, and events/s from one publisher to the N - 1
others.

* Time to full mesh: from the moment every process has been told to open its node (all of them
  already started and imported) to the moment the last one sees N - 1 peers with subscriptions
  live both ways (`wait_for_peers`); `min` is the first node to get there.
* Idle CPU: the CPU time of each node process (every thread: trio, zeroconf's and ZeroMQ's; in
  nanoseconds from /proc/PID/task/*/schedstat, or where the kernel has no schedstat in 10 ms
  ticks, 0.33 % of a core over 3 s) over `idle` seconds in which the nodes do nothing but
  heartbeats and discovery, after a settling second; the median node, `min` and `max` over the
  nodes. The share of
  ZeroMQ's threads (named ``ZMQbg/...``, /proc/PID/task) comes next: what published heartbeats
  cost in ZeroMQ's I/O thread, where the rest is the trio thread's.
* Memory: resident set (VmRSS) of each node process, same statistics.
* Events/s: node 0 publishes 100-byte events for `duration` seconds to the N - 1 others, each
  subscribed; events each subscriber received over the time from the first subscriber's first
  event to the last subscriber's last.

Every process is on one machine: at 32 nodes on 2 cores the processes take turns on the CPU, so
times grow with N for that reason too. With `netns` (root), each node runs in a network namespace
of its own, all on one virtual switch (a bridge in a namespace of its own, a private subnet:
`mesh/_cli/_netns.py`), so its datagrams, multicast and TCP cross a real (virtual) wire rather
than loopback; each node process enters its namespace before it opens its node.
"""

from __future__ import annotations

import ctypes
import os
import statistics
import time
import uuid
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING

import trio

from ._common import (
    QUIET,
    Measurement,
    Pool,
    clock,
    event_body,
    payload,
    receive,
    summary,
    wait_command,
)

if TYPE_CHECKING:
    from .._cli._netns import Switch

_TOPIC = "scale.events"
_END = b"end"
_SETTLE = 1.0
_ZMQ_THREADS = "ZMQbg/"  # libzmq names its I/O and reaper threads so
_CLONE_NEWNET = 0x40000000


def bench_scale(
    nodes: int, idle: float, duration: float, count: int, *, netns: bool = False
) -> list[Measurement]:
    """The four scale measurements for `nodes` node processes (at least 2), each in a network
    namespace of its own if `netns` (root)."""
    mesh_name = f"bench-scale-{uuid.uuid4().hex[:12]}"
    timeout = 30.0 + nodes
    switch = None
    if netns:
        from .._cli._netns import Switch

        switch = Switch([f"scale{index}" for index in range(nodes)])
    try:
        with Pool(nodes) as pool:
            return _measure(pool, switch, mesh_name, nodes, idle, duration, count, timeout)
    finally:
        if switch is not None:
            switch.close()


def _measure(
    pool: Pool,
    switch: Switch | None,
    mesh_name: str,
    nodes: int,
    idle: float,
    duration: float,
    count: int,
    timeout: float,
) -> list[Measurement]:
    """`bench_scale`'s run, in `pool`, each node on its host of `switch` if there is one."""
    started = clock()
    places = [None if switch is None else switch.hosts[f"scale{i}"][:2] for i in range(nodes)]
    controls = [
        pool.start(index, _scale_node, mesh_name, index, nodes, timeout, places[index])
        for index in range(nodes)
    ]
    full_at = [receive(control, timeout + 30) for control in controls]
    time.sleep(_SETTLE)
    pids = pool.pids()
    before = [_cpu_seconds(pid) for pid in pids]
    before_zmq = [_cpu_seconds(pid, _ZMQ_THREADS) for pid in pids]
    time.sleep(idle)
    after = [_cpu_seconds(pid) for pid in pids]
    after_zmq = [_cpu_seconds(pid, _ZMQ_THREADS) for pid in pids]
    cpu = [(b - a) / idle * 100 for a, b in zip(before, after, strict=True)]
    cpu_zmq = [(b - a) / idle * 100 for a, b in zip(before_zmq, after_zmq, strict=True)]
    rss = [_rss_mib(pid) for pid in pids]
    controls[0].send(("publish", duration, count))
    sent = receive(controls[0], duration + 30)
    for control in controls[1:]:
        control.send("report")
    reports = [receive(control, QUIET * 10) for control in controls[1:]]
    controls[0].send("done")
    for index in range(nodes):
        pool.finish(index)
    received = [r for r, _, _ in reports]
    firsts = [f for r, f, _ in reports if r]
    lasts = [t for r, _, t in reports if r]
    rate = 0.0
    if firsts and max(lasts) > min(firsts):
        rate = (statistics.mean(received) - 1) / (max(lasts) - min(firsts))
    full = [(at - started) * 1000 for at in full_at]
    return [
        _across_nodes(f"scale: time to full mesh, {nodes} nodes", "ms", max(full), full),
        _across_nodes(
            f"scale: idle CPU per node, {nodes} nodes", "% of a core", statistics.median(cpu), cpu
        ),
        _across_nodes(
            f"scale: of which ZeroMQ's threads, {nodes} nodes",
            "% of a core",
            statistics.median(cpu_zmq),
            cpu_zmq,
        ),
        _across_nodes(f"scale: memory per node, {nodes} nodes", "MiB", statistics.median(rss), rss),
        summary(
            f"scale: events/s 1 pub -> {nodes - 1} subs 100 B, {nodes} nodes",
            "events/s",
            [rate],
            runs=1,
            lost=sum(sent - r for r in received),
        ),
    ]


def _across_nodes(name: str, unit: str, value: float, samples: list[float]) -> Measurement:
    """One run; `min` and `max` are over the nodes."""
    return Measurement(
        name=name,
        value=round(value, 2),
        unit=unit,
        baseline=None,
        ratio=None,
        runs=1,
        min=round(min(samples), 2),
        max=round(max(samples), 2),
        lost=0,
    )


def _cpu_seconds(pid: int, thread_prefix: str | None = None) -> float:
    """CPU time of a process so far: the sum over its threads (or those whose name starts with
    `thread_prefix`) of the nanoseconds each has run (/proc/PID/task/TID/schedstat), or, on a
    kernel without schedstat, user + system time in clock ticks (/proc/PID/task/TID/stat). A
    thread that ended meanwhile is not counted."""
    total = 0.0
    for tid in os.listdir(f"/proc/{pid}/task"):
        task = f"/proc/{pid}/task/{tid}"
        try:
            if thread_prefix is not None:
                with open(f"{task}/comm") as comm:
                    if not comm.read().startswith(thread_prefix):
                        continue
            total += _thread_seconds(task)
        # The thread ended meanwhile: gone from the listing, or still listed but unreadable
        # (ESRCH, ProcessLookupError).
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total


def _thread_seconds(task: str) -> float:
    try:
        with open(f"{task}/schedstat") as schedstat:
            return int(schedstat.read().split()[0]) / 1e9
    except FileNotFoundError:
        if not os.path.exists(task):
            raise
    with open(f"{task}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _scale_node(
    control: Connection,
    mesh_name: str,
    index: int,
    nodes: int,
    timeout: float,
    place: tuple[str, str] | None,
) -> None:
    interface = "127.0.0.1"
    if place is not None:
        namespace, interface = place
        _enter_namespace(namespace)
    trio.run(_run_scale_node, control, mesh_name, index, nodes, timeout, interface)


def _enter_namespace(namespace: str) -> None:
    """Move this process (its one thread: the node's threads start later, in it) into the
    network namespace `namespace` (setns(2); Python 3.11 has no os.setns)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{namespace}", os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns into {namespace}: {os.strerror(errno)}")
    finally:
        os.close(fd)


async def _run_scale_node(
    control: Connection, mesh_name: str, index: int, nodes: int, timeout: float, interface: str
) -> None:
    from .. import open_node

    # (A namespace's private subnet reaches nothing but the switch: open is safe there, and so
    # is mDNS.)
    insecure = interface != "127.0.0.1"
    async with open_node(
        f"scale{index}", mesh=mesh_name, interface=interface, insecure=insecure
    ) as node:
        if index == 0:
            await node.wait_for_peers(nodes - 1, timeout=timeout)
            control.send(clock())  # full
            _, duration, count = await trio.to_thread.run_sync(wait_command, control)
            body = payload(100)
            sent = 0
            deadline = clock() + duration
            while sent < count and (sent % 64 or clock() < deadline):
                await node.publish(_TOPIC, body)
                sent += 1
            await node.publish(_TOPIC, _END)
            control.send(sent)
            await trio.to_thread.run_sync(wait_command, control)  # done: all have counted
            return
        async with node.subscribe(_TOPIC) as events:
            await node.wait_for_peers(nodes - 1, timeout=timeout)
            control.send(clock())  # full
            received = 0
            first = last = 0.0
            ended = trio.Event()

            async def read() -> None:
                nonlocal received, first, last
                async for message in events:
                    now = clock()
                    if event_body(message) == _END:
                        ended.set()
                        return
                    if received == 0:
                        first = now
                    last = now
                    received += 1

            async with trio.open_nursery() as nursery:
                nursery.start_soon(read)
                await trio.to_thread.run_sync(wait_command, control)  # report
                seen = -1
                while not ended.is_set() and received != seen:  # until the end, or quiet
                    seen = received
                    with trio.move_on_after(QUIET):
                        await ended.wait()
                nursery.cancel_scope.cancel()
            control.send((received, first, last))
