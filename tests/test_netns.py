"""Multi-host: three nodes in three network namespaces find each other over mDNS, with no seeds,
across a bridge, and exchange an event; and a host cut off at the switch (its bridge port set
down, then up again) is declared dead, its tasks go to the other worker, and it comes back.

The layout: a switch namespace holds the bridge ``br0``; each host
namespace holds one end of a veth pair (``eth0``, with the host's address on a private /24 inside
10.231.0.0/16), whose other end (``swN``) is a port of the bridge. Both ends of each pair are
born in the switch namespace, one moved to its host at creation: nothing is ever created in the
root namespace, and no packet can leave through the machine's real interface. Every node runs in
its own process (tests/netns_node.py) started with ``ip netns exec`` and binds its sockets and
zeroconf to its veth address only.

Names and subnet are unique per run, and the fixture's finalizer (which runs on failure too)
kills the processes it started and whatever else runs in its namespaces, deletes those namespaces
by name, and checks that none remains. The test is skipped unless run as root with iproute2 and
the right to create network namespaces.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import pytest

from mesh import KeyPair

from .netns_tools import IP_TIMEOUT, empty_namespace, ip, namespaces

NODE_SCRIPT = Path(__file__).with_name("netns_node.py")
HOSTS = 3
PEERS_TIMEOUT = 10.0  # each node's wait_for_peers; discovery takes milliseconds when it works
LINE_TIMEOUT = 15.0  # the longest the test waits for any one line from a node

pytestmark = [pytest.mark.slow, pytest.mark.timeout(30)]


@dataclass
class NodeProcess:
    """A node running tests/netns_node.py in a namespace; its stdout is read by a thread."""

    name: str
    process: subprocess.Popen[str]
    stderr: TextIO
    lines: queue.Queue[dict[str, Any] | None] = field(default_factory=queue.Queue)
    reader: threading.Thread | None = None
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)  # the latest of each kind

    def start_reading(self) -> None:
        def read() -> None:
            assert self.process.stdout is not None
            for line in self.process.stdout:
                try:
                    self.lines.put(json.loads(line))
                except ValueError:
                    self.lines.put({"kind": "junk", "line": line})
            self.lines.put(None)  # end of output

        self.reader = threading.Thread(target=read, name=f"read-{self.name}", daemon=True)
        self.reader.start()

    def expect(
        self,
        kind: str,
        timeout: float = LINE_TIMEOUT,
        match: Callable[[dict[str, Any]], bool] | None = None,
    ) -> dict[str, Any]:
        """The next report of `kind` for which `match` (if given) is true (earlier reports are
        skipped); fails the test on an ``error`` report, the end of the output, or `timeout`
        seconds."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                report = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{self.name}: no {kind!r} report within {timeout} s{self.tail()}")
            if report is None:
                pytest.fail(f"{self.name}: exited before reporting {kind!r}{self.tail()}")
            if report["kind"] == "error":
                pytest.fail(f"{self.name}: {report}{self.tail()}")
            self.reports[report["kind"]] = report
            if report["kind"] == kind and (match is None or match(report)):
                return report

    def reports_so_far(self) -> list[dict[str, Any]]:
        """Every report received and not yet read, without waiting; fails on an ``error``."""
        reports = []
        while True:
            try:
                report = self.lines.get_nowait()
            except queue.Empty:
                return reports
            if report is None:
                pytest.fail(f"{self.name}: exited early{self.tail()}")
            if report["kind"] == "error":
                pytest.fail(f"{self.name}: {report}{self.tail()}")
            self.reports[report["kind"]] = report
            reports.append(report)

    def send(self, command: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()

    def tail(self) -> str:
        """The end of the node's stderr, for failure messages."""
        self.stderr.flush()
        text = Path(self.stderr.name).read_text(errors="replace")[-3000:]
        return f"\n--- {self.name} stderr ---\n{text}" if text else ""

    def stop(self) -> None:
        """Kill the process if it still runs, reap it and close its pipes. Idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        if self.reader is not None:
            self.reader.join(timeout=5)
        self.stderr.close()


@dataclass
class Lab:
    """Hosts on one bridge: namespace and address of each, and the nodes started in them."""

    prefix: str
    switch: str
    hosts: list[tuple[str, str]]  # (namespace, address)
    logs: Path
    nodes: list[NodeProcess] = field(default_factory=list)

    def start(
        self, host: int, name: str, mesh: str, settings: dict[str, Any] | None = None
    ) -> NodeProcess:
        """Start a node named `name` on host `host` (0-based), waiting for the other hosts."""
        namespace, address = self.hosts[host]
        stderr = (self.logs / f"{name}.stderr").open("w+")
        command = [
            "ip",
            "netns",
            "exec",
            namespace,
            sys.executable,
            str(NODE_SCRIPT),
            name,
            mesh,
            address,
            str(len(self.hosts) - 1),
            str(PEERS_TIMEOUT),
        ]
        # Off loopback a node runs keyed: the lab's nodes share one key pair (a node always
        # allows its own key), so nodes started later need no allow list read again.
        key = self.logs / "lab.key"
        if not key.exists():
            KeyPair.generate().save(key)
        try:
            process = subprocess.Popen(
                command,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=stderr,
                text=True,
                bufsize=1,
                env={
                    **os.environ,
                    "PYTHONUNBUFFERED": "1",
                    "MESH_KEY": str(key),
                    "MESH_SETTINGS": json.dumps(settings or {}),
                },
            )
        except BaseException:
            stderr.close()
            raise
        node = NodeProcess(name, process, stderr)
        self.nodes.append(node)
        node.start_reading()
        return node


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    """Three host namespaces joined by a bridge in a switch namespace of its own; torn down
    afterwards (on failure too), and checked to be gone."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    if shutil.which("ip") is None:
        pytest.skip("iproute2 ('ip') is not installed")
    prefix = f"mt{os.getpid() % 10000}{secrets.token_hex(2)}"
    subnet = f"10.231.{os.getpid() % 250}"
    switch = f"{prefix}-sw"
    hosts = [(f"{prefix}-h{i}", f"{subnet}.{i}") for i in range(1, HOSTS + 1)]
    created: list[str] = []
    lab = Lab(prefix, switch, hosts, tmp_path)
    try:
        try:
            ip("netns", "add", switch)
        except subprocess.CalledProcessError as exc:
            pytest.skip(f"cannot create a network namespace: {exc.stderr.strip()}")
        created.append(switch)
        ip("-n", switch, "link", "set", "lo", "up")
        ip("-n", switch, "link", "add", "br0", "type", "bridge")
        ip("-n", switch, "link", "set", "br0", "up")
        for i, (namespace, address) in enumerate(hosts, start=1):
            ip("netns", "add", namespace)
            created.append(namespace)
            ip("-n", namespace, "link", "set", "lo", "up")
            # Both ends are born in the switch namespace, eth0 straight into the host's.
            veth = ["type", "veth", "peer", "name", "eth0", "netns", namespace]
            ip("-n", switch, "link", "add", f"sw{i}", *veth)
            ip("-n", switch, "link", "set", f"sw{i}", "master", "br0", "up")
            ip("-n", namespace, "addr", "add", f"{address}/24", "dev", "eth0")
            ip("-n", namespace, "link", "set", "eth0", "up")
        yield lab
    finally:
        for node in lab.nodes:
            node.stop()
        stuck = {namespace: pids for namespace in created if (pids := empty_namespace(namespace))}
        for namespace in reversed(created):
            # Deleting a namespace also deletes its links: the veths and the bridge.
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", namespace)
        left = namespaces() & set(created)
        assert not left, f"network namespaces left behind: {sorted(left)}"
        assert not stuck, f"processes that would not die, by namespace: {stuck}"


def test_nodes_in_three_namespaces_find_each_other_over_mdns_and_exchange_an_event(
    lab: Lab,
) -> None:
    mesh = f"netns-{lab.prefix}"
    names = [f"n{i}" for i in range(1, HOSTS + 1)]
    addresses = {name: address for name, (_, address) in zip(names, lab.hosts, strict=True)}

    # Two nodes first; the third joins once they are up, so both directions of discovery happen:
    # running nodes hear a newcomer's announcement, and a newcomer's browser finds running nodes.
    first = [lab.start(i, names[i], mesh) for i in range(HOSTS - 1)]
    for node in first:
        node.expect("open")
    nodes = [*first, lab.start(HOSTS - 1, names[-1], mesh)]

    last_open = nodes[-1].expect("open")["clock"]
    for node in nodes:
        report = node.expect("peers")
        joined = ", ".join(
            f"{name} {(clock - last_open) * 1000:.1f}" for name, clock in report["joined"].items()
        )
        print(  # shown with -rP: how long discovery took across the bridge
            f"{node.name}: open {node.reports['open']['t']:.3f} s after its start;"
            f" ms after the last node opened: joined {joined},"
            f" wait_for_peers returned {(report['clock'] - last_open) * 1000:.1f}"
        )
        others = sorted(set(names) - {node.name})
        assert report["peers"] == others
        # Their inboxes are at their veth addresses: what was heard came across the bridge.
        assert report["addresses"] == {name: addresses[name] for name in others}

    # Every node's subscription is now confirmed at every peer: the event cannot be lost.
    publisher, *subscribers = nodes
    body = {"hello": "across the bridge", "from": publisher.name}
    publisher.send(f"publish netns/greeting {json.dumps(body)}")
    publisher.expect("published")
    for node in subscribers:
        event = node.expect("event")
        assert (event["topic"], event["body"], event["sender"]) == (
            "netns/greeting",
            body,
            publisher.name,
        )

    for node in nodes:
        node.send("quit")
    for node in nodes:
        node.expect("closed")
        assert node.process.wait(timeout=10) == 0, node.tail()


CUT_TASKS = 2000  # pushed by h1 to h2 and h3, which take about 1 ms over each
DEAD_WITHIN = 1.0  # from the cut to h3's death at h1: phi alone, no disconnect is seen
BACK_WITHIN = 10.0  # from the repair to h3 alive again at h1 (TCP retransmits after backoff)


@pytest.mark.timeout(90)
def test_a_host_cut_off_at_the_switch_is_declared_dead_its_tasks_move_and_it_comes_back(
    lab: Lab,
) -> None:
    mesh = f"netns-{lab.prefix}"
    names = [f"n{i}" for i in range(1, HOSTS + 1)]
    producer, *workers = nodes = [lab.start(i, names[i], mesh) for i in range(HOSTS)]
    cut_off = workers[-1]  # on h3, behind the switch port sw3
    port = f"sw{HOSTS}"
    for node in nodes:
        assert node.expect("peers")["peers"] == sorted(set(names) - {node.name})
    producer.send("watch")
    producer.expect("watching")
    for node in workers:
        node.send("work job 0.001")
        node.expect("working")
    producer.send(f"workers job {len(workers)}")
    assert producer.expect("workers")["peers"] == [node.name for node in workers]

    def about(state: str, after: float) -> Callable[[dict[str, Any]], bool]:
        return lambda r: r["peer"] == cut_off.name and r["state"] == state and r["clock"] > after

    producer.send(f"push job {CUT_TASKS} {CUT_TASKS // 4}")
    progress = producer.expect("progress")
    cut_at = time.monotonic()  # before the command: the detection time measured is an upper bound
    ip("-n", lab.switch, "link", "set", port, "down")
    dead = producer.expect("peer", timeout=5 * DEAD_WITHIN, match=about("dead", cut_at))
    detected_after = dead["clock"] - cut_at
    # h2 does what h3 held unacked, while h3 is still cut off.
    settled = producer.reports.get("settled") or producer.expect("settled")
    stats = settled["statistics"]
    repaired_at = time.monotonic()
    ip("-n", lab.switch, "link", "set", port, "up")
    back = producer.expect("peer", timeout=BACK_WITHIN, match=about("alive", repaired_at))
    back_after = back["clock"] - repaired_at
    print(  # shown with -rP
        f"{progress['acked']} of {CUT_TASKS} acked at the cut; {cut_off.name} dead at"
        f" {producer.name} {detected_after * 1000:.0f} ms after it,"
        f" {stats['tasks_redelivered']} tasks redelivered; alive again"
        f" {back_after * 1000:.0f} ms after the repair ({back['change']}, {back['reason']})"
    )
    assert progress["acked"] < CUT_TASKS  # the cut came part way through
    assert detected_after < DEAD_WITHIN, detected_after
    assert stats["tasks_pushed"] == CUT_TASKS
    assert stats["tasks_acked"] == CUT_TASKS
    assert stats["tasks_given_up"] == 0
    assert stats["tasks_in_flight"] == 0
    assert stats["tasks_redelivered"] > 0  # h3 held some unacked: h2 did them

    for node in nodes:
        node.send("quit")
    for node in nodes:
        node.expect("closed")
        assert node.process.wait(timeout=10) == 0, node.tail()


LOSS_PERCENT = 20
LOSS_SECONDS = 30.0


@pytest.mark.timeout(LOSS_SECONDS + 60)
def test_twenty_percent_packet_loss_on_a_host_kills_nobody_at_default_settings(lab: Lab) -> None:
    """nftables drops 20 % of a host's packets, both ways, at random (this kernel has no netem),
    for 30 s of work traffic: every node watches, and none may declare any peer dead."""
    if shutil.which("nft") is None:
        pytest.skip("nftables ('nft') is not installed (.ci/run installs it)")
    mesh = f"netns-{lab.prefix}"
    names = [f"n{i}" for i in range(1, HOSTS + 1)]
    producer, *workers = nodes = [lab.start(i, names[i], mesh) for i in range(HOSTS)]
    lossy = nodes[-1]
    for node in nodes:
        assert node.expect("peers")["peers"] == sorted(set(names) - {node.name})
        node.send("watch")
        node.expect("watching")
    for node in workers:
        node.send("work job 0.005")
        node.expect("working")
    producer.send(f"workers job {len(workers)}")
    producer.expect("workers")

    namespace = lab.hosts[-1][0]
    rule = f"numgen random mod 100 < {LOSS_PERCENT} counter drop"
    nft = ["ip", "netns", "exec", namespace, "nft"]
    ruleset = (
        "table inet chaos {\n"
        f"  chain input {{ type filter hook input priority 0; policy accept; {rule}; }}\n"
        f"  chain output {{ type filter hook output priority 0; policy accept; {rule}; }}\n"
        "}\n"
    )
    subprocess.run([*nft, "-f", "-"], input=ruleset, text=True, check=True, timeout=IP_TIMEOUT)

    # About 300 tasks/s for the whole run, half of them to the lossy host.
    producer.send(f"push job {int(LOSS_SECONDS * 300)} 1")
    end = time.monotonic() + LOSS_SECONDS
    changes: dict[str, list[dict[str, Any]]] = {node.name: [] for node in nodes}
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(left, 1.0))  # the nodes run on their own; this only collects reports
        for node in nodes:
            changes[node.name] += [r for r in node.reports_so_far() if r["kind"] == "peer"]
    listing = subprocess.run(
        [*nft, "list", "table", "inet", "chaos"],
        capture_output=True,
        text=True,
        check=True,
        timeout=IP_TIMEOUT,
    ).stdout
    subprocess.run([*nft, "delete", "table", "inet", "chaos"], check=True, timeout=IP_TIMEOUT)
    dropped = sum(int(n) for n in re.findall(r"counter packets (\d+)", listing))

    states = {
        name: [(r["peer"], r["state"], r["reason"]) for r in reports if r["change"] == "state"]
        for name, reports in changes.items()
    }
    print(  # shown with -rP
        f"{LOSS_PERCENT} % loss on {lossy.name} for {LOSS_SECONDS:.0f} s: {dropped} packets"
        f" dropped; state changes seen: {states}"
    )
    deaths = [
        (name, r["peer"], r["reason"])
        for name, reports in changes.items()
        for r in reports
        if r["state"] == "dead" or r["change"] == "left"
    ]
    assert deaths == []
    assert dropped > 200  # the loss was real (work alone is hundreds of packets a second)
    for node in nodes:
        node.send("quit")
    for node in nodes:
        node.expect("closed")
        assert node.process.wait(timeout=10) == 0, node.tail()


