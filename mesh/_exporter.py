"""The HTTP edge of the metrics: ``GET /metrics`` in the Prometheus text format, served by the
standard library's `http.server` in one thread of its own.

Rules:

* The HTTP thread never reads the node's state: it asks the node's trio thread for a snapshot
  (`snapshot`, run there through the run's `TrioToken`) and waits for it at most
  `SNAPSHOT_TIMEOUT` seconds; a node closing, or too busy to answer, gets a 503. The text is
  made in the HTTP thread, from the frozen snapshot.
* A hostile client can hold the server for at most `REQUEST_TIMEOUT` seconds: one request at a
  time (no thread per connection), the whole request read within that deadline (a slowloris
  that sends a byte now and then is cut off), `http.server`'s own limits on the request line
  (64 KiB) and headers (100 of them, 64 KiB each). Only GET of ``/metrics`` answers 200;
  other paths 404, other methods 405.
* `MetricsServer.close` stops the thread, cutting off a request in progress, and joins it.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.server
import ipaddress
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Final

import trio

from discovery import format_address

from ._metrics import CONTENT_TYPE, format_metrics
from ._types import NodeStatistics

logger = logging.getLogger("mesh.metrics")

#: Seconds a client has to send its whole request (line and headers), and to take the answer.
REQUEST_TIMEOUT: Final = 5.0
#: Seconds a request waits for the node's trio thread to take a snapshot, then 503.
SNAPSHOT_TIMEOUT: Final = 5.0
#: Connections the kernel holds waiting while one is served.
_BACKLOG: Final = 16
#: Seconds `close` waits for the thread to end (it ends at once unless the OS stalls it).
_JOIN_TIMEOUT: Final = 10.0


class MetricsServer:
    """Serves ``GET /metrics`` on `host`:`port` (0: an ephemeral port) from a thread of its own.

    `snapshot` runs in the trio thread of `token`'s run, and returns the node's statistics, or
    None when it is closing (answered 503). `labels` are added to every sample. Binds at once:
    raises `OSError` ("cannot serve metrics on HOST:PORT: ...") when the address cannot be bound
    (a busy port, a host not on this machine).
    The caller closes it (`close`), from a thread other than the trio thread, or while that
    thread keeps running (`trio.to_thread.run_sync`): a request may be waiting on it.
    """

    def __init__(
        self,
        host: str,
        port: int,
        snapshot: Callable[[], NodeStatistics | None],
        token: trio.lowlevel.TrioToken,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        self._snapshot = snapshot
        self._token = token
        self._labels = dict(labels or {})
        try:
            self._server = _Server(host, port, self)
        except OSError as exc:  # (socket.gaierror too: a host that is not an address)
            where = format_address(host, port)
            raise OSError(exc.errno, f"cannot serve metrics on {where}: {exc.strerror}") from exc
        self._stopping = False
        self._wake_reader, self._wake_writer = socket.socketpair()
        bound_host, bound_port = self._server.server_address[:2]
        self.address = format_address(str(bound_host), int(bound_port))
        self._thread = threading.Thread(target=self._serve, name="mesh-metrics", daemon=True)
        self._thread.start()

    @staticmethod
    def check_address(host: str, port: int) -> None:
        """Raise `ValueError` for a port out of range or a host that is not an IP address (never
        a name: looking one up could send a query off the machine)."""
        if not 0 <= port <= 65535:
            raise ValueError(f"metrics_port must be 0 to 65535, not {port}")
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise ValueError(f"metrics_host must be an IP address, not {host!r}") from None

    def close(self) -> None:
        """Stop serving: cut off a request in progress, end the thread and join it, close the
        listening socket. Blocks (briefly). A second call does nothing."""
        if self._stopping:
            return
        self._stopping = True
        with contextlib.suppress(OSError):
            self._wake_writer.send(b"x")
        self._server.abort_current()
        self._thread.join(_JOIN_TIMEOUT)
        self._server.server_close()
        self._wake_reader.close()
        self._wake_writer.close()

    def render(self) -> tuple[int, bytes]:
        """The status and body of an answer to ``GET /metrics`` (HTTP thread)."""
        future: concurrent.futures.Future[NodeStatistics | None] = concurrent.futures.Future()

        def take() -> None:  # (in the trio thread)
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self._snapshot())
                except BaseException as exc:  # handed to the HTTP thread, not raised in trio
                    future.set_exception(exc)

        try:
            self._token.run_sync_soon(take)
        except trio.RunFinishedError:
            return 503, b"the node has closed\n"
        try:
            statistics = future.result(SNAPSHOT_TIMEOUT)
        except TimeoutError:
            future.cancel()
            return 503, b"the node did not answer in time\n"
        except Exception:
            logger.exception("taking the node's statistics failed")
            return 500, b"taking the statistics failed\n"
        if statistics is None:
            return 503, b"the node is closing\n"
        # (A name from mDNS may hold lone surrogates: they must not turn every scrape into a 500.)
        return 200, format_metrics(statistics, self._labels).encode("utf-8", "replace")

    def _serve(self) -> None:
        with selectors.DefaultSelector() as selector:
            selector.register(self._server.socket, selectors.EVENT_READ)
            selector.register(self._wake_reader, selectors.EVENT_READ)
            while not self._stopping:
                ready = selector.select()
                if self._stopping:
                    return
                if any(key.fileobj is self._server.socket for key, _ in ready):
                    try:
                        self._server.handle_request()
                    except Exception:  # the server must outlive any one request
                        logger.exception("a metrics request failed")


class _Server(http.server.HTTPServer):
    """One request at a time, with the request in progress known (to be cut off on close)."""

    request_queue_size = _BACKLOG
    timeout = 0  # `handle_request` is called only once the socket is readable: never waits

    def __init__(self, host: str, port: int, metrics: MetricsServer) -> None:
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.metrics = metrics
        self._lock = threading.Lock()
        self._current: socket.socket | None = None
        self._aborted = False
        super().__init__((host, port), _Handler)

    def server_bind(self) -> None:
        # Not HTTPServer's: it looks up the host's name (a DNS query, perhaps off the machine).
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name = str(self.server_address[0])
        self.server_port = int(self.server_address[1])

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._lock:
            if self._aborted:
                self.shutdown_request(request)
                return
            self._current = request
        try:
            super().process_request(request, client_address)
        finally:
            with self._lock:
                self._current = None

    def abort_current(self) -> None:
        """Cut off the request in progress, if any (from another thread)."""
        with self._lock:
            self._aborted = True
            if self._current is not None:
                with contextlib.suppress(OSError):
                    self._current.shutdown(socket.SHUT_RDWR)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT  # (for each socket operation; the reader below bounds them all)
    protocol_version = "HTTP/1.0"  # one request per connection
    server_version = "mesh-metrics"
    sys_version = ""

    def setup(self) -> None:
        super().setup()
        self.rfile = _DeadlineReader(
            self.rfile, self.connection, time.monotonic() + REQUEST_TIMEOUT
        )  # type: ignore[assignment]

    def do_GET(self) -> None:
        if self.path.partition("?")[0] != "/metrics":
            self._answer(404, b"not found: the metrics are at /metrics\n")
            return
        status, body = self.server.metrics.render()
        self._answer(status, body, CONTENT_TYPE if status == 200 else None)

    def _not_allowed(self) -> None:
        self._answer(405, b"method not allowed: GET only\n", allow="GET")

    def __getattr__(self, name: str) -> Any:
        # `handle_one_request` looks up ``do_<METHOD>``: every method but GET is a 405.
        if name.startswith("do_"):
            return self._not_allowed
        raise AttributeError(name)

    def _answer(
        self, status: int, body: bytes, content_type: str | None = None, allow: str | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type or "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if allow is not None:
            self.send_header("Allow", allow)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s: " + format, self.address_string(), *args)


class _DeadlineReader:
    """The request's input, read so that the whole request must come before one deadline:
    `http.server` reads it only by `readline` (the request line, then each header)."""

    def __init__(self, stream: Any, connection: socket.socket, deadline: float) -> None:
        self._stream = stream
        self._connection = connection
        self._deadline = deadline

    def readline(self, limit: int = -1) -> bytes:
        line = bytearray()
        while limit < 0 or len(line) < limit:
            remaining = self._deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the request took too long")
            self._connection.settimeout(remaining)
            # One byte at a time, so that no single read outlives the deadline (a request is
            # a few hundred bytes; the stream is buffered, so this is rarely a system call).
            byte = self._stream.read(1)
            if not byte:
                break
            line += byte
            if byte == b"\n":
                break
        return bytes(line)

    def read(self, size: int = -1) -> bytes:
        return b""  # a GET has no body, and no other method's body is read

    def close(self) -> None:
        self._stream.close()
