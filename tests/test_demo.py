"""The LAN demo, as the README's first command runs it: `mesh-cli demo`, default form."""

from __future__ import annotations

import re
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
    assert re.search(r"worker-2 is dead \(\w+\)", out), out
    assert "ok: nothing lost" in out
