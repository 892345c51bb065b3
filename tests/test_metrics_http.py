"""GET /metrics on real sockets over 127.0.0.1: nodes that serve it, scraped with urllib, and the
demo's producer scraped while it works."""

from __future__ import annotations

import argparse
import functools
import http.client
import math
import re
import secrets
import select
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import closing, contextmanager, suppress

import pytest
import trio

import mesh
import mesh._exporter
import mesh.blocking
from mesh._cli._common import metrics_address
from mesh._exporter import MetricsServer

from .conftest import peered_nodes

open_node = functools.partial(mesh.open_node, discovery="static")

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse_exposition(text: str) -> tuple[Samples, dict[str, str]]:
    """A strict reader of the text format: every line is a HELP or TYPE comment or a sample
    ``name{labels} value``; every sample's family was typed before it, each series once.
    Returns the samples by (name, labels) and each family's type."""
    assert text.endswith("\n")
    samples: Samples = {}
    types: dict[str, str] = {}
    for line in text[:-1].split("\n"):
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)) == 4, line
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert kind in ("counter", "gauge", "histogram"), line
            assert name not in types, line
            if kind == "counter":
                assert name.endswith("_total"), line
            types[name] = kind
            continue
        match = _SAMPLE.fullmatch(line)
        assert match is not None, line
        name, label_text, value = match.groups()
        labels: list[tuple[str, str]] = []
        position = 0
        while label_text and position < len(label_text):
            label = _LABEL.match(label_text, position)
            assert label is not None, line
            unescaped = re.sub(r"\\[\\\"n]", lambda m: _UNESCAPE[m[0]], label.group(2))
            labels.append((label.group(1), unescaped))
            position = label.end()
        family = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or types.get(family) == "histogram", line
        key = (name, frozenset(labels))
        assert key not in samples, line
        samples[key] = float(value)
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    """The one sample of `name` whose labels include `labels`."""
    found = [v for (n, ls), v in samples.items() if n == name and set(labels.items()) <= ls]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def check_histogram(samples: Samples, name: str) -> int:
    """Buckets non-decreasing in `le`, +Inf equal to _count; returns the count."""
    buckets = sorted(
        (float(dict(labels)["le"].replace("+Inf", "inf")), v)
        for (n, labels), v in samples.items()
        if n == f"{name}_bucket"
    )
    assert buckets
    assert buckets[-1][0] == math.inf
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)
    count = value(samples, f"{name}_count")
    assert buckets[-1][1] == count
    assert value(samples, f"{name}_sum") >= 0
    return int(count)


def get(url: str, method: str = "GET") -> tuple[int, str, str]:
    """(status, Content-Type, body) of a request (run in a thread)."""
    request = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, answer.headers["Content-Type"], answer.read().decode()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers["Content-Type"], error.read().decode()


async def scrape(address: str, path: str = "/metrics", method: str = "GET") -> tuple[int, str]:
    status, _, body = await trio.to_thread.run_sync(get, f"http://{address}{path}", method)
    return status, body


