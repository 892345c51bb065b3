"""The durable outbox (a node's state directory): the log's records read back exactly, torn and
corrupt tails included; the directory's lock; and nodes on real sockets over 127.0.0.1 that
keep their pushed tasks across a close, and across a SIGKILL of their process."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest
import trio

import mesh
from mesh import _journal
from mesh._journal import LoggedTask, StateDirectory, read_log, settled_record, task_record

from .conftest import ack_all, peered_nodes, python_process

# -- the log, pure ------------------------------------------------------------------------------


def test_the_log_reads_back_the_tasks_not_settled_in_order() -> None:
    log = (
        task_record(1, "a", {"n": 1})
        + task_record(2, "b", b"\x00")
        + settled_record(1)
        + task_record(3, "a", None)
        + settled_record(7)  # of a task not in this log: nothing
    )
    assert read_log(log) == ([LoggedTask(2, "b", b"\x00"), LoggedTask(3, "a", None)], len(log))


@pytest.mark.parametrize("cut", [1, 4, 8, 9, 20])
def test_a_record_cut_short_ends_the_log(cut: int) -> None:
    whole = task_record(1, "a", "first")
    torn = task_record(2, "a", "second, torn by a crash")
    log = whole + torn[:-cut]
    assert read_log(log) == ([LoggedTask(1, "a", "first")], len(whole))


def test_a_corrupt_record_ends_the_log_and_what_follows_is_dropped() -> None:
    first, second, third = (task_record(n, "a", n) for n in (1, 2, 3))
    corrupt = bytearray(second)
    corrupt[-1] ^= 0xFF
    log = first + bytes(corrupt) + third
    assert read_log(log) == ([LoggedTask(1, "a", 1)], len(first))
    assert read_log(b"\xff" * 8 + first) == ([], 0)  # a length past any record's


def test_a_body_msgpack_cannot_carry_is_refused_before_anything_is_written() -> None:
    with pytest.raises(TypeError, match="body cannot be sent"):
        task_record(1, "a", {1, 2})


# -- the directory ------------------------------------------------------------------------------


def test_one_process_at_a_time_and_the_tasks_renumbered_on_opening(tmp_path: Path) -> None:
    directory, found = StateDirectory.open(tmp_path / "state")
    assert found == []
    with pytest.raises(mesh.StateDirectoryInUseError, match="in use by another process"):
        StateDirectory.open(tmp_path / "state")
    for task_id in (5, 6, 7):
        directory.add(task_id, "job", task_id * 10)
    directory.settle(6)
    directory.settle(99)  # unknown: nothing
    assert directory.live == 2
    directory.close()
    directory.close()  # a second close does nothing

    directory, found = StateDirectory.open(tmp_path / "state")
    assert found == [LoggedTask(1, "job", 50), LoggedTask(2, "job", 70)]
    assert directory.live == 2
    directory.close()


def test_a_log_mostly_settled_is_compacted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_journal, "COMPACT_BYTES", 10_000)
    directory, _ = StateDirectory.open(tmp_path)
    body = "x" * 100
    for task_id in range(1, 501):
        directory.add(task_id, "job", body)
        if task_id % 50:  # every 50th stays unsettled
            directory.settle(task_id)
    directory.flush()
    log = (tmp_path / _journal.LOG_NAME).read_bytes()
    assert len(log) < 10_000  # rewritten, not 500 records and their settlements
    assert [task.task_id for task in read_log(log)[0]] == list(range(50, 501, 50))
    directory.add(501, "job", "after")  # the log goes on after the rewrite
    directory.close()
    _, found = StateDirectory.open(tmp_path)
    assert [task.body for task in found][-1] == "after"
    assert len(found) == 11


# -- nodes --------------------------------------------------------------------------------------


async def test_tasks_pushed_with_no_worker_wait_in_the_directory_for_one(tmp_path: Path) -> None:
    state = tmp_path / "state"
    with trio.fail_after(15):
        async with mesh.open_node("producer", discovery="static", state_dir=state) as producer:
            for n in range(20):
                await producer.push("job", n, wait=False)
            assert producer.statistics().redelivery_queued == 20
            assert producer.statistics().outbox_kept == 20
            with pytest.raises(mesh.StateDirectoryInUseError):
                async with mesh.open_node("again", discovery="static", state_dir=state):
                    pass
        # Closed with nothing sent: a node opened on the directory has them all.
        async with (
            mesh.open_node("producer", discovery="static", state_dir=state) as producer,
            mesh.open_node("worker", discovery="static", seeds=[producer.contact]) as worker,
            worker.work("job") as tasks,
            trio.open_nursery() as nursery,
        ):
            done: list[int] = []
            nursery.start_soon(ack_all, tasks, done)
            await producer.wait_settled()
            assert sorted(done) == list(range(20))
            await producer.push("job", 20)  # a new task, numbered after the recovered ones
            await producer.wait_settled()
            assert producer.statistics().outbox_kept == 0
            nursery.cancel_scope.cancel()
    directory, found = StateDirectory.open(state)
    directory.close()
    assert found == []  # every task acked: none left


async def test_wait_false_needs_a_state_directory_and_bad_bodies_are_refused(
    tmp_path: Path,
) -> None:
    with trio.fail_after(10):
        async with peered_nodes() as (producer, _):
            with pytest.raises(ValueError, match="needs a state directory"):
                await producer.push("job", 1, wait=False)
        async with mesh.open_node("p", discovery="static", state_dir=tmp_path) as producer:
            with pytest.raises(TypeError):
                await producer.push("job", {1, 2}, wait=False)
            assert producer.statistics().tasks_pushed == 0
    directory, found = StateDirectory.open(tmp_path)
    directory.close()
    assert found == []


async def test_a_full_outbox_holds_push_back(tmp_path: Path) -> None:
    settings = mesh.Settings(outbox_limit=3)
    with trio.fail_after(10):
        async with mesh.open_node(
            "p", discovery="static", state_dir=tmp_path, settings=settings
        ) as producer:
            for n in range(3):
                await producer.push("job", n, wait=False)
            with pytest.raises(TimeoutError, match="outbox_limit"):
                await producer.push("job", 3, wait=False, timeout=0.05)


# -- across a SIGKILL ---------------------------------------------------------------------------

PRODUCER = textwrap.dedent(
    """
    import sys, trio, mesh

    async def main(state, count, seed):
        seeds = [seed] if seed else []
        async with mesh.open_node(
            "producer", discovery="static", state_dir=state, seeds=seeds
        ) as node:
            print("open", node.contact, flush=True)
            if seed:
                await node.wait_for_peers(service="job", timeout=10)
            for n in range(count):
                await node.push("job", n, wait=False)
            print("pushed", flush=True)
            await trio.sleep_forever()  # until killed

    trio.run(main, sys.argv[1], int(sys.argv[2]), sys.argv[3])
    """
)


async def read_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return (await trio.to_thread.run_sync(process.stdout.readline)).strip()


async def test_a_producer_killed_with_no_worker_up_loses_nothing(tmp_path: Path) -> None:
    total = 1000
    # (Leaving the block SIGKILLs the producer.)
    with python_process(PRODUCER, str(tmp_path), str(total), "") as producer, trio.fail_after(30):
        assert (await read_line(producer)).startswith("open ")
        assert await read_line(producer) == "pushed"
    # Restarted, in this process, with a worker up now: every task is done.
    with trio.fail_after(30):
        async with (
            mesh.open_node("producer", discovery="static", state_dir=tmp_path) as restarted,
            mesh.open_node("worker", discovery="static", seeds=[restarted.contact]) as worker,
            worker.work("job") as tasks,
            trio.open_nursery() as nursery,
        ):
            done: list[int] = []
            nursery.start_soon(ack_all, tasks, done)
            await restarted.wait_settled()
            nursery.cancel_scope.cancel()
    assert set(done) == set(range(total))


async def test_a_producer_killed_mid_stream_loses_nothing(tmp_path: Path) -> None:
    total = 20_000
    done: set[int] = set()
    with trio.fail_after(60):
        async with (
            mesh.open_node("worker", discovery="static") as worker,
            worker.work("job") as tasks,
            trio.open_nursery() as nursery,
        ):

            async def work() -> None:
                async for task in tasks:
                    async with task:
                        done.add(task.body)
                    if len(done) % 10 == 0:
                        await trio.sleep(0.0005)  # a worker slower than its producer

            nursery.start_soon(work)
            # Leaving the block SIGKILLs the producer: mid-stream, some tasks done, some in
            # flight, some not yet sent.
            with python_process(PRODUCER, str(tmp_path), str(total), worker.contact) as producer:
                assert (await read_line(producer)).startswith("open ")
                assert await read_line(producer) == "pushed"  # every push returned
            killed_with = len(done)
            async with mesh.open_node(
                "producer", discovery="static", state_dir=tmp_path, seeds=[worker.contact]
            ) as restarted:
                await restarted.wait_for_peers(service="job", timeout=10)
                await restarted.wait_settled()
            nursery.cancel_scope.cancel()
    assert 0 < killed_with < total  # the kill came mid-stream
    assert done == set(range(total))


def test_the_blocking_facade_keeps_its_tasks_too(tmp_path: Path) -> None:
    import mesh.blocking

    with mesh.blocking.start("p", discovery="static", state_dir=tmp_path, timeout=10) as node:
        node.push("job", "kept", wait=False)
        assert node.statistics().redelivery_queued == 1
    with mesh.blocking.start("p", discovery="static", state_dir=tmp_path, timeout=10) as node:
        assert node.statistics().redelivery_queued == 1  # back from the directory


async def test_a_node_that_fails_to_open_lets_go_of_its_directory(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with mesh.open_node("holder", discovery="static") as holder:
            taken = int(holder.address.rsplit(":", 1)[1])
            with pytest.raises(OSError, match=r"(?i)address"):
                async with mesh.open_node(
                    "p", discovery="static", state_dir=tmp_path, pull_port=taken
                ):
                    pass
        async with mesh.open_node("p", discovery="static", state_dir=tmp_path):
            pass  # the directory was let go of
