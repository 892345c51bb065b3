"""What the tests that make network namespaces share: running ``ip``, listing namespaces, and
emptying one of the processes left in it (only a test's own can be there)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

#: Seconds one ``ip`` command may take.
IP_TIMEOUT = 10.0


def ip(*args: str) -> str:
    """Run ``ip ARGS``; its stdout. Raises `subprocess.CalledProcessError` on failure."""
    done = subprocess.run(
        ["ip", *args], check=True, capture_output=True, text=True, timeout=IP_TIMEOUT
    )
    return done.stdout


def namespaces() -> set[str]:
    """The names of the network namespaces that exist now."""
    return {line.split()[0] for line in ip("netns", "list").splitlines() if line.strip()}


def empty_namespace(namespace: str) -> list[int]:
    """Kill every process still in `namespace` (only ours can be there); those still alive after
    a few seconds."""
    deadline = time.monotonic() + 5
    while True:
        try:
            pids = [int(pid) for pid in ip("netns", "pids", namespace).split()]
        except subprocess.CalledProcessError:
            return []
        if not pids or time.monotonic() > deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
