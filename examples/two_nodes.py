"""Two nodes on 127.0.0.1: one publishes events and hands out work, the other subscribes and works.

    python examples/two_nodes.py

They find each other over mDNS, on loopback only (set MESH_NAME to keep two runs apart).
Exits 0 when every event arrived and every task was acked.
"""

from __future__ import annotations

import os
import sys

import trio

import mesh

MESH = os.environ.get("MESH_NAME", "default")
EVENTS = 1000
TASKS = 100


async def main() -> int:
    with trio.fail_after(20):
        async with (
            mesh.open_node("orders", mesh=MESH) as orders,
            mesh.open_node("shipping", mesh=MESH) as shipping,
        ):
            # No address given: mDNS finds the other node, then the two exchange records.
            await shipping.wait_for_peers(names=["orders"])
            await orders.wait_for_peers(names=["shipping"])
            print(f"{shipping.name} found {orders.name} at {orders.address}")

            async with shipping.subscribe("order.") as events, shipping.work("ship") as tasks:
                for i in range(EVENTS):
                    await orders.publish("order.created", {"order": i})
                for i in range(TASKS):
                    await orders.push("ship", {"order": i})

                bodies = []
                async for message in events:
                    if isinstance(message, mesh.Gap):  # events missed for good (not here)
                        raise RuntimeError(f"events lost: {message}")
                    bodies.append(message.body)
                    if len(bodies) == EVENTS:
                        break
                seen = len(bodies)
                print(f"{shipping.name} received {seen} events, last: {bodies[-1]}")

                done = 0
                async for task in tasks:
                    async with task:  # acks when the block ends without an exception
                        done += 1
                    if done == TASKS:
                        break
                print(f"{shipping.name} did {done} tasks")

            await orders.wait_settled()  # the last acks are on their way
            stats = orders.statistics()
            print(f"{orders.name}: {stats.tasks_pushed} tasks pushed, {stats.tasks_acked} acked")
            ok = seen == EVENTS and stats.tasks_acked == TASKS
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
