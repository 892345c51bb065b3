"""A crawler-style job queue: a producer pushes page URLs, three workers fetch them, and the jobs a
flaky worker fails are sent again, to whichever worker has room.

    python examples/jobs.py

All four nodes run in this one process, on 127.0.0.1, and find each other over mDNS (set MESH_NAME
to keep two runs apart). Nothing is fetched: the URLs are only strings and the work is a short
sleep. A job is acked when its worker's ``async with task:`` block ends, and nacked when an
exception leaves it: the producer then sends it again (`task.redelivered`, `task.attempt` say so
on the worker). Prints a summary and exits 0 only if no job was lost.
"""

from __future__ import annotations

import logging
import os
import random
import sys

import trio

import mesh

MESH = os.environ.get("MESH_NAME", "default")
SERVICE = "fetch"
URLS = [f"https://example.test/page/{i}" for i in range(60)]
WORKERS = ["worker-1", "worker-2", "worker-3"]
FLAKY = "worker-3"


async def work(node: mesh.Node, done: dict[str, str]) -> None:
    """Fetch pages until cancelled, recording which worker did each."""
    rng = random.Random(node.name)  # seeded: the same worker fails the same share every run
    async with node.work(SERVICE) as jobs:
        async for task in jobs:
            async with task:  # ack when the block ends, nack if an exception leaves it
                url = task.body
                await trio.sleep(rng.uniform(0.005, 0.02))  # "fetching"
                # The flaky worker drops a third of the pages it tries first. (Only first tries,
                # so that this example always ends the same: a job failed Settings.max_attempts
                # times would be given up, and handed to open_node's dead_letter.)
                if node.name == FLAKY and not task.redelivered and rng.random() < 1 / 3:
                    print(f"{node.name} failed {url} (attempt {task.attempt})")
                    raise ConnectionResetError(url)
                if task.redelivered:
                    print(f"{node.name} fetched {url} (attempt {task.attempt}, a retry)")
                done[url] = node.name  # (at least once: a job done twice counts once here)


async def main() -> int:
    # A failed task is logged by the library with its traceback: expected here, so not shown.
    logging.getLogger("mesh").setLevel(logging.ERROR)
    done: dict[str, str] = {}
    given_up: list[mesh.DeadLetter] = []
    with trio.fail_after(30):
        async with (
            mesh.open_node("crawler", mesh=MESH, dead_letter=given_up.append) as crawler,
            mesh.open_node(WORKERS[0], mesh=MESH) as worker_1,
            mesh.open_node(WORKERS[1], mesh=MESH) as worker_2,
            mesh.open_node(WORKERS[2], mesh=MESH) as worker_3,
            trio.open_nursery() as nursery,
        ):
            for worker in (worker_1, worker_2, worker_3):
                nursery.start_soon(work, worker, done)
            await crawler.wait_for_peers(len(WORKERS), service=SERVICE)

            for url in URLS:
                await crawler.push(SERVICE, url)  # to a worker with room; waits if none has
            await crawler.wait_settled()  # every job acked (or given up)
            nursery.cancel_scope.cancel()  # stop the workers

            stats = crawler.statistics()
    lost = [url for url in URLS if url not in done]
    print(f"jobs pushed: {stats.tasks_pushed}, done: {len(done)}")
    for name in WORKERS:
        print(f"  {name}: {sum(1 for by in done.values() if by == name)}")
    print(f"retried: {stats.tasks_redelivered} (after {stats.tasks_nacked} failures)")
    print(f"lost: {len(lost)} (given up: {len(given_up)})")
    ok = stats.tasks_pushed == len(URLS) and not lost and not given_up
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
