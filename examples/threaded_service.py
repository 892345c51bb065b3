"""A plain threaded HTTP service (stdlib http.server) that embeds a mesh node through the blocking
facade, `mesh.blocking`, and publishes an event per request. Nothing in it is async.

    python examples/threaded_service.py          # a short demo on 127.0.0.1; prints "... ok"
    python examples/threaded_service.py serve    # serve until Ctrl-C, printing the URL

The demo starts the service and a second node ("audit") that subscribes to its events, makes a
few HTTP requests, and checks that one event arrived per request. In `serve` mode, watch the
events from another terminal with any node of the same mesh. Everything binds to 127.0.0.1 (set
MESH_NAME to keep two runs apart).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mesh
import mesh.blocking

MESH = os.environ.get("MESH_NAME", "default")
REQUESTS = 20


class Service(ThreadingHTTPServer):
    """The HTTP server, holding the node its request threads publish through."""

    daemon_threads = True

    def __init__(self, node: mesh.blocking.BlockingNode) -> None:
        super().__init__(("127.0.0.1", 0), Handler)  # port 0: an ephemeral port
        self.node = node

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: Service

    def do_GET(self) -> None:
        # Called in the request's own thread: the node is thread-safe, no lock needed.
        self.server.node.publish("http.request", {"path": self.path}, timeout=5)
        body = json.dumps({"served_by": self.server.node.name, "path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass  # the events are the log here


def demo() -> int:
    with (
        mesh.blocking.start("web", mesh=MESH) as web,
        mesh.blocking.start("audit", mesh=MESH, seeds=[web.address]) as audit,
    ):
        paths: list[str] = []
        all_arrived = threading.Event()

        def record(message: mesh.Message) -> None:  # runs in the subscription's own thread
            paths.append(message.body["path"])
            if len(paths) == REQUESTS:
                all_arrived.set()

        with audit.subscribe("http.", record):
            # Once "web" counts "audit" as a peer, audit's subscription is live at web.
            web.wait_for_peers(names=["audit"], timeout=10)
            service = Service(web)
            threading.Thread(target=service.serve_forever, daemon=True).start()
            try:
                for i in range(REQUESTS):
                    with urllib.request.urlopen(f"{service.url}/item/{i}", timeout=5) as response:
                        assert json.load(response)["served_by"] == "web"
            finally:
                service.shutdown()
                service.server_close()
            arrived = all_arrived.wait(timeout=10)
        ok = arrived and sorted(paths) == sorted(f"/item/{i}" for i in range(REQUESTS))
    print(f"web served {REQUESTS} requests, audit received {len(paths)} events: ", end="")
    print("ok" if ok else "FAILED")
    return 0 if ok else 1


def serve() -> int:
    with mesh.blocking.start("web", mesh=MESH) as web:
        service = Service(web)
        print(f"serving {service.url} as node {web.name} at {web.address} in mesh {MESH!r}")
        try:
            service.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            service.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(serve() if sys.argv[1:] == ["serve"] else demo())
