"""A producer that is killed and restarted, and loses nothing: its tasks wait in its state
directory (the durable outbox) until a worker has done them.

    python examples/outbox.py

1. A producer process opens a node with a state directory and pushes 500 orders while no
   worker is up (``push(..., wait=False)`` takes them at once), then is killed with SIGKILL.
2. A worker comes up (in this process), and the producer is started again on the same
   directory: it finds the 500 orders there and sends them. It is killed again, mid-stream,
   once the worker has done some of them.
3. Started a third time, it sends what is left. Every order is done (some twice, since a kill
   can come between a worker's ack and the producer writing it down: at least once).

Everything runs on 127.0.0.1, and the nodes find each other by address (no mDNS). Prints a
summary and exits 0 only if every order was done.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile

import trio

import mesh

ORDERS = 500


async def produce(state_dir: str, seed: str) -> None:
    """The producer process: push the orders (only on its first run), then wait to be killed."""
    seeds = [seed] if seed else []
    async with mesh.open_node(
        "producer", discovery="static", state_dir=state_dir, seeds=seeds
    ) as node:
        kept = node.statistics().redelivery_queued
        if not seed:
            for n in range(ORDERS):
                await node.push("ship", {"order": n}, wait=False)
            print(f"producer: {ORDERS} orders pushed, no worker up", flush=True)
        else:
            print(f"producer: restarted, {kept} orders found in the state directory", flush=True)
        await trio.sleep_forever()


def start_producer(state_dir: str, seed: str = "") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "producer", state_dir, seed], stdout=subprocess.PIPE, text=True
    )


async def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    line = (await trio.to_thread.run_sync(process.stdout.readline)).strip()
    print(line)
    return line


def kill(process: subprocess.Popen[str]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.stdout is not None
    process.stdout.close()
    print("producer: killed (SIGKILL)")


async def main() -> int:
    state_dir = tempfile.mkdtemp(prefix="mesh-outbox-")
    with trio.fail_after(60):
        producer = start_producer(state_dir)
        await first_line(producer)
        kill(producer)

        done: dict[int, int] = {}
        async with (
            mesh.open_node("worker", discovery="static") as worker,
            worker.work("ship") as orders,
            trio.open_nursery() as nursery,
        ):

            async def ship() -> None:
                async for task in orders:
                    async with task:
                        number = task.body["order"]
                        done[number] = done.get(number, 0) + 1
                        await trio.sleep(0.001)  # "shipping"

            nursery.start_soon(ship)
            producer = start_producer(state_dir, worker.contact)
            await first_line(producer)
            while len(done) < ORDERS // 3:  # noqa: ASYNC110 (an example: a plain poll)
                await trio.sleep(0.01)
            kill(producer)  # mid-stream
            print(f"worker: {len(done)} orders shipped so far")

            producer = start_producer(state_dir, worker.contact)
            await first_line(producer)
            while len(done) < ORDERS:  # noqa: ASYNC110
                await trio.sleep(0.01)
            producer.terminate()
            producer.wait()
            assert producer.stdout is not None
            producer.stdout.close()
            nursery.cancel_scope.cancel()
    twice = sum(1 for count in done.values() if count > 1)
    print(f"orders: {ORDERS}, shipped: {len(done)}, shipped twice: {twice}")
    print("ok" if len(done) == ORDERS else "orders lost")
    return 0 if len(done) == ORDERS else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "producer":
        trio.run(produce, sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")
    else:
        sys.exit(trio.run(main))