STREAM = "netns/stream"
STREAM_EVENTS, STREAM_RATE, STREAM_SIZE = 5000, 500.0, 2000  # 10 s of events of 2 KB
CUT_FOR = 3.0  # seconds the partition lasts, one second into the stream


def stream_items(node: NodeProcess, last_i: int, timeout: float) -> list[dict[str, Any]]:
    """The ``item`` and ``gap`` reports of `node`, in order, up to the item numbered `last_i`
    or a gap after which nothing comes (fails the test after `timeout` seconds)."""
    items: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while not items or items[-1].get("i") != last_i:
        try:
            report = node.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"{node.name}: item {last_i} not within {timeout} s{node.tail()}")
        if report is None or report["kind"] == "error":
            pytest.fail(f"{node.name}: {report}{node.tail()}")
        if report["kind"] in ("item", "gap"):
            items.append(report)
    return items


@pytest.mark.timeout(120)
def test_a_partition_is_repaired_from_history_or_reported_as_an_exact_gap(lab: Lab) -> None:
    mesh = f"netns-{lab.prefix}"
    names = [f"n{i}" for i in range(1, HOSTS + 1)]
    # Small connection buffers (4 frames), so that the partition fills them within the second.
    settings = {"event_buffer_bytes": 256 * 1024, "history_events": 1000}
    publisher, whole, cut_off = nodes = [
        lab.start(i, names[i], mesh, settings) for i in range(HOSTS)
    ]
    for node in nodes:
        assert node.expect("peers")["peers"] == sorted(set(names) - {node.name})
    publisher.send(f"stream {STREAM} {STREAM_EVENTS} {STREAM_RATE:g} {STREAM_SIZE}")
    cut_off.expect("item", match=lambda r: r["i"] >= STREAM_RATE)  # a second in
    ip("-n", lab.switch, "link", "set", f"sw{HOSTS}", "down")
    time.sleep(CUT_FOR)  # the fault's length, not a synchronisation
    ip("-n", lab.switch, "link", "set", f"sw{HOSTS}", "up")
    publisher.expect("streamed", timeout=30)
    got = stream_items(whole, STREAM_EVENTS - 1, 30)
    after_cut = stream_items(cut_off, STREAM_EVENTS - 1, 30)
    cut_off.send("stats")
    statistics = cut_off.expect("stats")["statistics"]

    # The node that stayed connected got every event, in order.
    assert [r["kind"] for r in got] == ["item"] * len(got)
    seqs = [r["seq"] for r in got]
    assert [r["i"] for r in got][-len(seqs) :] == list(range(STREAM_EVENTS))[-len(seqs) :]
    # The one cut off accounts for every one of them since it took the first: delivered once,
    # in order, or in a gap that ends on one (cut_off's items start where `expect` left off).
    expected = iter(seqs[seqs.index(after_cut[0].get("seq", after_cut[0].get("first"))) :])
    gaps = repaired_or_live = 0
    for report in after_cut:
        if report["kind"] == "gap":
            gaps += 1
            while (seq := next(expected)) < report["last"]:
                assert seq >= report["first"], (seq, report)
            assert seq == report["last"], report
        else:
            repaired_or_live += 1
            assert report["seq"] == next(expected), report
    assert next(expected, None) is None
    print(  # shown with -rP
        f"{cut_off.name} after the cut: {repaired_or_live} events, {gaps} gaps;"
        f" repaired {statistics['events_repaired']}, gap reports {statistics['event_gaps']}"
    )
    assert gaps > 0  # more was missed than the history held: reported
    assert statistics["events_repaired"] > 0  # and what it held was repaired

    for node in nodes:
        node.send("quit")
    for node in nodes:
        node.expect("closed")
        assert node.process.wait(timeout=10) == 0, node.tail()
