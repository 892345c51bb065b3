"""Two nodes on 127.0.0.1: one publishes events and hands out work, the other subscribes and works.

    python examples/two_nodes.py

Everything stays on loopback. Exits 0 when every event arrived and every task was acked.
"""

from __future__ import annotations

import sys

import trio

import mesh

EVENTS = 1000
TASKS = 100


async def main() -> int:
    with trio.fail_after(20):
        async with (
            mesh.open_node("orders") as orders,
            mesh.open_node("shipping", seeds=[orders.address]) as shipping,
        ):
            await shipping.connect(orders.address)  # returns once the two have exchanged records
            print(f"{shipping.name} peered with {orders.name} at {orders.address}")

            async with shipping.subscribe("order.") as events, shipping.work("ship") as tasks:
                for i in range(EVENTS):
                    await orders.publish("order.created", {"order": i})
                for i in range(TASKS):
                    await orders.push("ship", {"order": i})

                bodies = []
                async for message in events:
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
