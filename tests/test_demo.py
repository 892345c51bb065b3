"""The LAN demo, as the README's first command runs it: `mesh-cli demo`, default form."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest


@pytest.mark.timeout(60)
def test_the_demo_loses_nothing_and_says_so() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mesh._cli", "demo"],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    summary = re.search(r"summary: (\d+) tasks sent, (\d+) done, (\d+) lost", out)
    assert summary is not None, out
    assert summary.groups() == ("2000", "2000", "0")
    assert "SIGKILL worker-2" in out
    assert "worker-2 is dead (" in out
    assert "ok: nothing lost" in out


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_the_netns_demo_cuts_a_link_loses_nothing_and_cleans_up() -> None:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("--netns needs root and iproute2")
    with subprocess.Popen(
        [sys.executable, "-m", "mesh._cli", "demo", "--netns"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as demo:
        try:
            out, err = demo.communicate(timeout=60)
        finally:
            demo.kill()
    assert demo.returncode == 0, out + err
    assert "cut worker-2 off the switch" in out
    assert "worker-2 is dead (phi" in out  # no disconnect is seen: silence alone
    assert re.search(r"summary: 2000 tasks sent, 2000 done, 0 lost", out)
    # Its namespaces are named after its pid: none is left.
    assert not [name for name in _namespaces() if name.startswith(f"md{demo.pid % 10000}")]


def _namespaces() -> set[str]:
    listing = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True, timeout=10
    )
    return {line.split()[0] for line in listing.stdout.splitlines() if line.strip()}
