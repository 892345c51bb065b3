"""Event-driven services: orders -> inventory -> notifications, each its own node.

    python examples/events.py

The orders service publishes ``order.created``. Inventory subscribes to ``order.``, reserves the
stock and publishes ``inventory.reserved`` (or ``inventory.out_of_stock``). Notifications
subscribes to ``inventory.``, "sends" the customer a message (prints it) and publishes
``notification.sent``, by which orders learns that the order was handled. No service knows where
the others are, or even how many listen: they share topics only.

The three nodes run in this one process, on 127.0.0.1, and find each other over mDNS (set
MESH_NAME to keep two runs apart). Exits 0 when every order was handled as expected.
"""

from __future__ import annotations

import os
import sys

import trio

import mesh

MESH = os.environ.get("MESH_NAME", "default")
STOCK = {"book": 2, "lamp": 1}
ORDERS = [
    {"order": 1, "customer": "ada", "item": "book", "quantity": 1},
    {"order": 2, "customer": "bob", "item": "lamp", "quantity": 1},
    {"order": 3, "customer": "cyd", "item": "book", "quantity": 1},
    {"order": 4, "customer": "dee", "item": "lamp", "quantity": 1},
    {"order": 5, "customer": "eve", "item": "book", "quantity": 1},
]
EXPECTED = {
    1: "inventory.reserved",
    2: "inventory.reserved",
    3: "inventory.reserved",
    4: "inventory.out_of_stock",
    5: "inventory.out_of_stock",
}


async def serve_inventory(
    node: mesh.Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Reserve stock for each order created, and say whether it could."""
    stock = dict(STOCK)
    async with node.subscribe("order.") as orders:
        task_status.started()
        async for event in orders:
            if isinstance(event, mesh.Gap):  # orders missed for good: say so, go on
                print(f"inventory: orders lost ({event.reason}): {event}")
                continue
            order = event.body
            if stock.get(order["item"], 0) >= order["quantity"]:
                stock[order["item"]] -= order["quantity"]
                topic = "inventory.reserved"
            else:
                topic = "inventory.out_of_stock"
            print(f"inventory: order {order['order']} -> {topic}, stock now {stock}")
            await node.publish(topic, order)


async def serve_notifications(
    node: mesh.Node, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    """Tell the customer what became of each order."""
    async with node.subscribe("inventory.") as outcomes:
        task_status.started()
        async for event in outcomes:
            if isinstance(event, mesh.Gap):
                print(f"notifications: outcomes lost ({event.reason}): {event}")
                continue
            order = event.body
            if event.topic == "inventory.reserved":
                text = f"your {order['item']} is on its way"
            else:
                text = f"sorry, no {order['item']} left"
            print(f"notifications: to {order['customer']}, order {order['order']}: {text}")
            await node.publish("notification.sent", {"order": order["order"], "on": event.topic})


async def main() -> int:
    handled: dict[int, str] = {}
    with trio.fail_after(20):
        async with (
            mesh.open_node("orders", mesh=MESH) as orders,
            mesh.open_node("inventory", mesh=MESH) as inventory,
            mesh.open_node("notifications", mesh=MESH) as notifications,
            trio.open_nursery() as services,
        ):
            await services.start(serve_inventory, inventory)  # returns once it has subscribed
            await services.start(serve_notifications, notifications)
            async with orders.subscribe("notification.") as receipts:
                # Every node finds the other two and wires the subscriptions both ways, so that
                # no event published from here on falls into ZeroMQ's slow-joiner gap.
                for node in (orders, inventory, notifications):
                    await node.wait_for_peers(2)

                for order in ORDERS:
                    await orders.publish("order.created", order)
                async for receipt in receipts:
                    if isinstance(receipt, mesh.Gap):
                        raise RuntimeError(f"receipts lost: {receipt}")
                    handled[receipt.body["order"]] = receipt.body["on"]
                    if len(handled) == len(ORDERS):
                        break
            services.cancel_scope.cancel()
    ok = handled == EXPECTED
    print(f"orders: {len(ORDERS)} created, {len(handled)} handled")
    print("ok" if ok else f"FAILED: {handled}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(trio.run(main))
