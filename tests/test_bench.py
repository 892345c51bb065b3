"""`mesh-cli bench`: short forms of every group and of `--scale` run, print what they promise
(JSON with the fields, or an aligned table), lose nothing and leave no process behind. No timing
is asserted: the machine is shared, only shapes and signs are."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest
import zmq

from mesh._bench._common import Pool, percentile, receive, summary
from mesh._bench._scale import _cpu_seconds

from .conftest import new_mesh_env

ROOT = Path(__file__).resolve().parent.parent
SCHEDSTAT = Path("/proc/self/schedstat").exists()  # CPU time in nanoseconds, not 10 ms ticks
FIELDS = (
    "name", "value", "unit", "baseline", "ratio", "runs", "min", "max", "lost",
    "keys", "vs_open", "baseline_vs_open",
)  # fmt: skip

pytestmark = pytest.mark.slow


def bench(*args: str, timeout: float = 45) -> subprocess.CompletedProcess[str]:
    env = new_mesh_env()
    return subprocess.run(
        [sys.executable, "-m", "mesh._cli", "bench", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=env,
    )


def measurements(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    for line in lines:
        assert tuple(line) == FIELDS
        assert line["runs"] >= 1
    return lines


def test_throughput_and_latency_short_run() -> None:
    result = bench(
        "--suite", "events,tasks,latency,requests", "--size", "100", "--subscribers", "2",
        "--workers", "2", "--runs", "1", "--duration", "0.05", "--json",
    )  # fmt: skip
    lines = measurements(result)
    # The requests group shares the latency group's run of round trips (task+ack once, beside
    # the same REQ/REP, and the floor, the requests group's only), and measures tasks/s with 1
    # worker, which the tasks group (2) did not.
    assert [line["name"] for line in lines] == [
        "events/s pub->sub 100 B, 2 subscribers",
        "tasks/s push->work+ack 100 B, 2 workers",
        "tasks/s vs plain without acks 100 B, 2 workers",
        "round trip p50 task+ack 100 B",
        "round trip p99 task+ack 100 B",
        "round trip p50 event request/reply 100 B",
        "round trip p99 event request/reply 100 B",
        "round trip p50 request+reply 100 B",
        "round trip p99 request+reply 100 B",
        "round trip p50 trio+pyzmq PUSH/PULL, no mesh 100 B",
        "round trip p99 trio+pyzmq PUSH/PULL, no mesh 100 B",
        "tasks/s push->work+ack 100 B, 1 worker",
        "tasks/s vs plain without acks 100 B, 1 worker",
    ]
    for line in lines:
        assert line["unit"] in ("events/s", "tasks/s", "us")
        assert line["value"] > 0
        assert line["baseline"] > 0
        assert line["ratio"] > 0
        assert line["min"] <= line["value"] <= line["max"]
        assert line["lost"] == 0
    acked, unacked = lines[1], lines[2]
    # Both compare the same mesh runs, the first to plain pyzmq with acks, the second to plain
    # pyzmq without: two baselines measured apart.
    assert acked["value"] == unacked["value"]
    assert acked["baseline"] != unacked["baseline"]


def test_requests_short_run() -> None:
    """The requests group alone: request/reply and task+ack round trips and the floor (trio and
    pyzmq PUSH/PULL, no mesh) beside one REQ/REP baseline, and tasks/s with acks to 1 worker
    beside plain PUSH/PULL with acks (and without)."""
    result = bench("--suite", "requests", "--runs", "2", "--duration", "0.05", "--json")
    lines = measurements(result)
    assert [line["name"] for line in lines] == [
        "round trip p50 request+reply 100 B",  # the smallest of the default sizes
        "round trip p99 request+reply 100 B",
        "round trip p50 task+ack 100 B",
        "round trip p99 task+ack 100 B",
        "round trip p50 trio+pyzmq PUSH/PULL, no mesh 100 B",
        "round trip p99 trio+pyzmq PUSH/PULL, no mesh 100 B",
        "tasks/s push->work+ack 100 B, 1 worker",
        "tasks/s vs plain without acks 100 B, 1 worker",
    ]
    for line in lines:
        assert line["runs"] == 2
        assert line["value"] > 0
        assert line["baseline"] > 0
        assert line["ratio"] > 0
        assert line["min"] <= line["value"] <= line["max"]
        assert line["lost"] == 0
    request_p50, request_p99, task_p50, task_p99, floor_p50, floor_p99, acked, unacked = lines
    assert {line["unit"] for line in lines[:6]} == {"us"}
    # All three round trips, the floor too, are measured against the same REQ/REP runs.
    assert request_p50["baseline"] == task_p50["baseline"] == floor_p50["baseline"]
    assert request_p99["baseline"] == task_p99["baseline"] == floor_p99["baseline"]
    assert request_p50["value"] <= request_p99["value"]
    assert floor_p50["value"] <= floor_p99["value"]
    assert (acked["unit"], unacked["unit"]) == ("tasks/s", "tasks/s")
    assert acked["value"] == unacked["value"]
    assert acked["baseline"] != unacked["baseline"]


def test_count_bounds_a_run() -> None:
    result = bench("--suite", "events", "--count", "2000", "--runs", "1", "--json")
    lines = measurements(result)
    assert len(lines) == 4  # 100 B and 1 KiB, 1 and 4 subscribers
    assert all(line["value"] > 0 and line["lost"] == 0 for line in lines)


def test_discovery_and_failures_short_run() -> None:
    result = bench(
        "--suite", "discovery,failure", "--discovery-nodes", "2", "--runs", "1", "--json"
    )  # fmt: skip
    lines = measurements(result)
    assert [line["name"] for line in lines] == [
        "discovery: open to in every peer map, 2 nodes",
        "discovery: first event after wait_for_peers, 2 nodes",
        "failure: kill -9 to suspect",
        "failure: kill -9 to dead",
        "failure: SIGSTOP to suspect",
        "failure: SIGSTOP to dead",
        "reroute: kill -9 to first task done elsewhere",
    ]
    for line in lines:
        assert line["unit"] == "ms"
        assert line["baseline"] is None
        assert line["ratio"] is None
        assert line["lost"] == 0
    # Opening to being seen can be slightly negative (peers may hear of a node before its
    # open_node returns); everything else takes time.
    assert all(line["value"] > 0 for line in lines[1:])


@pytest.mark.timeout(60)
def test_keys_short_run() -> None:
    result = bench(
        "--suite", "events,tasks,latency,requests", "--size", "100", "--subscribers", "1",
        "--workers", "1", "--runs", "1", "--duration", "0.05", "--keys", "--json",
    )  # fmt: skip
    lines = measurements(result)
    opened, keyed = lines[0::2], lines[1::2]
    # Each open measurement, then its keyed twin: same name, measured in the same runs. What
    # the requests group shares with tasks (1 worker) and latency is there once.
    assert [line["name"] for line in opened] == [line["name"] for line in keyed]
    assert [line["name"] for line in opened] == [
        "events/s pub->sub 100 B, 1 subscriber",
        "tasks/s push->work+ack 100 B, 1 worker",
        "tasks/s vs plain without acks 100 B, 1 worker",
        "round trip p50 task+ack 100 B",
        "round trip p99 task+ack 100 B",
        "round trip p50 event request/reply 100 B",
        "round trip p99 event request/reply 100 B",
        "round trip p50 request+reply 100 B",
        "round trip p99 request+reply 100 B",
        "round trip p50 trio+pyzmq PUSH/PULL, no mesh 100 B",
        "round trip p99 trio+pyzmq PUSH/PULL, no mesh 100 B",
    ]
    for line in opened:
        assert (line["keys"], line["vs_open"], line["baseline_vs_open"]) == (False, None, None)
    for open_one, line in zip(opened, keyed, strict=True):
        assert line["keys"] is True
        # Keyed against plain pyzmq with CURVE (a baseline of its own), and against the open
        # mesh and the open plain pyzmq of the same runs.
        assert line["value"] > 0
        assert line["baseline"] > 0
        assert line["ratio"] > 0
        assert line["baseline"] != open_one["baseline"]
        assert line["vs_open"] == pytest.approx(line["value"] / open_one["value"], rel=0.01)
        assert line["baseline_vs_open"] == pytest.approx(
            line["baseline"] / open_one["baseline"], rel=0.01
        )
        assert line["lost"] == 0


@pytest.mark.timeout(60)
def test_keys_table_output() -> None:
    result = bench("--suite", "latency", "--runs", "1", "--duration", "0.05", "--keys")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.endswith("  vs open  plain vs open")
    assert len(rows) == 8
    names = [row.split("  ")[0] for row in rows]  # the first column, up to its padding
    assert [name.endswith(", keyed") for name in names] == [False, True] * 4
    for row in rows[1::2]:
        vs_open, plain_vs_open = row.split()[-2:]
        assert float(vs_open) > 0
        assert float(plain_vs_open) > 0
    assert all(row.split()[-2:] == ["-", "-"] for row in rows[0::2])


def test_table_output() -> None:
    result = bench("--suite", "latency", "--runs", "1", "--duration", "0.05")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:3] == ["measurement", "mesh", "unit"]
    assert "plain pyzmq" in header
    assert len(rows) == 4
    assert all(row.startswith("round trip p") and " us " in row for row in rows)


def test_scale_short_run() -> None:
    result = bench(
        "--scale", "--nodes", "2,3", "--idle", "0.3", "--duration", "0.05", "--json"
    )  # fmt: skip
    lines = measurements(result)
    names = [line["name"] for line in lines]
    assert names == [
        f"scale: {what}, {n} nodes"
        for n in (2, 3)
        for what in (
            "time to full mesh",
            "idle CPU per node",
            "of which ZeroMQ's threads",
            "memory per node",
            f"events/s 1 pub -> {n - 1} subs 100 B",
        )
    ]
    for line in lines:
        assert line["min"] <= line["value"] <= line["max"]
        if line["name"].startswith("scale: of which ZeroMQ's"):
            assert line["value"] >= 0  # a node may publish no heartbeat in 0.3 s
        elif line["unit"] == "% of a core" and not SCHEDSTAT:
            assert line["value"] >= 0  # ticks of 10 ms: an idle node may show none
        else:
            assert line["value"] > 0
        assert line["lost"] == 0


@pytest.mark.skipif(not SCHEDSTAT, reason="the kernel has no schedstat")
def test_cpu_time_is_read_in_nanoseconds_per_thread() -> None:
    context = zmq.Context()
    context.socket(zmq.PUB).close()  # ZeroMQ's threads exist from the first socket
    try:
        before = _cpu_seconds(os.getpid())
        before_zmq = _cpu_seconds(os.getpid(), "ZMQbg/")
        spun = time.thread_time()
        while time.thread_time() - spun < 0.02:  # 20 ms of CPU in this thread (bounded by it)
            pass
        after = _cpu_seconds(os.getpid())
        after_zmq = _cpu_seconds(os.getpid(), "ZMQbg/")
    finally:
        context.term()
    assert after - before >= 0.02
    assert 0 <= after_zmq - before_zmq < after - before


def test_bad_options_are_user_errors() -> None:
    result = bench("--suite", "events,nonsense")
    assert result.returncode == 2
    assert "nonsense" in result.stderr
    result = bench("--scale", "--nodes", "1")
    assert result.returncode == 2
    result = bench("--scale", "--keys")
    assert result.returncode == 2
    assert "--keys" in result.stderr


# -- the pool: every process reaped, a failing role reported --------------------------------------


def _fail(control: Connection) -> None:
    raise ValueError("a role that fails")


def _hang(control: Connection) -> None:
    import time

    control.send("hanging")
    time.sleep(60)


def test_a_failing_role_is_reported_and_every_process_reaped() -> None:
    with Pool(2) as pool:
        pids = pool.pids()
        assert receive(pool.start(1, _hang), 30) == "hanging"
        failing = pool.start(0, _fail)
        with pytest.raises(RuntimeError, match="a role that fails"):
            receive(failing, 30)
    assert multiprocessing.active_children() == []
    assert not any(Path(f"/proc/{pid}").exists() for pid in pids)


def test_statistics() -> None:
    assert percentile([3.0, 1.0, 2.0, 4.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.99) == 99.0
    measurement = summary("x", "events/s", [10.0, 30.0, 20.0], [40.0, 40.0, 40.0], runs=3)
    assert (measurement.value, measurement.min, measurement.max) == (20, 10, 30)
    assert (measurement.baseline, measurement.ratio) == (40, 0.5)
    empty = summary("y", "ms", [], runs=2, lost=2, digits=2)
    assert empty.value != empty.value  # NaN: no sample
    assert empty.lost == 2
