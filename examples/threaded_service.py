"""A plain threaded HTTP service (stdlib http.server) that embeds a mesh node through the blocking
facade, `mesh.blocking`: it publishes an event per request, works for a service of the mesh,
answers health checks from the node's view of its peers, and drains on SIGTERM. Nothing in it is
async.

    python examples/threaded_service.py          # a short demo on 127.0.0.1; prints "... ok"
    python examples/threaded_service.py serve    # serve until SIGTERM or Ctrl-C, printing the URL

The demo starts the service and a second node ("audit") that subscribes to its events and pushes
it a few tasks, makes a few HTTP requests and a health check, shuts the service down as SIGTERM
does, and checks that one event arrived per request and every task was done. In `serve` mode,
``curl URL/healthz`` shows the peers, and SIGTERM (or Ctrl-C) shuts it down gracefully: health
checks fail from then on, mesh tasks in hand finish (those not started go to other workers),
then the HTTP server and the node stop. Everything binds to 127.0.0.1 (set MESH_NAME to keep two
runs apart).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import trio

import mesh
import mesh.blocking

MESH = os.environ.get("MESH_NAME", "default")
REQUESTS = 20
TASKS = 5
GRACE = 10.0  # seconds the tasks in hand get to finish on shutdown


class Service(ThreadingHTTPServer):
    """The HTTP server, holding the node its request threads use."""

    daemon_threads = True

    def __init__(self, node: mesh.blocking.BlockingNode) -> None:
        super().__init__(("127.0.0.1", 0), Handler)  # port 0: an ephemeral port
        self.node = node
        self.draining = False  # set on shutdown: health checks fail from then on

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def health(self) -> tuple[int, dict[str, Any]]:
        """What ``GET /healthz`` answers: 200 and the peers while serving, 503 once draining."""
        try:
            health, peers = self.node.health(), self.node.peers
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return 503, {"status": "stopped"}
        report = {
            peers[peer_id].name if peer_id in peers else peer_id: {
                "state": peer.reason,
                "last_heard_s": round(peer.last_heard, 3),
                "rtt_ms": None if peer.rtt is None else round(peer.rtt * 1000, 2),
            }
            for peer_id, peer in health.items()
        }
        status = "draining" if self.draining else "ok"
        return (503 if self.draining else 200), {"status": status, "peers": report}

    def shut_down(self, grace: float) -> None:
        """What SIGTERM does: fail health checks (the load balancer stops sending requests), let
        the mesh tasks in hand finish for up to `grace` seconds (`drain`), stop serving HTTP.
        The node itself stops when its ``with`` block ends."""
        self.draining = True
        self.node.drain(grace)
        self.shutdown()
        self.server_close()


class Handler(BaseHTTPRequestHandler):
    server: Service

    def do_GET(self) -> None:
        # Called in the request's own thread: the node is thread-safe, no lock needed.
        if self.path == "/healthz":
            status, answer = self.server.health()
        else:
            self.server.node.publish("http.request", {"path": self.path}, timeout=5)
            status, answer = 200, {"served_by": self.server.node.name, "path": self.path}
        body = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the events are the log here


def make_thumbnail(body: dict[str, Any]) -> None:
    """The service's share of the mesh's work (a handler thread of its own runs it): returning
    acks the task, raising nacks it."""


def get(url: str) -> tuple[int, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:  # 503 and the like: the body still says why
        try:
            return error.code, json.load(error)
        finally:
            error.close()


def demo() -> int:
    with (
        mesh.blocking.start("web", mesh=MESH) as web,
        mesh.blocking.start("audit", mesh=MESH, seeds=[web.address]) as audit,
    ):
        paths: list[str] = []
        all_arrived = threading.Event()

        def record(message: mesh.Message | mesh.Gap) -> None:  # in the subscription's thread
            if isinstance(message, mesh.Gap):  # requests missed for good (not on a LAN demo)
                print(f"audit: lost {message}")
                return
            paths.append(message.body["path"])
            if len(paths) == REQUESTS:
                all_arrived.set()

        done: set[int] = set()  # (a set: a task may come twice, delivery is at least once)
        web.work("thumbnail", lambda body: done.add(body["image"]), threads=2)
        with audit.subscribe("http.", record):
            # Once "web" counts "audit" as a peer, audit's subscription is live at web.
            web.wait_for_peers(names=["audit"], timeout=10)
            audit.wait_for_peers(service="thumbnail", timeout=10)
            service = Service(web)
            threading.Thread(target=service.serve_forever, daemon=True).start()
            try:
                for i in range(REQUESTS):
                    status, answer = get(f"{service.url}/item/{i}")
                    assert (status, answer["served_by"]) == (200, "web")
                for i in range(TASKS):
                    audit.push("thumbnail", {"image": i}, timeout=5)
                audit.wait_settled(timeout=10)
                health_status, health = get(f"{service.url}/healthz")
            finally:
                service.shut_down(GRACE)
            arrived = all_arrived.wait(timeout=10)
        healthy = health_status == 200 and set(health["peers"]) == {"audit"}
        print(f"healthz: {health_status} {health['status']}, peers {sorted(health['peers'])}")
        print(f"web did {len(done)} of {TASKS} tasks, then drained")
        ok = (
            arrived
            and sorted(paths) == sorted(f"/item/{i}" for i in range(REQUESTS))
            and healthy
            and done == set(range(TASKS))
        )
    print(f"web served {REQUESTS} requests, audit received {len(paths)} events: ", end="")
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


def serve() -> int:
    terminated = threading.Event()
    # The handler only sets the event: the shutdown runs in the main thread, below.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda signum, frame: terminated.set())
    with mesh.blocking.start("web", mesh=MESH) as web:
        web.work("thumbnail", make_thumbnail, threads=4)
        service = Service(web)
        threading.Thread(target=service.serve_forever, daemon=True).start()
        print(f"serving {service.url} (health: {service.url}/healthz)", flush=True)
        print(f"as node {web.name} at {web.address} in mesh {MESH!r}", flush=True)
        terminated.wait()
        print(f"shutting down: draining for up to {GRACE:g} s", flush=True)
        service.shut_down(GRACE)
    print("stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["serve"] else demo())
