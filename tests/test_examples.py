"""The examples in examples/, run as a user runs them: each in a subprocess, in a mesh of its own
(a unique MESH_NAME, so that no other run on this machine shares it over mDNS), bounded in time."""

from __future__ import annotations

import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import new_mesh_env

ROOT = Path(__file__).resolve().parent.parent


def run_example(name: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, f"examples/{name}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env=new_mesh_env(),
    )


def test_jobs_example_retries_the_flaky_workers_jobs_and_loses_none() -> None:
    result = run_example("jobs.py")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok"
    assert "jobs pushed: 60, done: 60" in lines
    assert "lost: 0 (given up: 0)" in lines
    failed = [line for line in lines if line.startswith("worker-3 failed ")]
    retried = [line for line in lines if line.endswith(", a retry)")]
    assert failed, "the flaky worker failed nothing"
    assert len(retried) == len(failed)
    assert f"retried: {len(failed)} (after {len(failed)} failures)" in lines


def test_outbox_example_loses_no_order_across_two_kills() -> None:
    result = run_example("outbox.py")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok"
    assert "producer: 500 orders pushed, no worker up" in lines
    assert lines.count("producer: killed (SIGKILL)") == 2
    assert "producer: restarted, 500 orders found in the state directory" in lines
    assert any(line.startswith("orders: 500, shipped: 500, shipped twice: ") for line in lines)


def test_events_example_handles_every_order() -> None:
    result = run_example("events.py")
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[-1] == "ok"
    assert "orders: 5 created, 5 handled" in lines
    assert "notifications: to ada, order 1: your book is on its way" in lines
    assert "notifications: to dee, order 4: sorry, no lamp left" in lines
    assert sum(line.startswith("inventory: order ") for line in lines) == 5


class Chatter:
    """One `examples/chat.py` process, its stdin a pipe, its output read by threads."""

    def __init__(self, name: str, env: dict[str, str]) -> None:
        self.name = name
        self.lines: list[str] = []  # everything it printed, as read so far
        self.errors: list[str] = []  # its stderr (read all along, so that the pipe never fills)
        self._unread: queue.Queue[str | None] = queue.Queue()  # None: end of its output
        self.process = subprocess.Popen(
            [sys.executable, "examples/chat.py", name],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._read_errors, daemon=True),
        ]
        for reader in self._readers:
            reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self._unread.put(line.rstrip("\n"))
        self._unread.put(None)

    def _read_errors(self) -> None:
        assert self.process.stderr is not None
        self.errors.extend(self.process.stderr)

    def say(self, text: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(text + "\n")
        self.process.stdin.flush()

    def expect(self, wanted: str | Callable[[str], bool], timeout: float = 15) -> str:
        """Wait until it prints `wanted` (a line, or a test of one); return that line."""
        match = wanted if callable(wanted) else wanted.__eq__
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._unread.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"{self.name} did not print {wanted!r} in {timeout} s: {self.lines}")
            if line is None:
                pytest.fail(f"{self.name} ended without printing {wanted!r}: {self.lines}")
            self.lines.append(line)
            if match(line):
                return line

    def leave(self, timeout: float = 15) -> int:
        """Close its stdin (Ctrl-D) and wait for it to exit; returns the exit status."""
        assert self.process.stdin is not None
        self.process.stdin.close()
        status = self.process.wait(timeout=timeout)
        while (line := self._unread.get(timeout=timeout)) is not None:
            self.lines.append(line)
        return status

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        for reader in self._readers:  # they end at the end of its output
            reader.join(timeout=10)
        for stream in (self.process.stdin, self.process.stdout, self.process.stderr):
            if stream is not None:
                stream.close()


def test_chat_example_two_people_talk_then_leave() -> None:
    env = new_mesh_env()
    alice = Chatter("alice", env)
    bob = Chatter("bob", env)
    try:
        # "joined" is printed once the subscriptions are wired both ways: a line sent from then
        # on is not lost, so no sleep is needed before talking.
        alice.expect("* bob joined")
        bob.expect("* alice joined")

        alice.say("hello bob")
        bob.expect("alice: hello bob")
        bob.say("hi alice")
        alice.expect("bob: hi alice")

        assert alice.leave() == 0, alice.errors
        bob.expect(lambda line: line.startswith("* alice left"))
        assert bob.leave() == 0, bob.errors
        assert "alice: hello bob" not in alice.lines  # one's own lines do not come back
    finally:
        alice.stop()
        bob.stop()


def test_chat_example_a_late_joiner_sees_the_last_lines() -> None:
    env = new_mesh_env()
    alice = Chatter("alice", env)
    carol: Chatter | None = None
    try:
        alice.expect(lambda line: line.startswith("* you are alice"))
        for n in range(3):
            alice.say(f"line {n}")
        carol = Chatter("carol", env)
        # Said before carol came: from alice's history, in order, then the live ones.
        for n in range(3):
            carol.expect(f"alice: line {n}")
        alice.expect("* carol joined")
        alice.say("and now live")
        carol.expect("alice: and now live")
        assert alice.leave() == 0, alice.errors
        assert carol.leave() == 0, carol.errors
    finally:
        alice.stop()
        if carol is not None:
            carol.stop()