def refused(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except ConnectionRefusedError:
        return True
    return False


async def test_a_scrape_shows_the_work_done_and_consistent_histograms() -> None:
    with trio.fail_after(15):
        async with (
            peered_nodes("producer", "worker", metrics_port=0) as (producer, worker),
            worker.work("jobs") as tasks,
        ):
            assert producer.metrics_address is not None
            assert worker.metrics_address is not None
            assert producer.metrics_address.startswith("127.0.0.1:")
            status, text = await scrape(producer.metrics_address)
            assert status == 200
            before, _ = parse_exposition(text)
            assert value(before, "mesh_tasks_pushed_total") == 0

            async def work() -> None:
                async for task in tasks:
                    async with task:
                        pass

            async with trio.open_nursery() as nursery:
                nursery.start_soon(work)
                for n in range(30):
                    await producer.push("jobs", {"n": n})
                await producer.wait_settled()
                nursery.cancel_scope.cancel()
            # (The worker counted each ack before sending it: nothing to wait for there.)

            status, text = await scrape(producer.metrics_address)
            assert status == 200
            after, types = parse_exposition(text)
            labels = {"mesh": "default", "node": "producer"}
            assert value(after, "mesh_tasks_pushed_total", **labels) == 30
            assert value(after, "mesh_tasks_acked_total") == 30
            assert value(after, "mesh_service_tasks_acked_total", service="jobs") == 30
            assert value(after, "mesh_peers") == 1
            assert value(after, "mesh_tasks_in_flight") == 0
            assert value(after, "mesh_peer_in_flight", peer="worker", peer_id=worker.id) == 0
            assert value(after, "mesh_sent_bytes_total", socket="push") > 30 * 10
            assert value(after, "mesh_received_bytes_total", socket="inbox") > 0
            assert types["mesh_ack_latency_seconds"] == "histogram"
            assert check_histogram(after, "mesh_ack_latency_seconds") == 30
            check_histogram(after, "mesh_heartbeat_rtt_seconds")

            status, text = await scrape(worker.metrics_address)
            samples, _ = parse_exposition(text)
            assert value(samples, "mesh_service_tasks_received_total", service="jobs") == 30
            assert value(samples, "mesh_service_tasks_done_total", service="jobs") == 30
            assert value(samples, "mesh_acks_sent_total", node="worker") == 30
            address = producer.metrics_address
    assert refused(address)


async def test_other_paths_are_404_other_methods_405_and_garbage_does_not_hurt() -> None:
    with trio.fail_after(15):
        async with open_node("target", metrics_port=0) as node:
            address = node.metrics_address
            assert address is not None
            assert (await scrape(address, "/"))[0] == 404
            assert (await scrape(address, "/metricsx"))[0] == 404
            assert (await scrape(address, "/metrics", "POST"))[0] == 405
            assert (await scrape(address, "/metrics", "DELETE"))[0] == 405
            assert (await scrape(address, "/metrics", "HEAD"))[0] == 405

            def garbage(request: bytes) -> bytes:
                host, port = address.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(request)
                    sock.shutdown(socket.SHUT_WR)
                    with closing(sock.makefile("rb")) as answer:
                        return answer.read()

            too_long = b"\x00\xff" + b"x" * 70_000 + b"\r\n\r\n"
            assert (await trio.to_thread.run_sync(garbage, too_long)).startswith(b"HTTP/1.0 414")
            assert b"400" in await trio.to_thread.run_sync(garbage, b"\x00\xfe not http\r\n\r\n")
            # A request line cut short by the end of the stream is read as HTTP/0.9, no headers.
            assert (
                await trio.to_thread.run_sync(garbage, b"GET /met")
                == b"not found: the metrics are at /metrics\n"
            )
            status, text = await scrape(address)
            assert status == 200
            assert parse_exposition(text)[0]
        assert refused(address)


async def test_closing_the_node_cuts_off_a_client_that_sends_nothing() -> None:
    with trio.fail_after(15):
        async with open_node("target", metrics_port=0) as node:
            address = node.metrics_address
            assert address is not None
            host, port = address.rsplit(":", 1)
            idle = socket.create_connection((host, int(port)), timeout=10)
            # Once the server holds it (a request line half sent), it serves nothing else.
            idle.sendall(b"GET /metr")
        with idle:
            # Cut off: a FIN, or a RST where the server closed before reading what was sent.
            with suppress(ConnectionResetError):
                assert await trio.to_thread.run_sync(idle.recv, 100) == b""
        assert refused(address)


async def test_a_client_that_sends_slowly_is_cut_off_at_the_request_deadline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(mesh._exporter, "REQUEST_TIMEOUT", 0.5)
    with trio.fail_after(15):
        async with open_node("target", metrics_port=0) as node:
            address = node.metrics_address
            assert address is not None

            def slowloris() -> int:
                """Bytes of a header sent one every 50 ms until the server hangs up (at most
                200: 10 s, far past the deadline)."""
                host, port = address.rsplit(":", 1)
                with socket.create_connection((host, int(port)), timeout=10) as sock:
                    sock.sendall(b"GET /metrics HTTP/1.0\r\nX-Slow: ")
                    for sent in range(200):
                        try:
                            sock.sendall(b"a")
                        except OSError:
                            return sent
                        readable, _, _ = select.select([sock], [], [], 0.05)
                        if readable and not sock.recv(100):
                            return sent
                return 200

            assert await trio.to_thread.run_sync(slowloris) < 200
            status, _ = await scrape(address)
            assert status == 200


async def test_a_busy_metrics_port_is_an_oserror_and_nothing_is_left_open() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with trio.fail_after(10), pytest.raises(OSError, match="cannot serve metrics on"):
            async with open_node("target", metrics_port=port):
                pytest.fail("opened on a busy port")
        with pytest.raises(ValueError, match="metrics_port"):
            async with open_node("target", metrics_port=70000):
                pass
        with pytest.raises(ValueError, match="metrics_host"):
            async with open_node("target", metrics_port=0, metrics_host="localhost"):
                pass


def test_blocking_start_passes_the_metrics_arguments_on() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(OSError, match="cannot serve metrics on"):
            mesh.blocking.start(
                "target",
                discovery="static",
                metrics_port=busy.getsockname()[1],
                metrics_host="127.0.0.1",
                timeout=10,
            )


def test_a_blocking_node_serves_metrics_at_its_metrics_address() -> None:
    with mesh.blocking.start("target", discovery="static", metrics_port=0, timeout=10) as node:
        address = node.metrics_address
        assert address is not None
        assert address.startswith("127.0.0.1:")
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as response:
            assert response.status == 200
            assert "mesh_peers" in response.read().decode()
    with mesh.blocking.start("plain", discovery="static", timeout=10) as node:
        assert node.metrics_address is None


async def test_a_node_closing_answers_503() -> None:
    with trio.fail_after(10):
        server = MetricsServer("127.0.0.1", 0, lambda: None, trio.lowlevel.current_trio_token())
        try:
            status, body = await scrape(server.address)
            assert (status, body) == (503, "the node is closing\n")
        finally:
            await trio.to_thread.run_sync(server.close)


# -- the command line ---------------------------------------------------------------------------


def _cli(*arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mesh._cli", *arguments],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_metrics_option_takes_host_and_port_or_a_port() -> None:
    assert metrics_address("9464") == ("127.0.0.1", 9464)
    assert metrics_address("192.0.2.7:0") == ("192.0.2.7", 0)  # parsed only: nothing binds
    assert metrics_address("[::1]:9464") == ("::1", 9464)
    for bad in ("localhost:9464", "::1:9464", "127.0.0.1:70000", "127.0.0.1:", "x", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            metrics_address(bad)


def test_run_with_a_bad_or_busy_metrics_address_is_a_one_line_error() -> None:
    bad = _cli("run", "--mesh", f"metrics-{secrets.token_hex(3)}", "--metrics", "127.0.0.1:x")
    assert bad.returncode == 2
    assert "--metrics" in bad.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _cli("run", "--mesh", f"metrics-{secrets.token_hex(3)}", "--metrics", str(port))
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1, done.stderr
        assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr
        demo = _cli("demo", "--metrics", f"127.0.0.1:{port}")
        assert demo.returncode == 1, demo.stderr
        assert demo.stderr.count("\n") == 1, demo.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def _demo(*arguments: str) -> Iterator[subprocess.Popen[str]]:
    with subprocess.Popen(
        [sys.executable, "-m", "mesh._cli", "demo", *arguments],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        try:
            yield demo
        finally:
            if demo.poll() is None:
                demo.kill()


def _scrape_now(address: str) -> Samples | None:
    try:
        status, _, body = get(f"http://{address}/metrics")
    except (OSError, http.client.HTTPException):
        return None  # not up yet, or gone
    return parse_exposition(body)[0] if status == 200 else None


@pytest.mark.timeout(60)
def test_the_demo_producer_serves_metrics_that_move() -> None:
    address = f"127.0.0.1:{_free_port()}"
    with _demo("--metrics", address, "--tasks", "1500", "--rate", "300") as demo:
        pushed: list[float] = []
        deadline = time.monotonic() + 40
        while demo.poll() is None and time.monotonic() < deadline:
            samples = _scrape_now(address)
            if samples is not None:
                count = value(samples, "mesh_tasks_pushed_total", node="producer")
                check_histogram(samples, "mesh_ack_latency_seconds")
                if 0 < count < 1500 and (not pushed or count > pushed[-1]):
                    pushed.append(count)
            time.sleep(0.1)  # (the polling pace, not a synchronisation)
        out, err = demo.communicate(timeout=30)
    assert demo.returncode == 0, out + err
    assert f"producer serves its metrics at http://{address}/metrics" in out
    assert len(pushed) >= 2, pushed  # scraped twice at least while tasks moved
